"""``ptgym/Chat-v0``: chat (single-turn by default) scored by a reward model, a judge, or an ensemble.

## Description

The third kind of environment of InstructGPT-style post-training (Ouyang et al., 2022): a prompt,
one reply, a learned reward. Prompts come from a JSONL file, a ``datasets`` dataset (a saved
folder, ``hf:NAME[:SPLIT]`` from the Hub, or a ``datasets.Dataset`` in Python), or by default the
~200 varied prompts shipped with ptgym (``envs/data/chat_prompts.jsonl``: explanations, advice,
rewriting, short creative tasks, coding questions, ...), so it works offline.

A prompt record is ``{"prompt": "text"}``, ``{"prompt": [messages]}``, ``{"messages": [...]}``
(the messages before the last assistant message are the prompt, so an SFT file works) or one of
the columns ``question``, ``instruction``, ``text``; ``prompt_column`` picks another.

Splits: a prompt belongs to ``test`` when the SHA-1 of its text falls in the first
``test_fraction`` of the hash range, else to ``train``; adding prompts to a file never moves the
old ones between splits.

## Action space

``Text``: the reply, as a ``str`` or a ``ptgym.Action`` (its ``.text`` is scored).

## Observation space

``Messages``: ``reset`` gives the prompt messages (a ``system`` message first when
``system_prompt`` is set); a reply with follow-ups left gives ``[user(next follow-up)]``; the last
step gives ``[]``.

## Rewards

Set by ``reward`` (a spec, parsed by ``ptgym.envs.rewards``): ``rm:PATH`` (a sequence-classification
reward model, the conversation re-rendered with the RM's own tokenizer and chat template),
``judge:MODEL[@URL|@vllm]`` (a generative judge's rubric grade in [0, 1]), or ``mean(...)`` /
``min(...)`` of several. With ``normalize=True`` each source's score is normalised by its running
mean and std before combining. ``info["score/NAME"]`` holds each source's raw score. A scorer that
fails gives ``info["error"]`` and reward 0.0, which the trainer drops, never a made-up score.
Without ``reward`` the env only samples (``ptgym rollout env=chat group=2`` makes pairs to label):
the reward is 0.0 and ``info["scored"]`` is False.

Multi-turn (``followups``): after each reply the env asks the next follow-up (e.g. "Make it
shorter."), and the reward scores the whole conversation after the last reply; earlier turns get 0.

## Episode end

``terminated`` after the reply to the last follow-up (the one reply by default); ``truncated`` is
always False.

## Arguments

- ``prompts``: None (the shipped set), a ``.jsonl`` path, a ``datasets`` folder, ``hf:NAME[:SPLIT]``,
  a ``datasets.Dataset``, or a list of strings / message lists.
- ``prompt_column``: the column holding the prompt (default: the first of ``prompt``,
  ``messages``, ``question``, ``instruction``, ``text`` present).
- ``split``: ``"train"`` or ``"test"``; ``test_fraction``: the share of prompts held out (0.1).
- ``system_prompt``: a system message put before every prompt (None: none).
- ``followups``: user messages asked in turn after each reply (default none: single turn).
- ``reward``: the reward spec (above) or a ``ptgym.envs.rewards.Reward`` object.
- ``normalize``: running mean/std normalisation per source (default True).
- ``device``: where reward models and local judges run (``auto``: CUDA when present).
- ``judge``: options of ``judge:`` sources (``ptgym.envs.judge.Judge``): ``rubric`` (ordered
  choices, worst first), ``max_new_tokens``, ``temperature``, ``chat_template``.

``reset(options=...)``: ``{"index": i}`` or ``{"task_id": "chat/17"}`` picks a prompt (``i`` indexes
the split; ``num_tasks`` is its size). ``info``: ``task_id``, ``tools`` (``[]``), ``split``; after the
step also ``scored`` and ``score/NAME``. The ``Reward`` is shared by every env instance with the
same spec in a process (one set of models, one batching thread, one normaliser per source).

## Version history

- v0: initial version.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from ptgym.env import TextEnv, action_text
from ptgym.types import Action

from .rewards import Reward, ScoreError, shared_reward

DEFAULT_PROMPTS = Path(__file__).parent / "data" / "chat_prompts.jsonl"
COLUMNS = ("prompt", "messages", "question", "instruction", "text")

Messages = list[dict[str, Any]]


def _as_messages(value: Any, column: str, where: str) -> Messages:
    """The prompt messages of one record's column value."""
    if isinstance(value, str):
        if not value.strip():
            raise ValueError(f"{where}: the {column!r} text is empty")
        return [{"role": "user", "content": value}]
    if isinstance(value, list) and value and all(isinstance(m, dict) for m in value):
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in value]
        while messages and messages[-1]["role"] == "assistant":  # an SFT record: drop the answer
            messages.pop()
        if messages and messages[-1]["role"] in ("user", "system"):
            return messages
    raise ValueError(
        f"{where}: {column!r} must be a string or a message list ending with a user message"
    )


def _records(source: Any) -> list[tuple[str, dict]]:
    if isinstance(source, (str, Path)):
        text = str(source)
        if text.startswith("hf:"):
            import datasets

            name, _, split = text[3:].partition(":")
            return _records(datasets.load_dataset(name, split=split or "train"))
        path = Path(text)
        if path.is_dir():
            import datasets

            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = loaded["train"] if "train" in loaded else next(iter(loaded.values()))
            return _records(loaded)
        if not path.is_file():
            raise FileNotFoundError(
                f"chat prompts {path} not found: give a .jsonl file, a saved datasets folder, "
                "or hf:NAME for a Hub dataset"
            )
        rows = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append((f"{path}:{i}", json.loads(line)))
                    except json.JSONDecodeError as exc:
                        raise ValueError(f"{path}:{i}: not a JSON line ({exc.msg})") from None
        return rows
    rows = []
    for i, row in enumerate(source):
        if isinstance(row, (str, list)):
            row = {"prompt": row}
        rows.append((f"row {i}", dict(row)))
    return rows


def load_prompts(source: Any = None, column: str | None = None) -> list[Messages]:
    """Every prompt of ``source`` (see the module docstring) as a message list."""
    rows = _records(DEFAULT_PROMPTS if source is None else source)
    if not rows:
        raise ValueError(f"no prompts in {source or DEFAULT_PROMPTS}")
    out = []
    for where, row in rows:
        col = column or next((c for c in COLUMNS if c in row), None)
        if col is None or col not in row:
            raise ValueError(
                f"{where}: no prompt column ({column or ', '.join(COLUMNS)}); its columns: "
                f"{', '.join(row)}. Pick one with prompt_column=NAME"
            )
        out.append(_as_messages(row[col], col, where))
    return out


def in_test_split(prompt: Messages, test_fraction: float) -> bool:
    digest = hashlib.sha1(json.dumps(prompt, sort_keys=True).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_prompts(
    source: Any, column: str | None, split: str, test_fraction: float
) -> tuple[list[int], list[Messages]]:
    """``(indices, prompts)`` of one split; parsed once per process for a path (or the default
    set), since a run makes one env per episode slot."""
    if source is None or isinstance(source, (str, Path)):
        chosen = _split_cached(
            None if source is None else str(source), column, split, test_fraction
        )
        return [i for i, _ in chosen], [json.loads(p) for _, p in chosen]
    every = load_prompts(source, column)
    picked = [
        (i, p) for i, p in enumerate(every) if in_test_split(p, test_fraction) == (split == "test")
    ]
    return [i for i, _ in picked], [p for _, p in picked]


@lru_cache(maxsize=16)
def _split_cached(
    source: str | None, column: str | None, split: str, test_fraction: float
) -> tuple[tuple[int, str], ...]:
    return tuple(
        (i, json.dumps(p))
        for i, p in enumerate(load_prompts(source, column))
        if in_test_split(p, test_fraction) == (split == "test")
    )


class ChatEnv(TextEnv):
    """One prompt, one reply, a learned reward (see the module docstring for the contract)."""

    def __init__(
        self,
        prompts: Any = None,
        prompt_column: str | None = None,
        split: str = "train",
        test_fraction: float = 0.1,
        system_prompt: str | None = None,
        reward: str | Reward | None = None,
        normalize: bool = True,
        device: str = "auto",
        judge: dict[str, Any] | None = None,
        followups: list[str] | None = None,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if not 0 <= test_fraction < 1:
            raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
        self.ids, self.prompts = split_prompts(prompts, prompt_column, split, test_fraction)
        if not self.prompts:
            raise ValueError(
                f"the {split} split of the chat prompts is empty ({test_fraction=}); "
                "give more prompts or another test_fraction"
            )
        self.split, self.system_prompt = split, system_prompt
        self.followups = [str(f) for f in followups or []]
        if any(not f.strip() for f in self.followups):
            raise ValueError(f"followups must be non-empty messages, got {self.followups!r}")
        self.turn = 0
        if isinstance(reward, str) and reward.strip().lower() in ("", "none"):
            reward = None
        if isinstance(reward, str):
            reward = shared_reward(reward, normalize=normalize, device=device, **(judge or {}))
        self.reward = reward
        self.task_id = ""
        self._done = True

    @property
    def num_tasks(self) -> int:
        return len(self.prompts)

    def _pick(self, options: dict[str, Any] | None) -> int:
        options = options or {}
        if "task_id" in options:
            name, _, index = str(options["task_id"]).partition("/")
            if name != "chat" or not index.isdigit() or int(index) not in self.ids:
                raise ValueError(
                    f"task_id {options['task_id']!r} is not a {self.split} prompt of this env; "
                    f"expected e.g. 'chat/{self.ids[0]}'"
                )
            return self.ids.index(int(index))
        if "index" in options:
            i = int(options["index"])
            if not 0 <= i < self.num_tasks:
                raise ValueError(f"index must be in [0, {self.num_tasks}), got {i}")
            return i
        return int(self.np_random.integers(self.num_tasks))

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Messages, dict[str, Any]]:
        super().reset(seed=seed)
        i = self._pick(options)
        self.task_id = f"chat/{self.ids[i]}"
        obs = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        obs += [dict(m) for m in self.prompts[i]]
        self.messages = [dict(m) for m in obs]
        self._done, self.turn = False, 0
        return obs, {"task_id": self.task_id, "tools": [], "split": self.split}

    def step(self, action: str | Action) -> tuple[Messages, float, bool, bool, dict[str, Any]]:
        if self._done:
            raise RuntimeError("ChatEnv.step called before reset() or after the episode ended")
        self.messages.append({"role": "assistant", "content": action_text(action)})
        self.turn += 1
        if self.turn <= len(self.followups):
            obs = [{"role": "user", "content": self.followups[self.turn - 1]}]
            self.messages.extend(dict(m) for m in obs)
            return obs, 0.0, False, False, {"task_id": self.task_id, "turn": self.turn}
        self._done = True
        info: dict[str, Any] = {"task_id": self.task_id, "scored": self.reward is not None}
        if self.reward is None:
            return [], 0.0, True, False, info
        try:
            scored = self.reward.score(self.messages)
        except ScoreError as exc:
            info["error"] = f"reward: {exc}"
            return [], 0.0, True, False, info
        info.update({f"score/{name}": value for name, value in scored.raw.items()})
        return [], scored.reward, True, False, info
