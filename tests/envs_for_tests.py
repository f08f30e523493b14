"""Scripted envs and backends for the rollout tests: each one shows one behaviour of the collector.

The envs are real ``TextEnv``s (Gymnasium API, message observations) whose behaviour is fixed by
their arguments and the reset seed, so a test knows exactly what every episode must look like:

- ``EchoEnv``: answers every turn with a user message and never ends (turn and token budgets).
- ``SlowEnv``: an ``EchoEnv`` whose ``step`` sleeps, per seed (wall-time budget; generation for
  other episodes goes on meanwhile) and logs when each step ran.
- ``FailingEnv``: raises in ``step`` or reports ``info["error"]`` for chosen seeds.
- ``ResetFailingEnv``: raises in ``reset`` for chosen seeds (or all): a broken env under ``train``.
- ``ThreeTurnEnv``: ends after three replies, and declares so (``max_turns = 3``).
- ``ToolEnv``: parses tool calls with ``parse_tool_calls``; a malformed call gets the parser's
  errors back as a ``tool`` message and the episode goes on.

The backends are thin real wrappers, not mocks: ``RecordingBackend`` passes every call to a real
backend and keeps what it returned; ``ScriptedBackend`` returns fixed texts tokenised by the real
tokenizer, for tests about the collector and the rows rather than about what a model samples.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ptgym.agents.backend import Backend, Completion, SamplingParams
from ptgym.agents.toolcalls import parse_tool_calls
from ptgym.env import TextEnv, action_text
from ptgym.types import Action

Obs = list[dict[str, Any]]
StepResult = tuple[Obs, float, bool, bool, dict[str, Any]]


class EchoEnv(TextEnv):
    """Prompt ``"Task {seed}: say something."``; every reply gets ``user("echo {n}")``, reward 0.1.

    ``terminated`` and ``truncated`` are always False: only the collector's budgets end it.
    """

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.seed, self.turn = seed, 0
        self.messages = [{"role": "user", "content": f"Task {seed}: say something."}]
        return list(self.messages), {"task_id": f"echo-{seed}", "tools": []}

    def step(self, action: str | Action) -> StepResult:
        self.turn += 1
        obs = [{"role": "user", "content": f"echo {self.turn}"}]
        self.messages += [{"role": "assistant", "content": action_text(action)}, *obs]
        return obs, 0.1, False, False, {"turn": self.turn}


class SlowEnv(EchoEnv):
    """``EchoEnv`` whose ``step`` sleeps ``delays.get(seed, 0)`` seconds (only in its first
    ``slow_steps`` steps when given), and whose ``reset`` sleeps ``reset_delays.get(seed, 0)``.

    ``log`` (shared by all instances made with the same list) gets ``(seed, start, end)`` in
    ``time.perf_counter`` seconds for every step.
    """

    def __init__(
        self,
        delays: dict[int, float],
        log: list[tuple[int, float, float]],
        slow_steps: int | None = None,
        reset_delays: dict[int, float] | None = None,
    ):
        super().__init__()
        self.delays, self.log, self.slow_steps = delays, log, slow_steps
        self.reset_delays = reset_delays or {}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        time.sleep(self.reset_delays.get(seed, 0.0))
        return super().reset(seed=seed, options=options)

    def step(self, action: str | Action) -> StepResult:
        start = time.perf_counter()
        if self.slow_steps is None or self.turn < self.slow_steps:
            time.sleep(self.delays.get(self.seed, 0.0))
        result = super().step(action)
        self.log.append((self.seed, start, time.perf_counter()))
        return result


class FailingEnv(EchoEnv):
    """One-turn episodes (reward 1, ``info["correct"]=True``), except for two kinds of seed:
    ``raise_on`` seeds raise ``RuntimeError`` in ``step``; ``error_on`` seeds return
    ``info["error"] = "judge unreachable"`` (an infrastructure failure, not a wrong answer)."""

    def __init__(self, raise_on: Sequence[int] = (), error_on: Sequence[int] = ()):
        super().__init__()
        self.raise_on, self.error_on = set(raise_on), set(error_on)

    def step(self, action: str | Action) -> StepResult:
        if self.seed in self.raise_on:
            raise RuntimeError(f"sandbox for task {self.seed} died")
        info: dict[str, Any] = {"correct": True}
        if self.seed in self.error_on:
            info = {"error": "judge unreachable"}
        return [], 1.0, True, False, info


class ThreeTurnEnv(EchoEnv):
    """Three replies per episode: ``user("echo 1")``, ``user("echo 2")``, then terminated with
    reward 1. Declares its limit as ``max_turns = 3``, as an env author would."""

    max_turns = 3

    def step(self, action: str | Action) -> StepResult:
        obs, _, _, _, info = super().step(action)
        done = self.turn >= self.max_turns
        return ([] if done else obs), float(done), done, False, info


ECHO_TOOL = {
    "type": "function",
    "function": {
        "name": "echo",
        "description": "Return the text.",
        "parameters": {
            "type": "object",
            "properties": {"text": {"type": "string"}},
            "required": ["text"],
        },
    },
}


class ToolEnv(TextEnv):
    """One ``echo`` tool. A reply with tool calls gets one ``tool`` message per call (the echoed
    text) or, when the parser found malformed calls, one ``tool`` message with its errors;
    a reply without calls ends the episode with reward 1."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.messages = [{"role": "user", "content": "Echo 'hi' with the tool, then say done."}]
        return list(self.messages), {"task_id": "tool", "tools": [ECHO_TOOL]}

    def step(self, action: str | Action) -> StepResult:
        parsed = parse_tool_calls(action_text(action), [ECHO_TOOL])
        if parsed.errors:
            obs = [{"role": "tool", "content": "\n".join(parsed.errors)}]
        else:
            obs = [
                {"role": "tool", "content": str(call.arguments["text"]), "tool_call_id": call.id}
                for call in parsed.calls
            ]
        done = not parsed.calls and not parsed.errors
        return obs, float(done), done, False, {"tool_errors": len(parsed.errors)}


@dataclass
class Call:
    """One ``generate`` call: its prompts, what it returned, and when it ran."""

    prompts: list[list[int]]
    completions: list[Completion]
    start: float
    end: float


@dataclass
class RecordingBackend:
    """Passes every call to ``inner`` and records it (thread-safe, in call order)."""

    inner: Backend
    calls: list[Call] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.tokenizer = self.inner.tokenizer
        self._lock = threading.Lock()

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        start = time.perf_counter()
        completions = self.inner.generate(prompts, params, seeds)
        with self._lock:
            self.calls.append(
                Call([list(p) for p in prompts], completions, start, time.perf_counter())
            )
        return completions


class ScriptedBackend:
    """Returns ``replies[k]`` (plus EOS) as the completion of an episode's k-th turn.

    The turn is read off the prompt: the number of ``<|im_start|>assistant`` headers in it, minus
    the one the generation prompt ends with, so any number of episodes can share the backend.
    Ids come from the real tokenizer; the logprob of token i is ``-(i + 1) / 100``, so a test can
    tell them apart. ``max_new_tokens`` cuts a reply (finish reason ``length``) as a real backend
    would.
    """

    def __init__(self, tokenizer: Any, replies: list[str]):
        self.tokenizer = tokenizer
        self.eos = tokenizer.eos_token_id
        self.header = tokenizer("<|im_start|>assistant", add_special_tokens=False)["input_ids"]
        self.replies = [
            tokenizer(r, add_special_tokens=False)["input_ids"] + [self.eos] for r in replies
        ]

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        return [self._complete(list(p), params.max_new_tokens) for p in prompts]

    def _complete(self, prompt: list[int], max_new: int) -> Completion:
        h = len(self.header)
        turn = sum(prompt[i : i + h] == self.header for i in range(len(prompt))) - 1
        ids = self.replies[min(turn, len(self.replies) - 1)][:max_new]
        finish = "stop" if ids[-1] == self.eos else "length"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(ids, -np.arange(1, len(ids) + 1) / 100, finish, text)


# Like Qwen3's template: <think> blocks of assistant turns before the last user message are dropped.
DROP_THINK = (
    "{% set ns = namespace(last_user=-1) %}{% for m in messages %}"
    "{% if m.role == 'user' %}{% set ns.last_user = loop.index0 %}{% endif %}{% endfor %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n"
    "{% if m.role == 'assistant' and loop.index0 < ns.last_user %}"
    "{{ m.content.split('</think>')[-1] }}"
    "{% else %}{{ m.content }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ResetFailingEnv(EchoEnv):
    """``reset`` raises ``RuntimeError`` for the seeds in ``fail_on`` (every seed when None): an
    env whose task server is down. The other seeds play ``EchoEnv``'s never-ending episode."""

    def __init__(self, fail_on: Sequence[int] | None = None):
        super().__init__()
        self.fail_on = None if fail_on is None else set(fail_on)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self.fail_on is None or seed in self.fail_on:
            raise RuntimeError(f"task server unreachable for task {seed}")
        return super().reset(seed=seed, options=options)
