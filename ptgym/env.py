"""The base class for multi-turn text environments (DESIGN §2).

A ``TextEnv`` is a plain ``gymnasium.Env``: ``reset -> (obs, info)`` and
``step -> (obs, reward, terminated, truncated, info)``. An observation is the list of *new*
chat messages (dicts with ``role`` and ``content``) to append to the conversation; an action is
the assistant's turn, as text or as an ``Action`` carrying the sampled tokens (space ``Reply``).
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium
import numpy as np
from gymnasium import spaces

from ptgym.types import Action

ROLES = ("system", "user", "assistant", "tool")
MAX_TEXT = 1 << 20


class Messages(spaces.Space[list]):
    """The space of chat-message lists: each item a dict with a known ``role`` and str ``content``.

    Gymnasium has no space for variable-length lists of dicts; this one is what ``check_env`` and
    wrappers need: ``contains`` validates, ``sample`` gives a valid single user message.
    """

    def __init__(self, seed: int | None = None):
        super().__init__(shape=None, dtype=None, seed=seed)

    def contains(self, x: Any) -> bool:
        return isinstance(x, list) and all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content", ""), str)
            for m in x
        )

    def sample(self, mask: Any = None, probability: Any = None) -> list[dict[str, str]]:
        n = int(self.np_random.integers(1, 20))
        return [{"role": "user", "content": "x" * n}]

    @property
    def is_np_flattenable(self) -> bool:
        return False

    def __repr__(self) -> str:
        return "Messages()"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Messages)


class Reply(spaces.Text):
    """The space of assistant replies: any text up to ``max_length`` characters, or an ``Action``
    carrying such text.

    Gymnasium's ``Text`` admits only its charset (alphanumeric by default), which rejects
    ``"\\boxed{42}"`` and every other real reply; this one admits any Unicode. ``sample`` gives a
    short reply (up to ``SAMPLE_LENGTH`` printable ASCII characters, symbols included), since
    random actions (``check_env``) need no megabyte of noise.
    """

    SAMPLE_LENGTH = 64

    def __init__(self, max_length: int = MAX_TEXT, seed: int | None = None):
        super().__init__(max_length, min_length=0, charset=string.printable, seed=seed)

    def contains(self, x: Any) -> bool:
        text = x.text if isinstance(x, Action) else x
        return isinstance(text, str) and len(text) <= self.max_length

    def sample(self, mask: Any = None, probability: Any = None) -> str:
        n = int(self.np_random.integers(0, min(self.SAMPLE_LENGTH, self.max_length) + 1))
        return "".join(self.np_random.choice(list(string.printable), size=n))

    def __repr__(self) -> str:
        return f"Reply(max_length={self.max_length})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Reply) and other.max_length == self.max_length


def action_text(action: str | Action) -> str:
    """The text of an action given as a str or an ``Action``."""
    if isinstance(action, Action):
        return action.text
    if isinstance(action, str):
        return action
    raise TypeError(
        f"an action must be a str or ptgym.Action, got {type(action).__name__}; "
        "pass the assistant's reply text"
    )


class TextEnv(gymnasium.Env[list, Any]):
    """Base for ptgym envs: declares the spaces and the ``ansi`` render of the conversation.

    Subclasses implement ``reset`` (calling ``super().reset(seed=seed)``) and ``step``, and keep
    the conversation so far in ``self.messages`` so ``render`` can show it.
    """

    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, render_mode: str | None = None):
        self.observation_space = Messages()
        self.action_space = Reply()
        self.render_mode = render_mode
        self.messages: list[dict[str, Any]] = []

    def render(self) -> str | None:
        if self.render_mode != "ansi":
            return None
        return "\n".join(f"[{m['role']}] {m.get('content', '')}" for m in self.messages)

    @property
    def rng(self) -> np.random.Generator:
        return self.np_random
