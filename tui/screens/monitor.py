"""Monitor: follow a run while it trains: curves over steps, the latest step, ETA, GPU or CPU.

A thread worker polls ``RUN/metrics.msgpack`` through ``MetricsFollower`` (only the bytes
appended since the last poll are read) and the heartbeat, and posts what it found; the screen owns
the step records and redraws from them. History covers the whole run.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Grid, VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static, TabbedContent, TabPane

from ptgym.metrics import MetricsFollower
from ptgym.runstatus import RunStatus, run_status
from ptgym.tui.alerts import Thresholds, alerts
from ptgym.tui.messages import MetricsAppended
from ptgym.tui.runinfo import STATE_STYLE, read_config
from ptgym.tui.system import SystemSampler
from ptgym.tui.widgets.chart import MetricChart
from ptgym.tui.widgets.system_panel import SystemPanel

CHARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward/mean", "reward/pass_rate", "eval/pass@1")),  # eval: held-out steps
    ("loss", ("loss/total",)),
    ("KL", ("loss/approx_kl", "loss/kl")),
    ("entropy", ("loss/entropy",)),
    ("tokens per response", ("rollout/response_tokens", "rollout/trajectory_tokens")),
    ("clip fraction", ("loss/clip_frac",)),
    ("kept fraction", ("rollout/kept_frac",)),
    ("tokens/s", ("perf/tokens_per_s",)),
)


def eta_seconds(records: list[dict[str, Any]], steps: int | None) -> float | None:
    """Remaining steps times the median step time of the last few steps."""
    if not records or not steps:
        return None
    left = steps - int(records[-1].get("step", 0))
    if left <= 0:
        return 0.0
    recent = [
        r["perf/step_s"] for r in records[-5:] if isinstance(r.get("perf/step_s"), (int, float))
    ]
    if not recent:
        times = [r["time"] for r in records[-6:] if "time" in r]
        recent = [b - a for a, b in zip(times, times[1:], strict=False)]
    return left * statistics.median(recent) if recent else None


def fmt_duration(s: float) -> str:
    s = int(round(s))
    if s >= 3600:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    return str(v)


class MonitorScreen(Screen):
    """Curves, latest step and system panel of one run, followed while it trains."""

    BINDINGS = [
        Binding("c", "tab('charts')", "Charts"),
        Binding("l", "tab('step')", "Step"),
        Binding("g", "tab('system')", "GPU"),
        Binding("t", "timebase", "Timebase", show=False),
        Binding("escape", "app.back", "Back", show=False),
    ]

    def __init__(
        self,
        run_dir: Path,
        *,
        thresholds: Thresholds | None = None,
        sampler: Callable[[], SystemSampler] | None = None,
        poll_interval: float = 0.5,
        sample_interval: float = 1.0,
    ) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.thresholds = thresholds or Thresholds()
        self.records: list[dict[str, Any]] = []
        self.status = RunStatus("unknown")
        self._follower = MetricsFollower(self.run_dir)  # touched only by the poll worker
        self._sampler = sampler or (lambda: SystemSampler.detect(self._trainer_pid()))
        self.poll_interval = poll_interval
        self.sample_interval = sample_interval
        self._polling = False  # a poll worker is running
        self._planned: int | None = None  # trainer.steps from config.yaml, read by the worker

    def _trainer_pid(self) -> int | None:
        return run_status(self.run_dir).pid

    def compose(self) -> ComposeResult:
        yield Static(id="status")
        yield Static(id="alerts")
        with TabbedContent(initial="charts"):
            with TabPane("Charts", id="charts"), VerticalScroll(), Grid(id="chart-grid"):
                for i, (title, keys) in enumerate(CHARTS):
                    yield MetricChart(title, keys, id=f"chart-{i}")
            with TabPane("Latest step", id="step"):
                yield DataTable(id="step-table", cursor_type="row", zebra_stripes=True)
            with TabPane("GPU/CPU", id="system"), VerticalScroll():
                yield SystemPanel(self._sampler, interval=self.sample_interval, id="system-panel")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#step-table", DataTable).add_columns("metric", "value")
        self.query_one("#alerts", Static).display = False
        self._draw_status()
        self._timer = self.set_interval(self.poll_interval, self._tick, pause=True)

    def on_screen_resume(self) -> None:
        """Follow the run while shown (the GPU/CPU history keeps sampling meanwhile)."""
        self._tick()
        self._timer.resume()

    def on_screen_suspend(self) -> None:
        self._timer.pause()

    def _tick(self) -> None:
        """Start a poll unless one is still running (the follower has one reader at a time)."""
        if not self._polling:
            self._polling = True
            self._poll()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_timebase(self) -> None:
        self.query_one(SystemPanel).action_timebase()

    @work(thread=True, group="metrics")
    def _poll(self) -> None:
        if self._planned is None:
            trainer = read_config(self.run_dir).get("trainer")
            self._planned = trainer.get("steps", 0) if isinstance(trainer, dict) else 0
        status = run_status(self.run_dir)
        if not status.steps and self._planned:
            status = replace(status, steps=self._planned)
        try:
            new = self._follower.poll()
        except (OSError, ValueError) as exc:  # CorruptStreamError: shown, and polled again
            self.post_message(MetricsAppended([], False, status, error=str(exc)))
            return
        self.post_message(MetricsAppended(new, self._follower.restarted, status))

    def on_metrics_appended(self, message: MetricsAppended) -> None:
        self._polling = False
        changed = bool(message.records) or message.restarted
        if message.restarted:
            self.records = []
        self.records.extend(message.records)
        self.status = message.status
        self._draw_status()
        if message.error:
            self._show_alerts([message.error])
        if not changed:
            return
        for chart in self.query(MetricChart):
            chart.plot(self.records)
        self._draw_table()
        self._show_alerts(alerts(self.records, self.thresholds))

    def _show_alerts(self, warnings: list[str]) -> None:
        line = self.query_one("#alerts", Static)
        line.display = bool(warnings)
        line.update(Text("⚠ " + " · ".join(warnings), style="bold"))

    def _draw_table(self) -> None:
        table = self.query_one("#step-table", DataTable)
        table.clear()
        if self.records:
            last = self.records[-1]
            for k in sorted(last):
                v = last[k]
                shown = (
                    time.strftime("%H:%M:%S", time.localtime(v)) if k == "time" else fmt_value(v)
                )
                table.add_row(k, shown, key=k)

    def _draw_status(self) -> None:
        s = self.status
        last = self.records[-1] if self.records else {}
        step = last.get("step", s.step or 0)
        steps = s.steps
        parts = [
            Text(self.run_dir.name, style="bold"),
            Text(s.state, style=STATE_STYLE.get(s.state, "")),
            Text(f"step {step}/{steps if steps else '?'}"),
        ]
        if s.state == "live" and (eta := eta_seconds(self.records, steps)) is not None:
            parts.append(Text(f"ETA {fmt_duration(eta)}"))
        for key, label in (("reward/mean", "reward"), ("reward/pass_rate", "pass")):
            if isinstance(last.get(key), (int, float)):
                parts.append(Text(f"{label} {last[key]:.3f}"))
        if s.reason:
            parts.append(Text(s.reason, style="dim"))
        self.query_one("#status", Static).update(Text(" · ").join(parts))
