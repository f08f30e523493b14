"""A run's trajectories for a UI: a small summary row per trajectory, full ones decoded on demand.

Usage (the TUI's rollouts and rank screens build on this)::

    from ptgym.runindex import RunIndex

    index = RunIndex("runs/math")        # reads the summary index (no token arrays decoded)
    rows = index.summaries()             # Summaries: columns over every trajectory, in file order
    len(rows), rows.reward, rows.step    # numpy columns: step, reward, turns, length, kept, ...
    rows.id[i], rows.env[i], rows.error[i], rows.prompt[i]   # list columns (str / None)
    order = rows.order("reward", descending=True)            # row numbers, sorted
    hits = rows.select(reward_min=0.5, env="ptgym/Math-v0", error=False, kept=True,
                       text="boxed", step=3)                  # row numbers that match
    rows.row(i)                          # one Summary (a dataclass) for display
    traj = index.trajectory(i)           # a ptgym.types.Trajectory, decoded now, LRU-cached
    traj = index.trajectory("3f2a...")   # ... or by trajectory id
    notes = index.annotations()          # {id: Annotation(step, kept, drop_reason, advantages)}
    new = index.refresh()                # rows appended since (a live run); summaries() is new

``Summaries`` is a snapshot: ``refresh`` never changes one already handed out. One thread at a
time may ``refresh``; ``trajectory`` is safe from any thread meanwhile. ``kept`` is joined
from ``RUN/trainer.msgpack`` (what the trainer knew; 1 kept, 0 dropped, -1 unknown, e.g. a run
from ``ptgym rollout`` has no such file).

Why a separate index: sorting or filtering 100,000 trajectories must not decode their token arrays.
``TrajectoryStore`` writes, beside each stream ``trajectories/NAME.msgpack``, a stream
``trajectories/NAME.summary`` (``ptgym.summaryfile``: same record format, one record per
``extend`` call holding one row per trajectory, row k describing record k). It is derived data:
the writer checks it against the stream when it opens one and cuts or completes it (after a crash
or a resume's ``drop_after``); a run written before the index existed is summarised by decoding
its stream once, in memory.
Readers trust the summary as it stands: after a crash between a batch of trajectories and its
summary record that batch is listed once a writer reopens the stream, and after a resume cut the
stream, rows past the cut raise ``IndexError`` from ``trajectory`` until then.
Imports neither torch nor textual.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import threading
import zlib
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ptgym.notes import NOTES_FILE
from ptgym.store import FRAME, RecordFollower, RecordReader, _unpack
from ptgym.summaryfile import (
    COLUMNS,
    NUMERIC,
    chunk_columns,
    pack_rows,
    record_summary_row,
    summary_path,
)
from ptgym.types import Trajectory

TRAINER_FILE = NOTES_FILE  # what the trainer knew per trajectory (ptgym.notes owns it)


@dataclass(frozen=True)
class Summary:
    """One trajectory's row, for display."""

    index: int
    id: str
    step: int
    env: str
    task: str
    group: str
    reward: float
    turns: int
    length: int
    error: str | None
    terminated: bool
    truncated: bool
    prompt: str
    answer: str
    kept: bool | None


@dataclass
class Summaries:
    """Columns over every trajectory of a run (row i = the i-th trajectory in file order)."""

    id: list[str] = field(default_factory=list)
    step: np.ndarray = field(default_factory=lambda: np.zeros(0, "<i8"))
    env: list[str] = field(default_factory=list)
    task: list[str] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    reward: np.ndarray = field(default_factory=lambda: np.zeros(0, "<f8"))
    turns: np.ndarray = field(default_factory=lambda: np.zeros(0, "<i4"))
    length: np.ndarray = field(default_factory=lambda: np.zeros(0, "<i8"))
    error: list[str | None] = field(default_factory=list)
    terminated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    truncated: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    prompt: list[str] = field(default_factory=list)
    answer: list[str] = field(default_factory=list)
    kept: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))  # 1, 0, -1 unknown
    _search: list[str] | None = field(default=None, repr=False)

    NUMERIC = ("step", "reward", "turns", "length", "terminated", "truncated", "kept")

    def __len__(self) -> int:
        return len(self.id)

    def row(self, i: int) -> Summary:
        kept = int(self.kept[i])
        return Summary(
            index=i,
            id=self.id[i],
            step=int(self.step[i]),
            env=self.env[i],
            task=self.task[i],
            group=self.group[i],
            reward=float(self.reward[i]),
            turns=int(self.turns[i]),
            length=int(self.length[i]),
            error=self.error[i],
            terminated=bool(self.terminated[i]),
            truncated=bool(self.truncated[i]),
            prompt=self.prompt[i],
            answer=self.answer[i],
            kept=None if kept < 0 else bool(kept),
        )

    def order(self, key: str, *, descending: bool = False) -> np.ndarray:
        """Row numbers sorted by a column (stable: ties keep file order)."""
        if key in self.NUMERIC:
            values = getattr(self, key)
            idx = np.argsort(-values if descending else values, kind="stable")
            return idx.astype(np.int64)
        if key not in COLUMNS:
            raise KeyError(f"cannot sort by {key!r}: use one of {', '.join(COLUMNS)}")
        col = [v or "" for v in getattr(self, key)]
        return np.array(sorted(range(len(col)), key=col.__getitem__, reverse=descending), np.int64)

    def select(
        self,
        *,
        reward_min: float | None = None,
        reward_max: float | None = None,
        env: str | None = None,
        error: bool | None = None,
        kept: bool | None = None,
        step: int | None = None,
        text: str | None = None,
    ) -> np.ndarray:
        """Row numbers (in file order) matching every filter given; ``text`` is a case-insensitive
        substring of the id, task, group, prompt, answer or error."""
        mask = np.ones(len(self), bool)
        if reward_min is not None:
            mask &= self.reward >= reward_min
        if reward_max is not None:
            mask &= self.reward <= reward_max
        if step is not None:
            mask &= self.step == step
        if kept is not None:
            mask &= self.kept == int(kept)
        if env is not None:
            mask &= np.array([e == env for e in self.env], bool)
        if error is not None:
            mask &= np.fromiter(((e is not None) == error for e in self.error), bool, len(self))
        if text:
            needle = text.lower()
            hay = self._haystack()
            mask &= np.fromiter((needle in h for h in hay), bool, len(hay))
        return np.flatnonzero(mask)

    def extended(self, chunks: list[dict[str, Any]], kept: np.ndarray) -> Summaries:
        """A new snapshot with the rows of ``chunks`` (see ``chunk_columns``) appended; ``kept`` covers
        the whole new snapshot."""
        out = self._columns()
        if chunks:
            for name in COLUMNS:
                parts = [c[name] for c in chunks]
                if name in NUMERIC:
                    out[name] = np.concatenate([out[name], *parts]).astype(out[name].dtype)
                else:
                    out[name] = out[name] + list(itertools.chain.from_iterable(parts))
        out["kept"] = kept
        return Summaries(**out)

    def _haystack(self) -> list[str]:
        """Lower-cased searchable text per row, built on the first text search of a snapshot."""
        if self._search is None:
            fields_ = (self.id, self.task, self.group, self.prompt, self.answer, self.error)
            self._search = [
                "\t".join(v or "" for v in values).lower() for values in zip(*fields_, strict=True)
            ]
        return self._search

    def _columns(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in (*COLUMNS, "kept")}


@dataclass(frozen=True)
class Annotation:
    """What the trainer knew about one trajectory (``RUN/trainer.msgpack``)."""

    step: int
    kept: bool
    drop_reason: str | None
    advantages: list[float]  # one per turn: the mean advantage over that turn's sampled tokens


class _Stream:
    """One trajectory stream: its summary rows (followed) and random access to its records."""

    def __init__(self, path: Path):
        self.path = path
        self.summary = summary_path(path)
        # A run written before summaries existed: summarise by decoding the stream itself.
        self.decode = not self.summary.exists()
        self.follower = RecordFollower(path if self.decode else self.summary)
        self.offsets = np.zeros(0, np.uint64)
        self.rows = 0  # rows read so far

    def poll(self) -> tuple[list[dict[str, Any]], bool]:
        """New chunks of columns (see ``chunk_columns``), and whether the stream restarted."""
        if self.decode and self.follower.count == 0 and self.summary.exists():
            # Opened between a new stream's creation and its summary's: follow the summary.
            self.decode = False
            self.follower = RecordFollower(self.summary)
        got = self.follower.poll()
        if self.decode:
            rows = [record_summary_row(r) for r in got.records]
            return ([chunk_columns(pack_rows(rows))] if rows else []), got.restarted
        return [chunk_columns(r) for r in got.records], got.restarted

    def record(self, k: int) -> dict[str, Any]:
        if k >= len(self.offsets):
            idx = self.path.with_suffix(self.path.suffix + ".idx")
            self.offsets = np.fromfile(idx, dtype="<u8") if idx.exists() else self.offsets
        if k < len(self.offsets):
            with open(self.path, "rb") as f:
                f.seek(int(self.offsets[k]))
                head = f.read(FRAME.size)
                if len(head) == FRAME.size:
                    length, crc = FRAME.unpack(head)
                    payload = f.read(length)
                    if len(payload) == length and zlib.crc32(payload) == crc:
                        return _unpack(payload)
        # No index yet, or one that disagrees with the stream: the reader scans.
        reader = RecordReader(self.path)
        self.offsets = np.asarray(reader.offsets, dtype=np.uint64)
        if k >= len(reader):
            raise IndexError(
                f"{self.path} holds {len(reader)} records, not {k + 1}: the stream was cut under "
                "its summary (a resume's drop_after); the next writer repairs the summary"
            )
        return reader[k]


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Building 100,000 rows makes many small objects at once; the cyclic collector would walk
    them all repeatedly (none of them forms a cycle), tripling the time to open a run."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class RunIndex:
    """Every trajectory of a run directory, summarised; see the module docstring for usage."""

    def __init__(self, run_dir: str | Path, *, cache_size: int = 256):
        self.run_dir = Path(run_dir)
        self.cache_size = cache_size
        self._cache: OrderedDict[int, Trajectory] = OrderedDict()
        self._lock = threading.Lock()  # guards the cache and the streams' file reads
        self._notes = RecordFollower(self.run_dir / TRAINER_FILE)
        self._annotations: dict[str, Annotation] = {}
        self.refresh()

    def _reset(self) -> None:
        self._streams: dict[Path, _Stream] = {}
        self._stream_list: list[_Stream] = []
        # row -> (stream number, record number in that stream)
        self._stream_of = np.zeros(0, np.int32)
        self._record_of = np.zeros(0, np.int64)
        self._by_id: dict[str, int] | None = None
        self._summaries = Summaries()
        with self._lock:
            self._cache.clear()

    def refresh(self) -> int:
        """Read what was appended since the last call; returns the number of new rows."""
        if not hasattr(self, "_streams"):
            self._reset()
        new_notes = self._poll_notes()
        chunks: list[dict[str, Any]] = []
        paths = sorted((self.run_dir / "trajectories").glob("*.msgpack"))
        with _gc_paused():
            for path in paths:
                if path not in self._streams:
                    self._streams[path] = _Stream(path)
                    self._stream_list.append(self._streams[path])
                stream = self._streams[path]
                got, restarted = stream.poll()
                if restarted:  # a stream was cut (resume) or rewritten: read the run again
                    self._reset()
                    return self.refresh()
                n = sum(len(c["id"]) for c in got)
                number = self._stream_list.index(stream)
                self._stream_of = np.concatenate([self._stream_of, np.full(n, number, np.int32)])
                self._record_of = np.concatenate(
                    [self._record_of, np.arange(stream.rows, stream.rows + n, dtype=np.int64)]
                )
                stream.rows += n
                chunks.extend(got)
            if chunks or new_notes:
                if chunks:
                    self._by_id = None
                grown = self._summaries.extended(chunks, np.zeros(0, np.int8))
                grown.kept = self._kept_column(grown.id)
                self._summaries = grown
        return sum(len(c["id"]) for c in chunks)

    def _poll_notes(self) -> bool:
        got = self._notes.poll()
        if got.restarted:
            self._annotations = {}
        for r in got.records:
            self._annotations[r["id"]] = Annotation(
                step=int(r.get("step", 0)),
                kept=bool(r.get("kept", False)),
                drop_reason=r.get("drop_reason"),
                advantages=[float(a) for a in r.get("advantages", [])],
            )
        return bool(got.records) or got.restarted

    def _kept_column(self, ids: list[str]) -> np.ndarray:
        notes = self._annotations
        if not notes:
            return np.full(len(ids), -1, np.int8)
        return np.array([int(notes[i].kept) if i in notes else -1 for i in ids], np.int8)

    def __len__(self) -> int:
        return len(self._summaries)

    def summaries(self) -> Summaries:
        return self._summaries

    def annotations(self) -> dict[str, Annotation]:
        """``{trajectory id: Annotation}``; empty when the run has no ``trainer.msgpack``."""
        return self._annotations

    def row_of(self, trajectory_id: str) -> int:
        if self._by_id is None:
            self._by_id = {tid: i for i, tid in enumerate(self._summaries.id)}
        try:
            return self._by_id[trajectory_id]
        except KeyError:
            raise KeyError(f"no trajectory with id {trajectory_id!r} in {self.run_dir}") from None

    def trajectory(self, key: int | str) -> Trajectory:
        """Trajectory by row number or id, decoded from its stream (the last few are cached)."""
        i = self.row_of(key) if isinstance(key, str) else int(key)
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range: {self.run_dir} has {len(self)} rows")
        with self._lock:  # a UI decodes in worker threads while another refreshes
            if i in self._cache:
                self._cache.move_to_end(i)
                return self._cache[i]
            stream = self._stream_list[int(self._stream_of[i])]
            traj = Trajectory.from_record(stream.record(int(self._record_of[i])))
            self._cache[i] = traj
            if len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
            return traj
