"""``ptgym.checkpoint``: atomic writes, exact restore, retention, PEFT adapter, merged export.

Real files in ``tmp_path``, the real tiny model, PEFT and transformers loaders.
"""

from __future__ import annotations

import copy
import json
import random

import numpy as np
import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer

from ptgym import checkpoint as ckpt
from ptgym.agents.models import load_model
from ptgym.config import LoraConfig
from ptgym.policy import Policy
from tests.tiny import tiny_model_and_tokenizer


def make_policy(seed: int, *, lora: bool = True) -> Policy:
    """A policy whose adapters (and value head) are random, so a restore has something to do."""
    model, tokenizer = tiny_model_and_tokenizer()
    torch.manual_seed(seed)
    policy = Policy(
        copy.deepcopy(model),
        tokenizer,
        lora=LoraConfig(enabled=lora, r=4, alpha=8),
        value_head=True,
        need_reference=False,
    )
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name or name.startswith("value_head"):
                p.normal_(std=0.1)
    return policy


def training_parts(policy: Policy) -> tuple[torch.optim.Optimizer, object]:
    """AdamW and a linear-decay scheduler, after one real step (so Adam has moments)."""
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / 10)
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253]])
    out = policy(ids, torch.ones_like(ids))
    (-out.logprobs.sum() + out.values.pow(2).sum()).backward()
    opt.step()
    sched.step()
    return opt, sched


def logprobs(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits[:, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]


IDS = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 3365, 3511, 308]])


def test_load_restores_weights_optimizer_scheduler_and_rng(tmp_path):
    policy = make_policy(seed=0)
    opt, sched = training_parts(policy)
    path = ckpt.save_checkpoint(tmp_path, 7, policy, opt, sched)
    assert path == tmp_path / "checkpoints" / "step-000007"
    assert {p.name for p in path.iterdir()} == {"adapter", "trainable.pt", "state.pt"}
    draws = (torch.rand(3), random.random(), np.random.rand())

    other = make_policy(seed=1)
    other_opt, other_sched = training_parts(other)
    other_opt.param_groups[0]["lr"] = 5.0
    assert ckpt.load_checkpoint(path, other, other_opt, other_sched) == 7
    for (name, p), q in zip(policy.named_parameters(), other.parameters(), strict=True):
        assert torch.equal(p, q), name
    for p, q in zip(policy.trainable_parameters(), other.trainable_parameters(), strict=True):
        assert torch.equal(opt.state[p]["exp_avg_sq"], other_opt.state[q]["exp_avg_sq"])
    assert other_sched.last_epoch == 1 and other_opt.param_groups[0]["lr"] == pytest.approx(9e-3)
    assert torch.equal(torch.rand(3), draws[0])
    assert (random.random(), np.random.rand()) == draws[1:]


def test_loading_into_a_different_setup_names_the_settings_to_keep(tmp_path):
    policy = make_policy(seed=0)
    path = ckpt.save_checkpoint(tmp_path, 1, policy, *training_parts(policy))
    full = make_policy(seed=0, lora=False)
    with pytest.raises(ValueError, match=r"lora\.\* and algo settings.*config\.yaml"):
        ckpt.load_checkpoint(path, full, *training_parts(full))


def test_a_crashed_write_leaves_no_checkpoint_behind(tmp_path):
    policy = make_policy(seed=0)
    opt, sched = training_parts(policy)
    ckpt.save_checkpoint(tmp_path, 2, policy, opt, sched)
    root = tmp_path / "checkpoints"
    # What a crash mid-save leaves: the hidden temp folder, complete or not.
    crashed = root / ".step-000004.tmp"
    crashed.mkdir()
    (crashed / "trainable.pt").write_bytes(b"\x80\x02 half a pickle")
    (crashed / "state.pt").write_bytes(b"")
    assert ckpt.list_checkpoints(tmp_path) == [root / "step-000002"]
    # Saving that step again replaces the leftover and publishes a whole checkpoint.
    ckpt.save_checkpoint(tmp_path, 4, policy, opt, sched)
    assert not crashed.exists()
    assert ckpt.list_checkpoints(tmp_path) == [root / "step-000002", root / "step-000004"]


@pytest.mark.parametrize(("keep", "left"), [(2, [3, 4]), (1, [4]), (0, [1, 2, 3, 4])])
def test_keep_deletes_the_oldest_checkpoints(tmp_path, keep, left):
    policy = make_policy(seed=0)
    opt, sched = training_parts(policy)
    for step in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, step, policy, opt, sched, keep=keep)
    assert [int(p.name.split("-")[1]) for p in ckpt.list_checkpoints(tmp_path)] == left
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        f"step-{s:06d}" for s in left
    ]


def test_adapter_is_peft_format_and_exports_to_a_plain_merged_model(tmp_path):
    policy = make_policy(seed=0)
    path = ckpt.save_checkpoint(tmp_path, 3, policy, *training_parts(policy))
    expected = logprobs(policy.model, IDS)
    base = copy.deepcopy(tiny_model_and_tokenizer()[0])
    assert (logprobs(base, IDS) - expected).abs().max() > 1e-3  # the adapter matters

    loaded = PeftModel.from_pretrained(base, path / "adapter")
    torch.testing.assert_close(logprobs(loaded, IDS), expected, rtol=0, atol=1e-5)

    from ptgym.cli import main

    # The CLI finds the base the adapter names (portable: "tiny") and the tokenizer beside it.
    assert main(["models", "merge", str(path), "--out", str(tmp_path / "merged")]) == 0
    out = tmp_path / "merged"
    assert not (tmp_path / ".merged.tmp").exists()
    merged = AutoModelForCausalLM.from_pretrained(out)
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logprobs(merged, IDS), expected, rtol=0, atol=1e-5)
    assert (
        AutoTokenizer.from_pretrained(out)("hi")["input_ids"] == policy.tokenizer("hi")["input_ids"]
    )


def test_adapter_names_its_base_portably_and_carries_the_tokenizer(tmp_path, capsys):
    """Issue 8 #8: the base is ``tiny`` (``ptgym models pull tiny``), not this machine's cache
    path; the tokenizer (with the run's chat template) is saved beside the adapter; the folder
    loads on the named base and ``ptgym eval model.adapter=...`` runs on it."""
    policy = make_policy(seed=0)
    path = ckpt.save_checkpoint(tmp_path, 3, policy, *training_parts(policy))
    adapter = path / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "tiny"
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    assert tokenizer("hi 42")["input_ids"] == policy.tokenizer("hi 42")["input_ids"]
    assert tokenizer.chat_template == policy.tokenizer.chat_template
    base, _ = load_model(config["base_model_name_or_path"], dtype="float32", device="cpu")
    loaded = PeftModel.from_pretrained(base, adapter)
    torch.testing.assert_close(logprobs(loaded, IDS), logprobs(policy.model, IDS))

    from ptgym.cli import main

    out = tmp_path / "eval"
    args = ["env=digits", "tasks=2", "k=1", "sampling.max_new_tokens=4", f"out={out}"]
    assert main(["eval", "model=tiny", f"model.adapter={adapter}", *args]) == 0
    assert json.loads((out / "eval.json").read_text())["eval/tasks"] == 2
    capsys.readouterr()
    # The name is checked: the default model is not the base this adapter was trained on.
    assert main(["eval", f"model.adapter={adapter}", *args]) == 2
    err = capsys.readouterr().err
    assert err == (
        f"ptgym eval: error: model.adapter={adapter}: it was trained on model=tiny, not "
        "model=smollm2-135m; add model=tiny\n"
    )
