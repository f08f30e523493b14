"""Warnings the monitor shows over a run's metrics: reward collapse, KL spikes, NaN values.

Pure functions over the step records (``ptgym.metrics``), so they are tested without a terminal.
Thresholds are a dataclass the CLI fills (``ptgym tui monitor RUN --kl-max 0.5``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import median
from typing import Any

KL_KEYS = ("loss/approx_kl", "loss/kl")


@dataclass(frozen=True)
class Thresholds:
    """When the monitor warns."""

    collapse_frac: float = 0.5  # recent mean reward below this share of the best window: collapse
    collapse_min_best: float = 0.1  # ... once the best window's mean reward reached at least this
    window: int = 5  # steps averaged for "recent" and for each candidate "best" window
    kl_max: float = 1.0  # KL above this is a spike, whatever came before
    kl_factor: float = 10.0  # ... or above this many times the median of the earlier steps


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def nan_alerts(record: dict[str, Any]) -> list[str]:
    bad = [k for k, v in record.items() if _num(v) and not math.isfinite(v)]
    if not bad:
        return []
    shown = ", ".join(sorted(bad)[:4]) + (f" (+{len(bad) - 4})" if len(bad) > 4 else "")
    return [f"non-finite value at step {record.get('step')}: {shown}"]


def kl_alerts(records: list[dict[str, Any]], th: Thresholds) -> list[str]:
    last = records[-1]
    for key in KL_KEYS:
        v = last.get(key)
        if not _num(v) or not math.isfinite(v):
            continue
        if v > th.kl_max:
            return [f"KL spike: {key} = {v:.3g} at step {last.get('step')} (max {th.kl_max:g})"]
        earlier = [r[key] for r in records[:-1] if _num(r.get(key)) and math.isfinite(r[key])]
        if len(earlier) >= th.window and (m := median(earlier)) > 0 and v > th.kl_factor * m:
            return [
                f"KL spike: {key} = {v:.3g} at step {last.get('step')}, "
                f"{v / m:.0f}x the median {m:.3g}"
            ]
    return []


def collapse_alerts(records: list[dict[str, Any]], th: Thresholds) -> list[str]:
    rewards = [r["reward/mean"] for r in records if _num(r.get("reward/mean"))]
    w = th.window
    if len(rewards) < 2 * w:
        return []
    means = [sum(rewards[i : i + w]) / w for i in range(len(rewards) - w + 1)]
    best, recent = max(means[:-1]), means[-1]
    if best >= th.collapse_min_best and recent < th.collapse_frac * best:
        return [f"reward collapse: last {w} steps mean {recent:.3g}, best {w}-step mean {best:.3g}"]
    return []


def alerts(records: list[dict[str, Any]], th: Thresholds | None = None) -> list[str]:
    """Every warning that holds at the latest step (empty while the run looks healthy)."""
    if not records:
        return []
    th = th or Thresholds()
    return nan_alerts(records[-1]) + kl_alerts(records, th) + collapse_alerts(records, th)
