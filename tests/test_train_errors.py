"""Env failures under ``ptgym train`` are visible on the console (issue 8 #4): each step with
failed episodes prints one line with the count and the first error (its traceback's last line and
where it was raised); a step where every episode failed stops the run with exit status 1."""

from __future__ import annotations

import re

from ptgym.cli import main
from ptgym.metrics import read_metrics
from ptgym.registry import register
from ptgym.store import TrajectoryStore
from tests.envs_for_tests import ResetFailingEnv

RESET_FAILS = "tests/ResetFails-v0"
register(RESET_FAILS, ResetFailingEnv)
LINE = (
    r"step {step}: {n}/4 episodes failed; first: RuntimeError: task server unreachable for "
    r"task {seed} \(envs_for_tests\.py:\d+ in reset\)"
)


def console_lines(err: str) -> list[str]:
    """stderr as lines, without the progress bar's carriage-return redraws."""
    return [line.strip() for line in re.split(r"[\r\n]+", err) if line.strip()]


def has_line(pattern: str, err: str) -> bool:
    return any(re.fullmatch(pattern, line) for line in console_lines(err))


def train_args(out, *overrides: str) -> list[str]:
    return [
        "train",
        f"env={RESET_FAILS}",
        "model=tiny",
        "tasks=2",
        "group=2",
        "sampling.max_new_tokens=4",
        "rollout.max_turns=1",
        f"out={out}",
        *overrides,
    ]


def test_a_step_where_every_episode_failed_prints_the_error_and_exits_1(tmp_path, capsys, recwarn):
    assert main(train_args(tmp_path, "trainer.steps=3")) == 1
    err = capsys.readouterr().err
    # A step without an update advances the LR schedule without torch's order warning.
    assert not [w for w in recwarn if "lr_scheduler.step()" in str(w.message)]
    assert has_line(LINE.format(step=1, n=4, seed=0), err), err
    last = console_lines(err)[-1]
    assert re.fullmatch(
        r"ptgym train: error: " + LINE.format(step=1, n=4, seed=0) + "; every episode failed: "
        rf"fix the env \(errors and tracebacks are stored with the trajectories in {tmp_path}\)",
        last,
    ), last
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]  # it stopped after step 1
    assert read_metrics(tmp_path)[0]["rollout/error_frac"] == 1.0
    trajs = list(TrajectoryStore(tmp_path))
    assert len(trajs) == 4 and all("task server unreachable" in t.error for t in trajs)


def test_some_failed_episodes_print_a_line_per_step_and_training_goes_on(tmp_path, capsys):
    # Tasks 0 and 2 fail (two episodes each); task 1 and 3 train.
    code = main(train_args(tmp_path, "trainer.steps=2", "env.kwargs={fail_on: [0, 2]}"))
    assert code == 0
    err = capsys.readouterr().err
    assert has_line(LINE.format(step=1, n=2, seed=0), err), err
    assert has_line(LINE.format(step=2, n=2, seed=2), err), err
    assert "error:" not in err
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2]
