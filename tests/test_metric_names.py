"""One module owns the reward/, rollout/ and perf/ metric names (issue 8 #15), and the trainer
records what it knew about each trajectory in RUN/trainer.msgpack (issue 9)."""

from __future__ import annotations

import pytest

from ptgym.metrics import batch_metrics, collect_metrics, read_metrics, step_metrics
from ptgym.notes import read_notes, trainer_notes
from ptgym.rollout import CollectStats
from ptgym.types import Trajectory, Turn


def test_step_metrics_split_the_step_time_without_clashing_with_the_rollouts_shares():
    stats = CollectStats(total=6.0, generation=4.0, env_wait=1.0, generated_tokens=80)
    stats.generate_calls, stats.episodes = 2, 12
    m = step_metrics(stats, train_s=3.0, step_s=10.0)
    assert m["perf/rollout_s"] == 6.0
    assert m["perf/rollout_generation_frac"] == pytest.approx(4 / 6)
    assert m["perf/rollout_other_frac"] == pytest.approx(1 / 6)
    assert m["perf/generation_frac"] == pytest.approx(0.4)
    assert m["perf/train_frac"] == pytest.approx(0.3)
    assert m["perf/other_frac"] == pytest.approx(0.2)  # 10 - 4 - 1 - 3
    assert m["perf/gen_tokens_per_s"] == pytest.approx(20.0)
    assert m["perf/tokens_per_s"] == pytest.approx(8.0)
    assert set(collect_metrics(stats)) < set(m)


def _traj(reward: float, group: str, error: str | None = None) -> Trajectory:
    turn = Turn([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], reward=reward)
    return Trajectory(
        env_id="e", task_id="t", group_id=group, turns=[turn], reward=reward, error=error
    )


def test_batch_metrics_count_errors_apart():
    trajs = [_traj(1.0, "a"), _traj(0.0, "a"), _traj(0.0, "b", error="boom")]
    m = batch_metrics(trajs)
    assert m["rollout/error_frac"] == pytest.approx(1 / 3)
    assert m["reward/mean"] == 0.5 and m["reward/pass_rate"] == 0.5
    assert m["rollout/response_tokens"] == 3.0


def test_trainer_notes_say_why_each_trajectory_was_dropped():
    a, b, c, d = _traj(1.0, "a"), _traj(0.0, "a"), _traj(0.0, "b", error="boom"), _traj(1.0, "c")
    notes = trainer_notes(5, [a, b, c, d], [a, b], [[1.0], [-1.0]])
    assert [(n["kept"], n["drop_reason"], n["advantages"]) for n in notes] == [
        (True, None, [1.0]),
        (True, None, [-1.0]),
        (False, "error", []),
        (False, "zero-variance", []),
    ]
    assert {n["step"] for n in notes} == {5}


def test_a_training_run_writes_its_notes_beside_the_trajectories(tmp_path):
    from ptgym.config import TrainCommand, compose
    from ptgym.store import TrajectoryStore
    from ptgym.trainer import train

    cfg = compose(
        TrainCommand,
        [
            "env=digits",
            "model=tiny",
            "sampling.max_new_tokens=4",
            "trainer.steps=1",
            "tasks=2",
            "group=2",
            f"out={tmp_path}",
        ],
    )
    train(cfg, log=lambda *_: None)
    notes = read_notes(tmp_path)
    trajs = list(TrajectoryStore(tmp_path))
    assert set(notes) == {t.id for t in trajs}
    assert {n["step"] for n in notes.values()} == {read_metrics(tmp_path)[-1]["step"]}
    for n in notes.values():
        assert n["kept"] == (n["drop_reason"] is None)
        assert len(n["advantages"]) == (1 if n["kept"] else 0)


def test_raw_reward_source_scores_are_averaged_per_step():
    a, b = _traj(0.5, "a"), _traj(-0.5, "a")
    a.metrics["score/rm"], b.metrics["score/rm"] = 2.0, -1.0
    assert batch_metrics([a, b])["reward/score/rm"] == 0.5


def test_training_chat_without_a_reward_is_refused_before_the_model_loads(capsys):
    from ptgym.cli import main

    assert main(["train", "env=chat", "model=tiny", "out=/tmp/ptgym-unscored-chat"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "env=chat has no reward to train on: add reward=rm:PATH" in err[0]


def test_numbers_envs_report_per_episode_are_averaged_under_env():
    a, b, c = _traj(1.0, "a"), _traj(0.0, "a"), _traj(0.0, "b")
    a.metrics.update(valid_tool_call=True, tool_calls=2, extracted="42")
    b.metrics.update(valid_tool_call=False, tool_calls=0, extracted=None)
    c.metrics.update(valid_tool_call=True, tool_calls=1)
    m = batch_metrics([a, b, c])
    assert m["env/valid_tool_call"] == pytest.approx(2 / 3)
    assert m["env/tool_calls"] == 1.0
    assert "env/extracted" not in m  # not a number in every episode
