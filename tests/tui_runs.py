"""Real run directories for the TUI tests, written through the store, the metrics logger and the
heartbeat the way ``ptgym train`` and ``ptgym rollout`` write them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import numpy as np

from ptgym.config import RolloutCommand, TrainCommand, compose, to_yaml
from ptgym.metrics import MetricsLogger
from ptgym.runstatus import HEARTBEAT_FILE
from ptgym.store import TrajectoryStore, atomic_write_bytes
from ptgym.types import Trajectory, Turn


def step_metrics(step: int) -> dict[str, float]:
    """A plausible step record: reward rising, loss falling."""
    return {
        "reward/mean": round(0.1 * step, 3),
        "reward/pass_rate": round(0.05 * step, 3),
        "loss/total": round(1.0 / step, 4),
        "loss/approx_kl": 0.01 * step,
        "loss/entropy": 2.0 - 0.1 * step,
        "loss/clip_frac": 0.02,
        "rollout/kept_frac": 0.75,
        "rollout/response_tokens": 40.0 + step,
        "perf/tokens_per_s": 30.0 + step,
        "perf/step_s": 2.5,
    }


def trajectory(i: int, step: int) -> Trajectory:
    rng = np.random.default_rng(i)
    return Trajectory(
        env_id="ptgym/Math-v0",
        task_id=f"task-{i // 2}",
        group_id=f"{step - 1}/g{i // 2}",
        turns=[
            Turn(
                prompt_ids=rng.integers(0, 49152, size=12),
                completion_ids=rng.integers(0, 49152, size=6),
                completion_logprobs=-rng.random(6),
                text=f"answer {i}",
                reward=float(i % 2),
            )
        ],
        messages=[
            {"role": "user", "content": f"What is {i} + 1?"},
            {"role": "assistant", "content": f"\\boxed{{{i + 1}}}"},
        ],
        reward=float(i % 2),
        terminated=True,
        policy_version=step - 1,
        id=f"r{step}-{i}",
    )


def heartbeat(run: Path, state: str, step: int, steps: int) -> None:
    """``running`` with this process's pid (live), or ``crashed``: a pid that has exited."""
    pid = os.getpid()
    if state == "crashed":
        proc = subprocess.Popen(["true"])
        proc.wait()
        pid = proc.pid
    beat = {
        "pid": pid,
        "host": socket.gethostname(),
        "started": time.time() - 60,
        "last_beat": time.time(),
        "step": step,
        "steps": steps,
        "state": "running" if state in ("live", "crashed") else state,
    }
    atomic_write_bytes(run / HEARTBEAT_FILE, json.dumps(beat).encode())


def train_run(
    root: Path, name: str, *, steps: int, planned: int, state: str, env: str = "math"
) -> Path:
    run = root / name
    cfg = compose(
        TrainCommand, [f"env={env}", "model=tiny", f"trainer.steps={planned}", f"out={run}"]
    )
    run.mkdir(parents=True)
    atomic_write_bytes(run / "config.yaml", to_yaml(cfg).encode())
    log = MetricsLogger(run)
    store = TrajectoryStore(run)
    for s in range(1, steps + 1):
        store.extend([trajectory(i, s) for i in range(4)])
        log.log(s, step_metrics(s))
    log.close()
    store.close()
    heartbeat(run, state, steps, planned)
    return run


def rollout_run(root: Path, name: str) -> Path:
    run = root / name
    cfg = compose(RolloutCommand, ["env=math", "model=tiny", f"out={run}"])
    run.mkdir(parents=True)
    atomic_write_bytes(run / "config.yaml", to_yaml(cfg).encode())
    store = TrajectoryStore(run)
    store.extend([trajectory(i, 1) for i in range(4)])
    store.close()
    return run


def runs_folder(root: Path) -> Path:
    """``root/runs`` with a live, a finished and a crashed training run and a rollout run."""
    runs = root / "runs"
    train_run(runs, "live", steps=3, planned=10, state="live")
    train_run(runs, "done", steps=5, planned=5, state="finished")
    train_run(runs, "crashed", steps=2, planned=8, state="crashed")
    rollout_run(runs, "sampled")
    return runs
