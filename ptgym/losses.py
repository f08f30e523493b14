"""Losses as pure functions on padded row tensors (DESIGN §4, §5).

Every policy-gradient input is a ``(B, T)`` tensor over the same padded rows: ``logprobs`` (the
policy being trained, with grad), ``old_logprobs`` (behaviour policy, as the sampler reported
them), ``ref_logprobs`` (optional reference policy), ``advantages`` (per token, see
``ptgym.advantages``) and ``mask`` (1 on sampled tokens, 0 on prompt, observation and padding).

Each loss returns ``(loss, stats)``: ``loss`` a scalar tensor with grad, ``stats`` a dict of
detached 0-dim tensors (call ``.item()`` when logging, so a GPU step costs no extra syncs).

How per-token losses become a scalar is an explicit choice, an entry of ``AGGREGATORS`` picked
once at setup: the GRPO paper's per-sequence mean, DAPO's token mean, or Dr. GRPO's constant.

Sections: log-probability helpers, aggregators, policy-gradient losses (GRPO/PPO), value loss,
preference losses (Bradley-Terry, DPO, SimPO), SFT.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

Stats = dict[str, Tensor]

# ---------------------------------------------------------------------------------------------
# Log-probability helpers


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """bf16/fp16 logits are summed over the vocabulary in float32 (float64 stays float64)."""
    return torch.promote_types(dtype, torch.float32)


def token_logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    """Log-probability of each target token: ``log softmax(logits)[b, t, targets[b, t]]``.

    Shapes: ``logits`` (B, T, V), ``targets`` (B, T) int64 -> (B, T) in float32 (float64 for
    float64 logits). No shift is done here: ``logits[:, t]`` must already be the prediction for
    ``targets[:, t]``. For a causal LM over ``input_ids`` (B, L) that is
    ``token_logprobs(out.logits[:, :-1], input_ids[:, 1:])`` and the loss mask is
    ``mask[:, 1:]``. Padding positions need a valid id (e.g. the pad id); mask them out.

    Memory-lean: instead of materialising ``log_softmax`` over (B, T, V) it gathers the target
    logit and subtracts ``logsumexp``, one row at a time, so the extra memory is one (T, V) row.
    """
    rows = []
    for row_logits, row_targets in zip(logits, targets, strict=True):  # (T, V), (T,)
        row_logits = row_logits.to(_compute_dtype(logits.dtype))
        picked = row_logits.gather(-1, row_targets.unsqueeze(-1)).squeeze(-1)  # (T,)
        rows.append(picked - torch.logsumexp(row_logits, dim=-1))
    return torch.stack(rows)  # (B, T)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the next-token distribution at each position, ``-sum_v p log p``.

    Shapes: ``logits`` (B, T, V) -> (B, T); same alignment as ``token_logprobs`` (the entropy at
    ``t`` is of the distribution that sampled ``targets[:, t]``). One row at a time for memory;
    call under ``torch.no_grad()`` when it is only logged.
    """
    rows = []
    for row_logits in logits:  # (T, V)
        logp = torch.log_softmax(row_logits.to(_compute_dtype(logits.dtype)), dim=-1)
        rows.append(-(logp.exp() * logp).sum(-1))  # (T,)
    return torch.stack(rows)  # (B, T)


def sequence_logprobs(logprobs: Tensor, mask: Tensor, *, average: bool = False) -> Tensor:
    """Per-row sum (or mean, ``average=True``) of token logprobs over the mask: (B, T) -> (B,).

    DPO uses the sum ``log pi(y|x)``; SimPO the length-normalised mean ``log pi(y|x) / |y|``.
    """
    mask = mask.to(logprobs.dtype)
    total = (logprobs * mask).sum(-1)  # (B,)
    return total / mask.sum(-1).clamp(min=1) if average else total


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """Per-token KL(pi || pi_ref) estimate, Schulman's k3: ``exp(r) - r - 1``, ``r = ref - logp``.

    Unbiased for tokens sampled from pi, always >= 0, lower variance than ``-r`` (Schulman 2020,
    "Approximating KL divergence"); the estimator in GRPO (Shao et al. 2024, eq. 4).
    Shapes (B, T) -> (B, T).
    """
    r = ref_logprobs - logprobs
    return torch.exp(r) - r - 1


# ---------------------------------------------------------------------------------------------
# Aggregators: (per_token_loss (B, T), mask (B, T), *, norm) -> scalar


class Aggregator(Protocol):
    def __call__(
        self, per_token_loss: Tensor, mask: Tensor, *, norm: float | None = None
    ) -> Tensor: ...


def token_mean(per_token_loss: Tensor, mask: Tensor, *, norm: float | None = None) -> Tensor:
    """Sum over all sampled tokens divided by their count: every token weighs the same.

    DAPO's token-level policy-gradient loss (Yu et al. 2025, §3.3): long answers are not
    down-weighted.
    ``norm`` replaces the count, e.g. the token count of the whole optimizer batch when it is
    split into micro-batches (then sum the micro-batch losses rather than averaging them).
    """
    mask = mask.to(per_token_loss.dtype)
    denom = mask.sum().clamp(min=1) if norm is None else norm
    return (per_token_loss * mask).sum() / denom


def seq_mean_token_mean(
    per_token_loss: Tensor, mask: Tensor, *, norm: float | None = None
) -> Tensor:
    """Mean over rows of each row's mean over its sampled tokens.

    The original GRPO objective (Shao et al. 2024, eq. 3: ``1/G sum_i 1/|o_i| sum_t``). Rows with
    no sampled token are left out of the row count. ``norm`` replaces the row count (the
    optimizer batch's row count under micro-batching; then sum the micro-batch losses).
    """
    mask = mask.to(per_token_loss.dtype)
    tokens = mask.sum(-1)  # (B,)
    row_means = (per_token_loss * mask).sum(-1) / tokens.clamp(min=1)  # (B,)
    denom = (tokens > 0).sum().clamp(min=1) if norm is None else norm
    return row_means.sum() / denom


def constant_norm(per_token_loss: Tensor, mask: Tensor, *, norm: float | None = None) -> Tensor:
    """Sum over sampled tokens divided by ``B * norm``, a constant independent of lengths.

    Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-like training"): the
    per-sequence ``1/|o_i|`` of GRPO biases toward long wrong answers; a constant keeps the
    gradient unbiased. ``norm`` (required) is the maximum number of sampled tokens one row may
    hold (``max_completion_tokens``; for multi-turn rows, the token budget summed over turns).
    ``B`` is the number of rows in this call; with k equal micro-batches divide each by k as
    usual, which gives the paper's ``1 / (G * L_max)`` over the whole batch.
    """
    assert norm is not None and norm > 0, "constant_norm needs norm = max completion tokens"
    mask = mask.to(per_token_loss.dtype)
    return (per_token_loss * mask).sum() / (per_token_loss.shape[0] * norm)


AGGREGATORS: dict[str, Aggregator] = {
    "token-mean": token_mean,
    "seq-mean-token-mean": seq_mean_token_mean,
    "constant": constant_norm,
}


@dataclass(frozen=True)
class Aggregation:
    """An aggregator with the normaliser that goes with it, picked once from the config.

    Under micro-batching every micro-batch loss is divided by the *whole batch's* ``norm`` and the
    micro-batch losses are summed, so the accumulated gradient equals the full-batch gradient.
    ``constant_norm`` divides by its own row count as well, so each micro-batch is weighed back by
    its share of the rows (``micro_weight``).
    """

    fn: Aggregator
    norm: Callable[[Tensor, int], float]  # (mask (B, T) of the whole batch, max_tokens) -> norm
    rows_weighted: bool = False  # fn divides by its own row count

    def micro_weight(self, rows: int, batch_rows: int) -> float:
        return rows / batch_rows if self.rows_weighted else 1.0


AGGREGATIONS: dict[str, Aggregation] = {
    "token-mean": Aggregation(token_mean, lambda mask, _: float(mask.sum().clamp(min=1))),
    "seq-mean-token-mean": Aggregation(
        seq_mean_token_mean, lambda mask, _: float((mask.sum(-1) > 0).sum().clamp(min=1))
    ),
    "constant": Aggregation(constant_norm, lambda _, max_tokens: float(max_tokens), True),
}


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    mask = mask.to(x.dtype)
    return ((x * mask).sum() / mask.sum().clamp(min=1)).detach()


# ---------------------------------------------------------------------------------------------
# Policy-gradient losses


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    is_weights: Tensor | None = None,
    aggregate: Aggregator = token_mean,
    norm: float | None = None,
) -> tuple[Tensor, Stats]:
    """Clipped surrogate with optional k3 KL to the reference; all inputs (B, T).

    GRPO (Shao et al. 2024, DeepSeekMath eq. 3) per token:
    ``-min(rho * A, clip(rho, 1 - clip_low, 1 + clip_high) * A) + beta * k3``, with
    ``rho = exp(logprobs - old_logprobs)`` the PPO importance ratio against the behaviour policy.
    Deviations, each the paper's own option: separate ``clip_low``/``clip_high`` (DAPO's
    clip-higher, Yu et al. 2025 §3.1, suggests clip_high=0.28); ``beta=0`` by default (DAPO,
    Dr. GRPO drop the KL); aggregation chosen by ``aggregate`` (eq. 3 is ``seq_mean_token_mean``).

    ``is_weights`` (B, T), detached, multiplies each token's surrogate: the truncated importance
    weights of ``sampler_is_weights`` when the sampler is not the trainer's own forward pass
    (then ``old_logprobs`` are the trainer's recomputed ones).

    Stats (token means over the mask): ``clip_frac`` (= ``clip_low_frac + clip_high_frac``, tokens
    whose gradient the clip zeroes), ``ratio_mean``, ``ratio_max``, ``approx_kl`` (k3 from the
    behaviour policy, a drift monitor), ``kl`` (k3 to the reference, when given), ``pg_loss``.
    """
    # Unsampled positions may hold anything (padding, -inf): make them on-policy so no inf/NaN
    # reaches the loss or, through exp's backward, the gradient.
    sampled = mask.bool()
    old_logprobs = torch.where(sampled, old_logprobs, logprobs).detach()
    log_ratio = logprobs - old_logprobs  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_low, 1 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # (B, T)
    if is_weights is not None:
        per_token = per_token * is_weights.detach()

    high = (advantages > 0) & (ratio > 1 + clip_high)
    low = (advantages < 0) & (ratio < 1 - clip_low)
    stats: Stats = {
        "pg_loss": aggregate(per_token, mask, norm=norm).detach(),
        "clip_high_frac": _masked_mean(high.to(ratio.dtype), mask),
        "clip_low_frac": _masked_mean(low.to(ratio.dtype), mask),
        "ratio_mean": _masked_mean(ratio, mask),
        "ratio_max": torch.where(sampled, ratio.detach(), 0.0).max(),
        "approx_kl": _masked_mean(kl_k3(logprobs, old_logprobs), mask),
    }
    stats["clip_frac"] = stats["clip_high_frac"] + stats["clip_low_frac"]
    if ref_logprobs is not None:
        kl = kl_k3(logprobs, torch.where(sampled, ref_logprobs, logprobs).detach())  # (B, T)
        stats["kl"] = _masked_mean(kl, mask)
        if beta != 0.0:
            per_token = per_token + beta * kl
    else:
        assert beta == 0.0, "beta > 0 needs ref_logprobs"
    return aggregate(per_token, mask, norm=norm), stats


def ppo_policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    clip: float = 0.2,
    is_weights: Tensor | None = None,
    aggregate: Aggregator = token_mean,
    norm: float | None = None,
) -> tuple[Tensor, Stats]:
    """PPO's clipped surrogate (Schulman et al. 2017, eq. 7) per token, inputs (B, T).

    The same objective as ``grpo_loss`` with a symmetric clip and no KL term: in PPO-RLHF the
    KL to the reference is a per-token reward penalty (``advantages.kl_penalised_rewards``).
    """
    return grpo_loss(
        logprobs, old_logprobs, advantages, mask,
        clip_low=clip, clip_high=clip, is_weights=is_weights, aggregate=aggregate, norm=norm,
    )  # fmt: skip


def sampler_is_weights(
    trainer_logprobs: Tensor,
    sampler_logprobs: Tensor,
    mask: Tensor,
    *,
    level: str = "token",
    cap: float = 2.0,
) -> tuple[Tensor, Stats]:
    """Truncated importance weights that correct for a sampler that is not the trainer, (B, T).

    A fast sampler (vLLM in bf16 with its own kernels, an int8 CPU decoder, a remote server)
    samples from ``q`` while the trainer's forward pass computes ``pi_old`` for the same weights;
    the policy gradient is an expectation under ``pi_old``, so each sampled token is weighed by
    ``w = pi_old / q``, truncated at ``cap`` to bound the variance: truncated importance sampling
    (TIS; Yao et al. 2025, "Your Efficient RL Framework Secretly Brings You Off-Policy RL
    Training"; Ionides 2008 for truncated IS). ``level="token"`` uses each token's own ratio
    ``w_t = min(exp(lp_trainer_t - lp_sampler_t), cap)``; ``level="sequence"`` one weight per row,
    ``min(exp(sum_t (lp_trainer_t - lp_sampler_t)), cap)`` broadcast to its tokens (unbiased for
    sequence-level rewards, higher variance).

    Stats: ``sampler_kl`` (k3 estimate of KL(q || pi_old) over the sampled tokens: small when the
    sampler matches the trainer), ``is_capped_frac`` (share of sampled tokens whose weight was
    truncated), ``is_weight_mean``.
    """
    sampled = mask.bool()
    log_w = torch.where(sampled, trainer_logprobs - sampler_logprobs, 0.0).detach()  # (B, T)
    if level == "sequence":
        log_w = torch.where(sampled, log_w.sum(-1, keepdim=True), 0.0)
    else:
        assert level == "token", f"unknown level {level!r}"
    raw = torch.exp(log_w)
    weights = torch.where(sampled, torch.clamp(raw, max=cap), 0.0)
    # k3 of KL(q || pi) with x ~ q: r = pi / q, E_q[r - 1 - log r] >= 0 (Schulman 2020).
    r = torch.exp(torch.where(sampled, trainer_logprobs - sampler_logprobs, 0.0).detach())
    stats: Stats = {
        "sampler_kl": _masked_mean(r - 1 - torch.log(r), mask),
        "is_capped_frac": _masked_mean((raw > cap).to(raw.dtype), mask),
        "is_weight_mean": _masked_mean(weights, mask),
    }
    return weights, stats


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    *,
    clip: float | None = 0.2,
    aggregate: Aggregator = token_mean,
    norm: float | None = None,
) -> tuple[Tensor, Stats]:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_clip - R)^2)``, inputs (B, T).

    ``V_clip = V_old + clip(V - V_old, -clip, clip)``: the value-function clipping of the PPO2
    baselines (Schulman et al. 2017 implementation; see Huang et al. 2022, "The 37 implementation
    details of PPO", detail 9). ``clip=None`` gives the plain ``0.5 * (V - R)^2``.
    Stats: ``vf_clip_frac`` (tokens where the clipped error is the larger), ``value_mean``.
    """
    returns = returns.detach()
    unclipped = (values - returns) ** 2  # (B, T)
    stats: Stats = {"value_mean": _masked_mean(values, mask)}
    if clip is None:
        per_token = 0.5 * unclipped
        stats["vf_clip_frac"] = values.new_tensor(0.0)
    else:
        old_values = old_values.detach()
        v_clip = old_values + torch.clamp(values - old_values, -clip, clip)
        clipped = (v_clip - returns) ** 2
        per_token = 0.5 * torch.maximum(unclipped, clipped)
        stats["vf_clip_frac"] = _masked_mean((clipped > unclipped).to(values.dtype), mask)
    return aggregate(per_token, mask, norm=norm), stats


# ---------------------------------------------------------------------------------------------
# Preference losses: inputs are per-pair (B,) sequence scores


def bradley_terry_loss(chosen_rewards: Tensor, rejected_rewards: Tensor) -> tuple[Tensor, Stats]:
    """Reward-model loss ``-mean log sigmoid(r(x, y_w) - r(x, y_l))``, inputs (B,).

    Bradley-Terry pairwise likelihood as in Ouyang et al. 2022, eq. 1 (InstructGPT); their
    ``1 / C(K, 2)`` over the K-way ranking is the mean over the pairs given here.
    Stats: ``accuracy`` (chosen scored higher), ``margin`` (mean reward difference).
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    stats: Stats = {
        "accuracy": (diff > 0).to(diff.dtype).mean().detach(),
        "margin": diff.mean().detach(),
    }
    return -F.logsigmoid(diff).mean(), stats


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
) -> tuple[Tensor, Stats]:
    """DPO sigmoid loss (Rafailov et al. 2023, eq. 7), inputs (B,) summed sequence logprobs.

    ``h = beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]``,
    ``loss = -(1 - eps) log sigmoid(h) - eps log sigmoid(-h)``: with ``eps = label_smoothing`` > 0
    this is conservative DPO (Mitchell 2023, labels flipped with probability eps); eps = 0 is eq. 7.
    Stats: implicit rewards ``chosen_reward``/``rejected_reward`` (``beta * log pi/ref``),
    ``accuracy`` (chosen reward higher), ``margin``.
    """
    chosen_reward = beta * (policy_chosen_logps - ref_chosen_logps.detach())  # (B,)
    rejected_reward = beta * (policy_rejected_logps - ref_rejected_logps.detach())
    h = chosen_reward - rejected_reward
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    stats: Stats = {
        "chosen_reward": chosen_reward.mean().detach(),
        "rejected_reward": rejected_reward.mean().detach(),
        "accuracy": (h > 0).to(h.dtype).mean().detach(),
        "margin": h.mean().detach(),
    }
    return losses.mean(), stats


def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    *,
    tau: float = 0.1,
) -> tuple[Tensor, Stats]:
    """IPO (Azar et al. 2023, eq. 17): ``mean (h - 1 / (2 tau))^2``, inputs (B,) logprobs.

    ``h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))``: a squared loss that pulls
    the log-ratio margin to ``1 / (2 tau)`` instead of pushing it to infinity (DPO overfits on
    deterministic preferences). The paper uses summed logprobs; TRL passes per-token means, and so
    does ``ptgym dpo``. Stats as ``dpo_loss`` with ``tau`` in place of ``beta``.
    """
    chosen_reward = tau * (policy_chosen_logps - ref_chosen_logps.detach())  # (B,)
    rejected_reward = tau * (policy_rejected_logps - ref_rejected_logps.detach())
    h = (chosen_reward - rejected_reward) / tau
    stats: Stats = {
        "chosen_reward": chosen_reward.mean().detach(),
        "rejected_reward": rejected_reward.mean().detach(),
        "accuracy": (h > 0).to(h.dtype).mean().detach(),
        "margin": (tau * h).mean().detach(),
    }
    return ((h - 1 / (2 * tau)) ** 2).mean(), stats


def simpo_loss(
    chosen_avg_logps: Tensor,
    rejected_avg_logps: Tensor,
    *,
    beta: float = 2.0,
    gamma: float = 0.5,
) -> tuple[Tensor, Stats]:
    """SimPO (Meng et al. 2024, eq. 6): reference-free, length-normalised, with a target margin.

    ``loss = -mean log sigmoid(beta * (avg_logp(y_w) - avg_logp(y_l)) - gamma)``, inputs (B,)
    from ``sequence_logprobs(..., average=True)``. ``gamma`` is the margin itself (the paper's
    code sets it through ``gamma / beta``). Stats: ``accuracy``, ``margin`` (``beta * diff``).
    """
    margin = beta * (chosen_avg_logps - rejected_avg_logps)  # (B,)
    stats: Stats = {
        "accuracy": (margin > 0).to(margin.dtype).mean().detach(),
        "margin": margin.mean().detach(),
    }
    return -F.logsigmoid(margin - gamma).mean(), stats


# ---------------------------------------------------------------------------------------------
# Supervised


def sft_loss(
    logprobs: Tensor, mask: Tensor, *, aggregate: Aggregator = token_mean, norm: float | None = None
) -> tuple[Tensor, Stats]:
    """Masked negative log-likelihood of demonstration tokens, inputs (B, T).

    Maximum likelihood on the assistant tokens only (``mask`` 1 there), as in SFT for
    InstructGPT (Ouyang et al. 2022, §3.5). Token-mean by default (every token weighs the same).
    Stats: ``nll`` (token mean), ``tokens``.
    """
    nll = -logprobs  # (B, T)
    stats: Stats = {"nll": _masked_mean(nll, mask), "tokens": mask.sum().detach()}
    return aggregate(nll, mask, norm=norm), stats
