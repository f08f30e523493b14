"""``ptgym tui``: the app over real run directories (DESIGN §10): the runs screen, routing between
a run's views, help, theme, command palette, 80x24, snapshots, a real terminal under tmux, and a
TUI that never imports torch.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tui_runs import runs_folder, step_metrics, train_run

from ptgym.metrics import MetricsLogger
from ptgym.tui.app import PtgymApp
from ptgym.tui.screens.help import HelpScreen
from ptgym.tui.screens.runs import RunsScreen


async def until(pilot, cond, timeout: float = 30.0) -> None:
    """Let the app run until ``cond()`` holds (workers post their results asynchronously)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {cond.__doc__ or cond}")
        await pilot.pause(0.05)


def rows(app) -> dict[str, list[str]]:
    table = app.screen.query_one("#runs")
    return {table.get_row(key)[0]: [str(c) for c in table.get_row(key)] for key in table.rows}


@pytest.fixture
def runs(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return runs_folder(tmp_path)


def test_runs_screen_shows_every_run_with_progress_reward_and_status(runs):
    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: isinstance(app.screen, RunsScreen) and len(rows(app)) == 4)
            got = rows(app)
            assert got["live"][:7] == ["live", "math", "tiny", "grpo", "3/10", "0.300", "live"]
            assert got["done"][4:7] == ["5/5", "0.500", "finished"]
            assert got["crashed"][4:7] == ["2/8", "0.200", "crashed"]
            assert got["sampled"][3:7] == ["rollout", "0", "-", "unknown"]
            assert got["live"][7] == "▁▅█"  # rewards 0.1, 0.2, 0.3

    asyncio.run(go())


def test_runs_screen_follows_a_training_run_and_finds_new_runs(runs):
    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(120, 30)) as pilot:
            app.screen.scan_interval = 0.1
            await until(pilot, lambda: len(rows(app)) == 4)
            app.screen.set_interval(0.1, app.screen.action_rescan)
            log = MetricsLogger(runs / "live")
            log.log(4, step_metrics(4))
            log.close()
            train_run(runs, "new", steps=1, planned=2, state="live")
            await until(pilot, lambda: len(rows(app)) == 5 and rows(app)["live"][4] == "4/10")
            assert rows(app)["live"][5] == "0.400"
            assert rows(app)["new"][6] == "live"

    asyncio.run(go())


def test_a_run_with_a_damaged_stream_is_listed_as_unreadable(runs):
    path = runs / "done" / "metrics.msgpack"
    data = bytearray(path.read_bytes())
    data[20] ^= 0xFF  # inside the first record, with complete records after it
    path.write_bytes(bytes(data))

    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(120, 30)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 4)
            assert rows(app)["done"][6].startswith("unreadable:")
            assert rows(app)["live"][6] == "live"  # the others are unaffected

    asyncio.run(go())


def test_a_run_opens_on_its_views_and_escape_goes_back(runs):
    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 4)
            table = app.screen.query_one("#runs")
            table.move_cursor(row=table.get_row_index(str(runs / "live")))
            await pilot.press("m")
            await until(pilot, lambda: type(app.screen).__name__ == "MonitorScreen")
            assert app.screen.run_dir == runs / "live" and app.current_run == runs / "live"
            assert len(app.screen_stack) == 3
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen))
            assert app.current_run is None
            await pilot.press("f3")  # the selected run's monitor, from the list
            await until(pilot, lambda: type(app.screen).__name__ == "MonitorScreen")
            await pilot.press("f4")  # rank, in place of the monitor
            await until(pilot, lambda: type(app.screen).__name__ == "RankScreen")
            assert len(app.screen_stack) == 3
            await pilot.press("f3")  # the same monitor screen again, kept while the run is open
            await until(pilot, lambda: type(app.screen).__name__ == "MonitorScreen")

    asyncio.run(go())


def test_enter_opens_the_rollouts_of_the_run(runs):
    pytest.importorskip("ptgym.tui.screens.rollouts")

    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 4)
            await pilot.press("enter")
            await until(pilot, lambda: type(app.screen).__name__ == "RolloutsScreen")
            await pilot.press("f3")
            await until(pilot, lambda: type(app.screen).__name__ == "MonitorScreen")
            assert len(app.screen_stack) == 3

    asyncio.run(go())


def test_help_lists_the_keys_of_the_screen_below(runs):
    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 4)
            await pilot.press("question_mark")
            await until(pilot, lambda: isinstance(app.screen, HelpScreen))
            text = "\n".join(str(s.content) for s in app.screen.query("Static"))
            assert "Help: RunsScreen" in text
            table = app.screen.query("Static")[1].content
            keys = {str(c) for col in table.columns for c in col.cells}
            assert {"Monitor", "Rollouts", "Help"} <= keys
            await pilot.press("escape")
            await until(pilot, lambda: isinstance(app.screen, RunsScreen))

    asyncio.run(go())


def test_theme_toggles_between_dark_and_light(runs):
    """Also on the monitor, whose charts follow the app's theme."""

    async def go():
        app = PtgymApp(runs / "live", view="monitor")
        async with app.run_test() as pilot:
            await until(pilot, lambda: len(app.screen.records) == 3)
            await pilot.pause(0.3)
            chart = app.screen.query_one("#chart-0")
            dark = chart.render()
            assert app.theme == "textual-dark"
            await pilot.press("ctrl+t")
            assert app.theme == "textual-light"
            await pilot.pause(0.1)
            light = chart.render()

            def colours(text) -> set[str]:
                return {str(span.style) for span in text.spans}

            assert colours(light) and colours(light) != colours(dark)
            await pilot.press("ctrl+t")
            assert app.theme == "textual-dark"

    asyncio.run(go())


def test_command_palette_opens_a_run_by_name(runs):
    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(100, 30)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 4)
            await pilot.press("ctrl+p")
            await pilot.pause(0.2)
            await pilot.press(*"open crashed: monitor")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await until(pilot, lambda: type(app.screen).__name__ == "MonitorScreen")
            assert app.screen.run_dir == runs / "crashed"

    asyncio.run(go())


def test_usable_at_80x24(runs):
    """The table, its columns up to the status and the footer fit an 80x24 terminal."""

    async def go():
        app = PtgymApp(runs)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: len(rows(app)) == 4)
            table = app.screen.query_one("#runs")
            assert table.region.height >= 18
            widths = [c.get_render_width(table) for c in table.columns.values()]
            assert sum(widths[:7]) <= 80
            footer = app.screen.query_one("Footer")
            assert footer.region.y == 23

    asyncio.run(go())


def test_snapshot_runs_screen(runs, snap_compare):
    async def loaded(pilot):
        await until(pilot, lambda: len(rows(pilot.app)) == 4)
        await pilot.pause(0.2)

    assert snap_compare(PtgymApp(Path("runs")), terminal_size=(80, 24), run_before=loaded)


def test_cli_names_a_path_that_is_not_a_run(tmp_path, capsys):
    from ptgym.cli import main

    assert main(["tui", "monitor", str(tmp_path)]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert main(["tui", str(tmp_path / "nope")]) == 2
    assert "no run or folder at" in capsys.readouterr().err


def test_nothing_the_tui_reads_imports_torch_or_textual():
    core = (
        "import sys, ptgym.store, ptgym.metrics, ptgym.types, ptgym.runindex, ptgym.runstatus;"
        "print(sorted(m for m in ('torch', 'textual') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", core], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    tui = Path(__file__).parent.parent / "tui"
    modules = sorted(
        "ptgym.tui." + ".".join(p.relative_to(tui).with_suffix("").parts)
        for p in tui.rglob("*.py")
        if p.name != "__init__.py"
    )
    assert "ptgym.tui.app" in modules and "ptgym.tui.screens.monitor" in modules
    code = f"import sys, importlib; [importlib.import_module(m) for m in {modules!r}]; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
def test_real_terminal_under_tmux(runs):
    """``ptgym tui runs`` in a real terminal: the list, then the monitor, then quit."""
    session = f"ptgym-tui-{os.getpid()}"
    cmd = f"cd {runs.parent} && {sys.executable} -m ptgym.cli tui runs"
    subprocess.run(
        ["tmux", "new-session", "-d", "-s", session, "-x", "80", "-y", "24", cmd], check=True
    )

    def screen() -> str:
        return subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", session], capture_output=True, text=True
        ).stdout

    def wait_for(*texts: str, timeout: float = 30.0) -> str:
        """The screen once every one of ``texts`` is on it (a screen is drawn in parts: one
        capture can hold the table's rows before its title)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            shown = screen()  # one capture, checked for every text
            if all(text in shown for text in texts):
                return shown
            time.sleep(0.2)
        raise AssertionError(f"{texts!r} never all appeared; the screen:\n{screen()}")

    try:
        wait_for("crashed", "runs under runs", "3/10", "finished")
        subprocess.run(["tmux", "send-keys", "-t", session, "Down", "Down", "m"], check=True)
        wait_for("step 3/10", "live", "ETA", "reward")
        subprocess.run(["tmux", "send-keys", "-t", session, "q"], check=True)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            alive = subprocess.run(["tmux", "has-session", "-t", session], capture_output=True)
            if alive.returncode != 0:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("q did not quit the app")
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
