"""``ptgym tui``: the Textual app and its screen routing (DESIGN §10).

Screens, one per file under ``screens/``: runs (a folder of runs), rollouts and rank (issue 9,
helper B), monitor, help. A run opens on its rollouts; F2/F3/F4 switch that run between rollouts,
monitor and rank, escape goes back to the runs. The app only reads run directories (the rank
screen appends to ``judgments.jsonl``); all file IO runs in thread workers, never on the event
loop. Nothing here imports torch (a test proves it).
"""

from __future__ import annotations

import getpass
from collections.abc import Callable, Iterable
from pathlib import Path

from textual.app import App, SystemCommand
from textual.binding import Binding
from textual.screen import Screen

from ptgym.tui.alerts import Thresholds
from ptgym.tui.messages import OpenRun
from ptgym.tui.runinfo import find_runs, is_run
from ptgym.tui.screens.help import HelpScreen
from ptgym.tui.screens.runs import RunsScreen
from ptgym.tui.system import SystemSampler

VIEWS = ("rollouts", "monitor", "rank")


def login_name() -> str:
    """The annotator's default name; a container without a passwd entry has none."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "annotator"


class PtgymApp(App):
    """Runs, rollouts, rank and monitor over run directories."""

    TITLE = "ptgym"
    CSS_PATH = "app.tcss"
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-normal"), (170, "-wide")]
    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("f2", "view('rollouts')", "Rollouts"),
        Binding("f3", "view('monitor')", "Monitor"),
        Binding("f4", "view('rank')", "Rank", show=False),
        Binding("ctrl+t", "toggle_theme", "Theme", show=False),
    ]

    def __init__(
        self,
        path: Path | str = ".",
        *,
        view: str = "auto",
        annotator: str | None = None,
        thresholds: Thresholds | None = None,
        sampler: Callable[[], SystemSampler] | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.path = Path(path)
        self.start_view = view
        self.annotator = annotator or login_name()
        self.thresholds = thresholds
        self.sampler = sampler
        self.poll_interval = poll_interval
        self.current_run: Path | None = None

    # --- routing ------------------------------------------------------------------------------

    def on_mount(self) -> None:
        if self.start_view in VIEWS:
            self.open_run(self.path, self.start_view)
        elif is_run(self.path):
            self.push_screen(RunsScreen(self.path.parent))
            self.open_run(self.path, "rollouts")
        else:
            self.push_screen(RunsScreen(self.path))

    def make_screen(self, run: Path, view: str) -> Screen | None:
        if view == "monitor":
            from ptgym.tui.screens.monitor import MonitorScreen  # plotext: load when first used

            return MonitorScreen(
                run,
                thresholds=self.thresholds,
                sampler=self.sampler,
                poll_interval=self.poll_interval,
            )
        try:  # helper B's screens, imported only when first opened
            if view == "rollouts":
                from ptgym.tui.screens.rollouts import RolloutsScreen

                return RolloutsScreen(run)
            from ptgym.tui.screens.rank import RankScreen

            return RankScreen(run, self.annotator)
        except ImportError as exc:
            self.notify(f"the {view} screen is not available: {exc}", severity="error")
            return None

    def open_run(self, run: Path, view: str) -> None:
        """Show ``run`` on ``view``: pushed over the runs list, or in place of another view."""
        name = f"{view}:{run.resolve()}"
        if not self.is_screen_installed(name):
            screen = self.make_screen(run, view)
            if screen is None:
                return
            self.install_screen(screen, name)
        if self.get_screen(name) is self.screen:
            return
        self.current_run = run
        self.sub_title = f"{run.name} · {view}"
        over_runs = len(self.screen_stack) <= 1 or isinstance(self.screen, RunsScreen)
        if over_runs:
            self.push_screen(name)
        else:
            self.switch_screen(name)

    def on_open_run(self, message: OpenRun) -> None:
        self.open_run(message.run, message.view)

    def action_view(self, view: str) -> None:
        run = self.current_run
        if run is None and isinstance(self.screen, RunsScreen):
            run = self.screen.selected_run()
        if run is None:
            self.notify("choose a run first (enter on the runs list)", severity="warning")
            return
        self.open_run(run, view)

    def action_back(self) -> None:
        if len(self.screen_stack) > 2:
            self.pop_screen()
            self.current_run = None
            self.sub_title = ""

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def action_toggle_theme(self) -> None:
        self.theme = "textual-light" if self.theme == "textual-dark" else "textual-dark"

    # --- command palette ----------------------------------------------------------------------

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Help", "Keys of this screen", self.action_help)
        yield SystemCommand("Toggle dark/light", "Switch the theme", self.action_toggle_theme)
        for view in VIEWS:
            yield SystemCommand(
                f"{view.capitalize()} of this run",
                f"Open the current run's {view} view",
                lambda v=view: self.action_view(v),
            )
        runs_screen = next((s for s in self.screen_stack if isinstance(s, RunsScreen)), None)
        runs = [i.path for i in runs_screen.runs] if runs_screen else find_runs(self.path)[:200]
        for run in runs:
            for view in ("rollouts", "monitor"):
                yield SystemCommand(
                    f"Open {run.name}: {view}",
                    str(run),
                    lambda r=run, v=view: self.open_run(r, v),
                )


def run_tui(
    target: list[str],
    *,
    annotator: str | None = None,
    thresholds: Thresholds | None = None,
) -> int:
    """``ptgym tui [PATH]`` | ``ptgym tui monitor RUN`` | ``ptgym tui rank RUN``."""
    view, rest = ("auto", target)
    if target and target[0] in ("monitor", "rank"):
        view, rest = target[0], target[1:]
    if len(rest) > 1:
        raise ValueError(f"expected one PATH, got {len(rest)}: {' '.join(rest)}")
    default = "runs" if Path("runs").is_dir() and view == "auto" else "."
    path = Path(rest[0] if rest else default)
    if not path.exists():
        raise FileNotFoundError(
            f"no run or folder at {path}: pass a run directory or a folder of runs"
        )
    if view != "auto" and not is_run(path):
        raise FileNotFoundError(
            f"{path} is not a run directory (no config.yaml, metrics.msgpack or trajectories/): "
            f"pass one made by ptgym train or ptgym rollout, e.g. ptgym tui {view} runs/NAME"
        )
    PtgymApp(path, view=view, annotator=annotator, thresholds=thresholds).run()
    return 0
