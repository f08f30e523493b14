"""One policy update from a batch of trajectories: select -> credit -> rows -> loss -> step.

Follows the data flow of STYLE.md: trajectories (store) -> samples (``ptgym.samples``) ->
advantages (``ptgym.advantages``) -> loss (``ptgym.losses``) -> optimizer.

Two paths, picked once by ``make_update``: ``GRPOUpdate`` (group-relative credit per trajectory or
per turn, the clipped GRPO/DAPO/Dr. GRPO objective) and ``PPOUpdate`` (a critic, GAE over sampled
tokens, the PPO objective plus a value loss). They share selection, batching, the reference pass
and the optimisation loop; each overrides only its credit assignment and its objective. The loss
aggregation (with its normaliser) is one ``ptgym.losses.Aggregation`` object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ptgym import advantages as A
from ptgym import losses as L
from ptgym.config import AlgoConfig, RolloutConfig, SamplingConfig, TrainerConfig
from ptgym.policy import Policy
from ptgym.samples import build_rows, collate
from ptgym.types import Trajectory

LOSS_TERMS = ("loss/total", "loss/pg_loss", "loss/value_loss")  # summed over micro-batches


@dataclass
class Batch:
    """A collated batch on the device; every tensor (B, T) unless noted."""

    input_ids: Tensor
    attention_mask: Tensor
    mask: Tensor
    old_logprobs: Tensor
    turn_index: Tensor
    traj_index: Tensor  # (B,)
    advantages: Tensor
    ref_logprobs: Tensor | None = None
    old_values: Tensor | None = None
    returns: Tensor | None = None
    is_weights: Tensor | None = None  # truncated sampler importance weights (mismatch correction)

    def rows(self, sl: slice) -> Batch:
        return Batch(**{k: (v[sl] if v is not None else None) for k, v in vars(self).items()})

    @property
    def first(self) -> int:
        """The earliest position holding a sampled token (forward passes start their logits there)."""
        cols = self.mask.any(0).nonzero()
        return int(cols[0]) if len(cols) else 1


class Update:
    """The shared part of an update; subclasses supply ``_credit`` and ``_objective``."""

    def __init__(
        self,
        policy: Policy,
        optimizer: torch.optim.Optimizer,
        algo: AlgoConfig,
        trainer: TrainerConfig,
        sampling: SamplingConfig,
        rollout: RolloutConfig,
    ):
        self.policy = policy
        self.optimizer = optimizer
        self.algo = algo
        self.trainer = trainer
        self.temperature = sampling.temperature if sampling.temperature > 0 else 1.0
        self.aggregation = L.AGGREGATIONS[algo.aggregation]
        self.max_tokens = rollout.max_tokens
        self.use_ref = algo.beta > 0
        self.correction = resolve_correction(algo.correction, rollout)
        self.correction_stats: dict[str, float] = {}
        device = policy.device
        self.autocast = (
            torch.autocast("cuda", dtype=torch.bfloat16)
            if device.type == "cuda"
            else torch.autocast("cpu", enabled=False)
        )

    # --- selection --------------------------------------------------------------------------

    def select(self, trajs: list[Trajectory]) -> tuple[list[Trajectory], dict[str, float]]:
        keep = A.select_trainable(
            [t.reward for t in trajs],
            [t.group_id for t in trajs],
            errors=[t.error is not None for t in trajs],
            drop_zero_variance=self.algo.dynamic_sampling,
        )
        kept = [t for t, k in zip(trajs, keep.tolist(), strict=True) if k]
        return kept, {"rollout/kept_frac": len(kept) / max(len(trajs), 1)}

    # --- batch ------------------------------------------------------------------------------

    def make_batch(self, kept: list[Trajectory]) -> Batch:
        rows = build_rows(kept)
        pad = self.policy.tokenizer.pad_token_id or 0
        arrays = collate(rows, pad)
        dev = self.policy.device
        t = {k: torch.as_tensor(v, device=dev) for k, v in arrays.items()}
        batch = Batch(
            t["input_ids"],
            t["attention_mask"],
            t["mask"],
            t["old_logprobs"],
            t["turn_index"],
            t["traj_index"],
            advantages=torch.zeros_like(t["mask"]),
        )
        if self.use_ref:
            batch.ref_logprobs = self._reference_pass(batch)
        self._credit(kept, batch)
        return batch

    def _correct_sampler(self, batch: Batch, trainer_lp: Tensor) -> None:
        """The trainer's own logprobs ``trainer_lp`` (B, T) become the behaviour policy of the
        ratio; each token is weighed by the truncated ``pi_trainer / q_sampler``
        (``losses.sampler_is_weights``). ``batch`` may be a row slice (views): written in place."""
        weights, _ = L.sampler_is_weights(
            trainer_lp,
            batch.old_logprobs,
            batch.mask,
            level=self.correction,
            cap=self.algo.correction_cap,
        )
        sampled = batch.mask.bool()
        if batch.is_weights is None:
            batch.is_weights = weights
        else:
            batch.is_weights.copy_(weights)
        batch.old_logprobs.copy_(torch.where(sampled, trainer_lp, batch.old_logprobs))

    def _credit(self, kept: list[Trajectory], batch: Batch) -> None:
        """Fill ``batch.advantages`` (B, T) (and, for PPO, old values and returns)."""
        raise NotImplementedError

    def _reference_pass(self, batch: Batch) -> Tensor:
        """The reference policy's logprobs (B, T), in micro-batches without grad."""
        out = []
        with torch.no_grad(), self.autocast:
            for b in self._micro_batches(batch):
                out.append(
                    self.policy.reference_logprobs(
                        b.input_ids, b.attention_mask, temperature=self.temperature, first=b.first
                    )
                )
        return torch.cat(out)

    def _policy_pass(self, batch: Batch) -> tuple[Tensor, Tensor | None]:
        """The current policy's logprobs and values (None without a value head), (B, T) each,
        from one forward pass per micro-batch without grad."""
        logprobs, values = [], []
        with torch.no_grad(), self.autocast:
            for b in self._micro_batches(batch):
                fwd = self.policy(
                    b.input_ids,
                    b.attention_mask,
                    temperature=self.temperature,
                    first=b.first,
                    starts=self._starts(b),
                )
                logprobs.append(fwd.logprobs.float())
                if fwd.values is not None:
                    values.append(fwd.values.float())
        return torch.cat(logprobs), (torch.cat(values) if values else None)

    def _starts(self, b: Batch) -> Tensor | None:
        """Each row's first sampled position, for the shared-prompt pass (``ptgym.prefix``), or
        None where ``trainer.shared_prefix`` is off."""
        return b.mask.argmax(dim=1) if self.trainer.shared_prefix else None

    def _micro_batches(self, batch: Batch):
        mb = self.trainer.micro_batch
        for s in range(0, batch.input_ids.shape[0], mb):
            yield batch.rows(slice(s, s + mb))

    # --- optimisation -----------------------------------------------------------------------

    def step(self, batch: Batch) -> dict[str, float]:
        """``algo.epochs`` optimizer steps over the batch, accumulating over micro-batches."""
        B = batch.input_ids.shape[0]
        norm = self.aggregation.norm(batch.mask, self.max_tokens)
        # The correction not made yet (GRPO): the first epoch's own forward pass, made before
        # the first optimizer step, gives the trainer's behaviour logprobs of each micro-batch;
        # a separate no-grad pass would compute the same numbers again.
        sampler_lp = batch.old_logprobs.clone() if self._pending(batch) else None
        if sampler_lp is not None:
            batch.is_weights = torch.zeros_like(batch.old_logprobs)
        totals: dict[str, float] = {}  # summed over micro-batches and epochs
        ratio_max = 0.0
        for epoch in range(self.algo.epochs):
            self.optimizer.zero_grad(set_to_none=True)
            for b in self._micro_batches(batch):
                weight = self.aggregation.micro_weight(b.input_ids.shape[0], B)
                loss, stats = self._loss(b, norm, correct=sampler_lp is not None and epoch == 0)
                (loss * weight).backward()
                ratio_max = max(ratio_max, float(stats.pop("loss/ratio_max")))
                for k, v in stats.items():
                    # A loss value is this micro-batch's share of the batch loss (what backward
                    # accumulates): shares add up. Other stats are micro-batch means: weigh by rows.
                    share = weight if k in LOSS_TERMS else b.input_ids.shape[0] / B
                    totals[k] = totals.get(k, 0.0) + float(v) * share
            params = self.policy.trainable_parameters()
            max_norm = self.trainer.grad_clip if self.trainer.grad_clip > 0 else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            totals["loss/grad_norm"] = totals.get("loss/grad_norm", 0.0) + float(grad_norm)
            self.optimizer.step()
        means = {k: v / self.algo.epochs for k, v in totals.items()}
        if sampler_lp is not None:
            self._correction_stats(batch.old_logprobs, sampler_lp, batch.mask)
        return {**means, "loss/ratio_max": ratio_max, **self.correction_stats}

    def _pending(self, batch: Batch) -> bool:
        """True when the sampler correction is on and not yet applied to ``batch``."""
        return self.correction != "off" and batch.is_weights is None

    def _correction_stats(self, trainer_lp: Tensor, sampler_lp: Tensor, mask: Tensor) -> None:
        _, stats = L.sampler_is_weights(
            trainer_lp, sampler_lp, mask, level=self.correction, cap=self.algo.correction_cap
        )
        self.correction_stats = {f"rollout/{k}": float(v) for k, v in stats.items()}

    def _loss(self, b: Batch, norm: float, correct: bool = False) -> tuple[Tensor, dict[str, Any]]:
        with self.autocast:
            out = self.policy(
                b.input_ids,
                b.attention_mask,
                temperature=self.temperature,
                with_entropy=True,
                first=b.first,
                starts=self._starts(b),
            )
        if correct:
            self._correct_sampler(b, out.logprobs.detach().float())
        loss, stats = self._objective(out, b, norm)
        tokens = b.mask.sum().clamp(min=1)
        stats["entropy"] = (out.entropy * b.mask).sum() / tokens
        stats["total"] = loss.detach()
        return loss, {f"loss/{k}": v for k, v in stats.items()}

    def _objective(self, out: Any, b: Batch, norm: float) -> tuple[Tensor, dict[str, Any]]:
        raise NotImplementedError


def turn_advantages(batch: Batch, n_trajectories: int) -> list[list[float]]:
    """Per trajectory, the mean advantage over each turn's sampled tokens (what a reader such as
    the TUI shows per turn; the loss itself uses the per-token tensor)."""
    out: list[dict[int, list[float]]] = [{} for _ in range(n_trajectories)]
    adv = batch.advantages.detach().float().cpu()
    turns = batch.turn_index.cpu()
    for row, traj in enumerate(batch.traj_index.tolist()):
        sampled = turns[row] >= 0
        for k in turns[row][sampled].unique().tolist():
            sel = turns[row] == k
            out[traj].setdefault(k, []).extend(adv[row][sel].tolist())
    return [[sum(v) / len(v) for _, v in sorted(d.items())] for d in out]


class GRPOUpdate(Update):
    """GRPO and its variants (DAPO clip-higher, Dr. GRPO): group-relative credit, no critic."""

    def _credit(self, kept: list[Trajectory], batch: Batch) -> None:
        values = self._trajectory_values(kept).to(batch.mask.device, torch.float32)
        batch.advantages = A.broadcast_to_tokens(values[batch.traj_index], batch.turn_index)

    def _trajectory_values(self, kept: list[Trajectory]) -> Tensor:
        """Per-trajectory (N,) or per-turn (N, K) advantages."""
        rewards = [t.reward for t in kept]
        groups = [t.group_id for t in kept]
        scale = "std" if self.algo.scale_std else "none"
        if self.algo.credit == "turn":
            return A.turn_advantages(
                [t.turn_rewards for t in kept], groups, gamma=self.algo.gamma, scale=scale
            )
        if self.algo.baseline == "rloo":
            return A.rloo_advantages(rewards, groups)
        return A.group_advantages(rewards, groups, scale=scale)

    def _objective(self, out: Any, b: Batch, norm: float) -> tuple[Tensor, dict[str, Any]]:
        return L.grpo_loss(
            out.logprobs,
            b.old_logprobs,
            b.advantages,
            b.mask,
            clip_low=self.algo.clip_low,
            clip_high=self.algo.clip_high,
            ref_logprobs=b.ref_logprobs,
            beta=self.algo.beta,
            is_weights=b.is_weights,
            aggregate=self.aggregation.fn,
            norm=norm,
        )


class PPOUpdate(Update):
    """PPO with a value head: GAE over sampled tokens, clipped policy loss plus value loss."""

    def _credit(self, kept: list[Trajectory], batch: Batch) -> None:
        """Per-turn rewards on turn ends, per-token KL penalty, GAE (DESIGN §4)."""
        logprobs, values = self._policy_pass(batch)  # one pass: the critic and the correction
        assert values is not None, "PPO needs a policy with a value head"
        if self._pending(batch):
            self._correction_stats(logprobs, batch.old_logprobs, batch.mask)  # before it changes
            self._correct_sampler(batch, logprobs)
        batch.old_values = values * batch.mask
        K = max(len(t.turns) for t in kept)
        turn_rewards = torch.zeros(len(kept), K, device=batch.mask.device)
        for i, t in enumerate(kept):
            turn_rewards[i, : len(t.turns)] = torch.tensor(t.turn_rewards)
        rewards = A.turn_end_rewards(turn_rewards[batch.traj_index], batch.turn_index)
        if batch.ref_logprobs is not None:
            rewards = A.kl_penalised_rewards(
                rewards, batch.old_logprobs, batch.ref_logprobs, batch.mask, beta=self.algo.beta
            )
        adv, batch.returns = A.gae(
            rewards, batch.old_values, batch.mask, gamma=self.algo.gamma, lam=self.algo.lam
        )
        batch.advantages = A.normalize_advantages(adv, batch.mask)

    def _objective(self, out: Any, b: Batch, norm: float) -> tuple[Tensor, dict[str, Any]]:
        loss, stats = L.ppo_policy_loss(
            out.logprobs,
            b.old_logprobs,
            b.advantages,
            b.mask,
            clip=self.algo.clip_low,
            is_weights=b.is_weights,
            aggregate=self.aggregation.fn,
            norm=norm,
        )
        vloss, vstats = L.value_loss(
            out.values,
            b.old_values,
            b.returns,
            b.mask,
            clip=self.algo.value_clip,
            aggregate=self.aggregation.fn,
            norm=norm,
        )
        return loss + self.algo.vf_coef * vloss, {**stats, **vstats, "value_loss": vloss.detach()}


def resolve_correction(correction: str, rollout: RolloutConfig) -> str:
    """``auto``: off for the hf backend (the trainer's own forward samples, exactly), ``token``
    for any other sampler (vLLM, an OpenAI-compatible server, a quantized decoder)."""
    if correction != "auto":
        return correction
    exact = rollout.backend == "hf" and getattr(rollout, "sampler", "exact") == "exact"
    return "off" if exact else "token"


def make_update(
    policy: Policy,
    optimizer: torch.optim.Optimizer,
    algo: AlgoConfig,
    trainer: TrainerConfig,
    sampling: SamplingConfig,
    rollout: RolloutConfig,
) -> Update:
    """The update for ``algo.name``, chosen once."""
    cls = PPOUpdate if algo.name == "ppo" else GRPOUpdate
    return cls(policy, optimizer, algo, trainer, sampling, rollout)
