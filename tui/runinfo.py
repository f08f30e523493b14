"""One line per run for the runs screen: what it trains, how far it got, whether it still runs.

``RunWatcher`` follows a run's metrics stream (reading only what was appended since the last
call) and its heartbeat; ``find_runs`` lists the run directories under a folder. Imports neither
torch nor textual, so the runs screen's worker calls it off the event loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptgym.metrics import METRICS_FILE, MetricsFollower
from ptgym.runstatus import run_status

CONFIG_FILE = "config.yaml"
SPARK_STEPS = 40  # rewards kept for the sparkline
STATE_STYLE = {  # how each run state is shown
    "live": "bold green",
    "finished": "bold blue",
    "failed": "bold red",
    "crashed": "bold red",
    "unknown": "dim",
}


def is_run(path: Path) -> bool:
    return (
        (path / CONFIG_FILE).is_file()
        or (path / METRICS_FILE).is_file()
        or (path / "trajectories").is_dir()
    )


def find_runs(folder: Path, depth: int = 2) -> list[Path]:
    """Run directories at or under ``folder`` (``runs/NAME`` and ``runs/GROUP/NAME``), sorted."""
    if is_run(folder):
        return [folder]
    found: list[Path] = []
    if depth > 0 and folder.is_dir():
        for child in sorted(
            p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        ):
            found.extend(find_runs(child, depth - 1))
    return found


def read_config(run: Path) -> dict[str, Any]:
    path = run / CONFIG_FILE
    if not path.is_file():
        return {}
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        data = yaml.load(path.read_text(), Loader=loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def _name(cfg: dict[str, Any], group: str) -> str:
    v = cfg.get(group)
    if isinstance(v, dict):
        return str(v.get("name") or "-")
    return str(v) if v else "-"


@dataclass
class RunInfo:
    path: Path
    name: str
    env: str = "-"
    model: str = "-"
    algo: str = "-"
    steps_done: int = 0
    steps_planned: int | None = None
    last_reward: float | None = None
    status: str = "unknown"  # live | finished | failed | crashed | unknown
    rewards: list[float] = field(default_factory=list)


class RunWatcher:
    """Keeps one run's line up to date; ``info()`` reads only what changed since the last call."""

    def __init__(self, run: Path, root: Path):
        self.run = run
        cfg = read_config(run)
        trainer = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
        name = str(run.relative_to(root)) if run != root and run.is_relative_to(root) else run.name
        self._info = RunInfo(
            path=run,
            name=name,
            env=_name(cfg, "env"),
            model=_name(cfg, "model"),
            algo=_name(cfg, "algo") if "algo" in cfg else "rollout",
            steps_planned=trainer.get("steps"),
        )
        self._metrics = MetricsFollower(run)

    def info(self) -> RunInfo:
        new = self._metrics.poll()
        i = self._info
        if self._metrics.restarted:
            i.rewards = []
        for r in new:
            if isinstance(r.get("reward/mean"), (int, float)):
                i.rewards.append(float(r["reward/mean"]))
        del i.rewards[:-SPARK_STEPS]
        records = self._metrics.records
        if records:
            i.steps_done = int(records[-1].get("step", len(records)))
            i.last_reward = i.rewards[-1] if i.rewards else None
        status = run_status(self.run)
        i.status = status.state
        if status.steps and i.steps_planned is None:
            i.steps_planned = status.steps
        return i
