"""Specification of the run-directory store (DESIGN §8): append-only msgpack record streams that
survive a crash, their random-access index, trajectory round trips, exports and metrics.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgpack
import numpy as np
import pytest

from ptgym.metrics import METRICS_FILE, MetricsLogger, read_metrics
from ptgym.store import (
    HEADER,
    CorruptStreamError,
    RecordReader,
    RecordWriter,
    TrajectoryStore,
    atomic_write_bytes,
    scan,
)
from ptgym.types import Trajectory, Turn


def trajectory(i: int, turns: int = 2) -> Trajectory:
    """A multi-turn tool-using episode with token arrays of realistic sizes and dtypes."""
    rng = np.random.default_rng(i)
    messages = [{"role": "user", "content": f"Task {i}: what is {i} + 1?"}]
    built = []
    for k in range(turns):
        messages.append(
            {
                "role": "assistant",
                "content": f"step {k}",
                "tool_calls": [
                    {
                        "id": f"c{k}",
                        "type": "function",
                        "function": {"name": "run_python", "arguments": {"code": "1+1"}},
                    }
                ],
            }
        )
        messages.append({"role": "tool", "content": "2", "tool_call_id": f"c{k}"})
        built.append(
            Turn(
                prompt_ids=rng.integers(0, 49152, size=30 + 10 * k),
                completion_ids=rng.integers(0, 49152, size=12),
                completion_logprobs=-rng.random(12),
                text=f"step {k}",
                observation=[messages[-1]],
                reward=0.5 * k,
                gen_seconds=0.25,
                env_seconds=0.125,
            )
        )
    return Trajectory(
        env_id="ptgym/CodeTools-v0",
        task_id=f"task-{i}",
        group_id=f"g{i // 4}",
        seed=i,
        turns=built,
        messages=messages,
        reward=float(i % 2),
        terminated=True,
        error=None if i % 3 else "sandbox died",
        metrics={"tool_calls": 2.0},
        info={"tests_passed": i % 5},
        model="tiny",
        policy_version=i,
    )


def assert_same(a: Trajectory, b: Trajectory) -> None:
    assert len(a.turns) == len(b.turns)
    for ta, tb in zip(a.turns, b.turns, strict=True):
        for name in ("prompt_ids", "completion_ids", "completion_logprobs"):
            x, y = getattr(ta, name), getattr(tb, name)
            assert x.dtype == y.dtype and np.array_equal(x, y), name
        assert (ta.text, ta.observation, ta.reward) == (tb.text, tb.observation, tb.reward)
    assert a.to_record() == b.to_record()


def stream_of(path: Path, records: list) -> list[int]:
    with RecordWriter(path) as w:
        for r in records:
            w.append(r)
    offsets, torn = scan(path)
    assert torn is None
    return offsets


# --- trajectories -------------------------------------------------------------------------------


def test_trajectories_round_trip_with_arrays_and_dtypes(tmp_path):
    written = [trajectory(i, turns=1 + i % 3) for i in range(6)]
    store = TrajectoryStore(tmp_path)
    store.extend(written)
    store.close()
    read = list(TrajectoryStore(tmp_path))
    assert [t.id for t in read] == [t.id for t in written]
    for a, b in zip(written, read, strict=True):
        assert_same(a, b)
    assert read[0].turns[0].prompt_ids.dtype == np.int32
    assert read[0].turns[0].completion_logprobs.dtype == np.float32
    assert read[3].error == "sandbox died" and read[1].error is None
    assert read[2].turn_rewards == [0.0, 0.5, 1.0]


def test_token_arrays_are_stored_packed_not_as_int_lists(tmp_path):
    t = trajectory(0, turns=1)  # ids below 49152: two bytes each
    record = t.to_record()["turns"][0]
    assert record["id_width"] == 2
    assert record["prompt_ids"] == t.turns[0].prompt_ids.astype("<u2").tobytes()
    assert record["completion_logprobs"] == t.turns[0].completion_logprobs.astype("<f4").tobytes()
    TrajectoryStore(tmp_path).extend([t])
    assert record["prompt_ids"] in (tmp_path / "trajectories" / "rollouts.msgpack").read_bytes()


def test_ids_of_a_large_vocabulary_round_trip_at_four_bytes(tmp_path):
    t = trajectory(0, turns=1)
    t.turns[0].completion_ids[3] = 151_935  # e.g. Qwen2.5's last token id
    assert t.to_record()["turns"][0]["id_width"] == 4
    TrajectoryStore(tmp_path).extend([t])
    (back,) = TrajectoryStore(tmp_path)
    assert_same(t, back)
    assert back.turns[0].completion_ids[3] == 151_935


def test_streams_of_several_writers_read_as_one_collection(tmp_path):
    for stream, ids in (("worker-0", [0, 1]), ("worker-1", [2])):
        store = TrajectoryStore(tmp_path, stream=stream)
        store.extend([trajectory(i, turns=1) for i in ids])
        store.close()
    assert [t.task_id for t in TrajectoryStore(tmp_path)] == ["task-0", "task-1", "task-2"]
    assert [p.name for p in TrajectoryStore(tmp_path).files()] == [
        "worker-0.msgpack",
        "worker-1.msgpack",
    ]


def test_concurrent_appends_from_threads_keep_every_record_whole(tmp_path):
    path = tmp_path / "s.msgpack"
    with RecordWriter(path) as w:
        threads = [
            threading.Thread(
                target=lambda n=n: [w.append({"t": n, "i": i, "pad": "x" * 999}) for i in range(50)]
            )
            for n in range(4)
        ]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    records = list(RecordReader(path))
    assert sorted((r["t"], r["i"]) for r in records) == [
        (n, i) for n in range(4) for i in range(50)
    ]


# --- crash safety -------------------------------------------------------------------------------


def test_truncation_at_every_byte_of_the_last_record_keeps_the_others(tmp_path):
    path = tmp_path / "s.msgpack"
    records = [
        {"i": 0, "x": "a" * 40},
        {"i": 1, "ids": np.arange(5, dtype=np.int32).tobytes()},
        {"i": 2, "x": "tail record"},
    ]
    offsets = stream_of(path, records)
    full = path.read_bytes()
    last = offsets[-1]
    for cut in range(last, len(full)):
        path.write_bytes(full[:cut])  # the .idx still lists 3 records, as after a real crash
        reader = RecordReader(path)
        assert list(reader) == records[:2], cut
        if cut == last:
            assert reader.torn is None
        else:
            assert (reader.torn.offset, reader.torn.nbytes) == (last, cut - last)
            expected = "incomplete record header" if cut - last < 8 else "incomplete record"
            assert reader.torn.reason == expected
            assert str(reader.torn) == f"torn tail at byte {last}: {cut - last} bytes ({expected})"


def test_a_file_cut_inside_its_header_reads_as_empty_and_torn(tmp_path):
    path = tmp_path / "s.msgpack"
    path.write_bytes(HEADER[:5])
    reader = RecordReader(path)
    assert (len(reader), reader.torn.reason) == (0, "incomplete header")
    with RecordWriter(path) as w:
        w.append({"ok": True})
    assert list(RecordReader(path)) == [{"ok": True}]


def test_a_garbled_last_record_is_a_torn_tail(tmp_path):
    path = tmp_path / "s.msgpack"
    offsets = stream_of(path, [{"i": 0}, {"i": 1}])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # the disk kept the length but not the bytes of the last write
    path.write_bytes(bytes(data))
    (tmp_path / "s.msgpack.idx").unlink()
    reader = RecordReader(path)
    assert list(reader) == [{"i": 0}]
    assert (reader.torn.offset, reader.torn.reason) == (
        offsets[1],
        "checksum mismatch in last record",
    )


def test_a_new_writer_cuts_the_torn_tail_and_appends(tmp_path):
    path = tmp_path / "s.msgpack"
    offsets = stream_of(path, [{"i": 0}, {"i": 1}, {"i": 2}])
    os.truncate(path, path.stat().st_size - 3)
    with RecordWriter(path) as w:
        assert w.count == 2
        assert w.append({"i": 3}) == 2
    reader = RecordReader(path)
    assert reader.torn is None
    assert list(reader) == [{"i": 0}, {"i": 1}, {"i": 3}]
    assert reader.offsets == offsets  # the new record starts where the torn one did


WRITER = """
import sys
from ptgym.store import RecordWriter
w = RecordWriter(sys.argv[1])
i = 0
while True:
    w.append({"i": i, "payload": b"x" * 200_000})
    i += 1
    if i == 3:
        print("ready", flush=True)
"""


def test_a_writer_killed_with_sigkill_leaves_every_complete_record_readable(tmp_path):
    path = tmp_path / "s.msgpack"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE)
    assert proc.stdout.readline() == b"ready\n"
    time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reader = RecordReader(path)
    n = len(reader)
    assert n >= 3
    assert [r["i"] for r in reader] == list(range(n))
    last_size = 8 + len(msgpack.packb({"i": n - 1, "payload": b"x" * 200_000}))
    tail = path.stat().st_size - (reader.offsets[-1] + last_size)
    assert tail == (reader.torn.nbytes if reader.torn else 0)
    with RecordWriter(path) as w:
        w.append({"i": n})
    assert [r["i"] for r in RecordReader(path)] == list(range(n + 1))


# --- index and damage ---------------------------------------------------------------------------


def test_index_holds_the_offsets_and_gives_random_access(tmp_path):
    path = tmp_path / "s.msgpack"
    records = [{"i": i, "pad": "y" * i} for i in range(20)]
    offsets = stream_of(path, records)
    idx = (tmp_path / "s.msgpack.idx").read_bytes()
    assert np.frombuffer(idx, dtype="<u8").tolist() == offsets
    reader = RecordReader(path)
    assert len(reader) == 20
    assert (reader[0], reader[13], reader[-1]) == (records[0], records[13], records[19])


def test_a_valid_index_spares_the_scan(tmp_path):
    path = tmp_path / "s.msgpack"
    offsets = stream_of(path, [{"i": 0}, {"i": 1}, {"i": 2}])
    data = bytearray(path.read_bytes())
    data[offsets[1] + 8] ^= 0xFF  # damage record 1's payload
    path.write_bytes(bytes(data))
    reader = RecordReader(path)  # opening trusts the index: no scan, no error yet
    assert reader[2] == {"i": 2}
    with pytest.raises(CorruptStreamError, match=f"record at byte {offsets[1]} fails its checksum"):
        reader[1]


@pytest.mark.parametrize("damage", ["missing", "stale", "garbage"])
def test_a_missing_or_stale_index_is_rebuilt(tmp_path, damage):
    path = tmp_path / "s.msgpack"
    idx = tmp_path / "s.msgpack.idx"
    offsets = stream_of(path, [{"i": i} for i in range(5)])
    if damage == "missing":
        idx.unlink()
    elif damage == "stale":
        idx.write_bytes(idx.read_bytes()[:16])  # a crash after the record, before its index entry
    else:
        idx.write_bytes(b"\xff" * 8 * 5)
    assert RecordReader(path).offsets == offsets
    RecordWriter(path).close()
    assert np.frombuffer(idx.read_bytes(), dtype="<u8").tolist() == offsets


def test_a_corrupt_middle_record_raises_a_clear_error(tmp_path):
    path = tmp_path / "s.msgpack"
    offsets = stream_of(path, [{"i": 0}, {"i": 1}, {"i": 2}])
    data = bytearray(path.read_bytes())
    data[offsets[1] + 9] ^= 0xFF
    path.write_bytes(bytes(data))
    (tmp_path / "s.msgpack.idx").unlink()
    message = (
        f"record 1 (byte {offsets[1]}) fails its checksum: the file is damaged in the "
        "middle, not just torn at the end (the 1 records before it are intact)"
    )
    with pytest.raises(CorruptStreamError, match=message.replace("(", r"\(").replace(")", r"\)")):
        RecordReader(path)
    with pytest.raises(CorruptStreamError):
        RecordWriter(path)  # never appends after damage it cannot explain


@pytest.mark.parametrize("content", [b'{"not": "a stream"}\n' * 3, b"hi", b"PTGRE\x00"])
def test_a_file_that_is_not_a_stream_is_refused_and_left_alone(tmp_path, content):
    path = tmp_path / "notes.msgpack"
    path.write_bytes(content)
    with pytest.raises(CorruptStreamError, match="is not a ptgym record stream"):
        RecordReader(path)
    with pytest.raises(CorruptStreamError, match="is not a ptgym record stream"):
        RecordWriter(path)
    assert path.read_bytes() == content


def test_a_missing_stream_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no record stream at .*nope.msgpack"):
        RecordReader(tmp_path / "nope.msgpack")


def test_store_reports_torn_tails_by_file(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.extend([trajectory(0), trajectory(1)])
    store.close()
    path = tmp_path / "trajectories" / "rollouts.msgpack"
    os.truncate(path, path.stat().st_size - 10)
    assert [t.task_id for t in TrajectoryStore(tmp_path)] == ["task-0"]
    ((name, torn),) = TrajectoryStore(tmp_path).torn_tails().items()
    assert (name, torn.reason) == ("rollouts.msgpack", "incomplete record")


# --- exports ------------------------------------------------------------------------------------


def test_export_jsonl_in_messages_and_full_formats(tmp_path):
    written = [trajectory(i) for i in range(3)]
    TrajectoryStore(tmp_path).extend(written)
    out = tmp_path / "out.jsonl"
    assert TrajectoryStore(tmp_path).export_jsonl(out) == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[1] == {
        "id": written[1].id,
        "env_id": "ptgym/CodeTools-v0",
        "task_id": "task-1",
        "group_id": "g0",
        "messages": written[1].messages,
        "reward": 1.0,
        "terminated": True,
        "truncated": False,
        "error": None,
    }
    assert TrajectoryStore(tmp_path).export_jsonl(out, fmt="full") == 3
    full = json.loads(out.read_text().splitlines()[2])
    assert full["turns"][1]["completion_ids"] == written[2].turns[1].completion_ids.tolist()
    assert full["turns"][1]["completion_logprobs"] == pytest.approx(
        written[2].turns[1].completion_logprobs.tolist()
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "trajectories"]
    with pytest.raises(
        ValueError,
        match="unknown export format 'trl': use 'messages', 'prompt-completion' or 'full'",
    ):
        TrajectoryStore(tmp_path).export_jsonl(out, fmt="trl")


def test_to_dataset_gives_one_row_per_trajectory(tmp_path):
    written = [trajectory(i) for i in range(4)]
    TrajectoryStore(tmp_path).extend(written)
    ds = TrajectoryStore(tmp_path).to_dataset()
    assert len(ds) == 4
    assert ds.column_names == [
        "id",
        "env_id",
        "task_id",
        "group_id",
        "messages",
        "reward",
        "terminated",
        "truncated",
        "error",
    ]
    assert ds[2]["reward"] == 0.0 and ds[3]["reward"] == 1.0
    assert ds[0]["messages"][0] == {
        "role": "user",
        "content": "Task 0: what is 0 + 1?",
        "tool_calls": None,
        "tool_call_id": None,
    }


# --- metrics and atomic writes ------------------------------------------------------------------


def test_metrics_round_trip_and_a_torn_last_step_is_skipped(tmp_path):
    log = MetricsLogger(tmp_path)
    for step in range(3):
        log.log(step, {"reward/mean": np.float32(0.25 * step), "loss/pg": 0.5, "perf/tokens": 100})
    log.close()
    rows = read_metrics(tmp_path)
    assert [(r["step"], r["reward/mean"], r["loss/pg"], r["perf/tokens"]) for r in rows] == [
        (0, 0.0, 0.5, 100),
        (1, 0.25, 0.5, 100),
        (2, 0.5, 0.5, 100),
    ]
    assert all(isinstance(r["time"], float) for r in rows)
    os.truncate(tmp_path / METRICS_FILE, (tmp_path / METRICS_FILE).stat().st_size - 1)
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 1]
    assert read_metrics(tmp_path / "no-run") == []


def test_atomic_write_replaces_the_file_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "ckpt" / "state.bin"
    atomic_write_bytes(path, b"old")
    atomic_write_bytes(path, b"new content")
    assert path.read_bytes() == b"new content"
    assert os.listdir(path.parent) == ["state.bin"]


def test_a_record_with_an_unstorable_value_says_what_to_do(tmp_path):
    with (
        RecordWriter(tmp_path / "s.msgpack") as w,
        pytest.raises(
            TypeError, match="cannot store a object in a record; convert it to a plain value"
        ),
    ):
        w.append({"x": object()})
