"""A resumed run's directory equals an uninterrupted run's (issue 8 #6, DESIGN §8).

``drop_after`` on real streams (metrics, trajectories and their summary index, the trainer's
notes), then ``ptgym train`` interrupted by Ctrl-C in the middle of step 8 with checkpoints at 3
and 6, resumed to step 9: every record stream holds each step once, and the same samples as a run
that never stopped. Also the refusals: resume without a checkpoint, an out= holding another run.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from ptgym import checkpoint as ckpt
from ptgym.config import ConfigError, RolloutCommand, TrainCommand, compose, to_yaml
from ptgym.metrics import MetricsLogger, read_metrics
from ptgym.notes import NOTES_FILE
from ptgym.registry import register
from ptgym.resume import drop_after
from ptgym.store import (
    RecordReader,
    RecordWriter,
    TrajectoryStore,
    _read_index,
    scan,
)
from ptgym.trainer import train
from ptgym.types import Trajectory, Turn
from tests.test_trainer import LettersEnv

INTERRUPTED = "tests/InterruptedLetters-v0"


class InterruptedLetters(LettersEnv):
    """Letters-v0 whose ``reset`` raises ``KeyboardInterrupt`` (a Ctrl-C) for the task seeds in
    ``interrupt_at``: the run stops in the middle of that step's rollout."""

    interrupt_at: ClassVar[set[int]] = set()

    def reset(self, *, seed=None, options=None):
        if seed in self.interrupt_at:
            raise KeyboardInterrupt
        return super().reset(seed=seed, options=options)


register(INTERRUPTED, InterruptedLetters)


def trajectory(version: int, k: int) -> Trajectory:
    turn = Turn(prompt_ids=[1, 2, 3], completion_ids=[4, 5 + k], completion_logprobs=[-0.1, -0.2])
    return Trajectory(
        "ptgym/Digits-v0", group_id=f"{version}/0", policy_version=version, turns=[turn]
    )


def write_run(run: Path, steps: int) -> None:
    """What a trainer writes for ``steps`` steps: metrics, two trajectories and notes per step."""
    metrics, store, notes = MetricsLogger(run), TrajectoryStore(run), RecordWriter(run / NOTES_FILE)
    for step in range(1, steps + 1):
        trajs = [trajectory(step - 1, k) for k in range(2)]
        store.extend(trajs)
        for t in trajs:
            notes.append({"step": step, "id": t.id, "kept": True})
        metrics.log(step, {"reward/mean": step / 10})
    for writer in (metrics, store, notes):
        writer.close()


def test_drop_after_cuts_every_stream_at_the_step_and_rewrites_its_index(tmp_path):
    write_run(tmp_path, 7)
    sizes = {p: p.stat().st_size for p in tmp_path.rglob("*.msgpack")}
    dropped = drop_after(tmp_path, 6)
    assert dropped == {
        "metrics.msgpack": 1,
        NOTES_FILE: 2,
        "trajectories/rollouts.msgpack": 2,
    }
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in RecordReader(tmp_path / NOTES_FILE)] == [
        s for s in range(1, 7) for _ in "ab"
    ]
    versions = [t.policy_version for t in TrajectoryStore(tmp_path)]
    assert versions == [v for v in range(6) for _ in "ab"]
    for path in sizes:  # cut at a record boundary (no torn tail) and the index agrees
        offsets, torn = scan(path)
        assert torn is None and path.stat().st_size < sizes[path]
        assert _read_index(path.with_suffix(".msgpack.idx")) == offsets
    assert drop_after(tmp_path, 6) == {}  # done: a second call (after a crash) finds nothing
    # Writers append after the cut; the summary index is reconciled with its stream on open.
    write_more = TrajectoryStore(tmp_path)
    write_more.extend([trajectory(6, 0)])
    write_more.close()
    from ptgym.runindex import RunIndex

    rows = RunIndex(tmp_path).summaries()
    assert list(rows.step) == [s for s in range(1, 7) for _ in "ab"] + [7]


def test_drop_after_keeps_later_records_of_an_earlier_step(tmp_path):
    """A stream not in step order (records of step 2 after one of step 3) is rewritten whole."""
    with RecordWriter(tmp_path / "mixed.msgpack") as w:
        for step in (1, 3, 2, 4):
            w.append({"step": step})
        w.append({"no": "step"})
    assert drop_after(tmp_path, 2) == {"mixed.msgpack": 2}
    assert list(RecordReader(tmp_path / "mixed.msgpack")) == [
        {"step": 1},
        {"step": 2},
        {"no": "step"},
    ]
    assert _read_index(tmp_path / "mixed.msgpack.idx") == scan(tmp_path / "mixed.msgpack")[0]


def config(out: Path, steps: int, *overrides: str) -> TrainCommand:
    return compose(
        TrainCommand,
        [
            f"env={INTERRUPTED}",
            "model=tiny",
            "tasks=1",
            "group=2",
            "sampling.max_new_tokens=6",
            "rollout.env_workers=2",
            "trainer.save_every=3",
            "trainer.keep_checkpoints=0",
            f"trainer.steps={steps}",
            f"out={out}",
            *overrides,
        ],
    )


@pytest.mark.slow
def test_a_run_interrupted_after_step_7_resumes_to_the_directory_of_one_that_never_stopped(
    tmp_path, monkeypatch
):
    train(config(tmp_path / "whole", 9), log=print)

    run = tmp_path / "split"
    monkeypatch.setattr(InterruptedLetters, "interrupt_at", {7})  # task seed 7: step 8
    with pytest.raises(KeyboardInterrupt):
        train(config(run, 9), log=print)
    assert [r["step"] for r in read_metrics(run)] == [1, 2, 3, 4, 5, 6, 7]
    assert [p.name for p in ckpt.list_checkpoints(run)] == ["step-000003", "step-000006"]
    monkeypatch.setattr(InterruptedLetters, "interrupt_at", set())

    lines: list[str] = []
    train(config(run, 9, "resume=true"), log=lines.append)
    assert f"resumed from {run / 'checkpoints' / 'step-000006'} (step 6)" in lines
    assert (
        "dropped the records of steps after 6: 1 from metrics.msgpack, "
        f"2 from {NOTES_FILE}, 2 from trajectories/rollouts.msgpack"
    ) in lines

    for d in ("whole", "split"):
        assert [r["step"] for r in read_metrics(tmp_path / d)] == list(range(1, 10))
        trajs = list(TrajectoryStore(tmp_path / d))
        assert [t.policy_version for t in trajs] == [v for v in range(9) for _ in "ab"]
        notes = list(RecordReader(tmp_path / d / NOTES_FILE))
        assert [n["step"] for n in notes] == [s for s in range(1, 10) for _ in "ab"]
    sampled = [
        [
            np.concatenate([t.completion_ids for t in tr.turns]).tolist()
            for tr in TrajectoryStore(tmp_path / d)
        ]
        for d in ("whole", "split")
    ]
    assert sampled[0] == sampled[1]


def test_a_run_stopped_before_its_first_checkpoint_starts_over_when_run_again(
    tmp_path, monkeypatch
):
    monkeypatch.setattr(InterruptedLetters, "interrupt_at", {1})  # in step 2, before step 3's save
    with pytest.raises(KeyboardInterrupt):
        train(config(tmp_path, 3), log=print)
    assert [r["step"] for r in read_metrics(tmp_path)] == [1]
    monkeypatch.setattr(InterruptedLetters, "interrupt_at", set())
    lines: list[str] = []
    train(config(tmp_path, 3), log=lines.append)
    assert any(
        line.startswith("dropped the records of steps after 0: 1 from metrics") for line in lines
    )
    assert [r["step"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    assert [t.policy_version for t in TrajectoryStore(tmp_path)] == [0, 0, 1, 1, 2, 2]


def test_resume_without_a_checkpoint_and_an_out_holding_another_run_are_refused(tmp_path):
    with pytest.raises(ConfigError, match=rf"^resume=true, but out={tmp_path} holds no checkpoint"):
        train(config(tmp_path, 1, "resume=true"), log=lambda _: None)
    (tmp_path / "config.yaml").write_text(to_yaml(compose(TrainCommand, ["env=math"])))
    with pytest.raises(
        ConfigError,
        match=rf"^out={tmp_path} holds a different run \(env\.name=math there, {INTERRUPTED} here\)",
    ):
        train(config(tmp_path, 1), log=lambda _: None)


def test_train_refuses_an_out_holding_a_rollout_or_records_without_a_config(tmp_path):
    """Starting over drops what an out= holds: only a training run's own records may go."""
    rollout = tmp_path / "rollout"
    (rollout / "trajectories").mkdir(parents=True)
    cfg = compose(RolloutCommand, [f"env={INTERRUPTED}", "model=tiny"])
    (rollout / "config.yaml").write_text(to_yaml(cfg))
    with pytest.raises(ConfigError, match=rf"^out={rollout} holds the output of another command"):
        train(config(rollout, 1), log=lambda _: None)
    bare = tmp_path / "bare"
    (bare / "trajectories").mkdir(parents=True)
    with pytest.raises(ConfigError, match=rf"^out={bare} holds records but no config\.yaml"):
        train(config(bare, 1), log=lambda _: None)
