"""Per-step metrics: ``RUN/metrics.msgpack`` (one record per step) plus optional mirrors (DESIGN §8).

Keys are namespaced: ``rollout/``, ``reward/``, ``loss/``, ``perf/``, ``gpu/``, ``eval/``, and
``env/`` for the per-episode numbers envs report (``env/valid_tool_call``: the share of episodes). Each
record also holds ``step`` and ``time`` (unix seconds). This module owns the ``reward/``,
``rollout/`` and ``perf/`` names (``batch_metrics``, ``collect_metrics``, ``step_metrics``); the
losses name their own ``loss/`` keys. The stream format is the store's, so a run
killed mid-write keeps every complete step, and the TUI can follow the file while training runs.
Imports neither torch nor textual.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ptgym.store import RecordFollower, RecordReader, RecordWriter
from ptgym.types import Trajectory

METRICS_FILE = "metrics.msgpack"


class MetricsLogger:
    """Writes one record per step; mirrors to TensorBoard and W&B when asked."""

    def __init__(
        self, run_dir: str | Path, *, tensorboard: bool = False, wandb: dict | None = None
    ):
        self.run_dir = Path(run_dir)
        self._writer = RecordWriter(self.run_dir / METRICS_FILE)
        self._tb = None
        self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:
                raise RuntimeError(
                    "log.tensorboard=true needs the tensorboard package: pip install 'ptgym[tensorboard]'"
                ) from exc
            self._tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        if wandb is not None:
            try:
                import wandb as wandb_lib
            except ImportError as exc:
                raise RuntimeError(
                    "log.wandb=true needs the wandb package: pip install 'ptgym[wandb]'"
                ) from exc
            self._wandb = wandb_lib.init(**wandb)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        record = {"step": int(step), "time": time.time()}
        record.update({k: _plain(v) for k, v in metrics.items()})
        self._writer.append(record)
        if self._tb is not None:
            for k, v in record.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(record, step=step)

    def close(self) -> None:
        self._writer.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


class MetricsFollower:
    """Follows ``RUN/metrics.msgpack`` while a run trains: ``poll`` returns the steps logged since
    the last call and ``records`` holds them all (a torn last record waits for its end). When the
    stream is cut (a resume drops steps), ``restarted`` is set and ``records`` starts over."""

    def __init__(self, run_dir: str | Path):
        self._follower = RecordFollower(Path(run_dir) / METRICS_FILE)
        self.records: list[dict[str, Any]] = []
        self.restarted = False

    def poll(self) -> list[dict[str, Any]]:
        got = self._follower.poll()
        self.restarted = got.restarted
        if got.restarted:
            self.records = []
        self.records.extend(got.records)
        return got.records


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every complete step record of a run (a torn last record is skipped)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return list(RecordReader(path))


# --- the names of reward/, rollout/ and perf/ metrics --------------------------------------------


def passed(t: Trajectory) -> bool:
    """Solved: the env's own verdict (``info["correct"]``, or ``info["passed"]`` when it is a
    bool) or a full reward. A numeric ``passed`` is a count (code-tools: hidden tests passed,
    beside ``correct``), never a verdict."""
    if "correct" in t.metrics:
        return bool(t.metrics["correct"])
    if isinstance(t.metrics.get("passed"), bool):
        return t.metrics["passed"]
    return t.reward >= 1.0


def batch_metrics(trajs: list[Trajectory]) -> dict[str, float]:
    """``reward/`` and ``rollout/`` metrics of one batch (errored trajectories counted apart)."""
    ok = [t for t in trajs if t.error is None]
    m: dict[str, float] = {"rollout/error_frac": 1 - len(ok) / max(len(trajs), 1)}
    if not ok:
        return m
    rewards = np.array([t.reward for t in ok])
    m["reward/mean"] = float(rewards.mean())
    m["reward/std"] = float(rewards.std())
    m["reward/pass_rate"] = float(np.mean([passed(t) for t in ok]))
    for env_id in sorted({t.env_id for t in ok}):
        m[f"reward/mean/{env_id}"] = float(np.mean([t.reward for t in ok if t.env_id == env_id]))
    m["rollout/turns"] = float(np.mean([len(t.turns) for t in ok]))
    m["rollout/response_tokens"] = float(
        np.mean([len(turn.completion_ids) for t in ok for turn in t.turns] or [0])
    )
    m["rollout/trajectory_tokens"] = float(np.mean([t.num_completion_tokens for t in ok]))
    m["rollout/truncated_frac"] = float(np.mean([t.truncated for t in ok]))
    # Turns whose prompt did not extend the sequence so far: each starts a new training row.
    m["rollout/prefix_breaks"] = float(np.mean([t.metrics.get("prefix_breaks", 0) for t in ok]))
    # What envs report per episode (tool calls, tests passed, ...): the batch mean as env/KEY.
    for key in sorted({k for t in ok for k in t.metrics if not k.startswith("score/")}):
        values = [t.metrics.get(key) for t in ok]
        if all(isinstance(v, (bool, int, float)) for v in values):
            m[f"env/{key}"] = float(np.mean(values))
    # Raw scores of reward sources (a reward model, a judge) before normalisation: score/NAME.
    for key in sorted({k for t in ok for k in t.metrics if k.startswith("score/")}):
        values = [t.metrics[key] for t in ok if isinstance(t.metrics.get(key), (int, float))]
        if values:
            m[f"reward/{key}"] = float(np.mean(values))
    return m


def collect_metrics(stats: Any) -> dict[str, float]:
    """``perf/`` metrics of one ``Collector.collect`` call (a ``ptgym.rollout.CollectStats``):
    shares of the rollout's own wall time."""
    t = max(stats.total, 1e-9)
    other = max(stats.total - stats.generation - stats.env_wait, 0.0)
    return {
        "perf/rollout_s": stats.total,
        "perf/rollout_generation_frac": stats.generation / t,
        "perf/rollout_env_frac": stats.env_wait / t,
        "perf/rollout_other_frac": other / t,
        "perf/gen_tokens_per_s": stats.generated_tokens / max(stats.generation, 1e-9),
        "perf/episodes_per_s": stats.episodes / t,
        "perf/generate_calls": float(stats.generate_calls),
        "rollout/retries": float(stats.retries),  # restarted after their env worker was lost
        "rollout/infra_errors": float(stats.infra_errors),  # ended by a lost env worker
    }


def step_metrics(stats: Any, train_s: float, step_s: float) -> dict[str, float]:
    """``perf/`` metrics of one training step: ``collect_metrics`` plus shares of the step's
    wall time (generation, env, train, the rest)."""
    t = max(step_s, 1e-9)
    rest = max(step_s - stats.generation - stats.env_wait - train_s, 0.0)
    return {
        **collect_metrics(stats),
        "perf/step_s": step_s,
        "perf/train_s": train_s,
        "perf/generation_frac": stats.generation / t,
        "perf/env_frac": stats.env_wait / t,
        "perf/train_frac": train_s / t,
        "perf/other_frac": rest / t,
        "perf/tokens_per_s": stats.generated_tokens / t,
    }
