"""Demonstrations an env writes itself: solved episodes as TRL ``messages`` JSONL, for a warm start.

A 135M model almost never emits a valid tool call unprompted (FACTS.md: 0 of 8 samples without a
few-shot prompt, 1 of 8 with one), so RL on a tool env starts from a reward that is nearly always
0. The smallest honest fix after a few-shot prompt is a short ``ptgym sft`` on demonstrations of
the protocol. These are not written by hand: each is an episode *played through the env itself*
(its real sandbox, its own checker), so a demonstration shows exactly the prompt the policy will
see in RL, the call format the env parses, the tool output the sandbox really returns, and an
answer the env scored 1.0. An episode that does not score 1.0 is not written, and is counted.

- ``math-tools``: call ``python`` with ``print(<the question's expression>)``, then answer with
  the number the tool printed (read from the tool's observation, not from the gold answer).
- ``code-tools``: on the env's *practice* tasks (``CodeToolsEnv(tasks="practice")``, written for
  this, never HumanEval, the benchmark the env is scored on): ``write_file`` of ``solution.py``
  holding the prompt and the task's reference body, then ``submit``, the two calls ``FEW_SHOT``
  shows; the env's hidden tests must pass them all. The practice tasks have no test split (the
  held-out set is HumanEval itself), so ``split=test`` is an error.

The system message holds the env's prompt with the tool instructions that
``ptgym.agents.chat.ChatRenderer`` injects for templates that ignore ``tools=`` (SmolLM2's), so
``ptgym sft`` trains on the same prompt tokens that ``ptgym train`` samples from.

    ptgym envs demos math-tools n=200 out=demos.jsonl
    ptgym sft data=demos.jsonl trainer.epochs=1 out=runs/warm
    ptgym train env=math-tools model=runs/warm/model

    ptgym envs demos code-tools n=200 out=demos.jsonl   # practice tasks, not HumanEval
"""

from __future__ import annotations

import ast
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptgym.agents.chat import tools_system_prompt
from ptgym.config import opt


@dataclass
class DemosCommand:
    n: int = opt(200, "demonstrations to write", minimum=1)
    out: str = opt("demos.jsonl", "the JSONL file to write (TRL conversational 'messages')")
    seed: int = opt(0, "episode i is reset with seed + i")
    split: str = opt(
        "train", "the env's task split (code-tools has only train)", choices=("train", "test")
    )
    write: str = opt(
        "call",
        "code-tools: how a demonstration puts its code in solution.py: call = a write_file tool "
        "call (the program JSON-escaped in its arguments), block = a fenced ```python block, which "
        "the env saves as solution.py (no escaping), then the same submit call; raw = the "
        "write_file call in the XML form whose values are raw text (the program unescaped, "
        "without docstrings), then the same submit call; block-submit = one reply: the program "
        "without docstrings in a python block and the submit call after it (every reply a "
        "valid tool call, no escaping)",
        choices=("call", "block", "raw", "block-submit"),
    )
    recover: float = opt(
        0.0,
        "write=block-submit: the share (0-1) of demonstrations that recover from a bad first "
        "reply (the block with a malformed submit call, a random slip of it, or no call; in "
        "every other pair the bad call repeated in a second reply) after the env's real "
        "errors: they train on the last reply only, a valid submit",
    )
    kwargs: dict[str, Any] = field(default_factory=dict)  # env constructor arguments


def _with_tools(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict]:
    """Plain role/content messages, tool instructions in the system message as the renderer
    writes them for a template without tool support."""
    out = [{"role": m["role"], "content": m.get("content") or ""} for m in messages]
    if tools:
        instructions = tools_system_prompt(tools)
        if out and out[0]["role"] == "system":
            out[0]["content"] = f"{out[0]['content']}\n\n{instructions}".lstrip()
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out


def math_tools_demos(
    n: int, *, seed: int = 0, split: str = "train", env: Any = None, **kwargs: Any
) -> tuple[list[dict[str, Any]], int]:
    """``(rows, failed)``: ``n`` solved MathTools episodes as ``{"messages", "task_id", "reward"}``
    rows, and how many played episodes did not score 1.0 (and were not written)."""
    from ptgym.envs.math_tools import MathToolsEnv, tool_call_text

    env = env or MathToolsEnv(split=split, **kwargs)

    def play(i: int) -> dict[str, Any] | None:
        _, info = env.reset(seed=seed + i)
        obs, _, _, truncated, step_info = env.step(tool_call_text(f"print({info['expression']})"))
        if truncated or "error" in step_info or not obs:
            return None
        result = obs[-1]["content"].strip()
        _, reward, terminated, _, final = env.step(f"The answer is \\boxed{{{result}}}.")
        if not (terminated and reward == 1.0 and final.get("correct")):
            return None
        return _row(env, info, reward)

    return _collect(n, play)


def _row(env: Any, info: dict[str, Any], reward: float) -> dict[str, Any]:
    return {
        "messages": _with_tools(env.messages, info["tools"]),
        "task_id": info["task_id"],
        "reward": reward,
    }


def _collect(n: int, play: Any) -> tuple[list[dict[str, Any]], int]:
    """``(rows, failed)``: calls ``play(i)`` for i = 0, 1, ... until ``n`` rows came back; a None
    is an episode that did not solve its task. Gives up once more than max(10, n) failed."""
    rows: list[dict[str, Any]] = []
    failed = i = 0
    while len(rows) < n:
        if failed > max(10, n):
            raise RuntimeError(
                f"{failed} of {i} demonstrations did not solve their task; see above"
            )
        row = play(i)
        i += 1
        if row is None:
            failed += 1
        else:
            rows.append(row)
    return rows, failed


def _is_docstring(stmt: ast.stmt) -> bool:
    return (
        isinstance(stmt, ast.Expr)
        and isinstance(stmt.value, ast.Constant)
        and isinstance(stmt.value.value, str)
    )


def without_docstrings(code: str) -> str:
    """``code`` with the docstring of the module and of every function and class removed (an
    emptied body gets ``pass``), as ``ast.unparse`` writes it; comments go too."""
    tree = ast.parse(code)
    kinds = (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    for node in ast.walk(tree):
        if isinstance(node, kinds) and node.body and _is_docstring(node.body[0]):
            node.body = node.body[1:] or [ast.Pass()]
    return ast.unparse(tree) + "\n"


def code_tools_demos(
    n: int,
    *,
    seed: int = 0,
    split: str = "train",
    env: Any = None,
    write: str = "call",
    recover: float = 0.0,
    **kwargs: Any,
) -> tuple[list[dict[str, Any]], int]:
    """``(rows, failed)`` as ``math_tools_demos``, for CodeTools on its practice tasks: episode
    ``i`` plays practice task ``(seed + i) % num_tasks``, so ``n`` of them cover the set evenly.
    ``write="block"``: the first reply is the program in a fenced python block (saved by the env
    as solution.py) instead of a ``write_file`` call, so the model never has to JSON-escape a
    program; the second reply is the same ``submit`` call. ``write="raw"``: the ``write_file``
    call is in the XML form (``raw_tool_call_text``), the program unescaped and without its
    docstrings (``without_docstrings``: the 135M model, copying HumanEval's long docstrings, looped
    until its token limit), then the same JSON ``submit`` call: every reply a valid tool call.
    ``write="block-submit"``: a single reply, the program without docstrings in a fenced block
    (saved by the env before the reply's calls run) followed by the ``submit`` call: a valid tool
    call in every reply, and no program ever escaped. ``recover``: that share of block-submit
    episodes are recoveries, one of ``BAD_SUBMITS`` or (every other one) a ``slipped_call`` after
    the block (every other pair sends it again in a second reply, as the policy loops on its own
    malformations), the env's real answers, then the valid submit: a prompt/completion row,
    trained on the submit."""
    from ptgym.agents.toolcalls import raw_tool_call_text
    from ptgym.envs.code_tools import SOLUTION, TOOLS, CodeToolsEnv, tool_call_text

    if not 0.0 <= recover <= 1.0:
        raise ValueError(f"recover={recover} is a share of the demonstrations: give 0 to 1")
    if recover and write != "block-submit":
        raise ValueError(f"recover= is for write=block-submit demonstrations, not write={write}")
    if split != "train":
        raise ValueError(
            f"code-tools demonstrations come from the practice tasks, which have no {split!r} "
            "split (HumanEval is the held-out set); leave split=train"
        )
    if kwargs.get("tasks", "practice") != "practice":
        raise ValueError("code-tools demonstrations use tasks=practice only, never HumanEval")
    env = env or CodeToolsEnv(**{**kwargs, "tasks": "practice"})
    if env.task_set != "practice":
        raise ValueError("code-tools demonstrations need a CodeToolsEnv(tasks='practice')")

    def play(i: int) -> dict[str, Any] | None:
        _, info = env.reset(seed=seed + i, options={"index": (seed + i) % env.num_tasks})
        code = env.task.prompt + env.task.canonical_solution
        if write == "block-submit":
            block = f"```python\n{without_docstrings(code)}```\n"
            done = int(i * recover)  # recoveries before this episode: a share spread evenly
            if int((i + 1) * recover) > done:
                # Recoveries alternate: one of the kinds the policy was seen to write, then a
                # random slip of the valid call. In every other pair the bad call is repeated
                # once more before the recovery: the policy's failures loop on their own slip.
                if done % 2:
                    bad = slipped_call(tool_call_text("submit"), TOOLS, random.Random(seed + i))
                else:
                    bad = BAD_SUBMITS[done // 2 % len(BAD_SUBMITS)]
                repeats = 1 + done // 2 % 2 if bad else 1
                return recovery(info, block, bad, repeats)
            final = env.step(block + tool_call_text("submit"))[4]
            return _row(env, info, final["passed"] / final["total"]) if solved(final) else None
        if write == "block":
            reply = f"```python\n{code}```"
        elif write == "raw":
            reply = raw_tool_call_text(
                "write_file", path=SOLUTION, content=without_docstrings(code)
            )
        else:
            reply = tool_call_text("write_file", path=SOLUTION, content=code)
        _, _, _, truncated, step_info = env.step(reply)
        if truncated or "error" in step_info:
            return None
        final = env.step(tool_call_text("submit"))[4]
        return _row(env, info, final["passed"] / final["total"]) if solved(final) else None

    def recovery(info: dict[str, Any], block: str, bad: str, repeats: int) -> dict[str, Any] | None:
        for reply in [block + bad] + [bad] * (repeats - 1):
            obs, _, terminated, truncated, step_info = env.step(reply)
            if terminated or truncated or step_info["valid_turns"] or not obs:
                return None  # each bad reply must be answered as a mistake, and leave a turn
        final = env.step(tool_call_text("submit"))[4]
        if not solved(final):
            return None
        messages = _with_tools(env.messages, info["tools"])
        k = max(j for j, m in enumerate(messages) if m["role"] == "assistant")
        return {
            "prompt": messages[:k],
            "completion": messages[k:],
            "task_id": info["task_id"],
            "reward": final["passed"] / final["total"],
        }

    def solved(final: dict[str, Any]) -> bool:
        # The env's verdict (every hidden test passed), not the return: a tool_call_penalty in
        # kwargs does not make a demo unsolved.
        return bool(final.get("correct"))

    return _collect(n, play)


# The bad submits that recovery demonstrations correct: JSON cut before its closing brace, a made-up
# tool name, prose inside the call tags (the 135M policy looped on that one), and no call at all.
BAD_SUBMITS = (
    '<tool_call>\n{"name": "submit", "arguments": {}\n</tool_call>',
    '<tool_call>\n{"name": "submission", "arguments": {}}\n</tool_call>',
    "<tool_call>\nsubmission submitted\n</tool_call>",
    "",
    # The warm 135M model's own loop (measured, issue 11): an empty call, as it writes it.
    "<tool_call>{}</tool_call>",
    "<tool_call>\n{}\n</tool_call>",
)

SLIP_CHARS = '{}[]<>/"(),:_ '


def slipped_call(call: str, tools: list[dict[str, Any]], rng: random.Random) -> str:
    """``call`` with one random slip that the tool-call parser refuses for ``tools``: a character
    dropped, doubled or replaced by a stray bracket or quote, the text cut short, or the closing tag
    mangled (the 135M policy wrote ``...{}}>``). The slips seen in the policy are few; random
    ones teach the recovery for the malformation it has not been seen to write yet."""
    from ptgym.agents.toolcalls import parse_tool_calls

    while True:
        j = rng.randrange(1, len(call))
        kind = rng.randrange(5)
        if kind == 0:
            bad = call[:j] + call[j + 1 :]
        elif kind == 1:
            bad = call[:j] + call[j] + call[j:]
        elif kind == 2:
            bad = call[:j] + rng.choice(SLIP_CHARS) + call[j + 1 :]
        elif kind == 3:  # cut inside the call, after its opening tag
            bad = call[: rng.randrange(call.index(">") + 2, len(call))]
        else:
            bad = call.replace("</tool_call>", rng.choice((">", "</tool>", "<tool_call>", "/>")))
        parsed = parse_tool_calls(bad, tools)
        if bad.strip() and not parsed.calls:
            return bad


ENVS = {"math-tools": math_tools_demos, "code-tools": code_tools_demos}  # env -> generator


def write_demos(env_name: str, cfg: DemosCommand, log: Any = print) -> Path:
    """Play ``cfg.n`` solved episodes of ``env_name`` and write them to ``cfg.out`` atomically."""
    if env_name not in ENVS:
        raise ValueError(
            f"no demonstration generator for env {env_name!r}; available: {', '.join(ENVS)}"
        )
    extra: dict[str, Any] = {}
    if cfg.write != "call" or cfg.recover:
        if env_name != "code-tools":
            what = f"write={cfg.write}" if cfg.write != "call" else "recover="
            raise ValueError(f"{what} is for code-tools demonstrations, not {env_name}")
        extra.update(write=cfg.write, recover=cfg.recover)
    rows, failed = ENVS[env_name](cfg.n, seed=cfg.seed, split=cfg.split, **extra, **cfg.kwargs)
    path = Path(cfg.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    log(f"wrote {len(rows)} solved {env_name} demonstrations to {path} ({failed} unsolved skipped)")
    log(
        f"next: ptgym sft data={path} out=runs/warm && ptgym train env={env_name} model=runs/warm/model"
    )
    return path
