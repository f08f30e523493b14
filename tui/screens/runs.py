"""Runs: every run under a folder, one row each, refreshed while they train.

A thread worker finds the run directories and brings each ``RunWatcher`` up to date (reading only
what each metrics stream gained since the last scan); the screen owns the table. Enter opens a
run on its rollouts, ``m`` on its monitor.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Static

from ptgym.tui.messages import OpenRun, RunsScanned
from ptgym.tui.runinfo import STATE_STYLE, RunInfo, RunWatcher, find_runs
from ptgym.tui.system import sparkline

COLUMNS = ("run", "env", "model", "algo", "steps", "reward", "status", "reward trend")


def _steps(info: RunInfo) -> str:
    return f"{info.steps_done}/{info.steps_planned}" if info.steps_planned else str(info.steps_done)


class RunsScreen(Screen):
    """The runs under one folder."""

    BINDINGS = [
        Binding("enter", "open('rollouts')", "Rollouts", show=True),
        Binding("m", "open('monitor')", "Monitor"),
        Binding("f5", "rescan", "Refresh"),
    ]

    def __init__(self, folder: Path, *, scan_interval: float = 2.0) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.scan_interval = scan_interval
        self.runs: list[RunInfo] = []
        self._watchers: dict[Path, RunWatcher] = {}  # touched only by the scan worker
        self._scanning = False

    def compose(self) -> ComposeResult:
        yield Static(id="runs-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static(id="runs-empty")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#runs", DataTable)
        for name in COLUMNS:
            table.add_column(name, key=name)
        self.query_one("#runs-title", Static).update(Text(f"runs under {self.folder}", "bold"))
        self.query_one("#runs-empty", Static).display = False
        self._timer = self.set_interval(self.scan_interval, self.action_rescan, pause=True)

    def on_screen_resume(self) -> None:
        """Scan while shown; a run opened over the list has the machine to itself."""
        self.action_rescan()
        self._timer.resume()

    def on_screen_suspend(self) -> None:
        self._timer.pause()

    def action_rescan(self) -> None:
        if not self._scanning:  # the watchers have one reader at a time
            self._scanning = True
            self._scan()

    @work(thread=True, group="runs")
    def _scan(self) -> None:
        runs = find_runs(self.folder)
        infos = []
        for run in runs:
            if run not in self._watchers:
                self._watchers[run] = RunWatcher(run, self.folder)
            try:
                infos.append(replace(self._watchers[run].info()))  # a copy: the screen owns it
            except (OSError, ValueError) as exc:  # a damaged stream: say so on its row
                infos.append(RunInfo(path=run, name=run.name, status=f"unreadable: {exc}"[:40]))
        self.post_message(RunsScanned(infos))

    def on_runs_scanned(self, message: RunsScanned) -> None:
        self._scanning = False
        self.runs = message.runs
        table = self.query_one("#runs", DataTable)
        empty = self.query_one("#runs-empty", Static)
        empty.display = not self.runs
        empty.update(
            f"No runs under {self.folder} yet. Start one with "
            f"`ptgym train env=math out={self.folder / 'math'}`."
        )
        added: list[str] = []
        for info in self.runs:
            cells = self._cells(info)
            key = str(info.path)
            if key in table.rows:
                for name, value in zip(COLUMNS, cells, strict=True):
                    table.update_cell(key, name, value, update_width=True)
            else:
                table.add_row(*cells, key=key)
                added.append(key)
        if added:
            # DataTable measures new rows' widths after drawing them once and keeps that first
            # drawing cached: touch a cell once the widths are in, so the rows draw again.
            self.call_after_refresh(self._redraw_rows, added)

    def _redraw_rows(self, keys: list[str]) -> None:
        table = self.query_one("#runs", DataTable)
        for key in keys:
            if key in table.rows:
                table.update_cell(key, "run", table.get_cell(key, "run"))

    @staticmethod
    def _cells(info: RunInfo) -> tuple:
        reward = f"{info.last_reward:.3f}" if info.last_reward is not None else "-"
        return (
            info.name,
            info.env,
            info.model,
            info.algo,
            _steps(info),
            reward,
            Text(info.status, style=STATE_STYLE.get(info.status, "")),
            Text(sparkline(info.rewards[-12:], lo=min(info.rewards, default=0.0)), "green"),
        )

    def selected_run(self) -> Path | None:
        table = self.query_one("#runs", DataTable)
        if not table.row_count:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
        return Path(key.value) if key.value else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        if event.row_key.value:
            self.post_message(OpenRun(Path(event.row_key.value), "rollouts"))

    def action_open(self, view: str) -> None:
        if (run := self.selected_run()) is not None:
            self.post_message(OpenRun(run, view))
