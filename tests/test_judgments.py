"""Specification of ptgym.judgments and ptgym.agreement: pairs from a run, the append-only
judgment log, undo by revert events, replay, Cohen's kappa, position bias, and export to the
preference format."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from ptgym.agreement import agreement, cohen_kappa, export, left_wins, summary
from ptgym.judgments import (
    JUDGMENTS_FILE,
    Judgment,
    RankSession,
    load_candidates,
    make_pairs,
    read_log,
    replay,
    sides,
)
from ptgym.prefs import read_preferences
from ptgym.runindex import RunIndex
from ptgym.store import TrajectoryStore
from tests.run_factory import events, make_run, trajectory


@pytest.fixture
def run(tmp_path: Path) -> Path:
    make_run(tmp_path / "run", steps=2, groups=2, members=3, errors=("s2g1m2",))
    return tmp_path / "run"


# --- kappa and position bias on hand-computed values -------------------------------------------


def test_kappa_matches_the_textbook_two_by_two_example() -> None:
    # 50 items: both yes 20, both no 15, A yes/B no 5, A no/B yes 10.
    # p_o = 35/50 = 0.7; A says yes 25/50, B says yes 30/50;
    # p_e = 0.5*0.6 + 0.5*0.4 = 0.5; kappa = (0.7 - 0.5) / 0.5 = 0.4.
    a = ["y"] * 20 + ["n"] * 15 + ["y"] * 5 + ["n"] * 10
    b = ["y"] * 20 + ["n"] * 15 + ["n"] * 5 + ["y"] * 10
    assert cohen_kappa(a, b) == pytest.approx(0.4)


def test_kappa_with_three_labels() -> None:
    # p_o = 4/5; a: first 3, second 1, tie 1; b: first 2, second 2, tie 1
    # p_e = (3*2 + 1*2 + 1*1) / 25 = 0.36; kappa = (0.8 - 0.36) / 0.64 = 0.6875
    a = ["first", "first", "second", "tie", "first"]
    b = ["first", "second", "second", "tie", "first"]
    assert cohen_kappa(a, b) == pytest.approx(0.6875)
    assert cohen_kappa(a, a) == pytest.approx(1.0)


def test_kappa_is_nan_when_undefined() -> None:
    assert math.isnan(cohen_kappa([], []))
    assert math.isnan(cohen_kappa(["first"] * 4, ["first"] * 4))  # p_e = 1


def _j(annotator: str, pair: str, left: str, choice: str) -> Judgment:
    a, b = pair.split("|")
    right = b if left == a else a
    return Judgment(f"{annotator}-{pair}", annotator, pair, left, right, choice, 0.0)


def test_agreement_compares_the_pair_not_the_side_each_annotator_saw() -> None:
    # ann saw "a" on the left of a|b and chose it; bob saw "a" on the right and chose it: agree.
    js = [
        _j("ann", "a|b", "a", "left"),
        _j("bob", "a|b", "b", "right"),
        _j("ann", "c|d", "c", "left"),  # ann: c (first)
        _j("bob", "c|d", "c", "right"),  # bob: d (second)
        _j("ann", "e|f", "e", "tie"),
        _j("bob", "e|f", "f", "tie"),
        _j("ann", "g|h", "g", "left"),  # only ann decided g|h: not compared
        _j("bob", "g|h", "g", "skip"),
    ]
    ((pair, (n, kappa)),) = agreement(js).items()
    assert pair == ("ann", "bob") and n == 3
    # ann: first, first, tie; bob: first, second, tie -> p_o = 2/3
    # p_e = (2*1 + 0*1 + 1*1) / 9 = 1/3; kappa = (2/3 - 1/3) / (2/3) = 0.5
    assert kappa == pytest.approx(0.5)
    assert left_wins(js) == (3, 5)  # left, right, left, right, left; ties and skips excluded


# --- pairs ---------------------------------------------------------------------------------------


def test_pairs_stay_within_a_group_and_leave_out_errors(run: Path) -> None:
    candidates = load_candidates(RunIndex(run))
    assert len(candidates) == 11  # 12 trajectories, one ended in a sandbox error
    pairs = make_pairs(candidates)
    # groups of 3 give 3 pairs each, the group with the error 1: 3 + 3 + 3 + 1
    assert len(pairs) == 10
    assert all(p.a.group == p.b.group == p.group for p in pairs)
    assert all(p.a.id < p.b.id and p.key == f"{p.a.id}|{p.b.id}" for p in pairs)
    assert not any("s2g1m2" in p.key for p in pairs)
    assert len(make_pairs(candidates, per_group=1)) == 4


def test_identical_responses_are_passed_over_when_they_come_up(tmp_path: Path) -> None:
    run = tmp_path / "run"
    make_run(run, steps=1, groups=1, members=3)
    twin = trajectory(1, 0, 1)  # the same answer as member 1 of the same group
    twin.id = "s1g0m1-twin"
    store = TrajectoryStore(run)
    store.append(twin)
    store.close()
    session = RankSession(run, "ann")
    assert len(session.pairs) == 6 and session.left == 6  # 4 members: 6 pairs
    shown = []
    while (view := session.next_view()) is not None:
        shown.append(view.pair.key)
        assert view.left_response != view.right_response
        session.judge("left")
    assert "s1g0m1|s1g0m1-twin" not in shown and len(shown) == 5
    assert session.left == 0 and session.done == 5
    assert len(events(run)) == 5  # nothing recorded for the identical pair


def test_order_is_seeded_and_sides_are_random_but_stable(run: Path) -> None:
    candidates = load_candidates(RunIndex(run))
    keys = [p.key for p in make_pairs(candidates, seed=0)]
    assert keys == [p.key for p in make_pairs(list(reversed(candidates)), seed=0)]
    assert keys != [p.key for p in make_pairs(candidates, seed=1)]
    pairs = make_pairs(candidates)
    left_is_a = [sides(p, "ann")[0] is p.a for p in pairs]
    assert 0 < sum(left_is_a) < len(pairs)  # both sides occur
    assert left_is_a == [sides(p, "ann")[0] is p.a for p in pairs]


# --- the session and the log ---------------------------------------------------------------------


def test_every_judgment_is_on_disk_when_judge_returns(run: Path) -> None:
    session = RankSession(run, "ann")
    pair, left, right = session.current()
    session.judge("left")
    (event,) = events(run)
    assert event["event"] == "judge" and event["choice"] == "left"
    assert (event["pair"], event["left"], event["right"]) == (pair.key, left.id, right.id)
    assert event["annotator"] == "ann" and event["group"] == pair.group
    assert session.done == 1 and session.left == 9


def test_reopening_continues_where_it_stopped(run: Path) -> None:
    session = RankSession(run, "ann")
    shown = [session.current()[0].key]
    for choice in ("left", "right", "tie"):
        session.judge(choice)
        shown.append(session.current()[0].key)
    session.close()
    again = RankSession(run, "ann")
    assert again.current()[0].key == shown[-1]
    assert (again.done, again.left) == (3, 7)
    # another annotator starts from the first pair, with their own count
    bob = RankSession(run, "bob")
    assert bob.current()[0].key == shown[0] and bob.others == {"ann": (3, 7)}


def test_undo_appends_a_revert_and_brings_the_pair_back(run: Path) -> None:
    session = RankSession(run, "ann")
    first = session.current()[0].key
    session.judge("left")
    second = session.current()[0].key
    session.judge("skip")
    before = (run / JUDGMENTS_FILE).read_bytes()
    undone = session.undo()
    assert undone.pair == second and session.current()[0].key == second
    assert session.undo().pair == first and session.current()[0].key == first
    after = (run / JUDGMENTS_FILE).read_bytes()
    assert after.startswith(before)  # only appended
    kinds = [(e["event"], e.get("target")) for e in events(run)]
    ids = [e["id"] for e in events(run)]
    assert kinds == [("judge", None), ("judge", None), ("revert", ids[1]), ("revert", ids[0])]
    assert read_log(run).judgments == []
    assert session.done == 0 and session.undo() is None
    session.judge("right")  # re-judge the first pair after undoing it
    assert [(j.pair, j.choice) for j in RankSession(run, "ann")._mine] == [(first, "right")]


def test_replay_keeps_the_latest_judgment_of_a_pair_and_ignores_unknown_reverts() -> None:
    evs = [
        {"event": "judge", "id": "1", "annotator": "a", "pair": "x|y", "left": "x",
         "right": "y", "choice": "left"},
        {"event": "judge", "id": "2", "annotator": "a", "pair": "x|y", "left": "y",
         "right": "x", "choice": "tie"},
        {"event": "revert", "id": "3", "annotator": "a", "target": "nope"},
        {"event": "judge", "id": "4", "annotator": "b", "pair": "x|y", "left": "x",
         "right": "y", "choice": "right"},
    ]  # fmt: skip
    assert [(j.id, j.choice) for j in replay(evs)] == [("2", "tie"), ("4", "right")]


def test_a_torn_last_line_is_skipped_and_the_next_event_starts_a_new_line(run: Path) -> None:
    session = RankSession(run, "ann")
    session.judge("left")
    session.close()
    with open(run / JUDGMENTS_FILE, "ab") as f:
        f.write(b'{"v":1,"event":"judge","id":"tor')  # a crash mid-write
    again = RankSession(run, "ann")
    assert again.bad_lines == 1 and again.done == 1
    again.judge("right")
    state = read_log(run)
    assert [j.choice for j in state.judgments] == ["left", "right"] and state.bad_lines == 1


def test_errors_name_the_fix(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="run directory"):
        RankSession(tmp_path, "ann")
    make_run(tmp_path / "r", steps=1, groups=1, members=2)
    with pytest.raises(ValueError, match="--annotator"):
        RankSession(tmp_path / "r", "")
    with pytest.raises(ValueError, match="unknown choice"):
        RankSession(tmp_path / "r", "ann").judge("maybe")


# --- export --------------------------------------------------------------------------------------


def _rank(run: Path, annotator: str, choices: list[str]) -> RankSession:
    session = RankSession(run, annotator)
    for c in choices:
        session.judge(c)
    return session


def test_export_reads_back_as_preferences(run: Path, tmp_path: Path) -> None:
    session = RankSession(run, "ann")
    shown = []
    for choice in ("left", "right", "tie", "skip", "left"):
        shown.append(session.current())
        session.judge(choice)
    out = tmp_path / "prefs.jsonl"
    assert export(run, out) == 3  # tie and skip left out
    prefs = read_preferences(out)
    assert [p.label for p in prefs] == ["chosen"] * 3
    winners = [shown[0][1], shown[1][2], shown[4][1]]
    losers = [shown[0][2], shown[1][1], shown[4][2]]
    assert [p.chosen_id for p in prefs] == [c.id for c in winners]
    assert [p.rejected_id for p in prefs] == [c.id for c in losers]
    assert [p.shown_first for p in prefs] == ["chosen", "rejected", "chosen"]
    records = {r["id"]: r for r in _all_records(run)}
    first = prefs[0]
    assert first.prompt == records[first.chosen_id]["messages"][:2]  # system + user
    assert first.chosen == records[first.chosen_id]["messages"][2:]
    assert first.rejected == records[first.rejected_id]["messages"][2:]
    assert first.annotator == "ann" and first.run == str(run)
    assert first.task_id == records[first.chosen_id]["task_id"]
    assert export(run, out, include_ties=True) == 4
    assert [p.label for p in read_preferences(out, include_ties=True)].count("tie") == 1


def _all_records(run: Path) -> list[dict]:
    from ptgym.store import RecordReader

    return list(RecordReader(run / "trajectories" / "rollouts.msgpack"))


def test_summary_reports_agreement_and_position_bias(run: Path) -> None:
    _rank(run, "ann", ["left", "left", "right", "tie"]).close()
    bob = RankSession(run, "bob")
    for _ in range(4):  # bob prefers whatever ann preferred
        pair, left, right = bob.current()
        (mine,) = [j for j in read_log(run).by("ann") if j.pair == pair.key]
        if mine.choice == "tie":
            bob.judge("tie")
        else:
            bob.judge("left" if mine.winner == left.id else "right")
    lines = summary(run)
    assert any(line.startswith("ann: 4 judged (3 decided, 1 ties, 0 skips)") for line in lines)
    assert "agreement ann vs bob: Cohen's kappa 1.00 on 4 pairs both decided" in lines
    won, decided = left_wins(read_log(run).judgments)
    assert decided == 6 and f"position bias: the left side won {won / 6:.0%} of 6" in lines


def test_cli_export(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from ptgym.cli import main

    _rank(run, "ann", ["left", "right", "skip"]).close()
    out = tmp_path / "p.jsonl"
    assert main(["prefs", "export", str(run), f"out={out}"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote 2 preferences to {out}" in printed and "ann: 3 judged" in printed
    assert len(read_preferences(out)) == 2
    assert main(["prefs", "export", str(tmp_path / "nope"), f"out={out}"]) == 2
    assert "no judgments" in capsys.readouterr().err


def test_log_lines_are_single_json_objects(run: Path) -> None:
    _rank(run, "ann", ["left"]).undo()
    lines = (run / JUDGMENTS_FILE).read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(x)["v"] == 1 for x in lines)
    assert os.path.getsize(run / JUDGMENTS_FILE) == sum(len(x) + 1 for x in lines)


@pytest.mark.slow
def test_an_export_of_tool_using_conversations_trains_rm_and_dpo(tmp_path: Path) -> None:
    """The issue's end to end: rank pairs of a run, export, and `ptgym rm` / `ptgym dpo` accept
    the file (conversations with tool calls and tool results, rendered by the real template)."""
    from ptgym.cli import main

    make_run(tmp_path / "run", steps=2, groups=2, members=3, tokenize=True)
    _rank(tmp_path / "run", "ann", ["left", "right"] * 5).close()
    data = tmp_path / "prefs.jsonl"
    assert export(tmp_path / "run", data) == 10
    common = ["model=tiny", "trainer.max_steps=1", "trainer.eval_fraction=0"]
    assert main(["dpo", f"data={data}", *common, f"out={tmp_path / 'dpo'}"]) == 0
    assert main(["rm", f"data={data}", *common, f"out={tmp_path / 'rm'}"]) == 0
    assert (tmp_path / "dpo" / "model" / "config.json").is_file()
    assert (tmp_path / "rm" / "model" / "config.json").is_file()
