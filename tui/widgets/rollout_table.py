"""A virtual table of rollout summaries: draws only the rows on screen.

Textual's ``DataTable`` builds a row object per row: 100,000 rows took 70 s to add on the
development machine. This widget keeps the run's ``Summaries`` columns and an array of row
numbers (the current sort and filter) and renders each visible line on demand (the line API),
so a new sort or filter over 100,000 rows is one numpy ``argsort`` or mask.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.segment import Segment
from rich.style import Style
from textual.binding import Binding
from textual.geometry import Size
from textual.message import Message
from textual.reactive import reactive
from textual.scroll_view import ScrollView
from textual.strip import Strip

# (title, summary column, width); the last column takes what is left.
COLUMNS = (
    ("step", "step", 5),
    ("env", "env", 14),
    ("task", "task", 12),
    ("reward", "reward", 7),
    ("turns", "turns", 5),
    ("length", "length", 6),
    ("error", "error", 12),
    ("kept", "kept", 4),
    ("prompt", "prompt", 0),
)


def _cell(summaries: Any, column: str, row: int) -> str:
    if column == "reward":
        return f"{summaries.reward[row]:.3g}"
    if column == "kept":
        return {1: "yes", 0: "no"}.get(int(summaries.kept[row]), "-")
    if column == "error":
        return summaries.error[row] or ""
    if column == "env":
        return summaries.env[row].removeprefix("ptgym/")
    value = getattr(summaries, column)[row]
    return str(value)


def format_row(summaries: Any, row: int, width: int) -> str:
    parts = []
    used = 0
    for _, column, w in COLUMNS:
        if w == 0:
            w = max(width - used, 0)
        text = _cell(summaries, column, row).replace("\n", " ")
        text = text[: w - 1] + "…" if len(text) > w else text
        parts.append(
            text.rjust(w) if column in ("step", "reward", "turns", "length") else text.ljust(w)
        )
        used += w + 1
    return " ".join(parts)[:width].ljust(width)


def header(width: int) -> str:
    parts = []
    used = 0
    for title, column, w in COLUMNS:
        w = w or max(width - used, 0)
        parts.append(
            title.rjust(w) if column in ("step", "reward", "turns", "length") else title.ljust(w)
        )
        used += w + 1
    return " ".join(parts)[:width].ljust(width)


class RolloutTable(ScrollView, can_focus=True):
    """Rows ``order`` of ``summaries``; Enter posts ``Selected`` with the summary row number."""

    BINDINGS = [
        Binding("up", "cursor(-1)", "Up", show=False),
        Binding("down", "cursor(1)", "Down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("home", "goto(0)", "First", show=False),
        Binding("end", "goto(-1)", "Last", show=False),
        Binding("enter", "select", "Open"),
    ]
    COMPONENT_CLASSES = {"rollout-table--cursor", "rollout-table--error"}
    DEFAULT_CSS = """
    RolloutTable { height: 1fr; }
    RolloutTable > .rollout-table--cursor { background: $accent; color: $text; text-style: bold; }
    RolloutTable > .rollout-table--error { color: $error; }
    """
    cursor = reactive(0, always_update=True)

    class Selected(Message):
        def __init__(self, row: int):
            super().__init__()
            self.row = row  # summary row number

    class Highlighted(Message):
        def __init__(self, row: int):
            super().__init__()
            self.row = row

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.summaries: Any = None
        self.order = np.zeros(0, np.int64)

    def set_rows(self, summaries: Any, order: np.ndarray, *, keep: int | None = None) -> None:
        """Show ``order`` (summary row numbers); the cursor stays on row ``keep`` if still shown."""
        self.summaries, self.order = summaries, order
        self.virtual_size = Size(self.size.width, len(order))
        target = 0
        if keep is not None:
            hits = np.flatnonzero(order == keep)
            target = int(hits[0]) if len(hits) else 0
        self.cursor = min(target, max(len(order) - 1, 0))
        self.refresh()

    @property
    def current_row(self) -> int | None:
        """The summary row number under the cursor."""
        return int(self.order[self.cursor]) if len(self.order) else None

    def render_line(self, y: int) -> Strip:
        width = self.size.width
        i = self.scroll_offset.y + y
        if self.summaries is None or i >= len(self.order):
            return Strip.blank(width)
        row = int(self.order[i])
        style = Style()
        if self.summaries.error[row]:
            style = self.get_component_rich_style("rollout-table--error")
        if i == self.cursor:
            style = self.get_component_rich_style("rollout-table--cursor")
        return Strip([Segment(format_row(self.summaries, row, width), style)], width)

    def watch_cursor(self, cursor: int) -> None:
        height = self.scrollable_content_region.height
        top = self.scroll_offset.y
        if cursor < top:
            self.scroll_to(y=cursor, animate=False)
        elif height and cursor >= top + height:
            self.scroll_to(y=cursor - height + 1, animate=False)
        self.refresh()
        if len(self.order):
            self.post_message(self.Highlighted(int(self.order[cursor])))

    def on_resize(self) -> None:
        self.virtual_size = Size(self.size.width, len(self.order))

    def action_cursor(self, step: int) -> None:
        if len(self.order):
            self.cursor = min(max(self.cursor + step, 0), len(self.order) - 1)

    def action_page(self, step: int) -> None:
        self.action_cursor(step * max(self.scrollable_content_region.height - 1, 1))

    def action_goto(self, where: int) -> None:
        if len(self.order):
            self.cursor = where % len(self.order)

    def action_select(self) -> None:
        if len(self.order):
            self.post_message(self.Selected(int(self.order[self.cursor])))

    def on_click(self, event: Any) -> None:
        i = self.scroll_offset.y + event.y
        if 0 <= i < len(self.order):
            self.cursor = i
