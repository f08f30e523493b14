"""Real run directories for the TUI and judgment tests, written through the store.

``make_run`` writes what ``ptgym train`` leaves behind that the rollouts and rank screens read:
``config.yaml`` naming the model, ``trajectories/rollouts.msgpack`` (groups of trajectories with
markdown, code, tool calls, env feedback and token arrays) and ``trainer.msgpack`` (kept/dropped,
per-turn advantages). With ``tokenize=True`` token ids come from the tiny model's real tokenizer
(SmolLM2's ``tokenizer.json``, read with the ``tokenizers`` library), so decoded token text is real.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from ptgym.store import RecordWriter, TrajectoryStore
from ptgym.types import Trajectory, Turn


def tool_call(code: str) -> dict:
    return {
        "id": "call_0",
        "type": "function",
        "function": {"name": "python", "arguments": {"code": code}},
    }


@functools.cache
def _tokenizer():
    from tokenizers import Tokenizer

    from ptgym.agents.models import cache_dir, pull_model

    pull_model("tiny", progress=lambda _: None)
    return Tokenizer.from_file(str(cache_dir() / "tiny" / "tokenizer.json"))


def _ids(text: str, tokenize: bool, rng: np.random.Generator) -> np.ndarray:
    if tokenize:
        return np.array(_tokenizer().encode(text, add_special_tokens=False).ids, dtype=np.int32)
    return rng.integers(0, 1000, size=max(1, len(text) // 4), dtype=np.int32)


def trajectory(
    step: int, group: int, member: int, *, tokenize: bool = False, error: str | None = None
) -> Trajectory:
    """Member ``member`` of group ``group`` at ``step``: two turns, the first calls a tool."""
    rng = np.random.default_rng(step * 1000 + group * 10 + member)
    a, b = 10 + group, step + group  # one prompt per group
    prompt = [
        {"role": "system", "content": "You are a careful calculator."},
        {"role": "user", "content": f"What is **{a} + {b}**? Show the code."},
    ]
    answer = a + b + (member % 2)  # odd members answer wrong
    first = {
        "role": "assistant",
        "content": f"Let me compute it.\n\n```python\nprint({a} + {b})\n```",
        "tool_calls": [tool_call(f"print({a} + {b})")],
    }
    tool = {"role": "tool", "tool_call_id": "call_0", "content": f"{a + b}\n"}
    second = {
        "role": "assistant",
        "content": f"The answer is \\boxed{{{answer}}} (member {member}).",
    }
    correct = answer == a + b
    turns = []
    context = prompt[0]["content"] + prompt[1]["content"]
    prompt_ids = _ids(context, tokenize, rng)
    for k, (msg, obs) in enumerate(((first, [tool]), (second, []))):
        completion = _ids(msg["content"], tokenize, rng)
        turns.append(
            Turn(
                prompt_ids=prompt_ids,
                completion_ids=completion,
                completion_logprobs=-rng.random(len(completion)).astype(np.float32) * 3,
                text=msg["content"],
                observation=obs,
                reward=float(correct) if k == 1 else 0.0,
            )
        )
        obs_ids = _ids(obs[0]["content"], tokenize, rng) if obs else np.zeros(0, np.int32)
        prompt_ids = np.concatenate([prompt_ids, completion, obs_ids])
    return Trajectory(
        env_id="ptgym/Math-v0",
        task_id=f"task-{group}",
        group_id=f"{step}/{group}",
        seed=group,
        turns=turns if error is None else turns[:1],
        messages=prompt + ([first, tool, second] if error is None else [first]),
        reward=float(correct),
        terminated=error is None,
        truncated=error is not None,
        error=error,
        metrics={"correct": correct, "extracted": str(answer), "answer": str(a + b)},
        info={"end": "env" if error is None else "error", "group_member": member},
        model="tiny",
        policy_version=step - 1,
        id=f"s{step}g{group}m{member}",
    )


def make_run(
    run_dir: Path,
    *,
    steps: int = 2,
    groups: int = 2,
    members: int = 3,
    tokenize: bool = False,
    errors: tuple[str, ...] = (),
    trainer: bool = True,
) -> list[Trajectory]:
    """Write a run directory; ``errors`` names trajectory ids that end in an infrastructure error."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text("model:\n  name: tiny\nenv:\n  name: math\n")
    store = TrajectoryStore(run_dir)
    written = []
    with RecordWriter(run_dir / "trainer.msgpack") as log:
        for step in range(1, steps + 1):
            for g in range(groups):
                for m in range(members):
                    tid = f"s{step}g{g}m{m}"
                    t = trajectory(
                        step,
                        g,
                        m,
                        tokenize=tokenize,
                        error="sandbox died" if tid in errors else None,
                    )
                    store.append(t)
                    written.append(t)
                    if trainer:
                        adv = (t.reward - 0.5) * 2
                        log.append(
                            {
                                "step": step,
                                "id": t.id,
                                "kept": t.error is None,
                                "drop_reason": "error" if t.error else None,
                                "advantages": [adv] * len(t.turns),
                            }
                        )
    store.close()
    if not trainer:
        (run_dir / "trainer.msgpack").unlink()
        (run_dir / "trainer.msgpack.idx").unlink(missing_ok=True)
    return written


def events(run_dir: Path) -> list[dict]:
    path = run_dir / "judgments.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]
