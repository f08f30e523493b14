"""Help: the keys of the screen underneath and of the app, and where to read more."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Static

ABOUT = (
    "ptgym tui: runs, rollouts token by token, pairwise ranking, live training monitor.\n"
    "ctrl+p opens the command palette (every command, every run); files are only read,\n"
    "except the rank screen's judgments.jsonl."
)


def key_table(screen: Screen) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold cyan", no_wrap=True)
    t.add_column()
    seen = set()
    for active in screen.active_bindings.values():
        b = active.binding
        if not b.description or b.description in seen:
            continue
        seen.add(b.description)
        t.add_row(screen.app.get_key_display(b), b.description)
    return t


class HelpScreen(ModalScreen):
    """Modal over the current screen; any of escape, q or ? closes it."""

    BINDINGS = [
        Binding("escape", "dismiss", "Close"),
        Binding("q", "dismiss", "Close", show=False),
        Binding("question_mark", "dismiss", "Close", show=False),
    ]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 76; max-width: 100%; height: auto; max-height: 90%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """

    def __init__(self, under: Screen) -> None:
        super().__init__()
        self.under = under

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(Text(f"Help: {type(self.under).__name__}", style="bold"))
            yield Static(key_table(self.under))
            yield Static(Text(ABOUT, style="dim"))
