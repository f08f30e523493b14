"""Pairwise human judgments over a run: pairs, the event log, replay, ranking (DESIGN §10).

The rank screen (``tui/screens/rank.py``) is a thin view over this module; everything that decides
what is on disk lives here, so it is tested without a terminal and imports neither textual nor torch.

- **Pairs.** Two trajectories of the same group (same task, same policy version) that finished
  without an infrastructure error. A pair's key is its two ids sorted, so every annotator refers
  to the same pair whichever side each was shown. Pairs are ordered by a hash of (seed, key): the
  order is the same for every annotator (so their work overlaps and agreement can be measured)
  and stays put when a live run adds groups.
- **The log.** ``RUN/judgments.jsonl``, one JSON event a line, only ever appended (one
  ``os.write`` of a whole line on an ``O_APPEND`` descriptor, then ``fsync``), so a crash loses at
  most the line being written and two annotators may share the file. ``judge`` events record the
  annotator, the pair, which trajectory was shown on the left and right, and the choice
  (``left``/``right``/``tie``/``skip``); ``revert`` events undo an earlier judge event by id.
- **Replay.** The current state is the judge events minus the reverted ones; a later judgment of
  the same pair by the same annotator replaces the earlier one. A line that does not parse (a
  torn write) is skipped and counted.

What the log says about the annotators (agreement, position bias) and its export to the
preference format live in ``ptgym.agreement``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
import uuid
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptgym.runindex import RunIndex

JUDGMENTS_FILE = "judgments.jsonl"
CHOICES = ("left", "right", "tie", "skip")
LOG_VERSION = 1


# --- candidates and pairs ----------------------------------------------------------------------


@dataclass(slots=True)  # not frozen: a frozen __init__ costs ~2x at 10^5 objects
class Candidate:
    """A trajectory that can be ranked: its summary (``ptgym.runindex``), nothing decoded."""

    id: str
    group: str
    task_id: str
    step: int  # 1-based training step (policy_version + 1)
    row: int  # its row in the run's RunIndex
    signature: str  # completion length + answer preview: different signatures, different answers


@dataclass(slots=True)
class Pair:
    key: str  # "idA|idB", ids sorted
    a: Candidate  # the first id of the key
    b: Candidate
    group: str

    @property
    def maybe_identical(self) -> bool:
        return self.a.signature == self.b.signature


def pair_key(id1: str, id2: str) -> str:
    return "|".join(sorted((id1, id2)))


def split_prompt(messages: list[dict[str, Any]]) -> tuple[list[dict], list[dict]]:
    """``(prompt, response)``: the messages before the first assistant message, and the rest."""
    for i, m in enumerate(messages):
        if m.get("role") == "assistant":
            return messages[:i], messages[i:]
    return messages, []


def _hash(*parts: str) -> int:
    return int.from_bytes(hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest())


def load_candidates(index: RunIndex) -> list[Candidate]:
    """Every trajectory of the run that finished without an error and has a turn, in file order.

    Read from the summary index: no trajectory is decoded (a 100,000-trajectory run opens in
    about the time ``RunIndex`` takes).
    """
    rows = index.summaries()
    return [
        Candidate(
            id=rows.id[i],
            group=rows.group[i],
            task_id=rows.task[i],
            step=int(rows.step[i]),
            row=i,
            signature=f"{rows.length[i]}|{rows.answer[i]}",
        )
        for i in range(len(rows))
        if not rows.error[i] and rows.turns[i] > 0
    ]


def _order(seed: int, key: str) -> int:
    """A pair's place in the queue: a fixed pseudo-random number (crc32 is cheap at 10^5 pairs
    and the same on every machine and Python version, unlike ``hash``)."""
    return zlib.crc32(f"{seed}\x1f{key}".encode())


def make_pairs(
    candidates: Iterable[Candidate], *, seed: int = 0, per_group: int | None = None
) -> list[Pair]:
    """Pairs within each group, in a seeded order that does not depend on when groups arrived.

    ``per_group`` keeps at most that many pairs of each group (the first in the seeded order).
    Pairs whose two responses turn out identical are passed over when they come up
    (``RankSession.next_view``): there is nothing to choose.
    """
    groups: dict[str, list[Candidate]] = {}
    for c in candidates:
        groups.setdefault(c.group, []).append(c)
    ordered: list[tuple[int, str, Pair]] = []
    for group, members in groups.items():
        found = []
        for x, y in itertools.combinations(members, 2):
            a, b = (x, y) if x.id < y.id else (y, x)
            key = f"{a.id}|{b.id}"
            found.append((_order(seed, key), key, Pair(key, a, b, group)))
        if per_group is not None:
            found = sorted(found)[:per_group]
        ordered.extend(found)
    ordered.sort(key=lambda t: (t[0], t[1]))
    return [p for _, _, p in ordered]


def sides(pair: Pair, annotator: str, seed: int = 0) -> tuple[Candidate, Candidate]:
    """``(left, right)`` for this annotator: random per pair, the same every time it is shown."""
    if _hash(str(seed), annotator, pair.key) & 1:
        return pair.b, pair.a
    return pair.a, pair.b


# --- the event log -----------------------------------------------------------------------------


@dataclass
class Judgment:
    id: str
    annotator: str
    pair: str
    left: str
    right: str
    choice: str  # left | right | tie | skip
    time: float
    group: str = ""
    task_id: str = ""
    step: int = 0

    @property
    def winner(self) -> str | None:
        return {"left": self.left, "right": self.right}.get(self.choice)

    @property
    def loser(self) -> str | None:
        return {"left": self.right, "right": self.left}.get(self.choice)


@dataclass
class LogState:
    """The replayed log: active judgments in file order, and what replay skipped."""

    judgments: list[Judgment] = field(default_factory=list)
    bad_lines: int = 0

    def by(self, annotator: str) -> list[Judgment]:
        return [j for j in self.judgments if j.annotator == annotator]

    def annotators(self) -> list[str]:
        return sorted({j.annotator for j in self.judgments})


def read_events(path: str | Path) -> tuple[list[dict[str, Any]], int]:
    """Every parseable event of a log, and the number of lines that did not parse."""
    path = Path(path)
    if not path.exists():
        return [], 0
    events, bad = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                event = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(event, dict) and event.get("event") in ("judge", "revert"):
                events.append(event)
            else:
                bad += 1
    return events, bad


def replay(events: Iterable[dict[str, Any]]) -> list[Judgment]:
    """Active judgments in log order: reverted ones removed, a re-judged pair keeps its latest."""
    active: dict[str, Judgment] = {}  # judge-event id -> judgment, insertion = log order
    latest: dict[tuple[str, str], str] = {}  # (annotator, pair) -> judge-event id
    for e in events:
        if e["event"] == "judge":
            j = Judgment(
                id=e["id"],
                annotator=e["annotator"],
                pair=e["pair"],
                left=e["left"],
                right=e["right"],
                choice=e["choice"],
                time=e.get("time", 0.0),
                group=e.get("group", ""),
                task_id=e.get("task_id", ""),
                step=e.get("step", 0),
            )
            old = latest.get((j.annotator, j.pair))
            if old is not None:
                active.pop(old, None)
            active[j.id] = j
            latest[(j.annotator, j.pair)] = j.id
        else:
            reverted = active.pop(e["target"], None)
            if reverted is not None:
                latest.pop((reverted.annotator, reverted.pair), None)
    return list(active.values())


def read_log(run_dir: str | Path) -> LogState:
    events, bad = read_events(Path(run_dir) / JUDGMENTS_FILE)
    return LogState(replay(events), bad)


class JudgmentLog:
    """Appends events to ``RUN/judgments.jsonl``; each ``append`` is on disk when it returns."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / JUDGMENTS_FILE
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        # A torn last line (a crash mid-write) must not swallow the next event: start a new line.
        size = os.fstat(self._fd).st_size
        if size:
            with open(self.path, "rb") as f:
                f.seek(size - 1)
                self._needs_newline = f.read(1) != b"\n"
        else:
            self._needs_newline = False

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        if self._needs_newline:
            line = "\n" + line
            self._needs_newline = False
        os.write(self._fd, line.encode())
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def judge_event(
    annotator: str, pair: Pair, left: Candidate, right: Candidate, choice: str
) -> dict[str, Any]:
    if choice not in CHOICES:
        raise ValueError(f"unknown choice {choice!r}: use one of {', '.join(CHOICES)}")
    return {
        "v": LOG_VERSION,
        "event": "judge",
        "id": uuid.uuid4().hex[:16],
        "annotator": annotator,
        "pair": pair.key,
        "left": left.id,
        "right": right.id,
        "choice": choice,
        "time": time.time(),
        "group": pair.group,
        "task_id": pair.a.task_id,
        "step": pair.a.step,
    }


def revert_event(annotator: str, target: str) -> dict[str, Any]:
    return {
        "v": LOG_VERSION,
        "event": "revert",
        "id": uuid.uuid4().hex[:16],
        "annotator": annotator,
        "target": target,
        "time": time.time(),
    }


# --- a ranking session -------------------------------------------------------------------------


@dataclass
class View:
    """What the rank screen draws for one pair."""

    pair: Pair
    left: Candidate
    right: Candidate
    prompt: list[dict[str, Any]]
    left_response: list[dict[str, Any]]
    right_response: list[dict[str, Any]]


class RankSession:
    """One annotator working through a run's pairs: what to show next, judge, undo.

    Replays the log at start, so a reopened session continues at the first pair this annotator
    has not handled (judged, tied or skipped); an undone pair comes back first.
    """

    def __init__(
        self,
        run_dir: str | Path,
        annotator: str,
        *,
        seed: int = 0,
        per_group: int | None = None,
    ):
        if not annotator:
            raise ValueError("an annotator name is needed (--annotator NAME)")
        self.run_dir = Path(run_dir)
        if not (self.run_dir / "trajectories").is_dir():
            raise FileNotFoundError(
                f"{self.run_dir} has no trajectories/ folder: pass a run directory written by "
                "`ptgym train` or `ptgym rollout`"
            )
        self.annotator = annotator
        self.seed = seed
        self.index = RunIndex(self.run_dir, cache_size=16)
        self.pairs = make_pairs(load_candidates(self.index), seed=seed, per_group=per_group)
        self._keys = {p.key for p in self.pairs}
        state = read_log(self.run_dir)
        self.bad_lines = state.bad_lines
        # Other annotators' progress when this session opened: {name: (done, left)}.
        self.others: dict[str, tuple[int, int]] = {}
        for name in state.annotators():
            if name != annotator:
                handled = {j.pair for j in state.by(name)} & self._keys
                self.others[name] = (len(state.by(name)), len(self._keys) - len(handled))
        self._mine: list[Judgment] = state.by(annotator)  # active, in order: the undo stack
        self._handled = {j.pair for j in self._mine}
        self._identical: set[str] = set()  # pairs found to hold the same response twice
        self._cursor = 0  # every pair before it is handled (or identical)
        self._log = JudgmentLog(self.run_dir)

    @property
    def done(self) -> int:
        return len(self._mine)

    @property
    def left(self) -> int:
        """Pairs this annotator has not handled (identical pairs not yet reached included)."""
        return len(self._keys) - len((self._handled | self._identical) & self._keys)

    def current(self) -> tuple[Pair, Candidate, Candidate] | None:
        """The pair to show now with its sides, or None when every pair is handled."""
        pairs, passed = self.pairs, (self._handled, self._identical)
        while self._cursor < len(pairs) and any(pairs[self._cursor].key in s for s in passed):
            self._cursor += 1
        if self._cursor == len(pairs):
            return None
        pair = pairs[self._cursor]
        return (pair, *sides(pair, self.annotator, self.seed))

    def next_view(self) -> View | None:
        """The current pair with both responses decoded; a pair whose two responses are the
        same is passed over (not recorded: it is checked again, cheaply, next session)."""
        while (shown := self.current()) is not None:
            pair, left, right = shown
            prompt, left_response = split_prompt(self.messages(left))
            _, right_response = split_prompt(self.messages(right))
            if pair.maybe_identical and left_response == right_response:
                self._identical.add(pair.key)
                continue
            return View(pair, left, right, prompt, left_response, right_response)
        return None

    def messages(self, c: Candidate) -> list[dict[str, Any]]:
        return self.index.trajectory(c.row).messages

    def judge(self, choice: str) -> Judgment:
        """Record a choice for the current pair; on disk (fsynced) when this returns."""
        shown = self.current()
        if shown is None:
            raise IndexError("every pair is already ranked")
        event = judge_event(self.annotator, *shown, choice)
        self._log.append(event)
        (j,) = replay([event])
        self._mine.append(j)
        self._handled.add(j.pair)
        return j

    def undo(self) -> Judgment | None:
        """Revert this annotator's latest active judgment (appends a revert event)."""
        if not self._mine:
            return None
        j = self._mine.pop()
        self._log.append(revert_event(self.annotator, j.id))
        self._handled.discard(j.pair)
        self._cursor = 0  # the undone pair sits before the cursor
        return j

    def close(self) -> None:
        self._log.close()
