"""Run status from ``RUN/heartbeat.json``: a live run, a finished one, a failed one and a crashed
one (dead process or stale beat) are told apart; ``ptgym train`` writes it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from ptgym.runstatus import HEARTBEAT_FILE, Heartbeat, read_heartbeat, run_status


def test_a_beating_run_is_live_and_reports_its_step(tmp_path):
    hb = Heartbeat(tmp_path, steps=10, step=2)
    assert run_status(tmp_path).state == "live"
    hb.beat(3)
    status = run_status(tmp_path)
    assert (status.state, status.step, status.steps, status.pid) == ("live", 3, 10, os.getpid())
    hb.finish()
    assert run_status(tmp_path).state == "finished"


def test_the_timer_thread_beats_between_steps(tmp_path):
    hb = Heartbeat(tmp_path, steps=1, every=0.05)
    first = read_heartbeat(tmp_path)["last_beat"]
    time.sleep(0.3)
    assert read_heartbeat(tmp_path)["last_beat"] > first
    hb.finish()
    last = read_heartbeat(tmp_path)["last_beat"]
    time.sleep(0.15)
    assert read_heartbeat(tmp_path)["last_beat"] == last  # the thread stopped


def test_an_exception_marks_the_run_failed(tmp_path):
    with pytest.raises(RuntimeError), Heartbeat(tmp_path, steps=4):
        raise RuntimeError("boom")
    assert run_status(tmp_path).state == "failed"


def test_a_killed_trainer_is_crashed(tmp_path):
    script = textwrap.dedent(
        f"""
        import time
        from ptgym.runstatus import Heartbeat
        Heartbeat({str(tmp_path)!r}, steps=5).beat(1)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    assert run_status(tmp_path).state == "live"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    status = run_status(tmp_path)
    assert status.state == "crashed" and f"process {proc.pid} is gone" in status.reason
    assert status.step == 1


def test_a_stale_beat_from_another_host_is_crashed(tmp_path):
    beat = {
        "pid": 1,
        "host": "elsewhere",
        "started": 100.0,
        "last_beat": 1000.0,
        "step": 7,
        "steps": 9,
        "state": "running",
    }
    (tmp_path / HEARTBEAT_FILE).write_text(json.dumps(beat))
    assert run_status(tmp_path, now=1030.0).state == "live"
    status = run_status(tmp_path, now=1100.0, stale_after=60)
    assert status.state == "crashed" and "no heartbeat for 100 s" in status.reason


def test_a_run_without_heartbeat_is_unknown(tmp_path):
    assert run_status(tmp_path).state == "unknown"


def test_train_writes_the_heartbeat_summaries_and_prints_the_monitor_command(tmp_path):
    """One real step on the tiny model: the run ends finished, with a summary index."""
    from ptgym.config import TrainCommand, compose
    from ptgym.runindex import RunIndex
    from ptgym.trainer import train

    out = tmp_path / "run"
    cfg = compose(
        TrainCommand,
        [
            "env=digits",
            "model=tiny",
            "sampling.max_new_tokens=4",
            "trainer.steps=1",
            "tasks=1",
            "group=2",
            f"out={out}",
        ],
    )
    lines: list[str] = []
    train(cfg, log=lines.append)
    assert f"watch it live: ptgym tui monitor {out}" in lines
    status = run_status(out)
    assert (status.state, status.step, status.steps) == ("finished", 1, 1)
    rows = RunIndex(out).summaries()
    assert len(rows) == 2 and rows.step.tolist() == [1, 1]
