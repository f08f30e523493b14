"""A line chart of a few metrics over steps (textual-plotext), fed the run's step records."""

from __future__ import annotations

import math
from typing import Any

from textual_plotext import PlotextPlot

MAX_POINTS = 400  # per series: a wide terminal's chart is ~2 x 200 braille columns


class MetricChart(PlotextPlot):
    """One chart: ``keys`` are metric names drawn against ``step``; absent keys are skipped."""

    DEFAULT_CSS = """
    MetricChart { height: 12; min-width: 30; border: round $panel; }
    """

    def __init__(self, title: str, keys: tuple[str, ...], *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.title = title
        self.keys = keys
        self.border_title = title

    def on_mount(self) -> None:
        super().on_mount()
        self.plot([])

    def plot(self, records: list[dict[str, Any]]) -> None:
        plt = self.plt
        plt.clear_data()
        plt.clear_figure()
        plt.title("")
        drawn = False
        for key in self.keys:
            pts = [
                (r["step"], float(r[key]))
                for r in records
                if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])
            ]
            if len(pts) > MAX_POINTS:  # more points than the braille canvas has columns
                stride = -(-len(pts) // MAX_POINTS)
                pts = pts[-1 - (len(pts) - 1) // stride * stride :: stride]
            if pts:
                xs, ys = zip(*pts, strict=True)
                plt.plot(xs, ys, label=key.split("/", 1)[-1], marker="braille")
                drawn = True
        if not drawn:
            plt.title("no data yet")
        plt.xlabel("step")
        self.refresh()
