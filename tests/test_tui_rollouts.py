"""Specification of the rollouts screens: the list (filter, sort, jump, live growth, no decoding),
a rollout's conversation and tokens (real tokenizer), compare, copy; snapshots; no torch."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from textual.app import App
from textual.widgets import Collapsible

from ptgym.runindex import RunIndex
from ptgym.store import TrajectoryStore
from ptgym.tui.screens.rollouts import (
    CompareScreen,
    FilterError,
    RolloutScreen,
    RolloutsScreen,
    parse_filter,
)
from ptgym.tui.widgets.conversation import Conversation, MessageBlock
from ptgym.tui.widgets.rollout_table import RolloutTable
from ptgym.tui.widgets.tokens import TokenDecoder, TokenView, token_cells
from tests.run_factory import make_run, trajectory

ENVS = ["ptgym/Code-v0", "ptgym/Math-v0"]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("rollouts") / "run"
    make_run(path, steps=2, groups=2, members=3, tokenize=True, errors=("s2g1m2",))
    return path


class Host(App):
    def __init__(self, screen):
        super().__init__()
        self._screen = screen

    def on_mount(self) -> None:
        self.push_screen(self._screen)


def text_of(renderable) -> str:
    console = Console(width=120, file=io.StringIO(), record=True)
    console.print(renderable)
    return console.export_text()


async def until(pilot, condition, what: str) -> None:
    for _ in range(300):
        await pilot.pause()
        if condition():
            return
    raise AssertionError(f"timed out waiting for {what}")


async def listed(pilot, screen: RolloutsScreen) -> RolloutTable:
    table = screen.query_one(RolloutTable)
    await until(pilot, lambda: table.summaries is not None, "the list")
    return table


# --- the filter language -----------------------------------------------------------------------


def test_parse_filter() -> None:
    got = parse_filter("reward>=0.5 reward<=1 env=math error=no kept=yes step=3 boxed 42", ENVS)
    assert got == {
        "reward_min": 0.5,
        "reward_max": 1.0,
        "env": "ptgym/Math-v0",
        "error": False,
        "kept": True,
        "step": 3,
        "text": "boxed 42",
    }
    assert parse_filter("reward=0..0.5", ENVS) == {"reward_min": 0.0, "reward_max": 0.5}
    assert parse_filter("reward=1", ENVS) == {"reward_min": 1.0, "reward_max": 1.0}
    assert parse_filter("", ENVS) == {}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("reward>=high", "use a number"),
        ("step=two", "step number"),
        ("kept=maybe", "kept=yes or kept=no"),
        ("env=chess", "this run's envs are ptgym/Code-v0, ptgym/Math-v0"),
        ("step>=2", "only reward takes"),
    ],
)
def test_bad_filters_say_what_is_accepted(text: str, message: str) -> None:
    with pytest.raises(FilterError, match=message):
        parse_filter(text, ENVS)


# --- the list ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_list_filters_sorts_and_jumps_without_decoding(run: Path) -> None:
    screen = RolloutsScreen(run)
    async with Host(screen).run_test(size=(120, 30)) as pilot:
        table = await listed(pilot, screen)
        assert len(table.order) == 12
        status = text_of(screen.query_one("#status").content)
        assert "12 of 12 rollouts" in status

        await pilot.press("slash", *"error=yes", "enter")
        await until(pilot, lambda: len(table.order) == 1, "the error filter")
        assert screen.index.summaries().id[table.current_row] == "s2g1m2"

        screen.query_one("#filter").value = ""
        await pilot.press("slash", *"kept=yes reward>=1", "enter")
        await until(pilot, lambda: len(table.order) == 7, "kept and reward filters")
        assert all(screen.index.summaries().reward[table.order] == 1.0)

        screen.query_one("#filter").value = ""
        await pilot.press("slash", *"11 + 3", "enter")  # text search in the prompt
        await until(pilot, lambda: len(table.order) == 3, "text search")  # the group s2g1
        await pilot.press("end")
        assert screen.index.summaries().id[table.current_row] == "s2g1m2"

        screen.query_one("#filter").value = ""
        await pilot.press("slash", "enter")
        await until(pilot, lambda: len(table.order) == 12, "no filter")
        await pilot.press("o", "o")  # file -> step -> reward
        assert screen.sort_key == "reward"
        await pilot.press("r")
        rewards = screen.index.summaries().reward[table.order]
        assert list(rewards) == sorted(rewards, reverse=True)
        await pilot.press("o")  # turns
        assert screen.index.summaries().id[table.current_row] == "s2g1m2"  # stays under cursor
        assert table.order[-1] == 11  # descending: the errored one has 1 turn, the others 2

        await pilot.press("o", "o", "o", "o", "o")  # length, env, task, error, back to file
        assert screen.sort_key == "file" and screen.descending
        await pilot.press("r", "end")
        assert table.cursor == 11
        await pilot.press("j", "2", "enter")
        await pilot.pause()
        assert table.cursor == 6  # the first row of step 2 in file order
        assert screen.index._cache == {}  # nothing decoded to list, filter, sort or jump


@pytest.mark.anyio
async def test_list_follows_a_growing_run(tmp_path: Path) -> None:
    make_run(tmp_path / "live", steps=1, groups=1, members=2)
    screen = RolloutsScreen(tmp_path / "live", poll_s=0.1)
    async with Host(screen).run_test(size=(100, 24)) as pilot:
        table = await listed(pilot, screen)
        assert len(table.order) == 2
        store = TrajectoryStore(tmp_path / "live")
        store.extend([trajectory(2, 0, m) for m in range(3)])
        store.close()
        await until(pilot, lambda: len(table.order) == 5, "the appended rows")
        assert "5 of 5 rollouts" in text_of(screen.query_one("#status").content)


# --- one rollout -------------------------------------------------------------------------------


async def opened(pilot, screen: RolloutsScreen, row: int) -> RolloutScreen:
    table = await listed(pilot, screen)
    table.cursor = row
    await pilot.press("enter")
    await until(pilot, lambda: isinstance(pilot.app.screen, RolloutScreen), "the rollout")
    rollout = pilot.app.screen
    await until(pilot, lambda: rollout.trajectory is not None, "the decoded trajectory")
    await pilot.pause()
    return rollout


@pytest.mark.anyio
async def test_rollout_shows_turns_rewards_outcome_and_collapsed_tools(run: Path) -> None:
    screen = RolloutsScreen(run)
    async with Host(screen).run_test(size=(120, 40)) as pilot:
        rollout = await opened(pilot, screen, 1)  # s1g0m1: a wrong answer
        conv = rollout.query_one(Conversation)
        blocks = [text_of(b.content) for b in conv.query(MessageBlock)]
        whole = "\n".join(blocks)
        assert "What is 10 + 1? Show the code." in whole  # markdown rendered (no **)
        assert "turn 1: reward 0 · advantage -1.000" in whole
        assert "turn 2: reward 0 · advantage -1.000" in whole
        tools = list(conv.query(Collapsible))
        assert [c.title for c in tools] == ["tool call: python (call_0)", "tool result (call_0)"]
        assert all(c.collapsed for c in tools)
        outcome = text_of(conv.query_one(".outcome").content)
        lines = [" ".join(line.split()) for line in outcome.splitlines()]
        assert {"answer 11", "extracted 12", "correct False", "reward 0"} <= set(lines)

        answer = [b for b in conv.query(MessageBlock) if "boxed" in b.text][0]
        answer.focus()
        await pilot.press("c")
        assert pilot.app.clipboard == "The answer is \\boxed{12} (member 1)."


@pytest.mark.anyio
async def test_token_view_decodes_with_the_runs_tokenizer(run: Path) -> None:
    screen = RolloutsScreen(run)
    async with Host(screen).run_test(size=(120, 40)) as pilot:
        rollout = await opened(pilot, screen, 0)
        await pilot.press("v")
        view = rollout.query_one(TokenView)
        traj = rollout.trajectory
        sampled = [c for c in view.cells if c.trained]
        assert len(sampled) == sum(len(t.completion_ids) for t in traj.turns)
        first_turn = "".join(view.decoder.text(c.id) for c in sampled if c.turn == 0)
        assert first_turn == traj.messages[2]["content"]  # the real tokenizer's text
        # the env's reply (tool result "11\n": 10 + 1) is the only new prompt text of turn 2
        env = [c for c in view.cells if not c.trained and c.turn == 1]
        assert "".join(view.decoder.text(c.id) for c in env) == "11\n"

        c = view.cells[view.cursor]
        assert c.trained and c.turn == 0  # the cursor starts on the first sampled token
        await pilot.press("right")
        c = view.cells[view.cursor]
        info = text_of(view.describe(view.cursor))
        assert f"id {c.id}" in info and repr(view.decoder.text(c.id)) in info
        assert f"logprob {traj.turns[0].completion_logprobs[1]:.3f}" in info
        assert "advantage +1.000 · sampled (trained)" in info
        await pilot.press("home")
        assert "not trained" in text_of(view.describe(view.cursor))
        await pilot.press("n")
        assert view.cells[view.cursor].turn == 1 and view.cells[view.cursor].trained
        assert view._style(sampled[0]).startswith("black on rgb(")
        await pilot.press("m")
        assert view.mode == "advantage"
        assert view._style(sampled[0]) == "white on rgb(40,210,40)"  # +1 of scale 1: full green
        await pilot.press("end")
        await pilot.hover("#token-text", offset=(1, 1))  # line 0: "── turn 1 ──", then "You"
        await pilot.pause()
        assert view.cursor == 0 and view.decoder.text(view.cells[0].id) == "You"
        assert "not trained" in text_of(rollout.query_one("#token-info").content)


def test_token_cells_mark_observation_tokens_and_restart_rows() -> None:
    traj = trajectory(1, 0, 0)
    cells = token_cells(traj, [0.5, -0.5])
    t0, t1 = traj.turns
    assert [c.id for c in cells if not c.trained and c.turn == 0] == list(t0.prompt_ids)
    new = len(t1.prompt_ids) - len(t0.prompt_ids) - len(t0.completion_ids)
    assert sum(1 for c in cells if not c.trained and c.turn == 1) == new
    assert {c.advantage for c in cells if c.trained and c.turn == 1} == {-0.5}
    t1.prompt_ids = t1.prompt_ids[::-1].copy()  # a turn that does not extend the row
    cells = token_cells(traj)
    assert sum(1 for c in cells if not c.trained and c.turn == 1) == len(t1.prompt_ids)


def test_token_decoder_falls_back_to_ids(tmp_path: Path) -> None:
    (tmp_path / "config.yaml").write_text("model:\n  name: /nowhere/model\n")
    decoder = TokenDecoder.for_run(tmp_path)
    assert decoder.tokenizer is None and "showing token ids" in decoder.source
    assert decoder.text(42) == "⟨42⟩"
    assert "cannot read config.yaml" in TokenDecoder.for_run(tmp_path / "none").source


@pytest.mark.anyio
async def test_compare_shows_two_members_of_the_group(run: Path) -> None:
    screen = RolloutsScreen(run)
    async with Host(screen).run_test(size=(140, 40)) as pilot:
        table = await listed(pilot, screen)
        table.cursor = 3  # s1g1m0
        await pilot.press("x")
        await until(pilot, lambda: isinstance(pilot.app.screen, CompareScreen), "compare")
        compare = pilot.app.screen
        left, right = compare.query_one("#left"), compare.query_one("#right")
        await until(pilot, lambda: left.border_title and right.border_title, "both sides")
        assert left.border_title.startswith("s1g1m0 ·")
        assert right.border_title.startswith("s1g1m1 ·")
        await pilot.press("right_square_bracket")
        await until(pilot, lambda: right.border_title.startswith("s1g1m2"), "the next member")
        await pilot.press("escape")
        assert pilot.app.screen is screen


def test_rollouts_snapshot(run: Path, snap_compare) -> None:
    screen = RolloutsScreen(run)

    async def ready(pilot) -> None:
        await listed(pilot, screen)
        await pilot.press("down")

    assert snap_compare(Host(screen), terminal_size=(110, 24), run_before=ready)


def test_rollout_tokens_snapshot(run: Path, snap_compare) -> None:
    screen = RolloutsScreen(run)

    async def ready(pilot) -> None:
        await opened(pilot, screen, 4)
        await pilot.press("v", "right", "right")

    assert snap_compare(Host(screen), terminal_size=(100, 28), run_before=ready)


def test_screens_and_token_text_import_no_torch(run: Path) -> None:
    code = (
        "import sys\n"
        "import ptgym.tui.screens.rollouts, ptgym.tui.screens.rank\n"
        "from ptgym.tui.widgets.tokens import TokenDecoder\n"
        f"d = TokenDecoder.for_run({str(run)!r})\n"
        "assert d.tokenizer is not None, d.source\n"
        "bad = [m for m in ('torch', 'transformers', 'textual_plotext') if m in sys.modules]\n"
        "assert not [m for m in bad if m != 'textual_plotext'], bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_index_rows_match_the_factory(run: Path) -> None:
    rows = RunIndex(run).summaries()
    assert rows.id[:3] == ["s1g0m0", "s1g0m1", "s1g0m2"]
    assert list(rows.kept[-3:]) == [1, 1, 0]
    assert np.array_equal(rows.step, [1] * 6 + [2] * 6)


@pytest.mark.anyio
async def test_token_cursor_stays_on_screen_in_a_long_trajectory(tmp_path: Path) -> None:
    make_run(tmp_path / "long", steps=1, groups=1, members=1)
    traj = trajectory(1, 1, 0)
    traj.turns[1].completion_ids = np.arange(3000, 6000, dtype=np.int32)  # 3,000 tokens
    traj.turns[1].completion_logprobs = np.full(3000, -0.5, dtype=np.float32)
    store = TrajectoryStore(tmp_path / "long")
    store.append(traj)
    store.close()
    screen = RolloutsScreen(tmp_path / "long")
    async with Host(screen).run_test(size=(80, 24)) as pilot:
        rollout = await opened(pilot, screen, 1)
        await pilot.press("v", "end")
        await pilot.pause()
        scroll = rollout.query_one("#tokens-scroll")
        view = rollout.query_one(TokenView)
        assert view.cursor == len(view.cells) - 1
        await until(pilot, lambda: scroll.scroll_offset.y > 0, "the view to follow the cursor")
        assert scroll.scroll_offset.y >= scroll.max_scroll_y - scroll.size.height
        await pilot.press("home")
        await until(pilot, lambda: scroll.scroll_offset.y == 0, "the view back at the top")


@pytest.mark.anyio
async def test_in_the_ptgym_app_keys_reach_the_list_not_the_filter_box(run: Path) -> None:
    from ptgym.tui.app import PtgymApp

    app = PtgymApp(run)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: isinstance(app.screen, RolloutsScreen), "the rollouts view")
        screen = app.screen
        await listed(pilot, screen)
        assert isinstance(screen.focused, RolloutTable)
        await pilot.press("o", "down", "enter")
        assert screen.sort_key == "step" and screen.query_one("#filter").value == ""
        await until(pilot, lambda: isinstance(app.screen, RolloutScreen), "the rollout")
        assert isinstance(app.screen.focused, Conversation)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_real_terminal_keys_reach_the_list(run: Path) -> None:
    """In a real terminal the screen's first focus decides where keys go (Pilot differs)."""
    from tests.test_tui_rank import Tmux

    root = Path(__file__).resolve().parents[1]
    command = f"cd {root} && exec env -u COLUMNS -u LINES {sys.executable} -m ptgym.cli tui {run}"
    term = Tmux(f"ptgym-rollouts-{os.getpid()}", command)
    try:
        term.wait_for("12 of 12 rollouts")
        term.send("o")
        term.wait_for("sort step")
        term.send("Enter")
        term.wait_for("turn 1: reward")
    finally:
        term.close()
