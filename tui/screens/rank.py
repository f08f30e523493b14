"""Rank: two responses to the same prompt side by side; the annotator says which is better.

Keyboard only: ``1``/``2`` prefer the left/right response, ``t`` tie, ``s`` skip, ``u`` undo,
``g`` guidelines, ``?`` help. Sides are random per pair and annotator, and the event records
which trajectory was on which side. Every judgment is appended to ``RUN/judgments.jsonl`` and
fsynced before the next pair is drawn (``ptgym.judgments`` owns the log and what it means; this
screen only shows it). Reopening continues at the first pair this annotator has not handled.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.markdown import Markdown
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen, Screen
from textual.widgets import Footer, Static

from ptgym.judgments import RankSession
from ptgym.tui.widgets.conversation import response_renderable

GUIDELINES = """\
## Guidelines

1. Prefer the response that **solves the task**: the right final answer, tests that pass.
2. Then sound reasoning and sensible tool use (no wasted or broken calls).
3. Then clarity: shorter and better formatted wins when both are right.

- **Tie** (`t`): both equally good, or equally bad.
- **Skip** (`s`): you cannot judge this pair.
- Sides are random: judge the text, not the position.

A run may hold its own `guidelines.md`; it replaces these.
"""

HELP = """\
## Ranking keys

| key | action |
|---|---|
| `1` | the left response is better |
| `2` | the right response is better |
| `t` | tie |
| `s` | skip this pair |
| `u` | undo the last judgment (appends a revert event) |
| `g` | show or hide the guidelines |
| `space` / `pgup` | page both answers down / up |
| `?` | this help |

Every judgment is on disk (fsynced) before the next pair appears.
Export: `ptgym prefs export RUN out=prefs.jsonl`.
"""


class RankHelp(ModalScreen[None]):
    """The key list; any key closes it."""

    DEFAULT_CSS = """
    RankHelp { align: center middle; }
    RankHelp > Static { width: 64; height: auto; border: thick $primary; background: $panel;
                        padding: 1 2; }
    """

    def compose(self) -> ComposeResult:
        yield Static(Markdown(HELP))

    def on_key(self) -> None:
        self.dismiss()


class RankScreen(Screen[None]):
    """Pairwise ranking of one run's responses by one annotator."""

    AUTO_FOCUS = None  # every key goes to the screen's bindings (a focused pane would eat pgdn)
    BINDINGS = [
        Binding("1", "judge('left')", "Left better"),
        Binding("2", "judge('right')", "Right better"),
        Binding("t", "judge('tie')", "Tie"),
        Binding("s", "judge('skip')", "Skip"),
        Binding("u", "undo", "Undo"),
        Binding("g", "toggle_guidelines", "Guidelines"),
        Binding("question_mark", "help", "Help"),
        Binding("escape", "back", "Back", show=False),
        Binding("pagedown,space", "scroll_sides(1)", "Scroll", show=False),
        Binding("pageup", "scroll_sides(-1)", "Scroll up", show=False),
    ]
    DEFAULT_CSS = """
    RankScreen #progress { height: 1; padding: 0 1; background: $primary-background; }
    RankScreen #prompt { height: auto; max-height: 30%; border: round $secondary; padding: 0 1; }
    RankScreen #pair { height: 1fr; }
    RankScreen .side { width: 1fr; border: round $primary; padding: 0 1; }
    RankScreen #guidelines { width: 44; border: round $accent; padding: 0 1; }
    """

    def __init__(
        self,
        run_dir: str | Path,
        annotator: str,
        *,
        seed: int = 0,
        per_group: int | None = None,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        self.run_dir = Path(run_dir)
        self.annotator = annotator
        self.seed = seed
        self.per_group = per_group
        self.session: RankSession | None = None
        self.shown: str | None = None  # key of the pair on screen
        self.drawn_at = 0.0  # perf_counter when the pair on screen was last painted (bench)
        self.drawn_cpu = 0.0  # process_time then
        self.draws = 0

    def compose(self) -> ComposeResult:
        yield Static("loading pairs…", id="progress")
        with Horizontal():
            with Vertical():
                with VerticalScroll(id="prompt"):
                    yield Static(id="prompt-text")
                with Horizontal(id="pair"):
                    with VerticalScroll(id="left", classes="side"):
                        yield Static(id="left-text")
                    with VerticalScroll(id="right", classes="side"):
                        yield Static(id="right-text")
            with VerticalScroll(id="guidelines"):
                yield Static(Markdown(self._guidelines()))
        yield Footer()

    def _guidelines(self) -> str:
        custom = self.run_dir / "guidelines.md"
        return custom.read_text() if custom.is_file() else GUIDELINES

    def on_mount(self) -> None:
        self.query_one("#prompt").border_title = "prompt"
        self.query_one("#left").border_title = "1 · left"
        self.query_one("#right").border_title = "2 · right"
        self.query_one("#guidelines").display = self.app.size.width >= 120
        self.run_worker(self._load(), exclusive=True)

    async def _load(self) -> None:
        try:
            self.session = await asyncio.to_thread(
                RankSession,
                self.run_dir,
                self.annotator,
                seed=self.seed,
                per_group=self.per_group,
            )
        except (OSError, ValueError) as exc:
            self.query_one("#progress", Static).update(f"cannot rank: {exc}")
            return
        if self.session.bad_lines:
            self.notify(
                f"skipped {self.session.bad_lines} unreadable line(s) of judgments.jsonl "
                "(a write cut short by a crash)",
                severity="warning",
            )
        await self._show()

    def on_unmount(self) -> None:
        if self.session is not None:
            self.session.close()

    # --- drawing ----------------------------------------------------------------------------

    def _view(self) -> tuple[str | None, Any, Any, Any]:
        """What to draw for the current pair (decodes two trajectories: runs in a thread)."""
        assert self.session is not None
        view = self.session.next_view()
        if view is None:
            total = len(self.session.pairs)
            done = Markdown(
                f"**All {total} pairs are handled.** `u` undoes the last one.\n\n"
                f"Export them: `ptgym prefs export {self.run_dir} out=prefs.jsonl`"
            )
            return None, Markdown(""), done, Markdown("")
        return (
            view.pair.key,
            response_renderable(view.prompt),
            response_renderable(view.left_response),
            response_renderable(view.right_response),
        )

    async def _show(self) -> None:
        assert self.session is not None
        key, prompt, left, right = await asyncio.to_thread(self._view)
        self.shown = key
        self.query_one("#prompt-text", Static).update(prompt)
        self.query_one("#prompt", VerticalScroll).scroll_home(animate=False)
        for side, content in (("#left", left), ("#right", right)):
            # A Static renders only the lines on screen (a RichLog renders every line of the
            # response up front: twice the CPU per keypress in bench/bench_rank.py).
            self.query_one(f"{side}-text", Static).update(content)
            self.query_one(side, VerticalScroll).scroll_home(animate=False)
        self.query_one("#progress", Static).update(self._progress())
        self.call_after_refresh(self._painted)

    def _painted(self) -> None:
        self.drawn_at = time.perf_counter()
        self.drawn_cpu = time.process_time()
        self.draws += 1

    def _progress(self) -> str:
        s = self.session
        assert s is not None
        text = f"{self.annotator}: {s.done} done · {s.left} left"
        if s.others:
            text += "".join(
                f" · {name}: {done} done, {left} left"
                for name, (done, left) in sorted(s.others.items())
            )
        shown = s.current()
        if shown is not None:
            pair = shown[0]
            text += f" · step {pair.a.step} · group {pair.group} · task {pair.a.task_id}"
        return text

    # --- actions ----------------------------------------------------------------------------

    async def action_judge(self, choice: str) -> None:
        if self.session is None or self.shown is None:
            return
        await asyncio.to_thread(self.session.judge, choice)  # on disk before the next pair
        await self._show()

    async def action_undo(self) -> None:
        if self.session is None:
            return
        undone = await asyncio.to_thread(self.session.undo)
        if undone is None:
            self.notify("nothing to undo")
            return
        self.notify(f"undid {undone.choice} on pair {undone.pair}")
        await self._show()

    def action_toggle_guidelines(self) -> None:
        panel = self.query_one("#guidelines")
        panel.display = not panel.display

    def action_help(self) -> None:
        self.app.push_screen(RankHelp())

    def action_scroll_sides(self, pages: int) -> None:
        """Page both answers together (long code answers), keeping them level."""
        for side in ("#left", "#right"):
            pane = self.query_one(side, VerticalScroll)
            pane.scroll_relative(y=pages * max(pane.size.height - 2, 1), animate=False)

    def action_back(self) -> None:
        if hasattr(self.app, "action_back"):  # the ptgym app: back to the runs list
            self.app.action_back()
