"""Issue 8, reading and exporting a run's trajectories: a torn or damaged tail is reported once
with its file and byte offset (#7); the prompt/completion export for TRL's trainers (#11)."""

from __future__ import annotations

import logging
import os

from ptgym.store import TrajectoryStore
from tests.test_store import trajectory


def torn_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "torn tail" in r.getMessage()]


def test_reading_a_store_cut_by_500_bytes_warns_once_with_file_and_offset(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.store")
    store = TrajectoryStore(tmp_path)
    store.extend([trajectory(i) for i in range(112)])
    store.close()
    path = tmp_path / "trajectories" / "rollouts.msgpack"
    size = path.stat().st_size
    os.truncate(path, size - 500)
    (torn,) = TrajectoryStore(tmp_path).torn_tails().values()

    assert len(list(TrajectoryStore(tmp_path))) == 111
    assert torn_messages(caplog) == [
        f"{path}: torn tail at byte {torn.offset}: {size - 500 - torn.offset} bytes "
        "(incomplete record); read the 111 records before it (a crash cut the last write, or a "
        "writer is still writing it)"
    ]
    TrajectoryStore(tmp_path).export_jsonl(tmp_path / "out.jsonl")  # a second read: no repeat
    assert len(torn_messages(caplog)) == 1


def test_a_damaged_last_record_is_reported_too(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.store")
    TrajectoryStore(tmp_path).extend([trajectory(0), trajectory(1)])
    path = tmp_path / "trajectories" / "rollouts.msgpack"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside the last record's payload
    path.write_bytes(bytes(data))
    assert [t.task_id for t in TrajectoryStore(tmp_path)] == ["task-0"]
    (message,) = torn_messages(caplog)
    assert message.startswith(f"{path}: torn tail at byte ")
    assert "(checksum mismatch in last record); read the 1 records before it" in message


def test_an_intact_store_reads_without_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.store")
    TrajectoryStore(tmp_path).extend([trajectory(0)])
    assert len(list(TrajectoryStore(tmp_path))) == 1
    assert caplog.records == []
