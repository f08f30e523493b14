"""GPU panel (NVML) or, where there is no GPU, CPU/RAM panel (psutil), with a history.

A thread worker samples the ``SystemSampler`` every ``interval`` seconds and posts each sample;
the panel alone owns the ``History`` and draws from it, so no state is shared with the thread.
``t`` cycles the timebase of the history sparklines (1 min, 5 min, 15 min, 1 h).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rich.table import Table
from rich.text import Text
from textual import work
from textual.binding import Binding
from textual.widgets import Static
from textual.worker import get_current_worker

from ptgym.tui.messages import SystemSampled
from ptgym.tui.system import TIMEBASES, GpuSample, History, HostSample, SystemSampler, sparkline

GIB = 2**30


def _bar(frac: float, width: int = 12) -> str:
    full = int(round(max(0.0, min(frac, 1.0)) * width))
    return "█" * full + "░" * (width - full)


def _span(seconds: int) -> str:
    return f"{seconds // 60} min" if seconds < 3600 else f"{seconds // 3600} h"


class SystemPanel(Static, can_focus=True):
    """Live GPU (or CPU/RAM) readings and their history over a selectable timebase."""

    BINDINGS = [Binding("t", "timebase", "Timebase")]
    DEFAULT_CSS = """
    SystemPanel { height: auto; padding: 0 1; }
    """

    def __init__(
        self, sampler: Callable[[], SystemSampler], *, interval: float = 1.0, id: str | None = None
    ) -> None:
        super().__init__(id=id)
        self._make_sampler = sampler
        self.interval = interval
        self.history = History()
        self.timebase = TIMEBASES[0]

    def on_mount(self) -> None:
        self.update(Text("sampling…", style="dim"))
        self._sample()

    @work(thread=True, exclusive=True, group="system")
    def _sample(self) -> None:
        worker = get_current_worker()
        sampler = self._make_sampler()
        try:
            while not worker.is_cancelled:
                self.post_message(SystemSampled(sampler.sample()))
                deadline = time.monotonic() + self.interval
                while not worker.is_cancelled and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            sampler.close()

    def on_system_sampled(self, message: SystemSampled) -> None:
        self.history.add(message.sample)
        self.redraw()

    def action_timebase(self) -> None:
        self.timebase = TIMEBASES[(TIMEBASES.index(self.timebase) + 1) % len(TIMEBASES)]
        self.redraw()

    def redraw(self) -> None:
        latest = self.history.latest
        if latest is None:
            return
        width = max(self.size.width - 16, 10)
        if latest.gpus:
            self.update(self._gpus(latest.gpus, width))
        elif latest.host is not None:
            self.update(self._host(latest.host, width))

    def _series(self, fn: Callable, width: int, hi: float | None = None) -> str:
        return sparkline(self.history.window(fn, self.timebase, width), hi=hi)

    def _gpus(self, gpus: tuple[GpuSample, ...], width: int) -> Table:
        t = Table.grid(padding=(0, 1))
        t.add_column(width=12, style="bold")
        t.add_column()
        t.add_row("", Text(f"history: last {_span(self.timebase)} (t to change)", style="dim"))
        for g in gpus:

            def gpu(s, i=g.index):
                return s.gpus[i] if i < len(s.gpus) else None

            mem = g.mem_used / g.mem_total if g.mem_total else 0.0
            power = f"{g.power:.0f}/{g.power_limit:.0f} W" if g.power_limit else f"{g.power:.0f} W"
            t.add_row(f"GPU {g.index}", Text(g.name, style="bold"))
            t.add_row("util", f"{_bar(g.util / 100)} {g.util:3.0f}%")
            t.add_row(
                "memory",
                f"{_bar(mem)} {g.mem_used / GIB:.1f}/{g.mem_total / GIB:.1f} GiB",
            )
            t.add_row("temp  power", f"{g.temperature:.0f}°C  {power}")
            t.add_row("util hist", self._series(lambda s, f=gpu: f(s) and f(s).util, width, 100))
            t.add_row(
                "mem hist",
                self._series(lambda s, f=gpu: f(s) and f(s).mem_used, width, g.mem_total),
            )
            for p in g.processes:
                t.add_row("", Text(f"pid {p.pid:<8} {p.name[:24]:<24} {p.memory / GIB:6.2f} GiB"))
        return t

    def _host(self, h: HostSample, width: int) -> Table:
        t = Table.grid(padding=(0, 1))
        t.add_column(width=12, style="bold")
        t.add_column()
        t.add_row("", Text(f"no GPU · history: last {_span(self.timebase)} (t)", style="dim"))
        t.add_row("CPU", f"{_bar(h.cpu / 100)} {h.cpu:3.0f}% of {h.cores} cores")
        ram = h.ram_used / h.ram_total if h.ram_total else 0.0
        t.add_row("RAM", f"{_bar(ram)} {h.ram_used / GIB:.1f}/{h.ram_total / GIB:.1f} GiB")
        t.add_row("CPU hist", self._series(lambda s: s.host and s.host.cpu, width, 100))
        t.add_row(
            "RAM hist", self._series(lambda s: s.host and s.host.ram_used, width, h.ram_total)
        )
        if h.process is not None:
            pid, cpu, rss = h.process
            t.add_row("trainer", f"pid {pid}  {cpu:.0f}% CPU  {rss / GIB:.2f} GiB RSS")
        return t
