"""Advantages and credit assignment as pure functions on tensors (DESIGN §4).

Pipeline for GRPO-style training, one step per function:

1. ``select_trainable(rewards, group_ids, errors=..., drop_zero_variance=...)`` -> keep (N,).
   The trainer drops the trajectories with ``keep == False`` *before* anything else: a trajectory
   with an infrastructure error (``Trajectory.error``) gets no advantage and does not move its
   group's statistics; a group whose rewards are all equal carries no signal (DAPO dynamic
   sampling). Advantage functions below therefore take only the kept trajectories.
2. Per-trajectory (``group_advantages``, ``rloo_advantages``) or per-turn (``turn_advantages``)
   values.
3. ``broadcast_to_tokens(values, turn_index)`` -> (B, T) per-token advantages for the loss.

For PPO: ``turn_end_rewards`` puts each turn's reward on its last sampled token,
``kl_penalised_rewards`` adds the per-token KL penalty, ``gae`` gives advantages and returns.

Span representation. ``turn_index`` (B, T) int64 says, for each token of each padded row, which
turn of its trajectory sampled it, or -1 for tokens the policy did not sample (prompt, env
observations, chat-template glue, padding); ``mask == (turn_index >= 0)``. Turns count within the
trajectory, so when a trajectory is split over several rows (DESIGN §3) each row carries its
trajectory's values and its own subset of turn numbers.

Group ids may be ints (a tensor or list) or any hashables such as ``Trajectory.group_id``.
Rewards given as Python lists are read as float64 (Python floats are doubles); tensors keep their
dtype. Cast the (B, T) advantages to the logprobs' dtype before the loss.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Literal

import torch
from torch import Tensor

GroupIds = Tensor | Sequence[Hashable]


def _group_index(group_ids: GroupIds) -> tuple[Tensor, int]:
    """Dense group numbers (N,) int64 in 0..G-1 and G."""
    if isinstance(group_ids, Tensor):
        _, inverse = torch.unique(group_ids, return_inverse=True)
        return inverse, int(inverse.max()) + 1 if inverse.numel() else 0
    numbers: dict[Hashable, int] = {}
    index = [numbers.setdefault(g, len(numbers)) for g in group_ids]
    return torch.tensor(index, dtype=torch.int64), len(numbers)


def _as_rewards(rewards: Tensor | Sequence[float]) -> Tensor:
    if isinstance(rewards, Tensor):
        return rewards if rewards.is_floating_point() else rewards.to(torch.float64)
    return torch.tensor(rewards, dtype=torch.float64)


def _group_sum(values: Tensor, index: Tensor, num_groups: int) -> Tensor:
    return values.new_zeros(num_groups).index_add_(0, index, values)  # (G,)


def zero_variance_groups(
    rewards: Tensor | Sequence[float], group_ids: GroupIds, *, atol: float = 0.0
) -> Tensor:
    """(N,) bool: True for each trajectory whose group's rewards all lie within ``atol``.

    Such a group has all-zero group-normalised advantages, so it only dilutes the batch; DAPO's
    dynamic sampling (Yu et al. 2025, §3.2) filters it out and samples more groups to refill the
    batch (the refill is the collector's job). A group of one is zero-variance.
    """
    r = _as_rewards(rewards)
    index, num_groups = _group_index(group_ids)
    high = r.new_full((num_groups,), -torch.inf).scatter_reduce(0, index, r, "amax")
    low = r.new_full((num_groups,), torch.inf).scatter_reduce(0, index, r, "amin")
    return ((high - low) <= atol)[index]


def select_trainable(
    rewards: Tensor | Sequence[float],
    group_ids: GroupIds,
    *,
    errors: Tensor | Sequence[bool] | None = None,
    drop_zero_variance: bool = False,
    atol: float = 0.0,
) -> Tensor:
    """(N,) bool mask of the trajectories to train on.

    Trajectories with ``errors`` True (infrastructure failure, DESIGN §2) are dropped first, so
    they are never scored as a real 0 and never enter a group mean; then, with
    ``drop_zero_variance``, the groups whose *remaining* rewards are all equal (DAPO dynamic
    sampling, ``zero_variance_groups``).
    """
    r = _as_rewards(rewards)
    keep = torch.ones(r.shape, dtype=torch.bool)
    if errors is not None:
        keep &= ~torch.as_tensor(errors, dtype=torch.bool)
    if drop_zero_variance and keep.any():
        index, _ = _group_index(group_ids)
        kept = keep.nonzero().squeeze(-1)  # (M,)
        keep[kept] = ~zero_variance_groups(r[kept], index[kept], atol=atol)
    return keep


def group_advantages(
    rewards: Tensor | Sequence[float],
    group_ids: GroupIds,
    *,
    scale: Literal["std", "none"] = "std",
    eps: float = 1e-6,
) -> Tensor:
    """Group-normalised advantages ``(r_i - mean_g) / (std_g + eps)``: (N,) -> (N,).

    GRPO outcome supervision (Shao et al. 2024, §4.1.2): the group of G answers to one prompt is
    its own baseline. ``std_g`` is the unbiased sample std (n - 1), as TRL and verl compute it;
    a group of one gets advantage 0. ``scale="none"`` keeps only the mean baseline: Dr. GRPO
    (Liu et al. 2025, "Understanding R1-Zero-like training") shows that the std division
    up-weights too-easy and too-hard prompts.
    Pass only trainable trajectories (``select_trainable``).
    """
    r = _as_rewards(rewards)
    index, num_groups = _group_index(group_ids)
    counts = _group_sum(torch.ones_like(r), index, num_groups)  # (G,)
    mean = _group_sum(r, index, num_groups) / counts
    centred = r - mean[index]  # (N,)
    if scale == "none":
        return centred
    assert scale == "std", f"scale must be 'std' or 'none', got {scale!r}"
    var = _group_sum(centred**2, index, num_groups) / (counts - 1).clamp(min=1)
    return centred / (var.sqrt()[index] + eps)


def rloo_advantages(rewards: Tensor | Sequence[float], group_ids: GroupIds) -> Tensor:
    """REINFORCE leave-one-out: ``r_i - mean_{j != i} r_j`` within each group, (N,) -> (N,).

    The RLOO estimator of Ahmadian et al. 2024 ("Back to basics", after Kool et al. 2019): each
    sample's baseline is the mean of the other k - 1, so the advantage equals
    ``k / (k - 1) * (r_i - mean_g)``. A group of one has no baseline and gets 0. Pass only
    trainable trajectories (``select_trainable``).
    """
    r = _as_rewards(rewards)
    index, num_groups = _group_index(group_ids)
    counts = _group_sum(torch.ones_like(r), index, num_groups)[index]  # (N,)
    sums = _group_sum(r, index, num_groups)[index]
    others = (sums - r) / (counts - 1).clamp(min=1)
    return torch.where(counts > 1, r - others, torch.zeros_like(r))


def discounted_turn_returns(turn_rewards: Sequence[float], gamma: float = 1.0) -> list[float]:
    """Per-turn returns ``G_k = r_k + gamma * G_{k+1}``, over turns (Sutton & Barto, eq. 3.9)."""
    returns: list[float] = []
    running = 0.0
    for reward in reversed(turn_rewards):
        running = reward + gamma * running
        returns.append(running)
    return returns[::-1]


def turn_advantages(
    turn_rewards: Sequence[Sequence[float]],
    group_ids: GroupIds,
    *,
    gamma: float = 1.0,
    scale: Literal["std", "none"] = "std",
    eps: float = 1e-6,
) -> Tensor:
    """``turn`` credit assignment: each turn's discounted return, normalised within its group.

    For trajectory i with turn rewards ``r_i`` the returns are ``discounted_turn_returns(r_i,
    gamma)``; the returns of every turn of every trajectory in a group are pooled, and each is
    normalised by that pool's mean (and std) as in ``group_advantages``. The pooled mean is a
    baseline that does not depend on the action, so the estimator stays unbiased; with equal turn
    counts, gamma = 1, only a final reward and ``scale="none"`` it equals ``trajectory`` mode
    (with ``"std"`` the pooled std counts each trajectory K times, so the scale differs).
    Returns (B, K_max), zero-padded, ready for ``broadcast_to_tokens``.
    """
    index, _ = _group_index(group_ids)
    returns = [discounted_turn_returns(r, gamma) for r in turn_rewards]
    flat = torch.tensor([g for rs in returns for g in rs], dtype=torch.float64)
    flat_groups = torch.repeat_interleave(index, torch.tensor([len(rs) for rs in returns]))
    flat_adv = group_advantages(flat, flat_groups, scale=scale, eps=eps)  # (sum K_i,)
    out = flat.new_zeros(len(returns), max((len(rs) for rs in returns), default=0))
    start = 0
    for i, rs in enumerate(returns):
        out[i, : len(rs)] = flat_adv[start : start + len(rs)]
        start += len(rs)
    return out


def broadcast_to_tokens(values: Tensor, turn_index: Tensor) -> Tensor:
    """Per-token values (B, T) from per-trajectory (B,) or per-turn (B, K) values.

    ``out[b, t] = values[b, turn_index[b, t]]`` (or ``values[b]``) where ``turn_index >= 0``, and 0
    on tokens the policy did not sample. ``trajectory`` mode: one return broadcast to every
    sampled token of every turn; ``turn`` mode: each turn's own advantage on its tokens.
    """
    sampled = turn_index >= 0  # (B, T)
    if values.dim() == 1:
        values = values.unsqueeze(-1)  # (B, 1)
        turn_index = torch.zeros_like(turn_index)
    out = values.gather(1, turn_index.clamp(min=0))  # (B, T)
    return torch.where(sampled, out, torch.zeros_like(out))


def turn_end_rewards(turn_rewards: Tensor, turn_index: Tensor) -> Tensor:
    """(B, T) rewards with turn k's reward on the last sampled token of turn k, 0 elsewhere.

    ``turn_rewards`` is (B, K) (zero-padded). A token ends its turn when the next position
    belongs to another turn or to no turn (observation, padding, end of row). This is where PPO
    for LLMs places the reward (Ouyang et al. 2022, §3.5: at the end of the response), per turn.
    """
    following = torch.cat([turn_index[:, 1:], turn_index.new_full((turn_index.shape[0], 1), -1)], 1)
    is_end = (turn_index >= 0) & (following != turn_index)  # (B, T)
    rewards = turn_rewards.gather(1, turn_index.clamp(min=0))  # (B, T)
    return torch.where(is_end, rewards, torch.zeros_like(rewards))


def kl_penalised_rewards(
    rewards: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, *, beta: float
) -> Tensor:
    """Per-token rewards minus ``beta * (log pi - log pi_ref)`` on sampled tokens, all (B, T).

    The per-token KL penalty of PPO-RLHF (Ziegler et al. 2019; Ouyang et al. 2022, eq. 2),
    with the k1 estimator ``log pi - log pi_ref`` of the sampled token, whose sum over a sequence
    is the sequence KL estimate. ``logprobs`` are the behaviour policy's (the rollout's).
    Rewards are not differentiated: the result is detached.
    """
    kl = (logprobs - ref_logprobs) * mask.to(logprobs.dtype)  # (B, T)
    return (rewards - beta * kl).detach()


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation over sampled tokens only; returns (advantages, returns).

    Schulman et al. 2016, eq. 16: ``A_t = sum_l (gamma lam)^l delta_{t+l}`` with
    ``delta_t = r_t + gamma V_{t+1} - V_t``. Here each sampled token is a time step and
    tokens with ``mask == 0`` (env observations, template glue, padding) are not steps at all:
    walking back, they are skipped with the running ``lastgaelam`` and the next sampled token's
    value carried across them, so ``V_{t+1}`` is the value at the next *sampled* token. The row's
    last sampled token is terminal (bootstrap value 0). ``returns = advantages + values``
    (the value-loss target). Outside the mask both are 0. Rewards must be 0 outside the mask
    (use ``turn_end_rewards``). All tensors (B, T).
    """
    assert not (rewards * (1 - mask.to(rewards.dtype))).any(), "rewards outside the mask"
    rewards, values = rewards.detach(), values.detach()
    sampled = mask.bool()
    advantages = torch.zeros_like(rewards)
    next_value = rewards.new_zeros(rewards.shape[0])  # (B,)
    lastgaelam = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        step = delta + gamma * lam * lastgaelam
        lastgaelam = torch.where(sampled[:, t], step, lastgaelam)
        next_value = torch.where(sampled[:, t], values[:, t], next_value)
        advantages[:, t] = torch.where(sampled[:, t], step, 0.0)
    returns = torch.where(sampled, advantages + values, 0.0)
    return advantages, returns


def normalize_advantages(advantages: Tensor, mask: Tensor, *, eps: float = 1e-8) -> Tensor:
    """Whiten advantages over the sampled tokens of the batch: zero mean, unit std, (B, T).

    Not in the PPO paper but in its reference implementation (Huang et al. 2022, "The 37
    implementation details of PPO", detail 7). Uses the biased (population) std.
    Outside the mask the result is 0.
    """
    m = mask.to(advantages.dtype)
    n = m.sum().clamp(min=1)
    mean = (advantages * m).sum() / n
    var = (((advantages - mean) * m) ** 2).sum() / n
    return (advantages - mean) / (var.sqrt() + eps) * m
