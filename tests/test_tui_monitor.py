"""The monitor (DESIGN §10): a run followed while it trains, its warnings, and the GPU panel
through a fake NVML module (the real one runs where a GPU is lent) or CPU/RAM through psutil.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console
from tui_runs import step_metrics, train_run

from ptgym.metrics import MetricsLogger
from ptgym.tui.alerts import Thresholds, alerts
from ptgym.tui.app import PtgymApp
from ptgym.tui.screens.monitor import eta_seconds, fmt_duration
from ptgym.tui.system import (
    GpuUnavailable,
    History,
    HostProvider,
    NvmlProvider,
    SystemSample,
    SystemSampler,
    sparkline,
)
from ptgym.tui.widgets.chart import MetricChart

GIB = 2**30


async def until(pilot, cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {cond}")
        await pilot.pause(0.05)


def text_of(widget) -> str:
    console = Console(width=160, record=True, color_system=None)
    console.print(widget.content)
    return console.export_text()


class FakeNvml:
    """The slice of pynvml's API the provider calls, answering like two H200s would."""

    NVML_TEMPERATURE_GPU = 0

    class NVMLError(Exception):
        pass

    def __init__(self, fail: bool = False):
        self.fail = fail
        self.shutdown = False

    def nvmlInit(self):
        if self.fail:
            raise self.NVMLError("Driver Not Loaded")

    def nvmlShutdown(self):
        self.shutdown = True

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA H200"

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=45 if h == 0 else 0, memory=10)

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=40 * GIB if h == 0 else 0, total=140 * GIB, free=0)

    def nvmlDeviceGetTemperature(self, h, sensor):
        assert sensor == self.NVML_TEMPERATURE_GPU
        return 62

    def nvmlDeviceGetPowerUsage(self, h):
        return 300_000  # milliwatts

    def nvmlDeviceGetEnforcedPowerLimit(self, h):
        if h == 1:
            raise self.NVMLError("Not Supported")
        return 700_000

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=os.getpid(), usedGpuMemory=12 * GIB)] if h == 0 else []


@pytest.fixture
def run(tmp_path) -> Path:
    return train_run(tmp_path, "live", steps=3, planned=10, state="live")


def monitor_app(run: Path, **kw) -> PtgymApp:
    kw.setdefault("sampler", lambda: SystemSampler(None, HostProvider()))
    return PtgymApp(run, view="monitor", poll_interval=0.05, **kw)


def test_a_step_logged_while_the_monitor_is_open_shows_up(run):
    async def go():
        app = monitor_app(run)
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            await until(pilot, lambda: len(screen.records) == 3)
            status = str(screen.query_one("#status").content)
            assert "live" in status and "step 3/10" in status and "ETA 18s" in status
            log = MetricsLogger(run)  # the trainer, appending to the same stream
            t0 = time.perf_counter()
            log.log(4, step_metrics(4))
            await until(pilot, lambda: "step 4/10" in str(screen.query_one("#status").content))
            print(f"appended step on screen after {time.perf_counter() - t0:.3f} s")
            log.close()
            assert "reward 0.400" in str(screen.query_one("#status").content)
            table = screen.query_one("#step-table")
            assert [str(c) for c in table.get_row("reward/mean")] == ["reward/mean", "0.4"]
            reward = screen.query_one("#chart-0", MetricChart)
            # The chart redraws after the status line: wait for it rather than race it.
            await until(pilot, lambda: "pass_rate" in str(reward.render()))
            drawn = str(reward.render())
            assert "mean" in drawn and "pass_rate" in drawn and "0.40" in drawn

    asyncio.run(go())


def test_every_chart_has_its_metric(run):
    async def go():
        app = monitor_app(run)
        async with app.run_test(size=(200, 60)) as pilot:
            screen = app.screen
            await until(pilot, lambda: len(screen.records) == 3)
            await pilot.pause(0.1)
            charts = list(screen.query(MetricChart))
            assert [c.title for c in charts] == [
                "reward",
                "loss",
                "KL",
                "entropy",
                "tokens per response",
                "clip fraction",
                "kept fraction",
                "tokens/s",
            ]
            for chart in charts:
                assert "no data yet" not in str(chart.render()), chart.title
            assert "pass@1" not in str(charts[0].render())
            log = MetricsLogger(run)  # a step with a held-out evaluation
            log.log(4, {**step_metrics(4), "eval/pass@1": 0.25})
            log.close()
            await until(pilot, lambda: "pass@1" in str(charts[0].render()))

    asyncio.run(go())


def test_the_warning_line_names_a_nan_and_a_kl_spike(run):
    async def go():
        app = monitor_app(run, thresholds=Thresholds(kl_max=0.5))
        async with app.run_test(size=(100, 30)) as pilot:
            screen = app.screen
            line = screen.query_one("#alerts")
            await until(pilot, lambda: len(screen.records) == 3)
            assert not line.display
            log = MetricsLogger(run)
            log.log(4, {**step_metrics(4), "loss/total": math.nan, "loss/approx_kl": 0.9})
            log.close()
            await until(pilot, lambda: line.display)
            text = str(line.content)
            assert "non-finite value at step 4: loss/total" in text
            assert "KL spike: loss/approx_kl = 0.9 at step 4 (max 0.5)" in text

    asyncio.run(go())


def test_a_stream_damaged_in_the_middle_is_reported_not_fatal(run):
    path = run / "metrics.msgpack"
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # inside the first record's payload
    path.write_bytes(bytes(data))

    async def go():
        app = monitor_app(run)
        async with app.run_test(size=(100, 30)) as pilot:
            line = app.screen.query_one("#alerts")
            await until(pilot, lambda: line.display)
            assert "fails its checksum" in str(line.content)
            assert app.screen.records == []

    asyncio.run(go())


def test_gpu_panel_through_a_fake_nvml(run):
    nvml = FakeNvml()

    async def go():
        app = monitor_app(run, sampler=lambda: SystemSampler(NvmlProvider(nvml), None))
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            screen.query_one("SystemPanel").interval = 0.05
            await pilot.press("g")
            panel = screen.query_one("SystemPanel")
            await until(pilot, lambda: len(panel.history.samples) >= 3)
            text = text_of(panel)
            assert "GPU 0" in text and "GPU 1" in text and "NVIDIA H200" in text
            assert " 45%" in text and "40.0/140.0 GiB" in text
            assert "62°C  300/700 W" in text and "62°C  300 W" in text  # GPU 1: no limit
            assert f"pid {os.getpid()}" in text and "12.00 GiB" in text
            assert "last 1 min" in text
            await pilot.press("t")
            assert "last 5 min" in text_of(panel)
        deadline = time.monotonic() + 5
        while not nvml.shutdown and time.monotonic() < deadline:
            time.sleep(0.02)
        assert nvml.shutdown  # the sampling thread closed NVML once the app closed

    asyncio.run(go())


def test_cpu_panel_where_there_is_no_gpu(run):
    async def go():
        app = monitor_app(run, sampler=lambda: SystemSampler(None, HostProvider(os.getpid())))
        async with app.run_test(size=(120, 40)) as pilot:
            await pilot.press("g")
            panel = app.screen.query_one("SystemPanel")
            await until(pilot, lambda: panel.history.latest is not None)
            await pilot.pause(0.1)
            text = text_of(panel)
            assert "no GPU" in text and "CPU" in text and "RAM" in text
            assert f"trainer      pid {os.getpid()}" in text

    asyncio.run(go())


def test_no_driver_means_no_gpu_provider():
    with pytest.raises(GpuUnavailable, match="Driver Not Loaded"):
        NvmlProvider(FakeNvml(fail=True))
    assert SystemSampler.detect(nvml=FakeNvml(fail=True)).gpu is None


@pytest.mark.gpu
def test_real_nvml_reports_each_device():
    try:
        provider = NvmlProvider()
    except GpuUnavailable as exc:
        pytest.skip(f"no GPU here: {exc}")
    samples = provider.sample()
    provider.close()
    assert len(samples) == provider.count
    assert all(s.mem_total > 0 and 0 <= s.util <= 100 for s in samples)


def test_snapshot_monitor_screen(run, snap_compare, monkeypatch):
    monkeypatch.chdir(run.parent)

    async def loaded(pilot):
        await until(pilot, lambda: len(pilot.app.screen.records) == 3)
        await pilot.pause(0.3)

    app = monitor_app(Path("live"))
    assert snap_compare(app, terminal_size=(80, 24), run_before=loaded)


# --- the pure parts --------------------------------------------------------------------------


def records(values: list[float], key: str = "reward/mean") -> list[dict]:
    return [{"step": i + 1, key: v} for i, v in enumerate(values)]


def test_reward_collapse_is_a_recent_window_far_below_the_best():
    th = Thresholds(window=3, collapse_frac=0.5, collapse_min_best=0.1)
    healthy = records([0.2, 0.4, 0.6, 0.6, 0.5, 0.55])
    assert alerts(healthy, th) == []
    collapsed = records([0.2, 0.6, 0.6, 0.6, 0.2, 0.1, 0.0])
    assert alerts(collapsed, th) == ["reward collapse: last 3 steps mean 0.1, best 3-step mean 0.6"]
    never_learned = records([0.05, 0.0, 0.05, 0.0, 0.0, 0.0])
    assert alerts(never_learned, th) == []


def test_kl_spike_is_absolute_or_relative_to_the_median():
    th = Thresholds(kl_max=1.0, kl_factor=10.0, window=3)
    calm = records([0.01, 0.012, 0.011, 0.02], "loss/approx_kl")
    assert alerts(calm, th) == []
    jump = records([0.01, 0.012, 0.011, 0.5], "loss/approx_kl")
    assert alerts(jump, th) == ["KL spike: loss/approx_kl = 0.5 at step 4, 45x the median 0.011"]
    assert alerts(records([1.5], "loss/approx_kl"), th) == [
        "KL spike: loss/approx_kl = 1.5 at step 1 (max 1)"
    ]


def test_nan_and_inf_are_named():
    assert alerts([{"step": 2, "loss/total": math.inf, "reward/mean": math.nan}]) == [
        "non-finite value at step 2: loss/total, reward/mean"
    ]


def test_eta_is_steps_left_times_the_median_step_time():
    recs = [{"step": s, "perf/step_s": t} for s, t in ((1, 10.0), (2, 2.0), (3, 3.0), (4, 4.0))]
    assert eta_seconds(recs, 10) == 6 * 3.5
    assert eta_seconds(recs, 4) == 0.0 and eta_seconds(recs, None) is None
    timed = [{"step": s, "time": 100.0 + 5 * s} for s in (1, 2, 3)]
    assert eta_seconds(timed, 5) == 10.0
    assert fmt_duration(21) == "21s" and fmt_duration(125) == "2m 05s"
    assert fmt_duration(3 * 3600 + 120) == "3h 02m"


def test_history_window_takes_the_max_per_bucket_and_leaves_long_gaps_blank():
    h = History()
    values = {1.0: 10.0, 2.0: 30.0, 2.5: 20.0, 9.5: 90.0}
    for t in values:
        h.add(SystemSample(time=t, gpus=(), host=None))
    buckets = h.window(lambda s: values[s.time], seconds=10.0, width=5, now=10.0)
    # bucket 2 starts 1.5 s after the last sample: repeated; bucket 3 starts 3.5 s after: blank
    assert buckets == [10.0, 30.0, 30.0, None, 90.0]
    assert sparkline(buckets, lo=0, hi=90) == "▂▃▃ █"
