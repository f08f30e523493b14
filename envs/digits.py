"""``ptgym/Digits-v0``: one-digit modular addition, a target a tiny model can learn in minutes.

## Description

The trainer's learning test needs a task where reward rises within a few dozen steps on a CPU:
"Compute (a + b) mod 10. Answer with a single digit." with ``a, b`` uniform random digits drawn
from ``self.np_random`` (so ``reset(seed=s)`` is deterministic). There are 100 tasks, ids
``"{a}+{b}"``; ``options={"task_id": "3+9"}`` or ``{"index": 10 * a + b}`` picks one.
No reasoning-gym, no math-verify: a step is a few microseconds.

## Action space

``Text``: the reply, as a ``str`` or a ``ptgym.Action``.

## Observation space

``Messages``: ``reset`` gives ``[user(prompt)]`` (plus a system message if ``system_prompt``
is set); a wrong reply with attempts left gives ``[user("Wrong. Try again.")]``; the last step
gives ``[]``.

## Rewards

The reply is correct iff its first non-whitespace character is the digit ``(a + b) % 10``
(so "7", " 7.", "7 because..." are correct; "The answer is 7", "17", "" are not). A model that
answers a uniformly random digit gets reward 0.1 on average. Rewards sit on the last turn:
``attempt_discount ** (attempt - 1)`` if correct, else 0; earlier turns get 0.

## Episode end

``terminated`` when correct or after ``max_attempts`` replies; ``truncated`` is always False.

## Arguments

- ``max_attempts``: replies per episode (default 1).
- ``attempt_discount``: reward factor per extra attempt (default 1.0).
- ``system_prompt``: an optional system message (default None: the prompt alone).
- ``operands``: a and b are drawn from ``range(operands)`` (default 10: 100 tasks). Fewer operands
  give a smaller task set (``operands=3``: 9 tasks) for fast learning tests.
- ``prompt``: the user message, a format string with ``{a}`` and ``{b}`` (default the sentence
  above).
- ``op``: ``"sum"`` (default): the answer is ``(a + b) mod 10``; ``"copy"``: the answer is ``a``
  (``b`` is drawn but unused and the prompt needs only ``{a}``), the easiest conditional target, for
  learning tests of a tiny random model.

``info``: ``task_id``, ``answer`` (the digit as a str), ``tools`` (``[]``); after a step also
``correct``, ``extracted`` (the first non-whitespace character or None), ``attempt``.
``gymnasium.utils.env_checker.check_env`` passes on the unwrapped env.

## Version history

- v0: initial version.
"""

from __future__ import annotations

from typing import Any

from ptgym.env import TextEnv, action_text
from ptgym.types import Action

PROMPT = "Compute ({a} + {b}) mod 10. Answer with a single digit."
TRY_AGAIN = "Wrong. Try again."


class DigitsEnv(TextEnv):
    """(a + b) mod 10 with an exact first-character check (see the module docstring)."""

    num_tasks = 100

    def __init__(
        self,
        max_attempts: int = 1,
        attempt_discount: float = 1.0,
        system_prompt: str | None = None,
        operands: int = 10,
        prompt: str = PROMPT,
        op: str = "sum",
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {max_attempts}")
        if not 1 <= operands <= 10:
            raise ValueError(f"operands must be in [1, 10], got {operands}")
        if op not in ("sum", "copy"):
            raise ValueError(f"op must be 'sum' or 'copy', got {op!r}")
        needed = ["{a}", "{b}"] if op == "sum" else ["{a}"]
        if any(n not in prompt for n in needed):
            raise ValueError(
                f"prompt must contain {' and '.join(needed)} for op={op}, got {prompt!r}"
            )
        self.op = op
        self.operands = operands
        self.prompt = prompt
        self.num_tasks = operands * operands
        self.max_attempts = max_attempts
        self.attempt_discount = attempt_discount
        self.system_prompt = system_prompt
        self.task_id = ""
        self.answer = ""
        self.attempt = 0
        self._done = False

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        if "task_id" in options:
            a_str, _, b_str = str(options["task_id"]).partition("+")
            if not (len(a_str) == len(b_str) == 1 and a_str.isdigit() and b_str.isdigit()):
                raise ValueError(f"task_id must look like '3+9', got {options['task_id']!r}")
            a, b = int(a_str), int(b_str)
        elif "index" in options:
            if not 0 <= int(options["index"]) < self.num_tasks:
                raise ValueError(f"index must be in [0, {self.num_tasks}), got {options['index']}")
            a, b = divmod(int(options["index"]), self.operands)
        else:
            a, b = (int(x) for x in self.np_random.integers(0, self.operands, size=2))
        self.task_id, self.answer, self.attempt = f"{a}+{b}", str((a + b) % 10), 0
        if self.op == "copy":
            self.answer = str(a)
        self._done = False
        obs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        obs.append({"role": "user", "content": self.prompt.format(a=a, b=b)})
        self.messages = [dict(m) for m in obs]
        return obs, {"task_id": self.task_id, "answer": self.answer, "tools": []}

    def step(
        self, action: str | Action
    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        if not self.task_id or self._done:
            raise RuntimeError("DigitsEnv.step called before reset() or after the episode ended")
        text = action_text(action)
        self.attempt += 1
        self.messages.append({"role": "assistant", "content": text})
        stripped = text.lstrip()
        extracted = stripped[0] if stripped else None
        correct = extracted == self.answer
        terminated = correct or self.attempt >= self.max_attempts
        self._done = terminated
        reward = float(correct) * self.attempt_discount ** (self.attempt - 1)
        obs = [] if terminated else [{"role": "user", "content": TRY_AGAIN}]
        self.messages.extend(dict(m) for m in obs)
        info = {
            "task_id": self.task_id,
            "answer": self.answer,
            "correct": correct,
            "extracted": extracted,
            "attempt": self.attempt,
        }
        return obs, reward, terminated, False, info
