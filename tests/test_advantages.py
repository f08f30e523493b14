"""Advantages and credit assignment on hand-computed numbers (ptgym/advantages.py)."""

import math

import pytest
import torch

from ptgym.advantages import (
    broadcast_to_tokens,
    discounted_turn_returns,
    gae,
    group_advantages,
    kl_penalised_rewards,
    normalize_advantages,
    rloo_advantages,
    select_trainable,
    turn_advantages,
    turn_end_rewards,
    zero_variance_groups,
)

F64 = torch.float64


def t(values):
    return torch.tensor(values, dtype=F64)


def approx(expected):
    return pytest.approx(expected, rel=1e-12, abs=1e-12)


# --- group baselines -----------------------------------------------------------------------


def test_group_advantages_normalise_by_group_mean_and_unbiased_std():
    # Group 0 (1, 0, 1, 0): mean 1/2, var = 4 * 1/4 / 3 = 1/3 -> +-(1/2) / sqrt(1/3) = +-sqrt(3)/2.
    # Group 1 (1, 1, 1, 0): mean 3/4, var = (3 * 1/16 + 9/16) / 3 = 1/4 -> (1/4, ..., -3/4) / (1/2).
    rewards = t([1, 0, 1, 0, 1, 1, 1, 0])
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    h = math.sqrt(3) / 2
    expected = [h, -h, h, -h, 0.5, 0.5, 0.5, -1.5]
    assert group_advantages(rewards, groups, eps=0.0).tolist() == approx(expected)


def test_group_advantages_without_std_keep_only_the_mean_baseline():
    # Dr. GRPO: r - mean, so the rare failure of an easy prompt is -3/4, not -3/2.
    rewards = t([1, 0, 1, 0, 1, 1, 1, 0])
    groups = [0, 0, 0, 0, 1, 1, 1, 1]
    expected = [0.5, -0.5, 0.5, -0.5, 0.25, 0.25, 0.25, -0.75]
    assert group_advantages(rewards, groups, scale="none").tolist() == approx(expected)


def test_group_ids_may_be_strings_interleaved_or_sparse_ints():
    # "a": (2, 4) mean 3 -> (-1, 1); "b": (10,) alone -> 0.
    by_name = group_advantages([2.0, 10.0, 4.0], ["a", "b", "a"], scale="none")
    assert by_name.tolist() == approx([-1.0, 0.0, 1.0])
    by_int = group_advantages(t([2.0, 10.0, 4.0]), torch.tensor([7, 3, 7]), scale="none")
    assert by_int.tolist() == approx([-1.0, 0.0, 1.0])


def test_a_group_of_one_gets_zero_advantage_even_with_std():
    assert group_advantages(t([5.0]), [0]).tolist() == [0.0]


def test_rloo_baseline_is_the_mean_of_the_others():
    # (1, 0, 1, 0): 1 - 1/3 = 2/3, 0 - 2/3 = -2/3.  (3, 1): 3 - 1 = 2, 1 - 3 = -2.  (5,): 0.
    rewards = t([1, 0, 1, 0, 3, 1, 5])
    groups = [0, 0, 0, 0, 1, 1, 2]
    expected = [2 / 3, -2 / 3, 2 / 3, -2 / 3, 2.0, -2.0, 0.0]
    assert rloo_advantages(rewards, groups).tolist() == approx(expected)


# --- dynamic sampling and errors -----------------------------------------------------------


def test_zero_variance_groups_flags_every_member_of_a_constant_group():
    # Groups: (1, 1) constant, (0, 1) not, (0.5,) alone -> constant.
    flags = zero_variance_groups(t([1, 1, 0, 1, 0.5]), [0, 0, 1, 1, 2])
    assert flags.tolist() == [True, True, False, False, True]
    assert zero_variance_groups(t([1.0, 1.05]), [0, 0], atol=0.1).tolist() == [True, True]


def test_errored_trajectories_are_dropped_before_dynamic_sampling():
    # Group A = (1, 0 errored, 1), group B = (1, 0, 0).
    rewards = t([1, 0, 1, 1, 0, 0])
    groups = ["A", "A", "A", "B", "B", "B"]
    errors = [False, True, False, False, False, False]
    keep = select_trainable(rewards, groups, errors=errors)
    assert keep.tolist() == [True, False, True, True, True, True]
    # Without its errored member group A is (1, 1): no signal, dropped whole.
    keep = select_trainable(rewards, groups, errors=errors, drop_zero_variance=True)
    assert keep.tolist() == [False, False, False, True, True, True]


def test_an_errored_trajectory_does_not_move_its_group_mean():
    # (1, 0 errored, 0): kept (1, 0) has mean 1/2; scoring the error as 0 would give mean 1/3.
    rewards = t([1, 0, 0])
    groups = [0, 0, 0]
    keep = select_trainable(rewards, groups, errors=[False, True, False])
    kept_groups = [g for g, k in zip(groups, keep.tolist(), strict=True) if k]
    advantages = group_advantages(rewards[keep], kept_groups, scale="none")
    assert advantages.tolist() == approx([0.5, -0.5])


def test_all_errored_batch_keeps_nothing():
    keep = select_trainable([1.0, 0.0], [0, 0], errors=[True, True], drop_zero_variance=True)
    assert keep.tolist() == [False, False]


# --- turn-level credit ---------------------------------------------------------------------


def test_discounted_turn_returns_run_backwards_over_turns():
    # gamma 1/2 over (1, 0, 2): G2 = 2, G1 = 0 + 2/2 = 1, G0 = 1 + 1/2 = 1.5.
    assert discounted_turn_returns([1.0, 0.0, 2.0], 0.5) == [1.5, 1.0, 2.0]
    assert discounted_turn_returns([], 0.5) == []


def test_turn_advantages_pool_the_group_s_turn_returns():
    # gamma 1/2: returns (1/2, 1) and (0, 0, 0); pooled mean 1.5 / 5 = 0.3.
    adv = turn_advantages([[0.0, 1.0], [0.0, 0.0, 0.0]], [0, 0], gamma=0.5, scale="none")
    assert adv.tolist() == [approx([0.2, 0.7, 0.0]), approx([-0.3, -0.3, -0.3])]


def test_turn_mode_with_final_reward_only_equals_trajectory_mode():
    # gamma 1, two turns each, rewards only at the end, no std: every turn gets r - mean.
    adv = turn_advantages([[0.0, 1.0], [0.0, 0.0], [0.0, 2.0]], [0, 0, 0], scale="none")
    expected = group_advantages([1.0, 0.0, 2.0], [0, 0, 0], scale="none")
    assert torch.equal(adv, expected.unsqueeze(-1).expand(3, 2))


# Two rows. Row 0: prompt (2 tokens), turn 0 (2), observation (1), turn 1 (2), padding (1).
# Row 1: prompt, turn 0 (3 tokens), padding.
TURN_INDEX = torch.tensor([[-1, -1, 0, 0, -1, 1, 1, -1], [-1, 0, 0, 0, -1, -1, -1, -1]])


def test_broadcast_trajectory_value_to_every_sampled_token():
    out = broadcast_to_tokens(t([1.5, -2.0]), TURN_INDEX)
    assert out.tolist() == [
        [0.0, 0.0, 1.5, 1.5, 0.0, 1.5, 1.5, 0.0],
        [0.0, -2.0, -2.0, -2.0, 0.0, 0.0, 0.0, 0.0],
    ]


def test_broadcast_per_turn_values_to_each_turn_s_tokens():
    out = broadcast_to_tokens(t([[0.6, 0.2], [-0.4, 0.0]]), TURN_INDEX)
    assert out.tolist() == [
        [0.0, 0.0, 0.6, 0.6, 0.0, 0.2, 0.2, 0.0],
        [0.0, -0.4, -0.4, -0.4, 0.0, 0.0, 0.0, 0.0],
    ]


def test_turn_end_rewards_sit_on_each_turn_s_last_sampled_token():
    out = turn_end_rewards(t([[0.5, 1.0], [2.0, 0.0]]), TURN_INDEX)
    assert out.tolist() == [
        [0.0, 0.0, 0.0, 0.5, 0.0, 0.0, 1.0, 0.0],
        [0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 0.0],
    ]
    # Adjacent turns with no gap, and a turn ending the row.
    out = turn_end_rewards(t([[3.0, 4.0]]), torch.tensor([[0, 0, 1, 1]]))
    assert out.tolist() == [[0.0, 3.0, 0.0, 4.0]]


def test_kl_penalised_rewards_subtract_beta_log_ratio_on_sampled_tokens():
    # log pi - log ref = (0.5, -1, 0); masked at t0; beta 0.1 -> (0, +0.1, 1 - 0).
    rewards = t([[0.0, 0.0, 1.0]])
    out = kl_penalised_rewards(
        rewards, t([[-1.0, -2.0, -1.0]]), t([[-1.5, -1.0, -1.0]]), t([[0, 1, 1]]), beta=0.1
    )
    assert out.tolist() == [approx([0.0, 0.1, 1.0])]


# --- GAE -----------------------------------------------------------------------------------


def test_gae_skips_observation_tokens_with_per_turn_rewards():
    # gamma 0.9, lam 0.8 (gamma lam = 0.72). Values on unsampled tokens are 9: never used.
    # Row 0, walking back over sampled tokens 6, 5, 3, 2 (rewards 1.0 at 6, 0.5 at 3):
    #   t6: delta = 1.0 + 0.9 * 0   - 0.4 = 0.6                   A = 0.6
    #   t5: delta = 0   + 0.9 * 0.4 - 0.3 = 0.06                  A = 0.06 + 0.72 * 0.6   = 0.492
    #   t3: delta = 0.5 + 0.9 * 0.3 - 0.2 = 0.57 (V(t5) bootstraps across the observation)
    #                                                             A = 0.57 + 0.72 * 0.492 = 0.92424
    #   t2: delta = 0   + 0.9 * 0.2 - 0.1 = 0.08                  A = 0.08 + 0.72 * 0.92424
    # Row 1 (reward 1.0 at t3, values 0.5, 0.5, 0.5 on t1..t3):
    #   t3: delta = 1 - 0.5 = 0.5; t2: delta = 0.45 - 0.5 = -0.05, A = -0.05 + 0.72 * 0.5 = 0.31
    #   t1: A = -0.05 + 0.72 * 0.31 = 0.1732
    rewards = turn_end_rewards(t([[0.5, 1.0], [1.0, 0.0]]), TURN_INDEX)
    values = t([[9, 9, 0.1, 0.2, 9, 0.3, 0.4, 9], [9, 0.5, 0.5, 0.5, 9, 9, 9, 9]])
    mask = (TURN_INDEX >= 0).to(F64)
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    a2 = 0.08 + 0.72 * 0.92424
    assert advantages.tolist() == [
        approx([0, 0, a2, 0.92424, 0, 0.492, 0.6, 0]),
        approx([0, 0.1732, 0.31, 0.5, 0, 0, 0, 0]),
    ]
    assert returns.tolist() == [
        approx([0, 0, a2 + 0.1, 1.12424, 0, 0.792, 1.0, 0]),
        approx([0, 0.6732, 0.81, 1.0, 0, 0, 0, 0]),
    ]


def test_gae_with_gamma_lam_one_is_monte_carlo_return_minus_value():
    # Rewards-to-go over sampled tokens (2 at t1, 3 at t4) minus V.
    rewards = t([[0.0, 2.0, 0.0, 0.0, 3.0]])
    values = t([[1.0, 1.0, 7.0, 0.5, 2.0]])
    mask = t([[1, 1, 0, 1, 1]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert advantages.tolist() == [approx([5 - 1.0, 5 - 1.0, 0, 3 - 0.5, 3 - 2.0])]
    assert returns.tolist() == [approx([5.0, 5.0, 0.0, 3.0, 3.0])]


def test_gae_rejects_rewards_on_unsampled_tokens():
    with pytest.raises(AssertionError):
        gae(t([[1.0, 0.0]]), t([[0.0, 0.0]]), t([[0, 1]]))


def test_normalize_advantages_whitens_over_sampled_tokens():
    # (1, 3) on the mask: mean 2, population std 1 -> (-1, 1); the masked 100 becomes 0.
    out = normalize_advantages(t([[1.0, 3.0, 100.0]]), t([[1, 1, 0]]), eps=0.0)
    assert out.tolist() == [approx([-1.0, 1.0, 0.0])]
