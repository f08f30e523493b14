"""Core data types: messages, tool calls, actions, turns and trajectories (DESIGN §3).

Imports neither torch nor textual: the TUI and the store read these. Token arrays are numpy
arrays (int32 ids, float32 logprobs) and are written to msgpack as packed bytes, not as lists.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IDS_DTYPE = np.int32
LOGPROBS_DTYPE = np.float32


def as_ids(values: Any) -> np.ndarray:
    """Token ids as a 1-D int32 array (accepts lists, tuples, numpy arrays, torch tensors)."""
    if hasattr(values, "detach"):  # a torch tensor, without importing torch
        values = values.detach().cpu().numpy()
    return np.asarray(values if values is not None else [], dtype=IDS_DTYPE).reshape(-1)


def as_logprobs(values: Any) -> np.ndarray:
    """Logprobs as a 1-D float32 array."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values if values is not None else [], dtype=LOGPROBS_DTYPE).reshape(-1)


def pack_ids(*arrays: np.ndarray) -> tuple[int, list[bytes]]:
    """Token-id arrays as little-endian bytes, 2 bytes an id when every id fits in uint16.

    Vocabularies below 65,536 (SmolLM2's 49,152, Llama 2's 32,000) then take half the space;
    larger ones (Qwen, Llama 3) keep 4 bytes. Returns the width and one bytes object per array.
    """
    narrow = all(a.size == 0 or (a.min() >= 0 and a.max() < 1 << 16) for a in arrays)
    dtype = np.dtype("<u2") if narrow else np.dtype("<i4")
    return dtype.itemsize, [a.astype(dtype).tobytes() for a in arrays]


def unpack_ids(data: bytes, width: int) -> np.ndarray:
    """Inverse of ``pack_ids`` for one array: int32 ids (a zero-copy view for 4-byte ids)."""
    if width == 2:
        return np.frombuffer(data, dtype="<u2").astype(IDS_DTYPE)
    return np.frombuffer(data, dtype=IDS_DTYPE)


def new_id() -> str:
    return uuid.uuid4().hex[:16]


@dataclass
class ToolCall:
    """One function call requested by the model (OpenAI function-calling shape)."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ToolCall:
        fn = d.get("function", d)
        return cls(name=fn["name"], arguments=dict(fn.get("arguments") or {}), id=d.get("id", ""))


@dataclass
class Message:
    """A chat message. Envs exchange them as plain dicts (``to_dict``), as chat templates expect."""

    role: str
    content: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    tool_call_id: str | None = None
    name: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.tool_calls:
            d["tool_calls"] = [tc.to_dict() for tc in self.tool_calls]
        if self.tool_call_id is not None:
            d["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            d["name"] = self.name
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Message:
        return cls(
            role=d["role"],
            content=d.get("content") or "",
            tool_calls=[ToolCall.from_dict(tc) for tc in d.get("tool_calls") or []],
            tool_call_id=d.get("tool_call_id"),
            name=d.get("name"),
        )


@dataclass
class Action:
    """The assistant's turn: its text and, when the sampler gives them, the exact tokens."""

    text: str
    token_ids: np.ndarray | None = None
    logprobs: np.ndarray | None = None
    finish_reason: str = "stop"


@dataclass
class Turn:
    """One generate -> env.step exchange.

    ``prompt_ids`` is the full prompt the model saw this turn; ``completion_ids`` and
    ``completion_logprobs`` are exactly what the sampler produced. ``observation`` holds the
    messages the env answered with (their tokens show up in the next turn's prompt, masked out
    of the loss).
    """

    prompt_ids: np.ndarray
    completion_ids: np.ndarray
    completion_logprobs: np.ndarray
    text: str = ""
    observation: list[dict[str, Any]] = field(default_factory=list)
    reward: float = 0.0
    finish_reason: str = "stop"
    gen_seconds: float = 0.0
    env_seconds: float = 0.0

    def __post_init__(self) -> None:
        self.prompt_ids = as_ids(self.prompt_ids)
        self.completion_ids = as_ids(self.completion_ids)
        self.completion_logprobs = as_logprobs(self.completion_logprobs)

    def to_record(self) -> dict[str, Any]:
        width, (prompt, completion) = pack_ids(self.prompt_ids, self.completion_ids)
        return {
            "id_width": width,
            "prompt_ids": prompt,
            "completion_ids": completion,
            "completion_logprobs": self.completion_logprobs.tobytes(),
            "text": self.text,
            "observation": self.observation,
            "reward": float(self.reward),
            "finish_reason": self.finish_reason,
            "gen_seconds": float(self.gen_seconds),
            "env_seconds": float(self.env_seconds),
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Turn:
        width = r.get("id_width", 4)
        return cls(
            prompt_ids=unpack_ids(r["prompt_ids"], width),
            completion_ids=unpack_ids(r["completion_ids"], width),
            completion_logprobs=np.frombuffer(r["completion_logprobs"], dtype=LOGPROBS_DTYPE),
            text=r.get("text", ""),
            observation=r.get("observation", []),
            reward=r.get("reward", 0.0),
            finish_reason=r.get("finish_reason", "stop"),
            gen_seconds=r.get("gen_seconds", 0.0),
            env_seconds=r.get("env_seconds", 0.0),
        )


@dataclass
class Trajectory:
    """A whole episode: the turns, the rewards, and the bookkeeping the trainer groups by.

    ``messages`` is the full conversation (first observation, assistant turns, env replies) for
    readers such as the TUI; training never re-tokenises it (DESIGN §3).
    """

    env_id: str
    task_id: str = ""
    group_id: str = ""
    seed: int | None = None
    turns: list[Turn] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    reward: float = 0.0
    terminated: bool = False
    truncated: bool = False
    error: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    policy_version: int = 0
    id: str = field(default_factory=new_id)

    @property
    def turn_rewards(self) -> list[float]:
        return [t.reward for t in self.turns]

    @property
    def num_completion_tokens(self) -> int:
        return int(sum(len(t.completion_ids) for t in self.turns))

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "env_id": self.env_id,
            "task_id": self.task_id,
            "group_id": self.group_id,
            "seed": self.seed,
            "turns": [t.to_record() for t in self.turns],
            "messages": self.messages,
            "reward": float(self.reward),
            "terminated": self.terminated,
            "truncated": self.truncated,
            "error": self.error,
            "metrics": self.metrics,
            "info": self.info,
            "model": self.model,
            "policy_version": self.policy_version,
        }

    @classmethod
    def from_record(cls, r: dict[str, Any]) -> Trajectory:
        return cls(
            id=r["id"],
            env_id=r["env_id"],
            task_id=r.get("task_id", ""),
            group_id=r.get("group_id", ""),
            seed=r.get("seed"),
            turns=[Turn.from_record(t) for t in r.get("turns", [])],
            messages=r.get("messages", []),
            reward=r.get("reward", 0.0),
            terminated=r.get("terminated", False),
            truncated=r.get("truncated", False),
            error=r.get("error"),
            metrics=r.get("metrics", {}),
            info=r.get("info", {}),
            model=r.get("model", ""),
            policy_version=r.get("policy_version", 0),
        )
