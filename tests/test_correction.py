"""Sampler/trainer mismatch correction (issue 12 item 1): truncated importance weights.

When the sampler is not the trainer's own forward pass, the trainer recomputes the behaviour
logprobs and weighs each sampled token by ``min(pi_trainer / q_sampler, cap)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from ptgym.config import RolloutConfig
from ptgym.losses import grpo_loss, sampler_is_weights
from ptgym.update import resolve_correction
from tests.test_update import make_policy, make_update, trajectories

TRAINER = torch.tensor([[-1.0, -2.0, 0.0]])
SAMPLER = torch.tensor([[-1.5, -1.0, -9.0]])
MASK = torch.tensor([[1, 1, 0]])


def test_token_weights_are_the_truncated_ratio_of_each_token():
    w, stats = sampler_is_weights(TRAINER, SAMPLER, MASK, level="token", cap=1.5)
    # exp(0.5) = 1.6487 is cut to 1.5; exp(-1) = 0.3679 stays; the unsampled position is 0.
    torch.testing.assert_close(w, torch.tensor([[1.5, math.exp(-1.0), 0.0]]))
    assert float(stats["is_capped_frac"]) == pytest.approx(0.5)
    assert float(stats["is_weight_mean"]) == pytest.approx((1.5 + math.exp(-1.0)) / 2)
    # k3 of KL(q || pi): mean over tokens of r - 1 - log r, r = pi / q.
    k3 = [(math.exp(d) - 1 - d) for d in (0.5, -1.0)]
    assert float(stats["sampler_kl"]) == pytest.approx(sum(k3) / 2)


def test_sequence_weights_are_one_ratio_per_row():
    w, stats = sampler_is_weights(TRAINER, SAMPLER, MASK, level="sequence", cap=1.5)
    torch.testing.assert_close(w, torch.tensor([[math.exp(-0.5), math.exp(-0.5), 0.0]]))
    assert float(stats["is_capped_frac"]) == 0.0


def test_an_exact_sampler_gets_weight_one_and_zero_kl():
    w, stats = sampler_is_weights(TRAINER, TRAINER, MASK)
    torch.testing.assert_close(w, MASK.float())
    assert float(stats["sampler_kl"]) == 0.0


def test_corrected_loss_equals_the_on_policy_loss_in_expectation():
    """Exact expectation over a 5-token vocabulary (single-token rows): sampling from a perturbed
    sampler q and weighing by pi / q gives the on-policy loss and gradient; without the
    correction the gradient is that of the wrong distribution."""
    theta = torch.tensor([0.3, -1.2, 0.8, 0.0, -0.4], requires_grad=True)
    advantage = torch.tensor([1.0, -0.5, 0.25, -1.0, 2.0])
    q = torch.softmax(torch.tensor([1.0, 0.0, -0.5, 0.7, 0.2]), 0)  # the sampler's distribution

    def expected(weights_of_y: torch.Tensor, old_of_y, with_is: bool) -> torch.Tensor:
        logp = torch.log_softmax(theta, 0)
        total = torch.zeros(())
        for y in range(5):
            lp = logp[y].view(1, 1)
            is_w = None
            if with_is:
                is_w, _ = sampler_is_weights(
                    logp[y].detach().view(1, 1),
                    torch.log(q[y]).view(1, 1),
                    torch.ones(1, 1),
                    cap=1e9,
                )
            loss, _ = grpo_loss(
                lp, old_of_y(y, logp), advantage[y].view(1, 1), torch.ones(1, 1), is_weights=is_w
            )
            total = total + weights_of_y[y] * loss
        return total

    pi = torch.softmax(theta, 0).detach()
    on_policy = expected(pi, lambda y, lp: lp[y].detach().view(1, 1), with_is=False)
    g_on = torch.autograd.grad(on_policy, theta)[0]
    corrected = expected(q, lambda y, lp: lp[y].detach().view(1, 1), with_is=True)
    g_corr = torch.autograd.grad(corrected, theta)[0]
    uncorrected = expected(q, lambda y, lp: torch.log(q[y]).view(1, 1), with_is=False)
    g_unc = torch.autograd.grad(uncorrected, theta)[0]
    torch.testing.assert_close(corrected, on_policy)
    torch.testing.assert_close(g_corr, g_on)
    assert (g_unc - g_on).abs().max() > 0.05


def test_auto_is_off_for_the_exact_sampler_and_token_level_otherwise():
    assert resolve_correction("auto", RolloutConfig(backend="hf")) == "off"
    assert resolve_correction("auto", RolloutConfig(backend="vllm")) == "token"
    assert resolve_correction("auto", RolloutConfig(backend="openai")) == "token"
    assert resolve_correction("sequence", RolloutConfig(backend="hf")) == "sequence"


def off_sampler(policy, shift: float = 0.3):
    """Trajectories whose sampler logprobs are ``shift`` nats below the trainer's on every token."""
    trajs = trajectories(policy)
    for t in trajs:
        for turn in t.turns:
            turn.completion_logprobs = turn.completion_logprobs - shift
    return trajs


@pytest.mark.parametrize("algo", ["grpo", "ppo"])
def test_the_update_recomputes_behaviour_logprobs_when_the_sampler_differs(algo):
    policy = make_policy(value_head=algo == "ppo")
    trajs = off_sampler(policy)
    off = make_update(policy, name=algo, correction="off")
    b_off = off.make_batch(trajs)
    on = make_update(policy, name=algo, correction="token", correction_cap=10.0)
    b_on = on.make_batch(trajs)
    stats = on.step(b_on)  # GRPO: the first epoch's own forward pass supplies them
    sampled = b_on.mask.bool()
    # With the correction the ratio's denominator is the trainer's own logprob: +0.3 back.
    torch.testing.assert_close(b_on.old_logprobs[sampled], b_off.old_logprobs[sampled] + 0.3)
    torch.testing.assert_close(
        b_on.is_weights[sampled], torch.full_like(b_on.is_weights[sampled], math.exp(0.3))
    )
    assert stats["rollout/sampler_kl"] == pytest.approx(math.exp(0.3) - 1 - 0.3, rel=1e-4)
    assert stats["rollout/is_capped_frac"] == 0.0
    assert "rollout/sampler_kl" not in off.step(b_off)


class CountingForward:
    """Counts the policy's forward calls (the real forward runs)."""

    def __init__(self, policy):
        self.calls = 0
        self.forward = policy.forward
        policy.forward = self

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.forward(*args, **kwargs)


@pytest.mark.parametrize("epochs", [1, 2])
def test_grpo_takes_the_behaviour_logprobs_from_its_first_epoch_without_an_extra_pass(epochs):
    """The deferred correction (logprobs from epoch 1's own forward, made before any optimizer
    step) moves the weights exactly as a separate no-grad pass before the update does, with one
    forward pass per micro-batch fewer."""
    results = {}
    for mode in ("deferred", "separate"):
        policy = make_policy(lora=True)
        trajs = off_sampler(policy)
        update = make_update(
            policy, lr=0.5, micro_batch=3, correction="sequence", correction_cap=1.2, epochs=epochs
        )
        batch = update.make_batch(trajs)
        counter = CountingForward(policy)
        if mode == "separate":
            lp, _ = update._policy_pass(batch)
            update._correct_sampler(batch, lp)
        stats = update.step(batch)
        results[mode] = (
            [p.detach().clone() for p in policy.trainable_parameters()],
            counter.calls,
            stats,
        )
    (w_def, n_def, s_def), (w_sep, n_sep, _) = results["deferred"], results["separate"]
    for a, b in zip(w_def, w_sep, strict=True):
        torch.testing.assert_close(a, b)
    micro_batches = math.ceil(len(off_sampler(make_policy())) / 3)
    assert n_sep - n_def == micro_batches
    assert n_def == epochs * micro_batches
    assert s_def["rollout/sampler_kl"] > 0
