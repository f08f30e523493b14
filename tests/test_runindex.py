"""The summary index beside the trajectory store and ``RunIndex`` (DESIGN §8): summaries without
decoding token arrays, a live run followed, trajectories decoded on demand, the trainer's notes
joined by id, and an index that repairs itself after a crash or a cut stream.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from ptgym.runindex import TRAINER_FILE, RunIndex
from ptgym.store import RecordWriter, TrajectoryStore
from ptgym.summaryfile import (
    COLUMNS,
    read_summary_rows,
    record_summary_row,
    summary_path,
    summary_row,
)
from ptgym.types import Trajectory, Turn


def traj(i: int, *, step: int = 1, turns: int = 2, error: str | None = None) -> Trajectory:
    rng = np.random.default_rng(i)
    return Trajectory(
        env_id="ptgym/Math-v0" if i % 2 else "ptgym/CodeTools-v0",
        task_id=f"task-{i // 4}",
        group_id=f"{step - 1}/g{i // 4}",
        turns=[
            Turn(
                prompt_ids=rng.integers(0, 49152, size=20),
                completion_ids=rng.integers(0, 49152, size=5 + i % 3),
                completion_logprobs=-rng.random(5 + i % 3),
                text=f"turn {k}",
            )
            for k in range(turns)
        ],
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": f"What is {i} +\n 1?"},
            {"role": "assistant", "content": f"The answer is \\boxed{{{i + 1}}}"},
        ],
        reward=i / 10,
        terminated=True,
        error=error,
        policy_version=step - 1,
        id=f"t{i:05d}",
    )


def write_run(run, n: int, per_step: int = 4) -> list[Trajectory]:
    trajs = [
        traj(i, step=1 + i // per_step, error="sandbox died" if i == 2 else None) for i in range(n)
    ]
    store = TrajectoryStore(run)
    for s in range(0, n, per_step):
        store.extend(trajs[s : s + per_step])
    store.close()
    return trajs


def test_summary_rows_describe_each_trajectory_without_its_tokens(tmp_path):
    trajs = write_run(tmp_path, 8)
    rows = read_summary_rows(summary_path(tmp_path / "trajectories" / "rollouts.msgpack"))
    assert len(rows) == 8
    row = dict(zip(COLUMNS, rows[5], strict=True))
    t = trajs[5]
    assert row == {
        "id": "t00005",
        "step": 2,  # policy_version 1 -> the step-2 rollout
        "env": "ptgym/Math-v0",
        "task": "task-1",
        "group": "1/g1",
        "reward": 0.5,
        "turns": 2,
        "length": t.num_completion_tokens,
        "error": None,
        "terminated": True,
        "truncated": False,
        "prompt": "What is 5 + 1?",  # whitespace folded
        "answer": "The answer is \\boxed{6}",
    }
    # The record path (legacy runs, repair) computes the same row as the writer's.
    for t in trajs:
        assert record_summary_row(t.to_record()) == summary_row(t)


def test_run_index_sorts_and_filters_on_columns(tmp_path):
    write_run(tmp_path, 12)
    rows = RunIndex(tmp_path).summaries()
    assert len(rows) == 12 and rows.id[0] == "t00000"
    assert list(rows.order("reward", descending=True)[:3]) == [11, 10, 9]
    assert list(rows.order("id")[:2]) == [0, 1]
    assert list(rows.select(reward_min=0.5, reward_max=0.8)) == [5, 6, 7, 8]
    assert list(rows.select(env="ptgym/Math-v0", reward_max=0.5)) == [1, 3, 5]
    assert list(rows.select(error=True)) == [2]
    assert list(rows.select(step=3)) == [8, 9, 10, 11]
    assert list(rows.select(text="BOXED{7}")) == [6]
    assert rows.kept.tolist() == [-1] * 12  # no trainer.msgpack: unknown
    assert rows.row(2).error == "sandbox died" and rows.row(2).kept is None
    with pytest.raises(KeyError, match="cannot sort by 'nope'"):
        rows.order("nope")


def test_trajectories_are_decoded_on_demand_and_cached(tmp_path):
    trajs = write_run(tmp_path, 10)
    index = RunIndex(tmp_path, cache_size=2)
    t7 = index.trajectory(7)
    assert t7.id == "t00007"
    np.testing.assert_array_equal(t7.turns[1].completion_ids, trajs[7].turns[1].completion_ids)
    assert index.trajectory(7) is t7  # cached
    assert index.trajectory("t00003").id == "t00003"
    index.trajectory(4)  # evicts 7 (least recently used of a cache of 2)
    assert index.trajectory(7) is not t7
    with pytest.raises(KeyError, match="no trajectory with id 'zzz'"):
        index.trajectory("zzz")
    with pytest.raises(IndexError, match="has 10 rows"):
        index.trajectory(10)


def test_a_live_run_is_followed_and_trainer_notes_are_joined(tmp_path):
    store = TrajectoryStore(tmp_path)
    store.extend([traj(i) for i in range(4)])
    index = RunIndex(tmp_path)
    assert len(index.summaries()) == 4 and index.annotations() == {}
    first = index.summaries()
    notes = RecordWriter(tmp_path / TRAINER_FILE)
    for i in range(4):
        notes.append(
            {
                "step": 1,
                "id": f"t{i:05d}",
                "kept": i != 2,
                "drop_reason": "error" if i == 2 else None,
                "advantages": [0.5, -0.25] if i != 2 else [],
            }
        )
    store.extend([traj(i, step=2) for i in range(4, 8)])
    assert index.refresh() == 4
    rows = index.summaries()
    assert len(rows) == 8 and len(first) == 4  # the earlier snapshot is untouched
    assert rows.kept.tolist() == [1, 1, 0, 1, -1, -1, -1, -1]
    assert list(rows.select(kept=False)) == [2]
    assert index.annotations()["t00001"].advantages == [0.5, -0.25]
    assert index.trajectory(6).id == "t00006"
    assert index.refresh() == 0
    store.close()
    notes.close()


def test_another_process_appending_is_seen_by_refresh(tmp_path):
    index = RunIndex(tmp_path)
    assert len(index) == 0
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_runindex import traj
        from ptgym.store import TrajectoryStore
        store = TrajectoryStore({str(tmp_path)!r})
        store.extend([traj(i) for i in range(5)])
        store.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    assert index.refresh() == 5
    assert index.summaries().id[-1] == "t00004"


def test_a_summary_left_behind_by_a_crash_is_completed_when_the_store_reopens(tmp_path):
    write_run(tmp_path, 8)
    stream = tmp_path / "trajectories" / "rollouts.msgpack"
    # A crash between the trajectories and their summary record: drop the summary's last record.
    path = summary_path(stream)
    rows_before = read_summary_rows(path)
    with RecordWriter(path.with_name("cut.summary")) as w:
        w.append({"cols": list(COLUMNS), "rows": rows_before[:4]})
    os.replace(path.with_name("cut.summary"), path)
    path.with_suffix(".summary.idx").unlink()
    assert len(RunIndex(tmp_path)) == 4  # the reader trusts the index as it stands
    store = TrajectoryStore(tmp_path)
    store.extend([traj(8, step=3)])
    store.close()
    rows = read_summary_rows(path)
    assert [r[0] for r in rows] == [f"t{i:05d}" for i in range(9)]
    assert rows[:8] == rows_before


def test_a_stream_cut_by_a_resume_cuts_the_summary_and_restarts_readers(tmp_path):
    write_run(tmp_path, 8)
    stream = tmp_path / "trajectories" / "rollouts.msgpack"
    index = RunIndex(tmp_path)
    assert len(index) == 8
    # drop_after(step=1): keep the first 4 records (what a resume does), then train on.
    from ptgym.store import RecordReader

    offsets = RecordReader(stream).offsets
    os.truncate(stream, offsets[4])
    (stream.with_suffix(".msgpack.idx")).unlink()
    with pytest.raises(IndexError, match="holds 4 records, not 6: the stream was cut"):
        index.trajectory(5)  # before any writer repaired the summary
    store = TrajectoryStore(tmp_path)
    store.extend([traj(i, step=2) for i in (20, 21)])
    store.close()
    ids = [r[0] for r in read_summary_rows(summary_path(stream))]
    assert ids == ["t00000", "t00001", "t00002", "t00003", "t00020", "t00021"]
    index.refresh()
    assert index.summaries().id == ids
    assert index.trajectory(5).id == "t00021"


def test_a_run_written_before_summaries_is_summarised_from_its_stream(tmp_path):
    trajs = [traj(i) for i in range(6)]
    with RecordWriter(tmp_path / "trajectories" / "old.msgpack") as w:
        for t in trajs:
            w.append(t.to_record())
    index = RunIndex(tmp_path)
    rows = index.summaries()
    assert rows.id == [t.id for t in trajs]
    assert rows.length.tolist() == [t.num_completion_tokens for t in trajs]
    assert index.trajectory(3).task_id == "task-0"


def test_two_streams_read_as_one_collection(tmp_path):
    a, b = TrajectoryStore(tmp_path, "a"), TrajectoryStore(tmp_path, "b")
    a.extend([traj(0), traj(1)])
    b.extend([traj(2)])
    a.close()
    b.close()
    index = RunIndex(tmp_path)
    assert index.summaries().id == ["t00000", "t00001", "t00002"]
    assert index.trajectory(2).id == "t00002" and index.trajectory(1).id == "t00001"


def test_decoding_from_threads_while_a_live_run_is_refreshed(tmp_path):
    """A UI's pattern: one thread refreshes as the trainer appends, others open rows."""
    import threading

    store = TrajectoryStore(tmp_path)
    store.extend([traj(i) for i in range(8)])
    index = RunIndex(tmp_path, cache_size=4)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        try:
            while not stop.is_set():
                n = len(index.summaries())
                i = int(rng.integers(0, n))
                assert index.trajectory(i).id == index.summaries().id[i]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for k in range(8, 40, 4):
        store.extend([traj(i) for i in range(k, k + 4)])
        index.refresh()
    stop.set()
    for t in threads:
        t.join()
    store.close()
    assert errors == []
    assert index.summaries().id == [f"t{i:05d}" for i in range(40)]
