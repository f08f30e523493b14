"""Append-only record streams and the run directory (DESIGN §8).

A stream file is a 8-byte header (``b"PTGREC"`` + version u16) followed by records, each
``u32 length | u32 crc32 | msgpack payload`` (little-endian). Writers only append and flush each
record, so after a crash (or Ctrl-C, or a full disk) every complete record is still readable; a torn
tail is reported by the reader (``reader.torn``) and cut off by the next writer before it appends.
A sidecar ``.idx`` (u64 offsets) gives random access; it is derived data, rebuilt by a scan when it
is missing or disagrees with the stream.

Imports neither torch nor textual: the TUI reads runs through this module.
"""

from __future__ import annotations

import json
import logging
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from ptgym.types import Trajectory

MAGIC = b"PTGREC"
VERSION = 1
HEADER = MAGIC + struct.pack("<H", VERSION)
FRAME = struct.Struct("<II")  # payload length, crc32 of payload
OFFSET = struct.Struct("<Q")
MAX_RECORD = 1 << 30
log = logging.getLogger(__name__)


class CorruptStreamError(ValueError):
    """A stream whose header or a record in its middle is damaged (not just a torn tail)."""


@dataclass
class TornTail:
    """What a reader found after the last complete record."""

    offset: int  # where the incomplete record starts
    nbytes: int  # bytes after that offset
    reason: str

    def __str__(self) -> str:
        return f"torn tail at byte {self.offset}: {self.nbytes} bytes ({self.reason})"


def _pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True, default=_default)


def _default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    raise TypeError(f"cannot store a {type(obj).__name__} in a record; convert it to a plain value")


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=False)


def scan(path: Path) -> tuple[list[int], TornTail | None]:
    """Offsets of every complete record, and the torn tail if the file ends mid-record."""
    offsets: list[int] = []
    with open(path, "rb") as f:
        head = f.read(len(HEADER))
        if len(head) < len(HEADER) and HEADER.startswith(head):
            torn = TornTail(0, len(head), "incomplete header") if head else None
            return offsets, torn
        if not head.startswith(MAGIC):
            raise CorruptStreamError(f"{path} is not a ptgym record stream (bad magic bytes)")
        pos = len(HEADER)
        size = os.fstat(f.fileno()).st_size
        while pos < size:
            frame = f.read(FRAME.size)
            if len(frame) < FRAME.size:
                return offsets, TornTail(pos, size - pos, "incomplete record header")
            length, crc = FRAME.unpack(frame)
            if length > MAX_RECORD or pos + FRAME.size + length > size:
                return offsets, TornTail(pos, size - pos, "incomplete record")
            payload = f.read(length)
            if zlib.crc32(payload) != crc:
                # A bad checksum on the last record is a torn write; before the end, corruption.
                if pos + FRAME.size + length == size:
                    return offsets, TornTail(pos, size - pos, "checksum mismatch in last record")
                raise CorruptStreamError(
                    f"{path}: record {len(offsets)} (byte {pos}) fails its checksum: the file is "
                    f"damaged in the middle, not just torn at the end (the {len(offsets)} records "
                    "before it are intact)."
                )
            offsets.append(pos)
            pos += FRAME.size + length
    return offsets, None


class RecordWriter:
    """Appends msgpack records to a stream; thread-safe; each ``append`` reaches the OS at once."""

    def __init__(self, path: str | Path, *, fsync_every: int = 0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._fsync_every = fsync_every
        self._since_sync = 0
        offsets: list[int] = []
        if self.path.exists() and self.path.stat().st_size > 0:
            offsets, torn = scan(self.path)
            if torn is not None:
                # Cut the torn tail so new records follow the last complete one.
                good = offsets[-1] + self._record_size(offsets[-1]) if offsets else len(HEADER)
                if not offsets and torn.reason == "incomplete header":
                    good = 0
                os.truncate(self.path, good)
        self._f = open(self.path, "ab")  # noqa: SIM115 - held open for the writer's lifetime
        if self._f.tell() == 0:
            self._f.write(HEADER)
            self._f.flush()
        self._idx = _IndexFile(self.path.with_suffix(self.path.suffix + ".idx"), offsets)
        self.count = len(offsets)

    def _record_size(self, offset: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(offset)
            length, _ = FRAME.unpack(f.read(FRAME.size))
        return FRAME.size + length

    def append(self, obj: Any) -> int:
        """Write one record; returns its index in the stream."""
        payload = _pack(obj)
        frame = FRAME.pack(len(payload), zlib.crc32(payload)) + payload
        with self._lock:
            offset = self._f.tell()
            self._f.write(frame)
            self._f.flush()
            self._idx.append(offset)
            self._since_sync += 1
            if self._fsync_every and self._since_sync >= self._fsync_every:
                self.sync()
            self.count += 1
            return self.count - 1

    def sync(self) -> None:
        os.fsync(self._f.fileno())
        self._since_sync = 0

    def close(self) -> None:
        with self._lock:
            if not self._f.closed:
                self._f.flush()
                os.fsync(self._f.fileno())
                self._f.close()
                self._idx.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _IndexFile:
    """The ``.idx`` sidecar: u64 offsets, rewritten whole when it disagrees with the stream."""

    def __init__(self, path: Path, offsets: list[int]):
        self.path = path
        on_disk = _read_index(path)
        if on_disk != offsets:
            tmp = path.with_suffix(".tmp")
            tmp.write_bytes(b"".join(OFFSET.pack(o) for o in offsets))
            os.replace(tmp, path)
        self._f = open(path, "ab")  # noqa: SIM115 - held open with the stream

    def append(self, offset: int) -> None:
        self._f.write(OFFSET.pack(offset))
        self._f.flush()

    def close(self) -> None:
        self._f.close()


def _read_index(path: Path) -> list[int] | None:
    if not path.exists():
        return None
    data = path.read_bytes()
    n = len(data) // OFFSET.size
    return [OFFSET.unpack_from(data, i * OFFSET.size)[0] for i in range(n)]


class RecordReader:
    """Reads a stream: iteration, ``len``, random access by index, and ``torn`` for a torn tail."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.exists():
            raise FileNotFoundError(f"no record stream at {self.path}")
        self.offsets, self.torn = self._offsets()

    def _offsets(self) -> tuple[list[int], TornTail | None]:
        idx = _read_index(self.path.with_suffix(self.path.suffix + ".idx"))
        size = self.path.stat().st_size
        if idx is not None and (not idx or idx[-1] < size):
            # Trust the index only if its last record really ends at the file's end and is intact
            # (a crash can garble the last write; scan() then reports it as a torn tail).
            end = self._end_of(idx[-1]) if idx else len(HEADER)
            if end == size and (not idx or self._intact(idx[-1])):
                return idx, None
        return scan(self.path)

    def _intact(self, offset: int) -> bool:
        with open(self.path, "rb") as f:
            f.seek(offset)
            length, crc = FRAME.unpack(f.read(FRAME.size))
            return zlib.crc32(f.read(length)) == crc

    def _end_of(self, offset: int) -> int:
        with open(self.path, "rb") as f:
            f.seek(offset)
            frame = f.read(FRAME.size)
        if len(frame) < FRAME.size:
            return -1
        return offset + FRAME.size + FRAME.unpack(frame)[0]

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> Any:
        with open(self.path, "rb") as f:
            return self._read_at(f, self.offsets[i])

    def _read_at(self, f: Any, offset: int) -> Any:
        f.seek(offset)
        length, crc = FRAME.unpack(f.read(FRAME.size))
        payload = f.read(length)
        if zlib.crc32(payload) != crc:
            raise CorruptStreamError(f"{self.path}: record at byte {offset} fails its checksum")
        return _unpack(payload)

    def __iter__(self) -> Iterator[Any]:
        with open(self.path, "rb") as f:
            for offset in self.offsets:
                yield self._read_at(f, offset)


@dataclass
class Followed:
    """What one ``RecordFollower.poll`` found: the new records, and whether the file restarted."""

    records: list[Any]
    restarted: bool = False  # the file shrank or was replaced: ``records`` start from record 0


class RecordFollower:
    """Reads a stream that is still being written: each ``poll`` returns the records appended since.

    Toolong's poll watcher is the model: keep the byte offset after the last complete record, and
    on each poll read from there to the current end. A frame that is not complete yet (a torn tail)
    is "not yet written": the offset stays before it and the next poll tries again. A checksum
    failure before the end of the file is corruption and raises. A file that shrinks or is replaced
    (a resume's ``drop_after``, a rebuilt index) is read again from the start (``restarted``).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.offset = 0  # byte after the last complete record (0: header not read yet)
        self.count = 0  # complete records returned so far
        self._inode: int | None = None

    @property
    def pending(self) -> int:
        """Bytes after the last complete record (a record being written, or a torn tail)."""
        try:
            return max(self.path.stat().st_size - self.offset, 0)
        except FileNotFoundError:
            return 0

    def poll(self) -> Followed:
        try:
            f = open(self.path, "rb")  # noqa: SIM115 - closed below; stat must be of this open file
        except FileNotFoundError:
            restarted = self.offset > 0
            self.offset, self.count, self._inode = 0, 0, None
            return Followed([], restarted)
        with f:
            st = os.fstat(f.fileno())
            restarted = False
            if self._inode is not None and (st.st_ino != self._inode or st.st_size < self.offset):
                self.offset, self.count, restarted = 0, 0, True
            self._inode = st.st_ino
            if st.st_size == self.offset:
                return Followed([], restarted)
            f.seek(self.offset)
            data = f.read(st.st_size - self.offset)
        return Followed(self._parse(data), restarted)

    def _parse(self, data: bytes) -> list[Any]:
        pos = 0
        if self.offset == 0:
            if len(data) < len(HEADER):
                if not HEADER.startswith(data):
                    raise CorruptStreamError(f"{self.path} is not a ptgym record stream")
                return []
            if not data.startswith(MAGIC):
                raise CorruptStreamError(f"{self.path} is not a ptgym record stream (bad magic)")
            pos = len(HEADER)
        records: list[Any] = []
        end = len(data)
        while pos + FRAME.size <= end:
            length, crc = FRAME.unpack_from(data, pos)
            stop = pos + FRAME.size + length
            if length > MAX_RECORD or stop > end:
                break  # not yet written
            payload = data[pos + FRAME.size : stop]
            if zlib.crc32(payload) != crc:
                if stop == end:
                    break  # a last record still settling, or a torn write: not yet written
                raise CorruptStreamError(
                    f"{self.path}: the record at byte {self.offset + pos} fails its checksum: the "
                    "file is damaged in the middle, not just torn at the end"
                )
            records.append(_unpack(payload))
            pos = stop
        self.offset += pos
        self.count += len(records)
        return records


class TrajectoryStore:
    """``RUN/trajectories/*.msgpack``: one append-only stream per writer, read as one collection."""

    def __init__(self, run_dir: str | Path, stream: str = "rollouts"):
        self.dir = Path(run_dir) / "trajectories"
        self.stream = stream
        self._writer: RecordWriter | None = None
        self._summary: Any = None  # ptgym.summaryfile.SummaryWriter, opened with the stream

    def append(self, trajectory: Trajectory) -> None:
        self.extend([trajectory])

    def extend(self, trajectories: list[Trajectory]) -> None:
        """Append trajectories, then their rows of the summary index (``ptgym.runindex``)."""
        if self._writer is None:
            from ptgym.summaryfile import SummaryWriter  # it reads this module: import late

            self._writer = RecordWriter(self.dir / f"{self.stream}.msgpack")
            self._summary = SummaryWriter(self._writer)
        for t in trajectories:
            self._writer.append(t.to_record())
        self._summary.extend(trajectories)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._summary.close()
            self._writer = None
            self._summary = None

    def files(self) -> list[Path]:
        return sorted(self.dir.glob("*.msgpack"))

    def readers(self) -> list[RecordReader]:
        return [RecordReader(p) for p in self.files()]

    def __iter__(self) -> Iterator[Trajectory]:
        for reader in self.readers():
            _report_torn(reader)
            for record in reader:
                yield Trajectory.from_record(record)

    def torn_tails(self) -> dict[str, TornTail]:
        return {r.path.name: r.torn for r in self.readers() if r.torn is not None}

    def export_jsonl(self, path: str | Path, *, fmt: str = "messages") -> int:
        """Write JSONL, one row per trajectory, in one of three formats: ``"messages"`` (TRL's
        conversational language modeling: ``messages``), ``"prompt-completion"`` (TRL's
        conversational prompt/completion: ``prompt`` = the messages before the first assistant
        turn, ``completion`` = the rest, env replies included) or ``"full"`` (``messages`` and
        the sampled token ids and logprobs of every turn). Every format adds the reward and ids.
        """
        rows = 0
        tmp = Path(str(path) + ".tmp")
        with open(tmp, "w") as f:
            for t in self:
                f.write(json.dumps(_export_row(t, fmt)) + "\n")
                rows += 1
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return rows

    def to_dataset(self, *, fmt: str = "messages") -> Any:
        """A Hugging Face ``datasets.Dataset`` with one row per trajectory (formats as
        ``export_jsonl``)."""
        import datasets

        return datasets.Dataset.from_list([_export_row(t, fmt) for t in self])


_REPORTED: set[tuple[str, int]] = set()  # (stream path, torn offset) already logged


def _report_torn(reader: RecordReader) -> None:
    """Log a stream's torn tail once per file and offset: the records after it are skipped, and
    a reader should hear so rather than count fewer records in silence."""
    torn = reader.torn
    if torn is None or (str(reader.path), torn.offset) in _REPORTED:
        return
    _REPORTED.add((str(reader.path), torn.offset))
    log.warning(
        "%s: %s; read the %d records before it (a crash cut the last write, or a writer is "
        "still writing it)",
        reader.path,
        torn,
        len(reader),
    )


def _export_row(t: Trajectory, fmt: str) -> dict[str, Any]:
    row = {
        "id": t.id,
        "env_id": t.env_id,
        "task_id": t.task_id,
        "group_id": t.group_id,
        "messages": t.messages,
        "reward": t.reward,
        "terminated": t.terminated,
        "truncated": t.truncated,
        "error": t.error,
    }
    if fmt == "full":
        row["turns"] = [
            {
                "prompt_ids": turn.prompt_ids.tolist(),
                "completion_ids": turn.completion_ids.tolist(),
                "completion_logprobs": turn.completion_logprobs.tolist(),
                "reward": turn.reward,
            }
            for turn in t.turns
        ]
    elif fmt == "prompt-completion":
        messages = row.pop("messages")
        cut = next((i for i, m in enumerate(messages) if m.get("role") == "assistant"), None)
        cut = len(messages) if cut is None else cut
        row = {"prompt": messages[:cut], "completion": messages[cut:], **row}
    elif fmt != "messages":
        raise ValueError(
            f"unknown export format {fmt!r}: use 'messages', 'prompt-completion' or 'full'"
        )
    return row


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so a crash leaves either the old or the new content: temp, fsync, rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
