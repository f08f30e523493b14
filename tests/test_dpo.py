"""``ptgym dpo``: the logprob sums that feed the loss, by hand; DPO raises the held-out implicit
reward margin; IPO and SimPO run; the IPO loss on hand-computed numbers."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ptgym.config import compose
from ptgym.dpo import encode_pairs, pair_logps, preference_loss, train_dpo
from ptgym.losses import ipo_loss
from ptgym.policy import build_policy
from ptgym.prefconfig import DPOCommand
from ptgym.prefs import Preference, write_preferences
from tests.test_rm import synthetic_prefs


def test_ipo_loss_by_hand():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-1.5, -2.0]), torch.tensor([-2.0, -2.0])
    loss, stats = ipo_loss(pc, pr, rc, rr, tau=0.5)
    # h = (pc - rc) - (pr - rr) = [1.5, -1.0]; target 1 / (2 tau) = 1
    assert loss.item() == pytest.approx(((1.5 - 1) ** 2 + (-1.0 - 1) ** 2) / 2)
    assert stats["accuracy"].item() == 0.5
    assert stats["chosen_reward"].item() == pytest.approx(0.5 * (0.5 + 0.0) / 2)


def _cfg(tmp_path, *extra: str) -> DPOCommand:
    return compose(DPOCommand, ["model=tiny", f"out={tmp_path / 'out'}", *extra])


def test_logprob_sums_feeding_the_loss_by_hand(tmp_path):
    cfg = _cfg(tmp_path)
    policy = build_policy(cfg.model, cfg.lora, value_head=False, need_reference=True)
    tok = policy.tokenizer
    pref = Preference(
        [{"role": "user", "content": "Name a colour."}],
        [{"role": "assistant", "content": "Blue."}],
        [{"role": "assistant", "content": "It is seven, I think."}],
    )
    pairs = encode_pairs(policy, [pref], cfg)
    with torch.no_grad():
        got_c, got_r = pair_logps(policy, pairs, average=False)
        got_avg_c, _ = pair_logps(policy, pairs, average=True)

    def by_hand(response: str) -> tuple[float, int]:
        prompt = tok.apply_chat_template(pref.prompt, tokenize=False, add_generation_prompt=True)
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        r = tok(response + "<|im_end|>", add_special_tokens=False)["input_ids"]
        ids = torch.tensor([p + r + tok(["\n"], add_special_tokens=False)["input_ids"][0]])
        with torch.no_grad():
            logp = torch.log_softmax(policy.model(ids).logits[0].float(), -1)  # (T, V)
        return sum(logp[len(p) + j - 1, t].item() for j, t in enumerate(r)), len(r)

    want_c, n_c = by_hand("Blue.")
    want_r, _ = by_hand("It is seven, I think.")
    assert got_c.item() == pytest.approx(want_c, abs=1e-4)
    assert got_r.item() == pytest.approx(want_r, abs=1e-4)
    assert got_avg_c.item() == pytest.approx(want_c / n_c, abs=1e-5)
    loss, stats = preference_loss(policy, pairs, cfg)  # policy == reference before training
    assert loss.item() == pytest.approx(math.log(2), abs=1e-6)
    assert stats["margin"].item() == pytest.approx(0.0, abs=1e-6)


def test_dpo_raises_the_held_out_implicit_reward_margin(tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_preferences(data, synthetic_prefs(120))
    cfg = _cfg(
        tmp_path,
        f"data={data}",
        "trainer.epochs=2",
        "trainer.batch=8",
        "trainer.eval_fraction=0.25",
        "trainer.eval_every=0",
    )
    last = train_dpo(cfg, log=lambda _: None)  # before training the margin is 0 (policy == ref)
    assert last["eval/margin"] > 0.5, last
    assert last["eval/chosen_reward"] > last["eval/rejected_reward"]
    assert last["eval/accuracy"] >= 0.9, last
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


@pytest.mark.parametrize("algo", ["ipo", "simpo"])
def test_ipo_and_simpo_run_and_learn(tmp_path, algo):
    data = tmp_path / "prefs.jsonl"
    write_preferences(data, synthetic_prefs(48))
    cfg = _cfg(tmp_path, f"data={data}", f"algo={algo}", "trainer.batch=8", "trainer.eval_every=0")
    assert cfg.algo.name == algo
    last = train_dpo(cfg, log=lambda _: None)
    assert math.isfinite(last["loss/loss"]) and last["eval/accuracy"] >= 0.5, last


def test_lora_run_saves_the_adapter_and_the_merged_model(tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_preferences(data, synthetic_prefs(16))
    cfg = _cfg(
        tmp_path, f"data={data}", "lora.enabled=true", "trainer.lr=0.01", "trainer.max_steps=2"
    )
    last = train_dpo(cfg, log=lambda _: None)
    assert math.isfinite(last["loss/loss"])
    adapter_cfg = json.loads(
        (tmp_path / "out" / "model-adapter" / "adapter_config.json").read_text()
    )
    assert adapter_cfg["base_model_name_or_path"] == "tiny"
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_cli_runs_dpo_and_bad_input_is_one_line(tmp_path, capsys):
    from ptgym.cli import main

    data = tmp_path / "prefs.jsonl"
    write_preferences(data, synthetic_prefs(8))
    common = ["model=tiny", "trainer.max_steps=1", "trainer.eval_fraction=0"]
    assert main(["dpo", f"data={data}", *common, f"out={tmp_path / 'a'}"]) == 0
    assert (tmp_path / "a" / "model" / "config.json").is_file()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "chosen": "y"}\n')
    assert main(["dpo", f"data={bad}", *common, f"out={tmp_path / 'b'}"]) == 2
    assert "bad.jsonl:1: preference record lacks ['rejected']" in capsys.readouterr().err
    assert main(["dpo", f"data={data}", "model.adapter=x", *common]) == 2
    assert main(["dpo", "algo=dpx"]) == 2
    assert "Did you mean 'dpo'?" in capsys.readouterr().err
