"""``ptgym rm``: learns a synthetic preference, saves a checkpoint transformers loads as is, and
scores the same whichever side is padded."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from ptgym.config import compose
from ptgym.prefs import Preference, write_preferences
from ptgym.reward_model import (
    RMCommand,
    encode_rm,
    last_attended,
    rm_loss,
    rm_text,
    scores,
    train_rm,
)

WORDS = [
    "apple",
    "river",
    "stone",
    "cloud",
    "green",
    "quick",
    "house",
    "table",
    "seven",
    "music",
    "paper",
    "light",
]
TARGET = "banana"


def synthetic_prefs(n: int, seed: int = 0) -> list[Preference]:
    """Chosen responses end with TARGET, rejected ones with another word; otherwise alike."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        prompt = [{"role": "user", "content": f"Say something about {rng.choice(WORDS)}."}]
        body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 6)))
        chosen = [{"role": "assistant", "content": f"{body} {TARGET}"}]
        rejected = [{"role": "assistant", "content": f"{body} {rng.choice(WORDS)}"}]
        out.append(Preference(prompt, chosen, rejected, annotator="synthetic"))
    return out


def test_rm_loss_with_margin_and_centering_by_hand():
    chosen, rejected = torch.tensor([2.0, -1.0]), torch.tensor([1.0, 0.5])
    margin = torch.tensor([0.5, 0.0])
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    plain = -(math.log(sig(1.0)) + math.log(sig(-1.5))) / 2
    assert rm_loss(chosen, rejected)[0].item() == pytest.approx(plain, abs=1e-6)
    with_margin = -(math.log(sig(0.5)) + math.log(sig(-1.5))) / 2
    assert rm_loss(chosen, rejected, margin)[0].item() == pytest.approx(with_margin, abs=1e-6)
    centred = plain + 0.1 * (3.0**2 + 0.5**2) / 2
    loss, stats = rm_loss(chosen, rejected, center=0.1)
    assert loss.item() == pytest.approx(centred, abs=1e-6)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == pytest.approx(-0.25)


def test_last_attended_either_side():
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_attended(mask).tolist() == [2, 4, 4]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rm")
    data = tmp / "prefs.jsonl"
    write_preferences(data, synthetic_prefs(200))
    cfg = compose(
        RMCommand,
        [
            f"data={data}",
            "model=tiny",
            f"out={tmp / 'out'}",
            "trainer.epochs=3",
            "trainer.batch=16",
            "trainer.micro_batch=16",
            "trainer.eval_fraction=0.2",
            "trainer.eval_every=0",
        ],
    )
    last = train_rm(cfg, log=lambda _: None)
    return cfg, last, tmp / "out" / "model"


def test_learns_the_synthetic_preference_to_95_percent_held_out(trained):
    _, last, _ = trained
    assert last["eval/accuracy"] >= 0.95, last


def test_checkpoint_loads_with_plain_transformers_and_scores_alike_left_and_right(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, _, folder = trained
    info = json.loads((folder / "ptgym_rm.json").read_text())
    assert info["base_model"] == "tiny"
    assert info["render"] == "chat_template" and str(folder.parent) not in json.dumps(info)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    assert tok.pad_token_id != tok.eos_token_id and model.config.pad_token_id == tok.pad_token_id
    prefs = synthetic_prefs(6, seed=99)
    texts = [rm_text(tok, p.prompt, r) for p in prefs for r in (p.chosen, p.rejected)]
    with torch.no_grad():
        right = scores(model, **encode_rm(tok, texts, 512, "right"))
        left = scores(model, **encode_rm(tok, texts, 512, "left"))
        alone = torch.stack([scores(model, **encode_rm(tok, [t], 512, "right"))[0] for t in texts])
        tok.padding_side = "left"
        hf_left = model(
            **tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        ).logits
        tok.padding_side = "right"
        hf_right = model(
            **tok(texts, padding=True, add_special_tokens=False, return_tensors="pt")
        ).logits
    torch.testing.assert_close(left, right, atol=1e-4, rtol=0)
    torch.testing.assert_close(alone, right, atol=1e-4, rtol=0)
    # a transformers user's own call (its pooling, either padding side) gives the same numbers
    torch.testing.assert_close(hf_left.squeeze(-1), right, atol=1e-4, rtol=0)
    torch.testing.assert_close(hf_right.squeeze(-1), right, atol=1e-4, rtol=0)
    assert (right[0::2] > right[1::2]).float().mean() >= 0.8  # held-out style: chosen ahead


def test_metrics_record_held_out_accuracy(trained):
    from ptgym.metrics import read_metrics

    cfg, _, folder = trained
    records = read_metrics(folder.parent)
    assert records[-1]["step"] == len(records)
    assert "eval/accuracy" in records[-1] and "loss/loss" in records[0]


def test_missing_data_is_a_clear_error(tmp_path):
    cfg = compose(RMCommand, ["model=tiny", f"out={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="needs data=PATH"):
        train_rm(cfg)


def test_lora_checkpoint_is_merged_and_reproduces_the_held_out_scores(tmp_path):
    """With LoRA the saved folder holds merged weights and the trained score head: loading it
    gives the held-out mean score the run reported, and no weight is missing."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ptgym.fit import split
    from ptgym.reward_model import pair_texts

    data = tmp_path / "prefs.jsonl"
    write_preferences(data, synthetic_prefs(24))
    args = [f"data={data}", "model=tiny", "lora.enabled=true", "trainer.lr=0.01", f"out={tmp_path}"]
    cfg = compose(RMCommand, [*args, "trainer.max_steps=3", "trainer.eval_fraction=0.25"])
    last = train_rm(cfg, log=lambda _: None)
    model, info = AutoModelForSequenceClassification.from_pretrained(
        tmp_path / "model", output_loading_info=True
    )
    assert not info["missing_keys"]
    assert not any("lora" in k for k in model.state_dict())
    tok = AutoTokenizer.from_pretrained(tmp_path / "model")
    _, held_out = split(pair_texts(tok, synthetic_prefs(24)), 0.25, 0)
    texts = [t for c, r, _ in held_out for t in (c, r)]
    with torch.no_grad():
        s = scores(model.eval(), **encode_rm(tok, texts, 1024, "left"))
    assert s.mean().item() == pytest.approx(last["eval/mean_score"], abs=1e-4)


def test_standard_records_are_recorded_as_plain_text_and_mixing_is_refused(tmp_path):
    data = tmp_path / "prefs.jsonl"
    write_preferences(data, [Preference("Sky is", " blue", " red")] * 4)
    args = [f"data={data}", "model=tiny", "trainer.max_steps=1", f"out={tmp_path / 'o'}"]
    train_rm(compose(RMCommand, args), log=lambda _: None)
    info = json.loads((tmp_path / "o" / "model" / "ptgym_rm.json").read_text())
    assert info["render"] == "prompt+response+eos"
    write_preferences(data, [synthetic_prefs(1)[0], Preference("Sky is", " blue", " red")])
    with pytest.raises(ValueError, match="mixes conversational and standard"):
        train_rm(compose(RMCommand, args), log=lambda _: None)
