"""Held-out eval during training (issue 8 #10): ``trainer.eval_every=N`` scores greedy pass@1 on
``split=test`` every N steps into the same metrics stream, on the same tasks that
``ptgym eval tasks=N k=1 sampling.temperature=0`` scores, so the two agree on a checkpoint."""

from __future__ import annotations

import json

import pytest

from ptgym import checkpoint as ckpt
from ptgym.cli import main
from ptgym.config import ConfigError, TrainCommand, compose
from ptgym.metrics import read_metrics
from ptgym.trainer import train
from tests.test_trainer import LETTERS  # a dense reward: the eval's mean reward is informative

COMMON = [
    f"env={LETTERS}",
    "model=tiny",
    "sampling.max_new_tokens=8",
    "rollout.env_workers=2",
]


def test_eval_every_logs_held_out_greedy_scores_equal_to_ptgym_eval_of_the_checkpoint(
    tmp_path, capsys
):
    run = tmp_path / "run"
    cfg = compose(
        TrainCommand,
        [
            *COMMON,
            "tasks=2",
            "group=2",
            "trainer.steps=3",
            "trainer.lr=0.01",
            "trainer.eval_every=2",
            "trainer.eval_tasks=3",
            "trainer.save_every=1",
            "trainer.keep_checkpoints=0",
            f"out={run}",
        ],
    )
    train(cfg, log=lambda _: None)
    records = read_metrics(run)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert not any(k.startswith("eval/") for r in (records[0], records[2]) for k in r)
    scores = records[1]
    assert scores["eval/tasks"] == 3 and scores["eval/error_frac"] == 0
    assert 0 <= scores["eval/pass@1"] <= 1 and 0 < scores["eval/mean_reward"] < 1
    assert 0 < scores["eval/response_tokens"] <= 8 and scores["eval/seconds"] > 0

    step2 = ckpt.list_checkpoints(run)[1]
    assert step2.name == "step-000002"
    out = tmp_path / "eval"
    args = ["tasks=3", "k=1", "sampling.temperature=0", f"out={out}"]
    assert main(["eval", *COMMON, f"model={step2 / 'model'}", *args]) == 0
    capsys.readouterr()
    standalone = json.loads((out / "eval.json").read_text())
    assert scores["eval/mean_reward"] == pytest.approx(standalone["reward/mean"], abs=1e-9)
    assert scores["eval/pass@1"] == standalone["eval/pass@1"]
    assert scores["eval/response_tokens"] == standalone["rollout/response_tokens"]


def test_eval_settings_are_checked():
    with pytest.raises(ConfigError, match="trainer.eval_tasks must be at least 1, got 0"):
        compose(TrainCommand, ["trainer.eval_every=1", "trainer.eval_tasks=0"])
    with pytest.raises(ConfigError, match="trainer.eval_every must be at least 0, got -1"):
        compose(TrainCommand, ["trainer.eval_every=-1"])
