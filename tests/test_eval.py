"""Evaluation: the unbiased pass@k estimator, ``score`` over trajectories, and the ``rollout`` /
``eval`` commands end to end (the installed console script on the tiny model)."""

from __future__ import annotations

import itertools
import json
import math
import subprocess

import pytest

from ptgym.evaluate import TEST_SEED_OFFSET, pass_at_k, score
from ptgym.store import TrajectoryStore
from ptgym.types import Trajectory


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # pass@1 = c / n
        (5, 2, 2, 0.7),  # 1 - C(3, 2) / C(5, 2) = 1 - 3 / 10
        (10, 3, 5, 1 - 21 / 252),  # 1 - C(7, 5) / C(10, 5)
        (8, 1, 4, 0.5),  # 1 - C(7, 4) / C(8, 4) = 1 - 35 / 70
        (5, 0, 1, 0.0),
        (5, 0, 5, 0.0),
        (5, 4, 2, 1.0),  # n - c < k: every draw of 2 holds a correct sample
        (5, 5, 1, 1.0),
        (1, 1, 1, 1.0),
    ],
)
def test_pass_at_k_hand_computed(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_is_the_share_of_k_subsets_holding_a_correct_sample():
    """Chen et al. 2021, eq. 1, checked against enumerating every k-subset of n samples."""
    for n in range(1, 8):
        for c in range(n + 1):
            samples = [True] * c + [False] * (n - c)
            for k in range(1, n + 1):
                subsets = list(itertools.combinations(samples, k))
                share = sum(any(s) for s in subsets) / len(subsets)
                assert pass_at_k(n, c, k) == pytest.approx(share, abs=1e-12), (n, c, k)
                assert share == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k))


def test_pass_at_k_needs_k_samples():
    with pytest.raises(ValueError, match="pass@3 needs at least 3 samples per task, got 2"):
        pass_at_k(2, 1, 3)


def traj(group: str, correct: bool | None, reward: float = 0.0, error: str | None = None):
    metrics = {} if correct is None else {"correct": correct}
    return Trajectory(
        "ptgym/Digits-v0", group_id=group, reward=reward, metrics=metrics, error=error
    )


def test_score_averages_pass_at_k_over_tasks_and_drops_errored_trajectories():
    task_a = [traj("a", True, 1.0), traj("a", True, 1.0)] + [traj("a", False) for _ in range(3)]
    task_b = [traj("b", False) for _ in range(5)]
    broken = traj("a", None, error="judge unreachable")  # not a sixth sample of task a
    out = score(task_a + task_b + [broken], k=2)
    assert out["eval/tasks"] == 2.0
    assert out["eval/pass@1"] == pytest.approx((0.4 + 0.0) / 2)
    assert out["eval/pass@2"] == pytest.approx((0.7 + 0.0) / 2)
    assert out["reward/mean"] == pytest.approx(0.2)
    assert out["rollout/error_frac"] == pytest.approx(1 / 11)


def test_score_uses_the_env_verdict_then_full_reward_and_caps_k_at_the_smallest_group():
    # No "correct" metric: reward 1.0 counts as solved. A reward of 1.0 with correct=False
    # (e.g. a format bonus) does not.
    task_a = [traj("a", None, 1.0), traj("a", None, 0.5), traj("a", False, 1.0)]
    task_b = [traj("b", True, 1.0)] + [traj("b", False) for _ in range(4)]
    out = score(task_a + task_b, k=8)
    assert "eval/pass@8" not in out
    assert out["eval/pass@1"] == pytest.approx((1 / 3 + 1 / 5) / 2)
    assert out["eval/pass@3"] == pytest.approx((1.0 + (1 - math.comb(4, 3) / math.comb(5, 3))) / 2)


def test_a_count_of_tests_passed_is_not_a_verdict():
    """code-tools' ``passed`` counts hidden tests; its ``correct`` is the verdict. A submission
    passing 2 of 12 tests is not solved (pass@1 had counted it), nor is a partial score without
    ``correct``; a boolean ``passed`` is a verdict."""

    def code(passed: int, total: int, correct: bool | None = None) -> Trajectory:
        t = Trajectory(env_id="code-tools", group_id="a", reward=passed / total)
        t.metrics.update(passed=passed, total=total)
        if correct is not None:
            t.metrics["correct"] = correct
        return t

    trajs = [code(2, 12, False), code(12, 12, True), code(3, 4), code(4, 4)]
    assert score(trajs, k=1)["eval/pass@1"] == pytest.approx(2 / 4)
    verdict = Trajectory(env_id="x", group_id="b", reward=0.0)
    verdict.metrics["passed"] = True
    assert score([verdict], k=1)["eval/pass@1"] == 1.0


def test_score_of_only_errored_trajectories_reports_the_error_fraction():
    assert score([traj("a", None, error="x")], k=1) == {"rollout/error_frac": 1.0}


def ptgym(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ptgym", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_rollout_command_writes_a_readable_store_of_groups(tmp_path):
    out = tmp_path / "run"
    result = ptgym(
        "rollout",
        "env=math",
        "model=tiny",
        "tasks=4",
        "group=2",
        f"out={out}",
        "sampling.max_new_tokens=16",
    )
    assert result.returncode == 0, result.stderr
    assert f"8 trajectories -> {out}/trajectories" in result.stdout
    assert "8/8" in result.stderr  # the progress bar reached the end
    trajs = list(TrajectoryStore(out))
    assert len(trajs) == 8 and TrajectoryStore(out).torn_tails() == {}
    assert sorted(t.seed for t in trajs) == [0, 0, 1, 1, 2, 2, 3, 3]
    groups = {}
    for t in trajs:
        groups.setdefault(t.group_id, []).append(t)
    assert sorted(len(g) for g in groups.values()) == [2, 2, 2, 2]
    for members in groups.values():
        assert len({(t.seed, t.task_id) for t in members}) == 1
    for t in trajs:
        assert t.env_id == "ptgym/Math-v0" and t.model == "tiny" and t.error is None
        assert len(t.turns) == 1 and 1 <= len(t.turns[0].completion_ids) <= 16
        assert len(t.turns[0].completion_logprobs) == len(t.turns[0].completion_ids)
    assert (out / "config.yaml").is_file() and (out / "summary.json").is_file()


@pytest.mark.slow
def test_eval_command_prints_pass_at_1_and_k_and_writes_eval_json(tmp_path):
    out = tmp_path / "eval"
    result = ptgym("eval", "env=digits", "model=tiny", "tasks=4", "k=2", f"out={out}")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"eval of tiny on digits: 4 tasks x 2 samples -> {out}"
    printed = {line.split()[0]: float(line.split()[1]) for line in lines[1:]}
    summary = json.loads((out / "eval.json").read_text())
    assert {"eval/pass@1", "eval/pass@2", "reward/mean"} <= set(printed)
    for key, value in printed.items():
        assert value == pytest.approx(summary[key], abs=5e-5)
    assert summary["eval/tasks"] == 4.0 and summary["rollout/error_frac"] == 0.0
    assert 0.0 <= summary["eval/pass@1"] <= summary["eval/pass@2"] <= 1.0
    trajs = list(TrajectoryStore(out))
    assert len(trajs) == 8
    assert sorted({t.seed for t in trajs}) == [TEST_SEED_OFFSET + i for i in range(4)]
