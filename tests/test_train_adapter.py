"""``ptgym train model.adapter=DIR`` continues training a saved PEFT adapter (issue 8 #3): the
adapter's own rank, alpha and targets are used, its weights are the starting point, and a path
that is not an adapter stops before any model loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ptgym import checkpoint as ckpt
from ptgym.config import ConfigError, TrainCommand, compose, load_yaml
from ptgym.trainer import train
from tests.test_trainer import LETTERS


def config(out: Path, *overrides: str) -> TrainCommand:
    return compose(
        TrainCommand,
        [
            f"env={LETTERS}",  # a dense reward: every group has a gradient
            "model=tiny",
            "tasks=2",
            "group=2",
            "sampling.max_new_tokens=4",
            "rollout.env_workers=2",
            "lora.enabled=true",
            "trainer.steps=1",
            f"out={out}",
            *overrides,
        ],
    )


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "adapter_model.safetensors")


def last_adapter(run: Path) -> Path:
    return ckpt.list_checkpoints(run)[-1] / "adapter"


@pytest.fixture(scope="module")
def adapter(tmp_path_factory) -> Path:
    """A rank-4 adapter from one real step, its B matrices set to seeded non-zero values (a
    fresh adapter's B is 0, so starting from it would look like starting from scratch)."""
    run = tmp_path_factory.mktemp("first")
    train(config(run, "lora.r=4", "lora.alpha=8"), log=lambda _: None)
    path = last_adapter(run)
    weights = adapter_weights(path)
    gen = torch.Generator().manual_seed(0)
    for key in sorted(weights):
        if "lora_B" in key:
            weights[key] = torch.randn(weights[key].shape, generator=gen) * 0.05
    save_file(weights, path / "adapter_model.safetensors")
    return path


def test_train_starts_from_the_adapters_weights_and_shape(adapter, tmp_path):
    lines: list[str] = []
    cfg = config(tmp_path, f"model.adapter={adapter}", "trainer.lr=0")  # lr 0: nothing moves
    train(cfg, log=lines.append)
    assert any(line.startswith(f"continuing model.adapter={adapter}") for line in lines)
    saved = load_yaml(TrainCommand, tmp_path / "config.yaml")
    assert (saved.lora.r, saved.lora.alpha) == (4, 8)  # the adapter's, not lora.r's default 16
    start, end = adapter_weights(adapter), adapter_weights(last_adapter(tmp_path))
    assert start.keys() == end.keys() and any("lora_B" in k for k in start)
    for key, tensor in start.items():
        assert torch.equal(end[key], tensor), key


def test_train_keeps_training_the_adapter(adapter, tmp_path):
    train(config(tmp_path, f"model.adapter={adapter}", "trainer.lr=0.05"), log=lambda _: None)
    start, after = adapter_weights(adapter), adapter_weights(last_adapter(tmp_path))
    assert start.keys() == after.keys()
    moved = [k for k in start if not torch.equal(start[k], after[k])]
    assert moved and all("lora_" in k for k in moved)


def test_a_missing_adapter_or_lora_off_is_refused_before_any_model_loads(adapter, tmp_path):
    with pytest.raises(ConfigError, match=r"^model\.adapter=/no/such/adapter: no such folder"):
        config(tmp_path, "model.adapter=/no/such/adapter")
    with pytest.raises(ConfigError, match=r"holds no adapter_config\.json"):
        config(tmp_path, f"model.adapter={tmp_path}")
    with pytest.raises(ConfigError, match=r"continues training a LoRA adapter: add lora\.enabled"):
        config(tmp_path, f"model.adapter={adapter}", "lora.enabled=false")
