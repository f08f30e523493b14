"""The summary stream beside each trajectory stream: its rows, its record layout, its writer.

``TrajectoryStore`` writes, beside each stream ``trajectories/NAME.msgpack``, a stream
``trajectories/NAME.summary`` (same record format, ``ptgym.store``): one record per ``extend``
call holding one row per trajectory (``COLUMNS``), row k describing record k, numeric columns as
packed arrays. ``SummaryWriter`` checks it against the stream when it opens one and cuts or
completes it (after a crash or a resume's ``drop_after``). ``ptgym.runindex`` reads it.
Imports neither torch nor textual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ptgym.store import CorruptStreamError, RecordFollower, RecordReader, RecordWriter
from ptgym.types import Trajectory

SUMMARY_SUFFIX = ".summary"
COLUMNS = (
    "id",
    "step",
    "env",
    "task",
    "group",
    "reward",
    "turns",
    "length",
    "error",
    "terminated",
    "truncated",
    "prompt",
    "answer",
)
PREVIEW = 80  # characters of the prompt and the answer kept for the list and text search


def summary_path(stream: Path) -> Path:
    return stream.with_suffix(SUMMARY_SUFFIX)


def _preview(text: Any) -> str:
    return " ".join(str(text or "").split())[:PREVIEW]


def _previews(messages: list[dict[str, Any]]) -> tuple[str, str]:
    prompt = next((m.get("content") for m in messages if m.get("role") == "user"), "")
    answer = next(
        (m.get("content") for m in reversed(messages) if m.get("role") == "assistant"), ""
    )
    return _preview(prompt), _preview(answer)


def summary_row(t: Trajectory) -> list[Any]:
    """The summary row of a trajectory, in ``COLUMNS`` order. ``step`` is 1-based: the step whose
    rollout produced it (``policy_version + 1``, as in metrics.msgpack)."""
    prompt, answer = _previews(t.messages)
    return [
        t.id,
        t.policy_version + 1,
        t.env_id,
        t.task_id,
        t.group_id,
        float(t.reward),
        len(t.turns),
        t.num_completion_tokens,
        t.error,
        bool(t.terminated),
        bool(t.truncated),
        prompt,
        answer,
    ]


def record_summary_row(r: dict[str, Any]) -> list[Any]:
    """``summary_row`` of a stored record, without decoding its token arrays."""
    turns = r.get("turns", [])
    length = sum(len(turn["completion_ids"]) // turn.get("id_width", 4) for turn in turns)
    prompt, answer = _previews(r.get("messages", []))
    return [
        r["id"],
        r.get("policy_version", 0) + 1,
        r["env_id"],
        r.get("task_id", ""),
        r.get("group_id", ""),
        float(r.get("reward", 0.0)),
        len(turns),
        length,
        r.get("error"),
        bool(r.get("terminated", False)),
        bool(r.get("truncated", False)),
        prompt,
        answer,
    ]


# Numeric columns travel as packed little-endian arrays, text columns as lists: reading 100,000
# rows then makes a handful of numpy arrays and 7 lists per chunk, not 100,000 row objects.
NUMERIC = {
    "step": "<i8",
    "reward": "<f8",
    "turns": "<i4",
    "length": "<i8",
    "terminated": "?",
    "truncated": "?",
}
TEXT = tuple(c for c in COLUMNS if c not in NUMERIC)


def pack_rows(rows: list[list[Any]]) -> dict[str, Any]:
    """A summary record: ``rows`` (in ``COLUMNS`` order) stored column by column."""
    cols = dict(zip(COLUMNS, zip(*rows, strict=True), strict=True)) if rows else {}
    out: dict[str, Any] = {"n": len(rows)}
    for name in COLUMNS:
        values = cols.get(name, ())
        if name in NUMERIC:
            out[name] = np.asarray(values, dtype=NUMERIC[name]).tobytes()
        else:
            out[name] = list(values)
    return out


def chunk_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The columns of one summary record (numeric ones as numpy arrays)."""
    if "rows" in record:  # the first, row-wise layout of this index
        where = {c: i for i, c in enumerate(record.get("cols", COLUMNS))}
        rows = [[r[where[c]] if c in where else None for c in COLUMNS] for r in record["rows"]]
        record = pack_rows(rows)
    n = record["n"]
    out: dict[str, Any] = {}
    for name in COLUMNS:
        if name in NUMERIC:
            data = record.get(name)
            arr = np.frombuffer(data, NUMERIC[name]) if data is not None else None
            out[name] = arr if arr is not None and len(arr) == n else np.zeros(n, NUMERIC[name])
        else:
            values = record.get(name)
            out[name] = values if values is not None and len(values) == n else [None] * n
    return out


def _chunk_rows(chunk: dict[str, Any]) -> list[list[Any]]:
    cols = [chunk[c].tolist() if c in NUMERIC else chunk[c] for c in COLUMNS]
    return [list(r) for r in zip(*cols, strict=True)]


def read_summary_rows(path: Path) -> list[list[Any]]:
    """Every row of a summary stream, in ``COLUMNS`` order (for checks and repairs)."""
    rows: list[list[Any]] = []
    for record in RecordFollower(path).poll().records:
        rows.extend(_chunk_rows(chunk_columns(record)))
    return rows


class SummaryWriter:
    """Appends summary rows beside a stream; opened by ``TrajectoryStore`` with its writer."""

    CHUNK = 4096

    def __init__(self, stream: RecordWriter):
        self.path = summary_path(stream.path)
        self._reconcile(stream.path, stream.count)
        self._w = RecordWriter(self.path)

    def _reconcile(self, stream_path: Path, count: int) -> None:
        """Make row k describe stream record k for every record the stream holds now."""
        try:
            rows = read_summary_rows(self.path) if self.path.exists() else []
        except CorruptStreamError:
            rows = []
        reader = RecordReader(stream_path) if count else None
        if len(rows) == count and (not count or rows[-1][0] == reader[count - 1]["id"]):
            return
        keep = min(len(rows), count)
        if keep and rows[keep - 1][0] != reader[keep - 1]["id"]:
            keep = 0  # the stream was rewritten under the index: rebuild it whole
        rows = rows[:keep] + [record_summary_row(reader[k]) for k in range(keep, count)]
        for p in (self.path, self.path.with_suffix(self.path.suffix + ".idx")):
            p.unlink(missing_ok=True)
        with RecordWriter(self.path) as w:
            for i in range(0, len(rows), self.CHUNK):
                w.append(pack_rows(rows[i : i + self.CHUNK]))

    def extend(self, trajectories: list[Trajectory]) -> None:
        if trajectories:
            self._w.append(pack_rows([summary_row(t) for t in trajectories]))

    def close(self) -> None:
        self._w.close()
