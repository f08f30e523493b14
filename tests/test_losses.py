"""Losses on hand-computed tensors (ptgym/losses.py). float64 so values compare exactly."""

import math

import pytest
import torch

from ptgym.losses import (
    AGGREGATORS,
    bradley_terry_loss,
    constant_norm,
    dpo_loss,
    entropy_from_logits,
    grpo_loss,
    kl_k3,
    ppo_policy_loss,
    seq_mean_token_mean,
    sequence_logprobs,
    sft_loss,
    simpo_loss,
    token_logprobs,
    token_mean,
    value_loss,
)

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


def approx(expected):
    return pytest.approx(expected, rel=1e-12, abs=1e-12)


# --- log-probability helpers ---------------------------------------------------------------


def test_token_logprobs_picks_the_target_under_softmax():
    # Row 0: logits log(1, 2, 3) -> softmax (1/6, 2/6, 3/6); target 2 -> log(1/2).
    # Row 1: equal logits -> uniform 1/3 whatever the shift; target 0 -> log(1/3).
    logits = t([[[0.0, math.log(2), math.log(3)], [5.0, 5.0, 5.0]]])  # (1, 2, 3)
    targets = torch.tensor([[2, 0]])
    assert token_logprobs(logits, targets).tolist() == [approx([math.log(0.5), math.log(1 / 3)])]


def test_token_logprobs_matches_log_softmax_and_its_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, dtype=F64, requires_grad=True)
    targets = torch.randint(0, 5, (2, 3))
    ours = token_logprobs(logits, targets)
    ours.sum().backward()
    ours_grad = logits.grad.clone()
    logits.grad = None
    ref = torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    ref.sum().backward()
    assert torch.allclose(ours, ref, atol=1e-12)
    assert torch.allclose(ours_grad, logits.grad, atol=1e-12)


def test_token_logprobs_of_bf16_logits_are_float32():
    logits = torch.zeros(1, 2, 4, dtype=torch.bfloat16)
    out = token_logprobs(logits, torch.tensor([[0, 3]]))
    assert out.dtype == torch.float32
    assert out.tolist() == [pytest.approx([math.log(0.25)] * 2)]


def test_entropy_of_uniform_and_of_half_quarter_quarter():
    # Uniform over 4 -> log 4. (1/2, 1/4, 1/4, ~0) -> 1/2 ln2 + 2 * 1/4 ln4 = 1.5 ln2.
    logits = t([[[0.0, 0.0, 0.0, 0.0], [math.log(2), 0.0, 0.0, -1e4]]])
    assert entropy_from_logits(logits).tolist() == [approx([math.log(4), 1.5 * math.log(2)])]


def test_sequence_logprobs_sum_and_average_over_the_mask():
    logprobs, mask = t([[-1.0, -2.0, -3.0]]), t([[0, 1, 1]])
    assert sequence_logprobs(logprobs, mask).tolist() == [-5.0]
    assert sequence_logprobs(logprobs, mask, average=True).tolist() == [-2.5]


def test_kl_k3_is_exp_r_minus_r_minus_1_and_zero_at_equality():
    # logp = log 1/2, ref = log 1/4: r = -ln2, k3 = 1/2 + ln2 - 1.
    logp = t([[math.log(0.5), -0.3]]).requires_grad_()
    ref = t([[math.log(0.25), -0.3]])
    kl = kl_k3(logp, ref)
    assert kl.tolist() == [approx([math.log(2) - 0.5, 0.0])]
    kl.sum().backward()
    # d k3 / d logp = 1 - exp(r): 1 - 1/2 at token 0, 0 at equality.
    assert logp.grad.tolist() == [approx([0.5, 0.0])]


# --- aggregators ---------------------------------------------------------------------------

# Row 0 has 3 sampled tokens (1, 2, 3), row 1 one (5), row 2 none; 100s and 7s are masked out.
LOSS = t([[1.0, 2.0, 3.0, 100.0], [5.0, 100.0, 100.0, 100.0], [7.0, 7.0, 7.0, 7.0]])
MASK = t([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]])


def test_token_mean_divides_the_masked_sum_by_the_token_count():
    assert token_mean(LOSS, MASK).item() == approx((1 + 2 + 3 + 5) / 4)
    assert token_mean(LOSS, MASK, norm=11.0).item() == approx(1.0)


def test_seq_mean_token_mean_averages_row_means_over_non_empty_rows():
    # Row means 2 and 5; the empty row is not counted: (2 + 5) / 2.
    assert seq_mean_token_mean(LOSS, MASK).item() == approx(3.5)
    assert seq_mean_token_mean(LOSS, MASK, norm=7.0).item() == approx(1.0)


def test_constant_norm_divides_by_rows_times_max_tokens():
    # Dr. GRPO: 11 / (B=3 * L=4).
    assert constant_norm(LOSS, MASK, norm=4).item() == approx(11 / 12)
    with pytest.raises(AssertionError):
        constant_norm(LOSS, MASK)


def test_aggregators_are_named_for_the_config():
    assert AGGREGATORS["token-mean"] is token_mean
    assert AGGREGATORS["seq-mean-token-mean"] is seq_mean_token_mean
    assert AGGREGATORS["constant"] is constant_norm


# --- GRPO / PPO ----------------------------------------------------------------------------

# Five sampled tokens covering every branch of the clipped objective (clip 0.2), one masked:
#   t0 A=+1 rho=1.5 -> clipped high: -min(1.5, 1.2)   = -1.2, no gradient
#   t1 A=-1 rho=0.5 -> clipped low:  -min(-0.5, -0.8) =  0.8, no gradient
#   t2 A=+1 rho=1.1 -> inside:       -1.1
#   t3 A=-1 rho=1.5 -> unclipped:    -min(-1.5, -1.2) =  1.5
#   t4 A=+1 rho=0.5 -> unclipped:    -min(0.5, 0.8)   = -0.5
# token mean = (-1.2 + 0.8 - 1.1 + 1.5 - 0.5) / 5 = -0.1
RATIOS = [1.5, 0.5, 1.1, 1.5, 0.5, 9.0]
ADV = t([[1.0, -1.0, 1.0, -1.0, 1.0, 1.0]])
PG_MASK = t([[1, 1, 1, 1, 1, 0]])
OLD = t([[-1.0, -2.0, -0.5, -1.5, -3.0, -1.0]])


def policy_logprobs(ratios=RATIOS):
    return (OLD + torch.log(t([ratios]))).requires_grad_()


def test_grpo_loss_clipped_objective_value_and_stats():
    loss, stats = grpo_loss(policy_logprobs(), OLD, ADV, PG_MASK)
    assert loss.item() == approx(-0.1)
    assert stats["pg_loss"].item() == approx(-0.1)
    assert stats["clip_high_frac"].item() == approx(0.2)
    assert stats["clip_low_frac"].item() == approx(0.2)
    assert stats["clip_frac"].item() == approx(0.4)
    assert stats["ratio_mean"].item() == approx((1.5 + 0.5 + 1.1 + 1.5 + 0.5) / 5)
    assert stats["ratio_max"].item() == approx(1.5)
    assert "kl" not in stats


def test_grpo_clipped_and_masked_tokens_get_zero_gradient():
    # d loss / d logp_t = -A_t * rho_t / 5 where unclipped, else 0.
    logprobs = policy_logprobs()
    grpo_loss(logprobs, OLD, ADV, PG_MASK)[0].backward()
    assert logprobs.grad.tolist() == [approx([0.0, 0.0, -1.1 / 5, 1.5 / 5, -0.5 / 5, 0.0])]


def test_grpo_clip_higher_lets_positive_tokens_rise_further():
    # DAPO clip_high=0.28: rho=1.25 with A=+1 stays inside (-1.25); with 0.2 it is clipped (-1.2).
    adv, mask = t([[1.0]]), t([[1]])
    old = t([[-1.0]])
    logprobs = (old + math.log(1.25)).requires_grad_()
    sym, _ = grpo_loss(logprobs, old, adv, mask)
    dapo, stats = grpo_loss(logprobs, old, adv, mask, clip_high=0.28)
    assert (sym.item(), dapo.item()) == (approx(-1.2), approx(-1.25))
    assert stats["clip_frac"].item() == 0.0
    dapo.backward()
    assert logprobs.grad.item() == approx(-1.25)


def test_grpo_kl_to_reference_adds_beta_k3():
    # ref = logp - ln2 everywhere: k3 = ln2 - 1/2 on each token.
    logprobs = policy_logprobs()
    ref = logprobs.detach() - math.log(2)
    loss, stats = grpo_loss(logprobs, OLD, ADV, PG_MASK, ref_logprobs=ref, beta=0.1)
    assert loss.item() == approx(-0.1 + 0.1 * (math.log(2) - 0.5))
    assert stats["kl"].item() == approx(math.log(2) - 0.5)
    off, stats = grpo_loss(logprobs, OLD, ADV, PG_MASK, ref_logprobs=ref)
    assert off.item() == approx(-0.1)  # beta=0 by default: KL only monitored
    assert stats["kl"].item() == approx(math.log(2) - 0.5)
    with pytest.raises(AssertionError):
        grpo_loss(logprobs, OLD, ADV, PG_MASK, beta=0.1)


def test_grpo_ignores_garbage_on_unsampled_positions():
    # The sampler pads behaviour/reference logprobs with anything, even -inf or NaN.
    logprobs = policy_logprobs()
    old = OLD.clone()
    old[0, 5] = -math.inf
    ref = logprobs.detach().clone()
    ref[0, 5] = math.nan
    loss, stats = grpo_loss(logprobs, old, ADV, PG_MASK, ref_logprobs=ref, beta=0.1)
    loss.backward()
    assert loss.item() == approx(-0.1)
    assert stats["kl"].item() == 0.0
    assert torch.isfinite(logprobs.grad).all()
    assert logprobs.grad[0, 5].item() == 0.0


def test_grpo_approx_kl_is_zero_on_policy():
    loss, stats = grpo_loss(OLD.clone().requires_grad_(), OLD, ADV, PG_MASK)
    # rho = 1 everywhere: loss = -mean(A) over the 5 sampled tokens = -(1 - 1 + 1 - 1 + 1) / 5.
    assert loss.item() == approx(-0.2)
    assert stats["approx_kl"].item() == 0.0
    assert stats["clip_frac"].item() == 0.0


@pytest.mark.parametrize(
    ("aggregate", "norm", "expected"),
    [
        # per-token losses -2 | -1, -1, -1 (rho = 1, A = 2 on row 0, 1 on row 1)
        (token_mean, None, -5 / 4),
        (seq_mean_token_mean, None, (-2 + -1) / 2),
        (constant_norm, 4, -5 / (2 * 4)),
    ],
)
def test_grpo_loss_uses_the_chosen_aggregation(aggregate, norm, expected):
    logprobs = t([[-1.0, 0.0, 0.0, 0.0], [-1.0, -1.0, -1.0, 0.0]])
    adv = t([[2.0, 2.0, 2.0, 2.0], [1.0, 1.0, 1.0, 1.0]])
    mask = t([[1, 0, 0, 0], [1, 1, 1, 0]])
    loss, _ = grpo_loss(logprobs, logprobs, adv, mask, aggregate=aggregate, norm=norm)
    assert loss.item() == approx(expected)


def test_ppo_policy_loss_is_the_symmetric_clipped_surrogate():
    loss, stats = ppo_policy_loss(policy_logprobs(), OLD, ADV, PG_MASK, clip=0.2)
    assert loss.item() == approx(-0.1)
    assert stats["clip_frac"].item() == approx(0.4)


# --- value loss ----------------------------------------------------------------------------


def test_value_loss_takes_the_larger_of_clipped_and_unclipped_errors():
    # clip 0.2, returns 1 everywhere, V_old = 0.5:
    #   t0 V=1.0: unclipped 0,    V_clip=0.7 -> 0.09 (larger; clipped, no grad) -> 0.5*0.09 = 0.045
    #   t1 V=0.6: unclipped 0.16, V_clip=0.6 -> 0.16                              -> 0.08
    #   t2 V=0.0: unclipped 1.0,  V_clip=0.3 -> 0.49                              -> 0.5
    #   t3 masked
    values = t([[1.0, 0.6, 0.0, 50.0]]).requires_grad_()
    old, returns, mask = t([[0.5] * 4]), t([[1.0] * 4]), t([[1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip=0.2)
    assert loss.item() == approx((0.045 + 0.08 + 0.5) / 3)
    assert stats["vf_clip_frac"].item() == approx(1 / 3)
    loss.backward()
    # d/dV 0.5 (V - R)^2 / 3 = (V - R) / 3 on unclipped tokens.
    assert values.grad.tolist() == [approx([0.0, -0.4 / 3, -1.0 / 3, 0.0])]
    plain, _ = value_loss(values, old, returns, mask, clip=None)
    assert plain.item() == approx(0.5 * (0.0 + 0.16 + 1.0) / 3)


# --- preference losses ---------------------------------------------------------------------


def test_bradley_terry_loss_is_mean_negative_log_sigmoid_of_the_difference():
    # diffs 2 and -1: mean(log(1 + e^-2), log(1 + e^1)).
    loss, stats = bradley_terry_loss(t([2.0, 0.0]), t([0.0, 1.0]))
    assert loss.item() == approx((math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2)
    assert stats["accuracy"].item() == 0.5
    assert stats["margin"].item() == approx(0.5)


def test_dpo_loss_sigmoid_with_and_without_label_smoothing():
    # beta 0.1: chosen reward 0.1 * (-10 + 11) = 0.1, rejected 0.1 * (-12 + 11) = -0.1, h = 0.2.
    chosen = t([-10.0]).requires_grad_()
    args = (chosen, t([-12.0]), t([-11.0]), t([-11.0]))
    loss, stats = dpo_loss(*args, beta=0.1)
    assert loss.item() == approx(math.log1p(math.exp(-0.2)))
    assert stats["chosen_reward"].item() == approx(0.1)
    assert stats["rejected_reward"].item() == approx(-0.1)
    assert stats["margin"].item() == approx(0.2)
    assert stats["accuracy"].item() == 1.0
    loss.backward()
    # d/dh -log sigmoid(h) = -sigmoid(-h); dh / d chosen = beta.
    assert chosen.grad.item() == approx(-0.1 / (1 + math.exp(0.2)))
    smooth, _ = dpo_loss(*args, beta=0.1, label_smoothing=0.1)
    expected = 0.9 * math.log1p(math.exp(-0.2)) + 0.1 * math.log1p(math.exp(0.2))
    assert smooth.item() == approx(expected)


def test_simpo_loss_has_length_normalised_margin_and_target_gap():
    # beta 2 * (-0.5 - -1.0) = 1; minus gamma 0.5 -> -log sigmoid(0.5) = log(1 + e^-0.5).
    loss, stats = simpo_loss(t([-0.5]), t([-1.0]), beta=2.0, gamma=0.5)
    assert loss.item() == approx(math.log1p(math.exp(-0.5)))
    assert stats["margin"].item() == approx(1.0)
    assert stats["accuracy"].item() == 1.0


# --- SFT -----------------------------------------------------------------------------------


def test_sft_loss_is_masked_negative_log_likelihood():
    logprobs = t([[-1.0, -2.0, -3.0], [-4.0, -5.0, -6.0]]).requires_grad_()
    mask = t([[0, 1, 1], [1, 0, 0]])
    loss, stats = sft_loss(logprobs, mask)
    assert loss.item() == approx((2 + 3 + 4) / 3)
    assert stats["tokens"].item() == 3
    per_seq, _ = sft_loss(logprobs, mask, aggregate=seq_mean_token_mean)
    assert per_seq.item() == approx((2.5 + 4) / 2)
    loss.backward()
    assert logprobs.grad.tolist() == [approx([0.0, -1 / 3, -1 / 3]), approx([-1 / 3, 0.0, 0.0])]
