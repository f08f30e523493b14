"""Rollouts: every trajectory of a run in a list; open one to read it, token by token, or compare it
with another answer to the same prompt.

The list is fed from the run's summary index (``ptgym.runindex``): sorting and filtering never
decode a trajectory, and the table draws only the rows on screen, so 100,000 rows stay
responsive. A trajectory is decoded when it is opened (in a worker thread; the index caches the
last few). A run that is still training grows under the list: new rows are picked up every few
seconds.

Filter syntax (the ``/`` box): ``reward>=0.5 reward<=1 env=math error=no kept=yes step=3`` and any
other words as a case-insensitive text search over id, task, group, prompt, answer and error.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Footer, Input, Static, TabbedContent, TabPane

from ptgym.runindex import RunIndex
from ptgym.tui.widgets.conversation import Conversation
from ptgym.tui.widgets.rollout_table import RolloutTable, header
from ptgym.tui.widgets.tokens import TokenDecoder, TokenView

SORT_KEYS = ("file", "step", "reward", "turns", "length", "env", "task", "error")
YES = {"yes": True, "y": True, "true": True, "1": True, "no": False, "n": False, "false": False}


class FilterError(ValueError):
    """A filter the user typed wrong; the message says what is accepted."""


def parse_filter(text: str, envs: list[str]) -> dict[str, Any]:
    """Keyword arguments for ``Summaries.select`` from the filter box's text."""
    out: dict[str, Any] = {}
    words = []
    for word in text.split():
        key, op, value = _split(word)
        if key is None:
            words.append(word)
        elif key == "reward":
            try:
                lo, _, hi = value.partition("..") if op == "=" else (value, "", value)
                if op == "=" and not _:
                    hi = lo
                if op in ("=", ">="):
                    out["reward_min"] = float(lo)
                if op in ("=", "<="):
                    out["reward_max"] = float(hi)
            except ValueError:
                raise FilterError(f"reward{op}{value}: use a number, e.g. reward>=0.5") from None
        elif key == "step":
            if not value.isdigit():
                raise FilterError(f"step={value}: use a step number, e.g. step=3")
            out["step"] = int(value)
        elif key in ("error", "kept"):
            if value.lower() not in YES:
                raise FilterError(f"{key}={value}: use {key}=yes or {key}=no")
            out[key] = YES[value.lower()]
        else:  # env
            out["env"] = _env(value, envs)
    if words:
        out["text"] = " ".join(words)
    return out


def _split(word: str) -> tuple[str | None, str, str]:
    for op in (">=", "<=", "="):
        key, sep, value = word.partition(op)
        if sep and key in ("reward", "step", "error", "kept", "env"):
            if op != "=" and key != "reward":
                raise FilterError(f"{word}: only reward takes >= or <=")
            return key, op, value
    return None, "", ""


def _env(value: str, envs: list[str]) -> str:
    if value in envs:
        return value
    matches = [e for e in envs if value.lower() in e.lower()]
    if len(matches) == 1:
        return matches[0]
    raise FilterError(f"env={value}: this run's envs are {', '.join(envs) or 'none'}")


def sorted_rows(summaries: Any, rows: np.ndarray, key: str, descending: bool) -> np.ndarray:
    """``rows`` (file order) in the order of column ``key``; ``file`` keeps file order."""
    if key == "file":
        return rows[::-1] if descending else rows
    full = summaries.order(key, descending=descending)
    keep = np.zeros(len(summaries), bool)
    keep[rows] = True
    return full[keep[full]]


def jump_position(summaries: Any, order: np.ndarray, step: int) -> int | None:
    """Position in ``order`` of the first row of ``step`` (or of the nearest later step)."""
    steps = summaries.step[order]
    exact = np.flatnonzero(steps == step)
    if len(exact):
        return int(exact[0])
    later = np.flatnonzero(steps > step)
    return int(later[np.argmin(steps[later])]) if len(later) else None


class RolloutsScreen(Screen[None]):
    """The list of a run's rollouts."""

    AUTO_FOCUS = "#table"  # not the filter box: keys must reach the list
    BINDINGS = [
        Binding("slash", "focus_filter", "Filter"),
        Binding("o", "sort", "Sort"),
        Binding("r", "reverse", "Reverse"),
        Binding("j", "jump", "Jump to step"),
        Binding("x", "compare", "Compare"),
        Binding("escape", "focus_table", "Back", show=False),
    ]
    DEFAULT_CSS = """
    RolloutsScreen #status { height: 1; padding: 0 1; background: $primary-background; }
    RolloutsScreen Input { height: 3; }
    RolloutsScreen #jump { display: none; }
    RolloutsScreen #header { height: 1; text-style: bold; background: $panel; }
    """

    def __init__(self, run_dir: str | Path, *, poll_s: float = 2.0, **kwargs: Any):
        super().__init__(**kwargs)
        self.run_dir = Path(run_dir)
        self.poll_s = poll_s
        self.index: RunIndex | None = None
        self.decoder = TokenDecoder(None, "tokenizer not loaded yet")
        self.sort_key = "file"
        self.descending = False
        self.filters: dict[str, Any] = {}

    def compose(self) -> ComposeResult:
        yield Static("loading…", id="status")
        yield Input(
            placeholder="/ filter: reward>=0.5 env=math error=no kept=yes step=3 text", id="filter"
        )
        yield Input(placeholder="jump to step (Enter)", id="jump", type="integer")
        yield Static(id="header")
        yield RolloutTable(id="table")
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(RolloutTable).focus()
        self.run_worker(self._load(), exclusive=True, group="load")

    async def _load(self) -> None:
        try:
            self.index = await asyncio.to_thread(RunIndex, self.run_dir)
        except (OSError, ValueError) as exc:
            self.query_one("#status", Static).update(f"cannot read {self.run_dir}: {exc}")
            return
        self._apply()
        self.decoder = await asyncio.to_thread(TokenDecoder.for_run, self.run_dir)
        self.set_interval(self.poll_s, self._poll)

    async def _poll(self) -> None:
        if self.index is not None and await asyncio.to_thread(self.index.refresh):
            self._apply(keep=self.query_one(RolloutTable).current_row)

    def _apply(self, keep: int | None = None) -> None:
        assert self.index is not None
        summaries = self.index.summaries()
        rows = summaries.select(**self.filters)
        order = sorted_rows(summaries, rows, self.sort_key, self.descending)
        self.query_one(RolloutTable).set_rows(summaries, order, keep=keep)
        arrow = "↓" if self.descending else "↑"
        shown = f"{len(order):,} of {len(summaries):,} rollouts"
        described = " ".join(f"{k}={v}" for k, v in self.filters.items()) or "none"
        self.query_one("#status", Static).update(
            f"{self.run_dir.name}: {shown} · sort {self.sort_key} {arrow} · filter {described}"
        )

    def on_resize(self) -> None:
        self.query_one("#header", Static).update(header(self.query_one(RolloutTable).size.width))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if self.index is None:
            return
        table = self.query_one(RolloutTable)
        if event.input.id == "filter":
            envs = sorted(set(self.index.summaries().env))
            try:
                self.filters = parse_filter(event.value, envs)
            except FilterError as exc:
                self.notify(str(exc), severity="error")
                return
            self._apply(keep=table.current_row)
        else:
            event.input.display = False
            if event.value:
                pos = jump_position(self.index.summaries(), table.order, int(event.value))
                if pos is None:
                    self.notify(f"no rollouts at step {event.value} or later in this list")
                else:
                    table.cursor = pos
        table.focus()

    def on_rollout_table_selected(self, event: RolloutTable.Selected) -> None:
        if self.index is not None:
            self.app.push_screen(RolloutScreen(self.index, event.row, self.decoder))

    def action_focus_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_focus_table(self) -> None:
        """Escape: from the filter or jump box back to the list; from the list, back out."""
        table = self.query_one(RolloutTable)
        if self.focused is table and hasattr(self.app, "action_back"):
            self.app.action_back()
            return
        self.query_one("#jump", Input).display = False
        table.focus()

    def action_sort(self) -> None:
        self.sort_key = SORT_KEYS[(SORT_KEYS.index(self.sort_key) + 1) % len(SORT_KEYS)]
        if self.index is not None:
            self._apply(keep=self.query_one(RolloutTable).current_row)

    def action_reverse(self) -> None:
        self.descending = not self.descending
        if self.index is not None:
            self._apply(keep=self.query_one(RolloutTable).current_row)

    def action_jump(self) -> None:
        jump = self.query_one("#jump", Input)
        jump.value = ""
        jump.display = True
        jump.focus()

    def action_compare(self) -> None:
        row = self.query_one(RolloutTable).current_row
        if self.index is None or row is None:
            return
        screen = CompareScreen.for_row(self.index, row, self.decoder)
        if screen is None:
            self.notify("no other rollout of this group to compare with", severity="warning")
        else:
            self.app.push_screen(screen)


def title(index: RunIndex, row: int) -> str:
    s = index.summaries().row(row)
    kept = {True: "kept", False: "dropped", None: "kept: unknown"}[s.kept]
    return (
        f"{s.id} · step {s.step} · {s.env} · task {s.task} · group {s.group} · "
        f"reward {s.reward:g} · {s.turns} turns · {s.length} tokens · {kept}"
        + (f" · error: {s.error}" if s.error else "")
    )


def advantages(index: RunIndex, trajectory_id: str) -> list[float] | None:
    note = index.annotations().get(trajectory_id)
    return note.advantages if note is not None else None


class RolloutScreen(Screen[None]):
    """One rollout: its conversation, or its tokens (``v`` switches)."""

    AUTO_FOCUS = "#messages"
    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("v", "switch_view", "Conversation/tokens"),
        Binding("x", "compare", "Compare"),
    ]
    DEFAULT_CSS = """
    RolloutScreen #title { height: auto; padding: 0 1; background: $primary-background; }
    RolloutScreen #views { height: 1fr; }
    RolloutScreen TabPane { height: 1fr; padding: 0; }
    """

    def __init__(self, index: RunIndex, row: int, decoder: TokenDecoder, **kwargs: Any):
        super().__init__(**kwargs)
        self.index, self.row, self.decoder = index, row, decoder
        self.trajectory: Any = None

    def compose(self) -> ComposeResult:
        yield Static(title(self.index, self.row), id="title")
        with TabbedContent(id="views"):
            with TabPane("Conversation", id="conversation"):
                yield Conversation(id="messages")
            with TabPane("Tokens", id="tokens"):
                yield TokenView(self.decoder, id="token-view")
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._load(), exclusive=True)

    async def _load(self) -> None:
        traj = await asyncio.to_thread(self.index.trajectory, self.row)
        adv = advantages(self.index, traj.id)
        self.trajectory = traj
        self.query_one(Conversation).show(traj, adv)
        self.query_one(TokenView).show(traj, adv)
        self.query_one(Conversation).focus()

    def action_switch_view(self) -> None:
        views = self.query_one(TabbedContent)
        views.active = "tokens" if views.active == "conversation" else "conversation"
        target = TokenView if views.active == "tokens" else Conversation
        self.query_one(target).focus()

    def action_compare(self) -> None:
        screen = CompareScreen.for_row(self.index, self.row, self.decoder)
        if screen is None:
            self.notify("no other rollout of this group to compare with", severity="warning")
        else:
            self.app.push_screen(screen)


class CompareScreen(Screen[None]):
    """Two rollouts of the same group side by side; ``[``/``]`` change the right one."""

    BINDINGS = [
        Binding("escape", "app.pop_screen", "Back"),
        Binding("left_square_bracket", "other(-1)", "Prev other"),
        Binding("right_square_bracket", "other(1)", "Next other"),
    ]
    DEFAULT_CSS = """
    CompareScreen .side { width: 1fr; border: round $primary; }
    """

    def __init__(self, index: RunIndex, row: int, others: list[int], **kwargs: Any):
        super().__init__(**kwargs)
        self.index, self.row, self.others = index, row, others
        self.at = 0

    @classmethod
    def for_row(cls, index: RunIndex, row: int, decoder: TokenDecoder) -> CompareScreen | None:
        summaries = index.summaries()
        group = summaries.group[row]
        others = [i for i, g in enumerate(summaries.group) if g == group and i != row]
        return cls(index, row, others) if others else None

    def compose(self) -> ComposeResult:
        with Horizontal():
            yield Conversation(id="left", classes="side")
            yield Conversation(id="right", classes="side")
        yield Footer()

    def on_mount(self) -> None:
        self.run_worker(self._show(self.row, "#left"), group="left")
        self.run_worker(self._show(self.others[self.at], "#right"), exclusive=True, group="right")

    async def _show(self, row: int, where: str) -> None:
        traj = await asyncio.to_thread(self.index.trajectory, row)
        side = self.query_one(where, Conversation)
        side.border_title = f"{traj.id} · reward {traj.reward:g}"
        side.show(traj, advantages(self.index, traj.id))

    def action_other(self, step: int) -> None:
        self.at = (self.at + step) % len(self.others)
        self.run_worker(self._show(self.others[self.at], "#right"), exclusive=True, group="right")
