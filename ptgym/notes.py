"""What the trainer knew about each trajectory: ``RUN/trainer.msgpack`` (DESIGN §8, §10).

One record per trajectory per step, appended after the update:
``{"step": N, "id": trajectory id, "kept": bool, "drop_reason": None | "error" | "zero-variance",
"advantages": [one float per turn]}``. ``step`` is the 1-based step of the metrics stream;
``advantages`` is the mean advantage over each turn's sampled tokens (empty for a dropped
trajectory). Readers (the TUI) join the records to trajectories by id, so a rollout's turns can be
coloured by the credit they got without importing torch. Imports neither torch nor textual.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ptgym.store import RecordReader
from ptgym.types import Trajectory

NOTES_FILE = "trainer.msgpack"


def trainer_notes(
    step: int, trajs: list[Trajectory], kept: list[Trajectory], advantages: list[list[float]]
) -> list[dict[str, Any]]:
    """The records of one step: ``advantages[i]`` belongs to ``kept[i]``."""
    per_kept = {t.id: adv for t, adv in zip(kept, advantages, strict=False)}
    out = []
    for t in trajs:
        kept_it = t.id in per_kept
        reason = None if kept_it else ("error" if t.error is not None else "zero-variance")
        out.append(
            {
                "step": step,
                "id": t.id,
                "kept": kept_it,
                "drop_reason": reason,
                "advantages": [float(a) for a in per_kept.get(t.id, [])],
            }
        )
    return out


def read_notes(run_dir: str | Path) -> dict[str, dict[str, Any]]:
    """Every complete record of ``RUN/trainer.msgpack`` by trajectory id ({} when absent)."""
    path = Path(run_dir) / NOTES_FILE
    if not path.exists():
        return {}
    return {r["id"]: r for r in RecordReader(path)}
