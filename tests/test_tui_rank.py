"""Specification of the rank screen: Pilot tests over real run directories, a snapshot, and the
crash test (the app in a real terminal under tmux, killed with SIGKILL mid-session, reopened)."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console
from textual.app import App

from ptgym.judgments import RankSession, read_log
from ptgym.store import TrajectoryStore
from ptgym.tui.screens.rank import RankHelp, RankScreen
from tests.run_factory import events, make_run, trajectory

MEMBER = re.compile(r"\(member\s+(\d)\)")


class Host(App):
    """Hosts one screen, as the ptgym app does."""

    def __init__(self, screen: RankScreen):
        super().__init__()
        self._screen = screen

    def on_mount(self) -> None:
        self.push_screen(self._screen)


async def ready(pilot, screen: RankScreen, draws: int = 1) -> None:
    for _ in range(200):
        await pilot.pause()
        if screen.draws >= draws:
            return
    raise AssertionError("the rank screen never drew a pair")


def text_of(widget) -> str:
    """What a Static shows, as plain text (its content rendered by Rich)."""
    console = Console(width=100, file=io.StringIO(), record=True)
    console.print(widget.content)
    return console.export_text()


def side_text(screen: RankScreen, side: str) -> str:
    return text_of(screen.query_one(f"#{side}-text"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    make_run(tmp_path / "run", steps=2, groups=2, members=3)
    return tmp_path / "run"


@pytest.mark.anyio
async def test_keys_record_what_was_shown_on_each_side(run: Path) -> None:
    screen = RankScreen(run, "ann")
    async with Host(screen).run_test(size=(120, 40)) as pilot:
        await ready(pilot, screen)
        seen = []
        for n, key in enumerate("12ts", start=1):
            left = MEMBER.findall(side_text(screen, "left"))
            right = MEMBER.findall(side_text(screen, "right"))
            seen.append((screen.shown, left[-1], right[-1]))
            await pilot.press(key)
            await ready(pilot, screen, draws=n + 1)
        progress = text_of(screen.query_one("#progress"))
    assert progress.startswith("ann: 4 done · 8 left")
    got = [(e["pair"], e["left"][-1], e["right"][-1], e["choice"]) for e in events(run)]
    assert got == [(*s, c) for s, c in zip(seen, ("left", "right", "tie", "skip"), strict=True)]


@pytest.mark.anyio
async def test_undo_brings_the_last_pair_back_and_appends_a_revert(run: Path) -> None:
    screen = RankScreen(run, "ann")
    async with Host(screen).run_test(size=(100, 30)) as pilot:
        await ready(pilot, screen)
        first = screen.shown
        await pilot.press("1")
        await ready(pilot, screen, 2)
        assert screen.shown != first
        await pilot.press("u")
        await ready(pilot, screen, 3)
        assert screen.shown == first
        assert text_of(screen.query_one("#progress")).startswith("ann: 0 done · 12 left")
    assert [e["event"] for e in events(run)] == ["judge", "revert"]
    assert read_log(run).judgments == []


@pytest.mark.anyio
async def test_reopening_continues_and_counts_other_annotators(run: Path) -> None:
    bob = RankSession(run, "bob")
    for _ in range(3):
        bob.judge("left")
    ann = RankSession(run, "ann")
    ann.judge("tie")
    expected = ann.current()[0].key
    ann.close()
    screen = RankScreen(run, "ann")
    async with Host(screen).run_test(size=(100, 30)) as pilot:
        await ready(pilot, screen)
        assert screen.shown == expected
        progress = text_of(screen.query_one("#progress"))
    assert progress.startswith("ann: 1 done · 11 left · bob: 3 done, 9 left")


@pytest.mark.anyio
async def test_help_guidelines_and_the_end_of_the_queue(tmp_path: Path) -> None:
    make_run(tmp_path / "r", steps=1, groups=1, members=2)
    (tmp_path / "r" / "guidelines.md").write_text("# House rules\n\nPrefer **short** answers.")
    screen = RankScreen(tmp_path / "r", "ann")
    async with Host(screen).run_test(size=(130, 30)) as pilot:
        await ready(pilot, screen)
        guidelines = screen.query_one("#guidelines")
        assert guidelines.display  # wide terminal: shown
        assert "House rules" in text_of(guidelines.query_one("Static"))
        await pilot.press("g")
        assert not guidelines.display
        await pilot.press("question_mark")
        await pilot.pause()
        assert isinstance(pilot.app.screen, RankHelp)
        await pilot.press("x")
        await pilot.pause()
        assert pilot.app.screen is screen
        await pilot.press("2")  # the only pair (two members)
        await ready(pilot, screen, 2)
        assert screen.shown is None
        assert "All 1 pairs are handled" in side_text(screen, "left")
        await pilot.press("1")  # nothing left to judge: no event
        await pilot.pause()
    assert [e["choice"] for e in events(tmp_path / "r")] == ["right"]


@pytest.mark.anyio
async def test_space_pages_both_long_answers_together(tmp_path: Path) -> None:
    run = tmp_path / "long"
    run.mkdir()
    store = TrajectoryStore(run)
    for m in range(2):
        t = trajectory(1, 0, m)
        t.messages[-1]["content"] = "\n\n".join(f"line {k} of answer {m}" for k in range(80))
        store.append(t)
    store.close()
    screen = RankScreen(run, "ann")
    async with Host(screen).run_test(size=(100, 30)) as pilot:
        await ready(pilot, screen)
        left, right = screen.query_one("#left"), screen.query_one("#right")
        assert left.scroll_y == right.scroll_y == 0
        await pilot.press("space")
        await pilot.pause()
        assert left.scroll_y > 0 and left.scroll_y == right.scroll_y
        await pilot.press("pageup")
        await pilot.pause()
        assert left.scroll_y == right.scroll_y == 0


@pytest.mark.anyio
async def test_a_directory_without_trajectories_says_so(tmp_path: Path) -> None:
    screen = RankScreen(tmp_path, "ann")
    async with Host(screen).run_test(size=(100, 30)) as pilot:
        for _ in range(50):
            await pilot.pause()
        text = text_of(screen.query_one("#progress"))
    assert "cannot rank" in text and "run directory" in text


def test_rank_screen_snapshot(run: Path, snap_compare) -> None:
    screen = RankScreen(run, "ann")

    async def drawn(pilot) -> None:
        await ready(pilot, screen)

    assert snap_compare(Host(screen), terminal_size=(110, 32), run_before=drawn)


# --- the crash test: a real terminal, SIGKILL, reopen ------------------------------------------


class Tmux:
    """A terminal of a known size on a tmux server of its own (other tests' servers and their
    options cannot resize it)."""

    def __init__(self, name: str, command: str):
        self.name = name
        self.tmux = ["tmux", "-L", name, "-f", "/dev/null"]
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", name, "-x", "110", "-y", "32", command],
            check=True,
        )

    def screen(self) -> str:
        out = subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def wait_for(self, text: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = self.screen()
            if text in shown:
                return shown
            time.sleep(0.05)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")

    def send(self, key: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, key], check=True)

    def pid(self) -> int:
        out = subprocess.run(
            [*self.tmux, "display-message", "-p", "-t", self.name, "#{pane_pid}"],
            capture_output=True,
            text=True,
            check=True,
        )
        return int(out.stdout)

    def close(self) -> None:
        subprocess.run([*self.tmux, "kill-server"], capture_output=True)


def _sides(screen: str) -> tuple[str, str]:
    """The member numbers shown in the left and right response columns of a captured screen."""
    left = right = ""
    for line in screen.splitlines():
        for m in MEMBER.finditer(line):
            if m.start() < 55:
                left = m.group(1)
            else:
                right = m.group(1)
    return left, right


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_kill_9_mid_session_loses_no_judgment_and_the_session_continues(
    run: Path,
) -> None:
    root = Path(__file__).resolve().parents[1]
    # COLUMNS/LINES inherited from pytest would override the pane's real size
    command = (
        f"cd {root} && exec env -u COLUMNS -u LINES {sys.executable} -m ptgym.cli "
        f"tui rank {run} --annotator ann"
    )
    name = f"ptgym-rank-{os.getpid()}"
    term = Tmux(name, command)
    try:
        term.wait_for("ann: 0 done")
        shown = []
        for n, key in enumerate("12t1s2", start=1):
            screen = term.screen()
            shown.append(_sides(screen))
            term.send(key)
            term.wait_for(f"ann: {n} done")
        term.send("1")  # the last keypress: killed right after, it may or may not land
        os.kill(term.pid(), signal.SIGKILL)
        time.sleep(0.2)
        on_disk = events(run)
        assert 6 <= len(on_disk) <= 7
        choices = ["left", "right", "tie", "left", "skip", "right"]
        assert [e["choice"] for e in on_disk[:6]] == choices
        assert [(e["left"][-1], e["right"][-1]) for e in on_disk[:6]] == shown
        term.close()

        expected = RankSession(run, "ann").current()[0]
        term = Tmux(name, command)
        done = len(on_disk)
        screen = term.wait_for(f"ann: {done} done · {12 - done} left")
        assert f"group {expected.group}" in screen
        term.send("t")
        term.wait_for(f"ann: {done + 1} done")
        last = events(run)[-1]
        assert (last["pair"], last["choice"]) == (expected.key, "tie")
    finally:
        term.close()
