"""``ptgym/MathTools-v0``: arithmetic too hard to do in one's head, with a ``python`` tool.

## Description

Each episode is one arithmetic problem that a 135M model cannot do in its head: a product of two
3-4 digit numbers (``mul``: "What is 4821 * 739?") or a chain of 5-7 terms joined by ``+``, ``-``
and ``*`` (``chain``: "Calculate 48 + 713 * 29 - 605 + 12 * 87.", usual operator precedence,
the question's expression is valid Python). The agent may call one tool, ``python(code)``, which
runs the code in the Docker sandbox (``ptgym.sandbox``; a container is leased per call from the
pool ``CodeTools-v0`` shares, so nothing is held while the model generates) and returns what it
printed. A reply without a tool call is the final answer, extracted and checked with
math-verify (``ptgym.envs.answer``). A typical solved episode has two replies: the tool call,
then the answer read off the tool's result.

Problems are generated here, not by reasoning-gym: problem ``i`` of a kind is a pure function of
(kind, digits, terms, ``dataset_seed``, i) through ``numpy.random.default_rng``. Splits are
disjoint by construction: a problem belongs to the test split iff the SHA-256 of its expression
falls in one bucket of ``TEST_BUCKETS`` (train: every other bucket), and each item is drawn by
rejection until it lands in its split, so no test question is ever a training question.

Tool calls use the Hermes format ``<tool_call>{"name": "python", "arguments": {"code": "..."}}
</tool_call>`` (parsed by ``ptgym.agents.toolcalls``). SmolLM2's chat template ignores ``tools=``;
the renderer then writes the tool schemas into the system message itself, and ``few_shot=True``
adds one worked example (call, result, answer) to the system prompt, the smallest warm start
that makes a 135M model emit a valid call at all. ``ptgym.demos`` writes solved episodes of this
env as SFT data (``ptgym envs demos math-tools``), the next larger warm start.

## Action space

``Text``: the assistant's reply, as a ``str`` or a ``ptgym.Action`` (its ``.text`` is used).

## Observation space

``Messages``: ``reset`` gives ``[system, user(question)]``; a reply with tool calls gives one
``role="tool"`` message per call (the tool's output), or one ``role="tool"`` message named
``error`` with the parser's errors for malformed calls; the final reply gives ``[]``.

## Rewards

On the final reply: 1.0 if the answer is correct, else 0.0, plus ``tool_reward`` if the episode
made at least one valid tool call (a documented format signal, 0 by default, so the reward is
correctness alone). Earlier replies get 0. An episode cut at ``max_turns`` earns 0.

## Episode end

``terminated`` on a reply without tool calls (the final answer, right or wrong). ``truncated``
after ``max_turns`` replies that all called tools, and when the sandbox fails: then
``info["error"]`` says why and the reward is 0.0 (an infrastructure failure, dropped by the
trainer, never a score). A failure the agent's code causes (exception, timeout, no output) is a
tool result that says so.

## Arguments

- ``kinds``: ``{"mul": w, "chain": w}`` mixing weights, or a list of kinds (equal weights).
- ``min_digits`` / ``max_digits``: digits of each ``mul`` factor (default 3-4).
- ``chain_terms``: ``(min, max)`` terms of a ``chain`` problem (default 5-7, 2-3 digits each).
- ``dataset_size``: problems per kind. ``dataset_seed``: the generator seed. ``split``:
  ``"train"`` or ``"test"``.
- ``few_shot``: add the worked example to the system prompt. ``max_turns``: replies per episode.
- ``tool_reward``: added to the final reward when a valid tool call was made.
- ``timeout_s``: per tool call. ``max_result_chars``: the longest tool result.
- ``pool``, ``pool_size``, ``sandbox``: as in ``CodeTools-v0`` (a ``SandboxPool``, or the
  shared one made with ``pool_size`` containers and a ``SandboxConfig`` or dict).

``reset(options=...)``: ``{"task_id": "mul/17"}`` or ``{"index": i}`` (over the kinds in order;
``num_tasks`` is the total); otherwise drawn from ``np_random``, so a seed fixes the problem.
``info``: ``task_id``, ``answer`` (gold), ``expression`` (the Python expression), ``tools``,
``split``; after each step ``turn``, ``tool_calls`` (valid calls so far), ``tool_errors``
(malformed calls so far), ``valid_tool_call`` (at least one valid call so far); after the final
reply ``correct`` and ``extracted``.

## Version history

- v0: initial version.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from ptgym.agents.toolcalls import format_errors, format_tool_result, parse_tool_calls
from ptgym.env import TextEnv, action_text
from ptgym.sandbox import SandboxError
from ptgym.types import Action

from .answer import extract_answer, verify_answer

KINDS = ("mul", "chain")
TEST_BUCKETS = 8  # one SHA-256 bucket in TEST_BUCKETS holds the test split
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python code and return what it prints (stdout, and stderr if any).",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string", "description": "Python source"}},
                "required": ["code"],
            },
        },
    }
]
SYSTEM_PROMPT = (
    "You solve arithmetic problems with a python tool. Do not compute in your head: call the "
    "tool, read its result, then give the final answer as \\boxed{answer}."
)
FEW_SHOT = """

Example:
user: What is 123 * 456?
assistant: <tool_call>{"name": "python", "arguments": {"code": "print(123 * 456)"}}</tool_call>
tool: 56088
assistant: The answer is \\boxed{56088}."""
NO_OUTPUT = "(no output: print() the result)"


def tool_call_text(code: str) -> str:
    """The Hermes-format reply that calls ``python`` with ``code`` (what the few-shot shows)."""
    return (
        "<tool_call>" + json.dumps({"name": "python", "arguments": {"code": code}}) + "</tool_call>"
    )


def in_test_split(expression: str) -> bool:
    return hashlib.sha256(expression.encode()).digest()[0] % TEST_BUCKETS == 0


def _number(rng: np.random.Generator, lo_digits: int, hi_digits: int) -> int:
    digits = int(rng.integers(lo_digits, hi_digits + 1))
    return int(rng.integers(10 ** (digits - 1), 10**digits))


def make_problem(
    kind: str,
    index: int,
    *,
    seed: int,
    test: bool,
    digits: tuple[int, int] = (3, 4),
    terms: tuple[int, int] = (5, 7),
) -> tuple[str, str]:
    """``(question, expression)`` of problem ``index``: a pure function of its arguments."""
    rng = np.random.default_rng([seed, KINDS.index(kind), index])
    while True:  # rejection into the split: 1 in TEST_BUCKETS draws lands in test
        if kind == "mul":
            expression = f"{_number(rng, *digits)} * {_number(rng, *digits)}"
            question = f"What is {expression}?"
        else:
            n = int(rng.integers(terms[0], terms[1] + 1))
            parts = [str(_number(rng, 2, 3))]
            for _ in range(n - 1):
                parts += [str(rng.choice(["+", "-", "*"])), str(_number(rng, 2, 3))]
            expression = " ".join(parts)
            question = f"Calculate {expression}."
        if in_test_split(expression) == test:
            return question, expression


class MathToolsEnv(TextEnv):
    """Arithmetic with a python tool in the Docker sandbox (module docstring: the contract)."""

    @classmethod
    def prepare(cls, progress: Any = print) -> None:
        """Build the sandbox image if it is missing (run once by ptgym's commands)."""
        from ptgym.sandbox import ensure_image

        ensure_image(progress=progress)

    def __init__(
        self,
        kinds: list[str] | dict[str, float] | None = None,
        min_digits: int = 3,
        max_digits: int = 4,
        chain_terms: tuple[int, int] | list[int] = (5, 7),
        dataset_size: int = 100_000,
        dataset_seed: int = 0,
        split: str = "train",
        few_shot: bool = True,
        max_turns: int = 3,
        tool_reward: float = 0.0,
        timeout_s: float = 5.0,
        max_result_chars: int = 2000,
        pool: Any = None,
        pool_size: int = 4,
        sandbox: Any = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        weights = dict.fromkeys(kinds or KINDS, 1.0)
        if isinstance(kinds, dict):
            weights = {k: float(v) for k, v in kinds.items()}
        unknown = set(weights) - set(KINDS)
        if unknown or not weights or min(weights.values()) <= 0:
            raise ValueError(
                f"kinds must name {' and/or '.join(KINDS)} with positive weights, got {weights}"
            )
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 1 <= min_digits <= max_digits:
            raise ValueError(f"need 1 <= min_digits <= max_digits, got {min_digits}, {max_digits}")
        if len(chain_terms) != 2 or not 2 <= chain_terms[0] <= chain_terms[1]:
            raise ValueError(f"chain_terms must be (min, max) with 2 <= min <= max: {chain_terms}")
        if max_turns < 1 or dataset_size < 1:
            raise ValueError("max_turns and dataset_size must be at least 1")
        self.kinds = list(weights)
        self.weights = np.array(list(weights.values())) / sum(weights.values())  # (K,)
        self.digits = (min_digits, max_digits)
        self.terms = (int(chain_terms[0]), int(chain_terms[1]))
        self.dataset_size = dataset_size
        self.dataset_seed = dataset_seed
        self.split = split
        self.system_prompt = SYSTEM_PROMPT + (FEW_SHOT if few_shot else "")
        self.max_turns = max_turns
        self.tool_reward = tool_reward
        self.timeout_s = timeout_s
        self.max_result_chars = max_result_chars
        self._pool = pool
        self.pool_size = pool_size
        self.sandbox = sandbox
        self.task_id = self.answer = self.expression = ""
        self.turn = self.tool_calls = self.tool_errors = 0
        self._done = True

    @property
    def num_tasks(self) -> int:
        return self.dataset_size * len(self.kinds)

    @property
    def pool(self) -> Any:
        if self._pool is None:
            from ptgym.envs.code_tools import shared_pool
            from ptgym.sandbox import SandboxConfig

            cfg = self.sandbox
            cfg = SandboxConfig(**cfg) if isinstance(cfg, dict) else (cfg or SandboxConfig())
            self._pool = shared_pool(self.pool_size, cfg)
        return self._pool

    def _task_id(self, kind: str, index: int) -> str:
        return f"{kind}/test/{index}" if self.split == "test" else f"{kind}/{index}"

    def _pick(self, options: dict[str, Any] | None) -> tuple[str, int]:
        options = options or {}
        if "task_id" in options:
            task_id = str(options["task_id"])
            kind, _, index = task_id.rpartition("/")
            kind = kind.removesuffix("/test")
            if (
                kind not in self.kinds
                or not index.isdigit()
                or int(index) >= self.dataset_size
                or self._task_id(kind, int(index)) != task_id
            ):
                raise ValueError(
                    f"task_id {task_id!r} is not a {self.split} task of this env; "
                    f"expected e.g. {self._task_id(self.kinds[0], 0)!r}"
                )
            return kind, int(index)
        if "index" in options:
            i = int(options["index"])
            if not 0 <= i < self.num_tasks:
                raise ValueError(f"index must be in [0, {self.num_tasks}), got {i}")
            return self.kinds[i // self.dataset_size], i % self.dataset_size
        kind = self.kinds[int(self.np_random.choice(len(self.kinds), p=self.weights))]
        return kind, int(self.np_random.integers(self.dataset_size))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        super().reset(seed=seed)
        kind, index = self._pick(options)
        question, self.expression = make_problem(
            kind,
            index,
            seed=self.dataset_seed,
            test=self.split == "test",
            digits=self.digits,
            terms=self.terms,
        )
        self.answer = str(eval(self.expression, {"__builtins__": {}}))  # digits and + - * only
        self.task_id = self._task_id(kind, index)
        self.turn = self.tool_calls = self.tool_errors = 0
        self._done = False
        obs = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": question},
        ]
        self.messages = [dict(m) for m in obs]
        info = {
            "task_id": self.task_id,
            "answer": self.answer,
            "expression": self.expression,
            "tools": TOOLS,
            "split": self.split,
        }
        return obs, info

    def step(
        self, action: str | Action
    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        if not self.task_id or self._done:
            raise RuntimeError("MathToolsEnv.step called before reset() or after the episode ended")
        text = action_text(action)
        self.turn += 1
        parsed = parse_tool_calls(text, TOOLS)
        self.messages.append({"role": "assistant", "content": text})
        info: dict[str, Any] = {"task_id": self.task_id, "answer": self.answer}
        obs: list[dict[str, Any]] = []
        reward, terminated = 0.0, False
        if parsed.calls or parsed.errors:
            self.tool_errors += len(parsed.errors)
            if parsed.errors:
                obs.append(format_errors(parsed.errors))
            try:
                for call in parsed.calls:
                    self.tool_calls += 1
                    obs.append(format_tool_result(call, self._python(str(call.arguments["code"]))))
            except SandboxError as e:
                info["error"] = f"sandbox failure: {e}"
                obs = []
        else:
            extracted = extract_answer(text)
            correct = extracted is not None and verify_answer(extracted, self.answer)
            reward = float(correct) + (self.tool_reward if self.tool_calls else 0.0)
            terminated = True
            info.update(correct=correct, extracted=extracted)
        truncated = not terminated and ("error" in info or self.turn >= self.max_turns)
        self._done = terminated or truncated
        self.messages.extend(dict(m) for m in obs)
        info.update(
            turn=self.turn,
            tool_calls=self.tool_calls,
            tool_errors=self.tool_errors,
            valid_tool_call=self.tool_calls > 0,
        )
        if truncated and "error" not in info:
            info["correct"] = False
        return obs, reward, terminated, truncated, info

    def _python(self, code: str) -> str:
        """Run ``code`` in a leased sandbox; what it printed, or why it printed nothing."""
        with self.pool.lease() as sb:
            r = sb.run_python(code, timeout=self.timeout_s)
        out = r.stdout.strip()
        if r.stderr.strip():
            out = (out + "\n" if out else "") + "stderr:\n" + r.stderr.strip()
        if r.timed_out:
            out += f"\n(timed out after {self.timeout_s:g}s; the process was killed)"
        out = out.strip() or NO_OUTPUT
        if len(out) > self.max_result_chars:
            cut = len(out) - self.max_result_chars
            out = out[: self.max_result_chars] + f"\n[... truncated: {cut} more characters]"
        return out
