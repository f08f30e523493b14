"""Following a stream that is still being written (DESIGN §8): each poll returns the records
appended since the last one, a torn tail is "not yet written", a shrunk file is read again.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time

import msgpack
import pytest

from ptgym.metrics import METRICS_FILE, MetricsFollower, MetricsLogger
from ptgym.store import (
    FRAME,
    HEADER,
    CorruptStreamError,
    RecordFollower,
    RecordWriter,
)


def frame(obj: object) -> bytes:
    import zlib

    payload = msgpack.packb(obj, use_bin_type=True)
    return FRAME.pack(len(payload), zlib.crc32(payload)) + payload


def test_poll_returns_only_records_appended_since_the_last_poll(tmp_path):
    path = tmp_path / "s.msgpack"
    follower = RecordFollower(path)
    assert follower.poll().records == []  # no file yet: nothing, no error
    w = RecordWriter(path)
    assert follower.poll().records == []  # just the header
    w.append({"n": 1})
    w.append({"n": 2})
    assert [r["n"] for r in follower.poll().records] == [1, 2]
    assert follower.poll().records == []
    w.append({"n": 3})
    got = follower.poll()
    assert [r["n"] for r in got.records] == [3] and not got.restarted
    assert follower.count == 3 and follower.offset == path.stat().st_size
    w.close()


def test_a_torn_tail_is_not_yet_written_and_is_read_once_complete(tmp_path):
    path = tmp_path / "s.msgpack"
    whole = frame({"n": 2, "text": "x" * 40})
    path.write_bytes(HEADER + frame({"n": 1}) + whole[:5])  # header of record 2 cut mid-way
    follower = RecordFollower(path)
    assert [r["n"] for r in follower.poll().records] == [1]
    assert follower.pending == 5
    with open(path, "ab") as f:
        f.write(whole[5:12])  # still incomplete payload
    assert follower.poll().records == []
    with open(path, "ab") as f:
        f.write(whole[12:])
    assert [r["n"] for r in follower.poll().records] == [2]
    assert follower.pending == 0


def test_a_partial_header_is_not_yet_written(tmp_path):
    path = tmp_path / "s.msgpack"
    path.write_bytes(HEADER[:3])
    follower = RecordFollower(path)
    assert follower.poll().records == []
    with open(path, "ab") as f:
        f.write(HEADER[3:] + frame("a"))
    assert follower.poll().records == ["a"]


def test_a_bad_checksum_in_the_middle_is_corruption_naming_the_byte(tmp_path):
    path = tmp_path / "s.msgpack"
    first, second = frame({"n": 1}), frame({"n": 2})
    bad = bytearray(first)
    bad[-1] ^= 0xFF
    path.write_bytes(HEADER + bytes(bad) + second)
    with pytest.raises(CorruptStreamError, match=f"byte {len(HEADER)}"):
        RecordFollower(path).poll()
    # The same damage on the last record is a torn write: waited on, not raised.
    path.write_bytes(HEADER + first + bytes(bad))
    assert RecordFollower(path).poll().records == [{"n": 1}]


def test_not_a_stream_is_named(tmp_path):
    path = tmp_path / "s.msgpack"
    path.write_bytes(b"hello world, not records")
    with pytest.raises(CorruptStreamError, match="not a ptgym record stream"):
        RecordFollower(path).poll()


def test_a_shrunk_or_replaced_file_is_read_again_from_the_start(tmp_path):
    path = tmp_path / "s.msgpack"
    with RecordWriter(path) as w:
        for n in range(3):
            w.append(n)
    follower = RecordFollower(path)
    assert follower.poll().records == [0, 1, 2]
    # A resume cuts the stream back to its first record, then appends another.
    os.truncate(path, len(HEADER) + len(frame(0)))
    with RecordWriter(path) as w:
        w.append(9)
    got = follower.poll()
    assert got.restarted and got.records == [0, 9]
    # Replaced by a new file (os.replace of a rebuilt stream).
    tmp = tmp_path / "new.msgpack"
    with RecordWriter(tmp) as w:
        w.append("x")
    os.replace(tmp, path)
    got = follower.poll()
    assert got.restarted and got.records == ["x"]


def test_metrics_follower_sees_steps_written_by_another_process(tmp_path):
    """A trainer in another process logs steps; the follower picks each one up as it lands."""
    follower = MetricsFollower(tmp_path)
    assert follower.poll() == [] and follower.records == []
    script = textwrap.dedent(
        f"""
        import sys, time
        from ptgym.metrics import MetricsLogger
        log = MetricsLogger({str(tmp_path)!r})
        for step in range(1, 4):
            log.log(step, {{"reward/mean": step / 10}})
            print(step, flush=True)
            sys.stdin.readline()
        log.close()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        seen = []
        for step in range(1, 4):
            assert proc.stdout.readline().strip() == str(step)
            new = follower.poll()
            assert [r["step"] for r in new] == [step]
            seen.extend(r["reward/mean"] for r in new)
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert seen == [0.1, 0.2, 0.3]
        assert [r["step"] for r in follower.records] == [1, 2, 3]
    finally:
        proc.wait(timeout=30)


def test_metrics_follower_starts_over_when_the_stream_is_cut(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in (1, 2, 3):
        log.log(step, {"loss/total": float(step)})
    log.close()
    follower = MetricsFollower(tmp_path)
    assert len(follower.poll()) == 3
    (tmp_path / METRICS_FILE).unlink()
    time.sleep(0.01)
    log = MetricsLogger(tmp_path)
    log.log(1, {"loss/total": 7.0})
    log.close()
    assert [r["loss/total"] for r in follower.poll()] == [7.0]
    assert follower.restarted and [r["loss/total"] for r in follower.records] == [7.0]
