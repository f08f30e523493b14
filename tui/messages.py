"""The app's messages: what workers found, posted to the widget or screen that owns the state."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from textual.message import Message

from ptgym.runstatus import RunStatus
from ptgym.tui.runinfo import RunInfo
from ptgym.tui.system import SystemSample


class RunsScanned(Message):
    """The runs screen's worker read every run under the folder."""

    def __init__(self, runs: list[RunInfo]) -> None:
        super().__init__()
        self.runs = runs


class MetricsAppended(Message):
    """Steps logged since the last poll (``restarted``: the stream was cut; start over)."""

    def __init__(
        self,
        records: list[dict[str, Any]],
        restarted: bool,
        status: RunStatus,
        error: str | None = None,
    ) -> None:
        super().__init__()
        self.records = records
        self.restarted = restarted
        self.status = status
        self.error = error  # the stream could not be read (damaged in the middle)


class SystemSampled(Message):
    """One GPU/CPU sample from the system panel's sampling worker."""

    def __init__(self, sample: SystemSample) -> None:
        super().__init__()
        self.sample = sample


class OpenRun(Message):
    """Open a run on one of its views: ``rollouts`` or ``monitor``."""

    def __init__(self, run: Path, view: str) -> None:
        super().__init__()
        self.run = run
        self.view = view
