"""Cutting a run's record streams back to a checkpoint's step, for ``train resume=`` (DESIGN §8).

Works on the stream format of ``ptgym.store`` (header, length + crc32 frames, ``.idx`` sidecars);
imports neither torch nor textual.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ptgym.store import FRAME, HEADER, MAGIC, OFFSET, _unpack, atomic_write_bytes, scan


def drop_after(run_dir: str | Path, step: int) -> dict[str, int]:
    """Drop every record that steps after ``step`` wrote, from every record stream of a run.

    A resumed run must leave the directory an uninterrupted run would have (DESIGN §8): what steps
    after the checkpoint wrote before a crash is written again after the resume. A record belongs
    to a step by its ``"step"`` (1-based, INTERFACES.md), a trajectory by its ``policy_version``
    (step N's rollout has version N - 1); records with neither (derived indexes) are left to their
    writers, which reconcile them with their stream. Streams are found by their header, anywhere
    in the run except ``checkpoints/``. Streams grow in step order, so what goes is a tail: the
    file is truncated at that record's offset (a crash leaves the stream cut at a record boundary,
    and running this again finishes the job), then its ``.idx`` is rewritten. A stream where a
    kept record follows a dropped one is rewritten whole (temp, fsync, rename). Returns
    ``{path relative to run_dir: records dropped}`` for the streams that lost records.
    """
    run = Path(run_dir)
    dropped: dict[str, int] = {}
    for path in sorted(p for p in run.rglob("*") if p.is_file()):
        rel = path.relative_to(run)
        if rel.parts[0] == "checkpoints" or path.suffix == ".idx" or not _is_stream(path):
            continue
        offsets, _ = scan(path)
        with open(path, "rb") as f:  # one record in memory at a time: streams can be large
            late = [_after(_unpack(_frame_at(f, o)[FRAME.size :]), step) for o in offsets]
        if not any(late):
            continue
        first = late.index(True)
        if all(late[first:]):
            keep = offsets[:first]
            with open(path, "rb+") as f:
                f.truncate(offsets[first])
                os.fsync(f.fileno())
        else:
            with open(path, "rb") as f:
                kept = [_frame_at(f, o) for o, drop in zip(offsets, late, strict=True) if not drop]
            keep = list(np.cumsum([len(HEADER)] + [len(fr) for fr in kept])[:-1])
            atomic_write_bytes(path, HEADER + b"".join(kept))
        idx = path.with_suffix(path.suffix + ".idx")
        atomic_write_bytes(idx, b"".join(OFFSET.pack(int(o)) for o in keep))
        dropped[str(rel)] = sum(late)
    return dropped


def _is_stream(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(len(MAGIC)) == MAGIC


def _frame_at(f: Any, offset: int) -> bytes:
    f.seek(offset)
    frame = f.read(FRAME.size)
    return frame + f.read(FRAME.unpack(frame)[0])


def _after(record: Any, step: int) -> bool:
    """Whether a record was written by a step after ``step``; records without an integer
    ``step`` or ``policy_version`` (an index's columns) belong to no step."""
    if not isinstance(record, dict):
        return False
    if isinstance(record.get("step"), int):
        return record["step"] > step
    if isinstance(record.get("policy_version"), int):
        return record["policy_version"] >= step
    return False
