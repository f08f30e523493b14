"""What the machine is doing: GPUs through NVML (nvidia-ml-py), CPU and RAM through psutil.

Providers turn one call into one immutable sample; the monitor's system panel samples them on a
Textual thread worker and keeps the samples in a ``History`` that it alone mutates (the worker
only posts). ``NvmlProvider`` takes the NVML module as an argument, so a test passes a fake one
and every line of this module still runs; the real one is ``pynvml`` from nvidia-ml-py. Imports
neither torch nor textual.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

TIMEBASES = (60, 300, 900, 3600)  # seconds shown by the history sparklines, cycled with `t`
HISTORY = 3600  # samples kept (an hour at one per second)


@dataclass(frozen=True)
class GpuProcess:
    pid: int
    name: str
    memory: int  # bytes


@dataclass(frozen=True)
class GpuSample:
    index: int
    name: str
    util: float  # percent
    mem_used: int  # bytes
    mem_total: int
    temperature: float  # degrees C
    power: float  # watts
    power_limit: float | None
    processes: tuple[GpuProcess, ...] = ()


@dataclass(frozen=True)
class HostSample:
    cpu: float  # percent, all cores
    cores: int
    ram_used: int
    ram_total: int
    process: tuple[int, float, int] | None = None  # the trainer: pid, cpu percent, rss bytes


@dataclass(frozen=True)
class SystemSample:
    time: float
    gpus: tuple[GpuSample, ...]
    host: HostSample | None


class GpuUnavailable(RuntimeError):
    """No NVIDIA driver or device: the panel shows CPU and RAM instead."""


def _process_name(pid: int) -> str:
    try:
        import psutil

        return psutil.Process(pid).name()
    except Exception:  # noqa: BLE001 - gone, or another user's: the pid alone will do
        return "?"


class NvmlProvider:
    """GPU samples through NVML; ``nvml`` defaults to ``pynvml`` (the nvidia-ml-py package)."""

    def __init__(self, nvml: Any = None):
        if nvml is None:
            try:
                import pynvml as nvml
            except ImportError as exc:
                raise GpuUnavailable("nvidia-ml-py is not installed") from exc
        self.nvml = nvml
        try:
            nvml.nvmlInit()
            self.count = nvml.nvmlDeviceGetCount()
        except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
            raise GpuUnavailable(f"NVML: {exc}") from exc
        if self.count == 0:
            raise GpuUnavailable("NVML found no GPU")
        self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(self.count)]
        self._names = [self._text(nvml.nvmlDeviceGetName(h)) for h in self._handles]

    @staticmethod
    def _text(v: Any) -> str:
        return v.decode() if isinstance(v, bytes) else str(v)

    def _try(self, fn: str, *args: Any) -> Any:
        try:
            return getattr(self.nvml, fn)(*args)
        except Exception:  # noqa: BLE001 - a field this device or driver does not support
            return None

    def sample(self) -> tuple[GpuSample, ...]:
        out = []
        for i, h in enumerate(self._handles):
            util = self._try("nvmlDeviceGetUtilizationRates", h)
            mem = self._try("nvmlDeviceGetMemoryInfo", h)
            temp = self._try("nvmlDeviceGetTemperature", h, self.nvml.NVML_TEMPERATURE_GPU)
            power = self._try("nvmlDeviceGetPowerUsage", h)  # milliwatts
            limit = self._try("nvmlDeviceGetEnforcedPowerLimit", h)
            procs = self._try("nvmlDeviceGetComputeRunningProcesses", h) or []
            out.append(
                GpuSample(
                    index=i,
                    name=self._names[i],
                    util=float(util.gpu) if util is not None else 0.0,
                    mem_used=int(mem.used) if mem is not None else 0,
                    mem_total=int(mem.total) if mem is not None else 0,
                    temperature=float(temp or 0),
                    power=(power or 0) / 1000,
                    power_limit=limit / 1000 if limit else None,
                    processes=tuple(
                        GpuProcess(p.pid, _process_name(p.pid), int(p.usedGpuMemory or 0))
                        for p in procs
                    ),
                )
            )
        return tuple(out)

    def close(self) -> None:
        self._try("nvmlShutdown")


class HostProvider:
    """CPU and RAM through psutil, and the trainer's own process when its pid is known."""

    def __init__(self, pid: int | None = None):
        import psutil

        self.psutil = psutil
        self.pid = pid
        self._proc: Any = None
        psutil.cpu_percent(None)  # the first call only starts the measurement

    def sample(self) -> HostSample:
        ps = self.psutil
        vm = ps.virtual_memory()
        process = None
        if self.pid is not None:
            try:
                if self._proc is None or self._proc.pid != self.pid:
                    self._proc = ps.Process(self.pid)
                    self._proc.cpu_percent(None)
                process = (self.pid, self._proc.cpu_percent(None), self._proc.memory_info().rss)
            except ps.Error:
                self._proc = None
        return HostSample(
            cpu=ps.cpu_percent(None),
            cores=ps.cpu_count() or 1,
            ram_used=int(vm.total - vm.available),
            ram_total=int(vm.total),
            process=process,
        )


class SystemSampler:
    """One ``SystemSample`` per call: every GPU (when there is one) and the host."""

    def __init__(self, gpu: NvmlProvider | None, host: HostProvider | None):
        self.gpu = gpu
        self.host = host

    @classmethod
    def detect(cls, pid: int | None = None, nvml: Any = None) -> SystemSampler:
        try:
            gpu: NvmlProvider | None = NvmlProvider(nvml)
        except GpuUnavailable:
            gpu = None
        return cls(gpu, HostProvider(pid))

    def sample(self) -> SystemSample:
        return SystemSample(
            time=time.time(),
            gpus=self.gpu.sample() if self.gpu is not None else (),
            host=self.host.sample() if self.host is not None else None,
        )

    def close(self) -> None:
        if self.gpu is not None:
            self.gpu.close()


@dataclass
class History:
    """The last ``HISTORY`` samples; ``window`` resamples one series onto a fixed width."""

    samples: deque[SystemSample] = field(default_factory=lambda: deque(maxlen=HISTORY))

    def add(self, s: SystemSample) -> None:
        self.samples.append(s)

    @property
    def latest(self) -> SystemSample | None:
        return self.samples[-1] if self.samples else None

    def window(
        self,
        value: Any,
        seconds: float,
        width: int,
        now: float | None = None,
        max_gap: float = 3.0,
    ) -> list[float | None]:
        """``width`` buckets covering the last ``seconds``: the max of ``value(sample)`` in each
        bucket. A bucket narrower than the sampling interval repeats the sample before it; None
        where nothing was sampled for ``max_gap`` seconds (before the monitor started, a gap)."""
        now = self.latest.time if now is None and self.latest else (now or time.time())
        start = now - seconds
        buckets: list[float | None] = [None] * width
        seen: list[float | None] = [None] * width  # time of the last sample in each bucket
        for s in self.samples:
            if s.time <= start:
                continue
            b = min(int((s.time - start) / seconds * width), width - 1)
            v = value(s)
            if v is not None:
                buckets[b] = v if buckets[b] is None else max(buckets[b], v)
                seen[b] = s.time
        last_value, last_time = None, None
        for b in range(width):
            if buckets[b] is not None:
                last_value, last_time = buckets[b], seen[b]
            elif last_time is not None and start + b * seconds / width - last_time <= max_gap:
                buckets[b] = last_value
        return buckets


BARS = "▁▂▃▄▅▆▇█"


def sparkline(values: Iterable[float | None], lo: float = 0.0, hi: float | None = None) -> str:
    """Unicode block sparkline; None is a blank (no sample)."""
    vals = list(values)
    known = [v for v in vals if v is not None]
    if hi is None:
        hi = max(known, default=1.0)
    span = (hi - lo) or 1.0
    out = []
    for v in vals:
        if v is None:
            out.append(" ")
        else:
            k = int((min(max(v, lo), hi) - lo) / span * (len(BARS) - 1) + 0.5)
            out.append(BARS[k])
    return "".join(out)
