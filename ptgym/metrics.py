"""Per-step metrics: ``RUN/metrics.msgpack`` (one record per step) plus optional mirrors (DESIGN §8).

Keys are namespaced: ``rollout/``, ``reward/``, ``loss/``, ``perf/``, ``gpu/``, ``eval/``. Each
record also holds ``step`` and ``time`` (unix seconds). The stream format is the store's, so a run
killed mid-write keeps every complete step, and the TUI can follow the file while training runs.
Imports neither torch nor textual.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ptgym.store import RecordReader, RecordWriter

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
