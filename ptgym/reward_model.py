"""``ptgym rm``: a Bradley–Terry reward model from pairwise preferences (InstructGPT §3.5).

The model is ``AutoModelForSequenceClassification`` with one label on the causal LM: a linear
``score`` head on the last hidden state, trained with LoRA (head fully trained) or fully, on
``-log sigmoid(r(x, y_w) - r(x, y_l) - margin)`` (``losses.bradley_terry_loss``; the record's
margin only when ``use_margin``), plus ``center * mean((r_w + r_l)^2)`` when ``center > 0``, the
reward-centering term of Eisenstein et al. 2023 that keeps scores near 0.

The score is read at the last attended token (from the attention mask), so left and right padding
give the same number, and a pad token equal to EOS cannot move it. The checkpoint (``OUT/model``)
is a plain transformers folder: LoRA merged, tokenizer saved with a pad token distinct from EOS
(so transformers' own pooling, which looks for the last non-pad token, agrees with ours) and its
padding side, ``config.json`` naming the base model portably, and ``ptgym_rm.json`` saying how
text is rendered. Text is rendered as ``rm_text`` does: the chat template over prompt + response
for conversational records, ``prompt + response + eos`` for standard ones.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ptgym.fit import fit, held_out_metrics, refuse_adapter, split, start_output
from ptgym.losses import bradley_terry_loss
from ptgym.prefconfig import RMCommand
from ptgym.prefs import Preference, read_training_pairs

RM_INFO = "ptgym_rm.json"


def rm_text(tokenizer: Any, prompt: list[dict] | str, response: list[dict] | str) -> str:
    """The text the reward model scores: the one rendering used in training and by scorers."""
    if isinstance(prompt, str):
        return prompt + response + (tokenizer.eos_token or "")
    return tokenizer.apply_chat_template(prompt + response, tokenize=False)


def encode_rm(tokenizer: Any, texts: list[str], max_length: int, side: str) -> dict[str, Tensor]:
    """``input_ids`` and ``attention_mask`` (B, T) of ``rm_text`` strings, padded on ``side``."""
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    return pad_ids(ids, tokenizer.pad_token_id, side)


def pad_ids(rows: list[list[int]], pad_id: int, side: str) -> dict[str, Tensor]:
    T = max(len(e) for e in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    for b, e in enumerate(rows):
        span = slice(0, len(e)) if side == "right" else slice(T - len(e), T)
        ids[b, span] = torch.tensor(e, dtype=torch.long)
        attn[b, span] = 1
    return {"input_ids": ids, "attention_mask": attn}


def last_attended(attention_mask: Tensor) -> Tensor:
    """(B, T) -> (B,) index of the last position with mask 1, for either padding side."""
    T = attention_mask.shape[1]
    return T - 1 - attention_mask.flip(-1).to(torch.long).argmax(-1)


def scores(model: Any, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """(B,) scores at the last attended token. ``model``: a sequence-classification model, bare or
    PEFT-wrapped; its backbone and ``score`` head are called directly so the position comes from the
    mask, not from searching for pad ids."""
    hf = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(hf, "score"):
        raise ValueError(f"{type(hf).__name__} has no 'score' head: use a decoder LM checkpoint")
    backbone = getattr(hf, hf.base_model_prefix)
    hidden = backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)[0]
    idx = last_attended(attention_mask).to(hidden.device)  # (B,)
    last = hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]  # (B, H)
    return hf.score(last).squeeze(-1).float()  # (B,)


def rm_loss(
    chosen: Tensor, rejected: Tensor, margin: Tensor | None = None, *, center: float = 0.0
) -> tuple[Tensor, dict]:
    """``-mean log sigmoid(r_w - r_l - margin) + center * mean((r_w + r_l)^2)``, inputs (B,).

    The margin term is Llama 2's (Touvron et al. 2023, eq. 2); the centering term Eisenstein et
    al. 2023's. Stats: ``accuracy`` and ``margin`` of the raw scores (without the record margin).
    """
    loss, stats = bradley_terry_loss(chosen - (0.0 if margin is None else margin), rejected)
    stats["accuracy"] = (chosen > rejected).float().mean().detach()
    stats["margin"] = (chosen - rejected).mean().detach()
    if center > 0:
        loss = loss + center * ((chosen + rejected) ** 2).mean()
    return loss, stats


def load_rm_base(cfg: RMCommand) -> tuple[Any, Any]:
    """The sequence-classification model on the base LM, and its tokenizer (pad != eos)."""
    from transformers import AutoModelForSequenceClassification

    from ptgym.agents.models import _model_folder, _resolve_device, _resolve_dtype, load_tokenizer

    folder = _model_folder(cfg.model.name)
    device = _resolve_device(cfg.model.device)
    tokenizer = load_tokenizer(cfg.model.name, chat_template=cfg.model.chat_template)
    if tokenizer.pad_token_id == tokenizer.eos_token_id and tokenizer.unk_token is not None:
        tokenizer.pad_token = tokenizer.unk_token  # transformers' pooling must not stop at EOS
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=1, dtype=_resolve_dtype(cfg.model.dtype, device)
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    model.to(device)
    if cfg.lora.enabled:
        from peft import LoraConfig as PeftLoraConfig
        from peft import get_peft_model

        peft_cfg = PeftLoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=list(cfg.lora.target_modules),
            task_type="SEQ_CLS",  # the score head is trained in full (modules_to_save)
        )
        model = get_peft_model(model, peft_cfg)
    return model, tokenizer


def pair_texts(tokenizer: Any, prefs: list[Preference]) -> list[tuple[str, str, float]]:
    return [
        (
            rm_text(tokenizer, p.prompt, p.chosen),
            rm_text(tokenizer, p.prompt, p.rejected),
            p.margin or 0.0,
        )
        for p in prefs
    ]


def train_rm(cfg: RMCommand, *, log: Any = print) -> dict[str, float]:
    if not cfg.data:
        raise FileNotFoundError("ptgym rm needs data=PATH: a preference JSONL (ptgym prefs ...)")
    refuse_adapter(cfg.model, "rm")
    prefs = read_training_pairs(cfg.data, include_ties=cfg.include_ties)
    if len({p.conversational for p in prefs}) > 1:
        raise ValueError(
            f"{cfg.data} mixes conversational and standard (string) records: a reward model "
            "scores one rendering; split the file"
        )
    out = start_output(cfg, "runs/rm")
    model, tokenizer = load_rm_base(cfg)
    T = cfg.trainer.max_length
    tokenized = [  # once, up front: (chosen ids, rejected ids, margin)
        (*(tokenizer(t, add_special_tokens=False)["input_ids"][:T] for t in (c, r)), m)
        for c, r, m in pair_texts(tokenizer, prefs)
    ]
    train_rows, held_out = split(tokenized, cfg.trainer.eval_fraction, cfg.trainer.seed)
    device = next(model.parameters()).device

    def forward(rows: list[tuple[list, list, float]]) -> tuple[Tensor, Tensor, Tensor]:
        ids = [r[0] for r in rows] + [r[1] for r in rows]  # chosen and rejected in one pass
        enc = {k: v.to(device) for k, v in pad_ids(ids, tokenizer.pad_token_id, "right").items()}
        r = scores(model, **enc)
        margin = torch.tensor([row[2] for row in rows], device=device)
        return r[: len(rows)], r[len(rows) :], margin

    def loss_fn(rows: list) -> tuple[Tensor, dict]:
        chosen, rejected, margin = forward(rows)
        return rm_loss(chosen, rejected, margin if cfg.use_margin else None, center=cfg.center)

    def chunk_stats(rows: list) -> tuple[dict, int]:
        chosen, rejected, _ = forward(rows)
        accuracy = (chosen > rejected).float().mean()
        return {"accuracy": accuracy, "mean_score": (chosen + rejected).mean() / 2}, len(rows)

    def evaluate() -> dict[str, float]:
        return held_out_metrics(model, held_out, cfg.trainer.micro_batch, chunk_stats)

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    log(
        f"reward model on {cfg.model.name}: {len(train_rows)} train pairs, {len(held_out)} held out"
    )
    last = fit(
        params, train_rows, cfg.trainer, loss_fn=loss_fn, evaluate=evaluate, out=out, log=log
    )
    render = "chat_template" if prefs[0].conversational else "prompt+response+eos"
    save_rm(model, tokenizer, cfg, out / "model", render=render)
    log(f"saved the reward model to {out / 'model'}")
    return last


def save_rm(model: Any, tokenizer: Any, cfg: RMCommand, folder: Path, *, render: str) -> None:
    """A plain transformers folder (LoRA merged), written to a temp folder and renamed."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    info = {
        "base_model": cfg.model.name,  # the short name or Hub id, not this machine's cache path
        "render": render,  # how rm_text rendered the training pairs; scorers must match
        "score": "last attended token (attention mask), either padding side",
        "padding_side": tokenizer.padding_side,
        "pad_token": tokenizer.pad_token,
    }
    (tmp / RM_INFO).write_text(json.dumps(info, indent=2) + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
