"""``ptgym dpo``: Direct Preference Optimization and its relatives on preference pairs.

``algo=dpo`` (Rafailov et al. 2023, eq. 7), ``algo=ipo`` (Azar et al. 2023) and ``algo=simpo``
(Meng et al. 2024), the losses in ``ptgym.losses``. Chosen and rejected rows go through the
model in one forward pass (the same padding for both). The reference is the same network with
its LoRA adapters disabled (``Policy.reference_logprobs``: no second copy in memory); with full
fine-tuning (``lora.enabled=false``, e.g. ``model=tiny``) it is a frozen copy, the honest fallback
that doubles the weights in memory. SimPO needs no reference, so none is made.

DPO sums the response's token logprobs; IPO and SimPO use the per-token mean (as TRL does for
IPO, and as SimPO's paper defines it). Metrics per step: ``loss/chosen_reward``,
``loss/rejected_reward`` (implicit rewards ``beta * log pi/ref``), ``loss/margin``,
``loss/accuracy``, and the same on held-out pairs under ``eval/``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from ptgym.fit import fit_policy, held_out_metrics, refuse_adapter, split, start_output
from ptgym.losses import dpo_loss, ipo_loss, sequence_logprobs, simpo_loss
from ptgym.prefconfig import DPOCommand
from ptgym.prefdata import Encoded, encode_side, pad, renderer_for, truncate
from ptgym.prefs import Preference, read_training_pairs

Pair = tuple[Encoded, Encoded]


def encode_pairs(policy: Any, prefs: list[Preference], cfg: DPOCommand) -> list[Pair]:
    renderer = renderer_for(policy.tokenizer, cfg.model.chat_template)
    n = cfg.trainer.max_length
    return [
        (
            truncate(encode_side(renderer, policy.tokenizer, p, "chosen"), n),
            truncate(encode_side(renderer, policy.tokenizer, p, "rejected"), n),
        )
        for p in prefs
    ]


def pair_logps(
    policy: Any, pairs: list[Pair], *, average: bool, reference: bool = False
) -> tuple[Tensor, Tensor]:
    """(B,) chosen and (B,) rejected response logprobs (sum, or mean with ``average``), under the
    policy or, with ``reference=True``, the reference (no grad)."""
    rows = [c for c, _ in pairs] + [r for _, r in pairs]
    ids, attn, mask = (t.to(policy.device) for t in pad(rows, policy.tokenizer.pad_token_id))
    first = int(mask.float().argmax(-1).min())  # earliest response token in the batch
    if reference:
        logprobs = policy.reference_logprobs(ids, attn, first=first)
    else:
        logprobs = policy(ids, attn, first=first).logprobs  # (2B, T)
    seq = sequence_logprobs(logprobs, mask, average=average)  # (2B,)
    return seq[: len(pairs)], seq[len(pairs) :]


def preference_loss(policy: Any, pairs: list[Pair], cfg: DPOCommand) -> tuple[Tensor, dict]:
    algo = cfg.algo
    average = algo.name != "dpo"
    chosen, rejected = pair_logps(policy, pairs, average=average)
    if algo.name == "simpo":
        loss, stats = simpo_loss(chosen, rejected, beta=algo.beta, gamma=algo.gamma)
        stats["chosen_reward"] = algo.beta * chosen.mean().detach()
        stats["rejected_reward"] = algo.beta * rejected.mean().detach()
        return loss, stats
    ref_chosen, ref_rejected = pair_logps(policy, pairs, average=average, reference=True)
    if algo.name == "ipo":
        return ipo_loss(chosen, rejected, ref_chosen, ref_rejected, tau=algo.beta)
    return dpo_loss(
        chosen,
        rejected,
        ref_chosen,
        ref_rejected,
        beta=algo.beta,
        label_smoothing=algo.label_smoothing,
    )


def train_dpo(cfg: DPOCommand, *, log: Any = print) -> dict[str, float]:
    from ptgym.policy import build_policy

    if not cfg.data:
        raise FileNotFoundError("ptgym dpo needs data=PATH: a preference JSONL (ptgym prefs ...)")
    refuse_adapter(cfg.model, "dpo")
    prefs = read_training_pairs(cfg.data, include_ties=cfg.include_ties)
    out = start_output(cfg, "runs/dpo")
    policy = build_policy(
        cfg.model, cfg.lora, value_head=False, need_reference=cfg.algo.name != "simpo"
    )
    train_pairs, held_out = split(
        encode_pairs(policy, prefs, cfg), cfg.trainer.eval_fraction, cfg.trainer.seed
    )

    def chunk_stats(chunk: list[Pair]) -> tuple[dict, int]:
        loss, stats = preference_loss(policy, chunk, cfg)
        return {"loss": loss, **stats}, len(chunk)

    def evaluate() -> dict[str, float]:
        return held_out_metrics(policy, held_out, cfg.trainer.micro_batch, chunk_stats)

    log(
        f"{cfg.algo.name} on {cfg.model.name}: {len(train_pairs)} train pairs, {len(held_out)} held out"
    )
    return fit_policy(
        policy,
        train_pairs,
        cfg,
        loss_fn=lambda rows: preference_loss(policy, rows, cfg),
        evaluate=evaluate,
        out=out,
        log=log,
    )
