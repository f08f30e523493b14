"""``ptgym train``: the loop end to end on the tiny model (issue 4): metrics, checkpoints, resume,
the refusal to overwrite a run, the LR schedule and the console command.

The untrained tiny model never answers Digits-v0 correctly, so every group has reward 0 and no
gradient. ``Letters-v0`` below keeps Digits' prompt and scores the reply by its share of ASCII
letters: a dense reward that differs between any two samples, so every step really trains.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ptgym import checkpoint as ckpt
from ptgym.config import ConfigError, TrainCommand, compose, load_yaml
from ptgym.env import action_text
from ptgym.envs.digits import DigitsEnv
from ptgym.metrics import read_metrics
from ptgym.registry import register
from ptgym.store import TrajectoryStore
from ptgym.trainer import lr_lambda, train
from ptgym.types import Action

LETTERS = "tests/Letters-v0"


class LettersEnv(DigitsEnv):
    """Digits-v0's prompt; reward = the fraction of the reply's characters that are ASCII letters;
    one turn."""

    def step(self, action: str | Action):
        obs, _, _, truncated, info = super().step(action)
        text = action_text(action)
        reward = sum(c.isascii() and c.isalpha() for c in text) / max(len(text), 1)
        return obs, reward, True, truncated, info


register(LETTERS, LettersEnv)


def config(out: Path, *overrides: str) -> TrainCommand:
    return compose(
        TrainCommand,
        [
            f"env={LETTERS}",
            "model=tiny",
            "sampling.max_new_tokens=8",
            "rollout.env_workers=2",
            f"out={out}",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> tuple[TrainCommand, list[str]]:
    """Two GRPO steps with LoRA and a KL term (the reference is the adapter-free base model)."""
    cfg = config(
        tmp_path_factory.mktemp("run"),
        "trainer.steps=2",
        "tasks=2",
        "group=2",
        "lora.enabled=true",
        "lora.r=4",
        "algo.beta=0.1",
        "trainer.lr=0.01",
    )
    lines: list[str] = []
    train(cfg, log=lines.append)
    return cfg, lines


def test_metrics_hold_one_namespaced_record_per_step(run):
    cfg, _ = run
    records = read_metrics(cfg.out)
    assert [r["step"] for r in records] == [1, 2]
    keys = {
        "reward/mean",
        "reward/std",
        "reward/pass_rate",
        f"reward/mean/{LETTERS}",
        "loss/total",
        "loss/pg_loss",
        "loss/kl",
        "loss/entropy",
        "loss/clip_frac",
        "loss/grad_norm",
        "rollout/response_tokens",
        "rollout/trajectory_tokens",
        "rollout/turns",
        "perf/tokens_per_s",
        "perf/generation_frac",
        "perf/env_frac",
        "perf/train_frac",
        "perf/other_frac",
        "lr",
        "time",
    }
    for r in records:
        assert keys <= r.keys(), keys - r.keys()
        assert not any(k.startswith("gpu/") for k in r) or torch.cuda.is_available()
        assert r[f"reward/mean/{LETTERS}"] == r["reward/mean"]
        assert 0 < r["reward/mean"] < 1 and r["reward/std"] > 0
        assert r["reward/pass_rate"] == 0  # Digits' own verdict: letters are never the digit
        assert r["rollout/turns"] == 1 and r["rollout/kept_frac"] == 1
        assert 0 < r["rollout/response_tokens"] <= 8
        assert r["rollout/trajectory_tokens"] == r["rollout/response_tokens"]  # one turn
        assert r["loss/grad_norm"] > 0 and r["loss/kl"] >= 0 and r["perf/tokens_per_s"] > 0
        fracs = [r[f"perf/{k}_frac"] for k in ("generation", "env", "train", "other")]
        assert min(fracs) >= 0 and sum(fracs) == pytest.approx(1.0, abs=0.02)
        assert r["lr"] == 0.01
    assert records[0]["loss/kl"] < 1e-6 < records[1]["loss/kl"]  # step 1 starts at the reference


def test_run_dir_holds_config_trajectories_and_a_trained_adapter(run):
    cfg, lines = run
    out = Path(cfg.out)
    assert load_yaml(TrainCommand, out / "config.yaml") == cfg
    trajs = list(TrajectoryStore(out))
    assert len(trajs) == 8 and {t.policy_version for t in trajs} == {0, 1}
    assert {t.group_id for t in trajs} == {"0/0", "0/1", "1/0", "1/1"}
    [last] = ckpt.list_checkpoints(out)
    assert last.name == "step-000002" and (last / "adapter" / "adapter_config.json").exists()
    trainable = torch.load(last / "trainable.pt", weights_only=True)
    assert trainable and all("lora_" in n for n in trainable)  # the base model stays frozen
    assert all(t.abs().max() > 0 for n, t in trainable.items() if "lora_B" in n)  # init 0
    assert lines[0].startswith(f"ptgym train: env={LETTERS} algo=grpo model=tiny")


def test_train_refuses_a_run_dir_with_checkpoints_unless_resuming(run):
    cfg, _ = run
    with pytest.raises(ConfigError, match="already holds a run.*step-000002.*resume=true"):
        train(cfg)
    assert [r["step"] for r in read_metrics(cfg.out)] == [1, 2]


@pytest.mark.slow
def test_resume_gives_the_same_steps_as_an_uninterrupted_run(tmp_path):
    """Steps 3-4 after a resume from step 2 equal those of a run that never stopped.

    The checkpoint must carry weights, value head, AdamW moments, scheduler and the RNG states
    (LoRA dropout draws from torch's global RNG). Four episodes per step, sampled at temperature
    1: the collector batches them as their envs answer, so this holds only because every turn
    samples from its own seed (``rollout.turn_seed``), whatever batch it landed in. Sampled ids and
    rewards are equal exactly; losses and weights to 1e-4 (weights near 0: 1e-5) only: the sampler's logprobs (the PPO
    ratio's denominator) come from a forward pass over whichever batch the row landed in, whose
    float rounding depends on the batch (~1e-7), and four steps at lr 0.01 grow that to ~1e-5.
    """
    args = (
        "tasks=2",
        "group=2",
        "algo=ppo",
        "lora.enabled=true",
        "lora.r=4",
        "lora.dropout=0.1",
        "sampling.temperature=1.0",
        "trainer.lr=0.01",
    )
    train(config(tmp_path / "whole", "trainer.steps=4", *args), log=lambda _: None)
    train(config(tmp_path / "split", "trainer.steps=2", *args), log=lambda _: None)
    lines: list[str] = []
    train(config(tmp_path / "split", "trainer.steps=4", "resume=true", *args), log=lines.append)
    assert f"resumed from {tmp_path / 'split/checkpoints/step-000002'} (step 2)" in lines

    whole, split = read_metrics(tmp_path / "whole"), read_metrics(tmp_path / "split")
    assert [r["step"] for r in whole] == [r["step"] for r in split] == [1, 2, 3, 4]
    for a, b in zip(whole, split, strict=True):
        for key in ("reward/mean", "rollout/response_tokens"):
            assert b[key] == a[key], (a["step"], key)
        for key in ("loss/total", "loss/value_loss", "loss/entropy", "loss/grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
    assert whole[2]["loss/grad_norm"] != whole[1]["loss/grad_norm"]
    sampled = [
        [
            (t.group_id, [turn.completion_ids.tolist() for turn in t.turns])
            for t in TrajectoryStore(tmp_path / d)
        ]
        for d in ("whole", "split")
    ]
    assert len(sampled[0]) == len(sampled[1]) == 16 and sampled[0] == sampled[1]
    weights = [
        torch.load(ckpt.list_checkpoints(tmp_path / d)[-1] / "trainable.pt", weights_only=True)
        for d in ("whole", "split")
    ]
    for name, tensor in weights[0].items():
        torch.testing.assert_close(weights[1][name], tensor, rtol=1e-4, atol=1e-5)


def test_lr_schedules_warm_up_then_decay():
    def factors(schedule: str) -> list[float]:
        cfg = compose(
            TrainCommand,
            ["trainer.steps=6", "trainer.warmup_steps=2", f"trainer.schedule={schedule}"],
        )
        f = lr_lambda(cfg)
        return [f(s) for s in range(6)]

    assert factors("constant") == [0.5, 1, 1, 1, 1, 1]
    assert factors("linear") == [0.5, 1, 1, 0.75, 0.5, 0.25]
    assert factors("cosine") == pytest.approx([0.5, 1, 1, 0.853553, 0.5, 0.146447], abs=1e-6)


def ptgym(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(
        [sys.executable, "-m", "ptgym.cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow
def test_cli_trains_then_resumes_at_the_next_step(tmp_path):
    out = tmp_path / "run"
    args = (
        "env=digits",
        "model=tiny",
        "tasks=2",
        "group=2",
        "sampling.max_new_tokens=4",
        f"out={out}",
    )
    first = ptgym("train", "trainer.steps=2", *args)
    assert first.returncode == 0, first.stderr
    steps = [line.split()[1] for line in first.stdout.splitlines() if line.startswith("step ")]
    assert steps == ["1/2", "2/2"]
    assert (out / "config.yaml").exists() and (out / "metrics.msgpack").exists()
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-000002"]

    again = ptgym("train", "trainer.steps=3", *args)
    assert again.returncode != 0 and "resume=true" in again.stderr

    resumed = ptgym("train", "trainer.steps=3", "resume=true", *args)
    assert resumed.returncode == 0, resumed.stderr
    steps = [line.split()[1] for line in resumed.stdout.splitlines() if line.startswith("step ")]
    assert steps == ["3/3"] and "resumed from" in resumed.stdout
    assert [r["step"] for r in read_metrics(out)] == [1, 2, 3]
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step-000002", "step-000003"]
