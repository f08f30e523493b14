"""``ptgym.update.Update``: selection, credit, micro-batching and the optimizer step (issue 4).

Trajectories are built by hand from the real SmolLM2 tokenizer and chat template, with the
sampler's logprobs computed by the tiny policy itself (so the importance ratio starts at 1), and
rewards chosen by the test: each test knows which trajectories train and with what sign.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ptgym.config import AlgoConfig, LoraConfig, RolloutConfig, SamplingConfig, TrainerConfig
from ptgym.policy import Policy
from ptgym.types import Trajectory, Turn
from ptgym.update import Update
from ptgym.update import make_update as build_update
from tests.tiny import tiny_model_and_tokenizer

# (task, completion, reward): completions of different lengths, so the aggregations differ.
EPISODES = [
    ("Compute (3 + 4) mod 10.", "7", 1.0),
    ("Compute (3 + 4) mod 10.", "The answer is 8, I think.", 0.0),
    ("Compute (9 + 9) mod 10.", "8 because 18 mod 10 is 8", 1.0),
    ("Compute (9 + 9) mod 10.", "18", 0.0),
]
OBSERVATION = "Wrong. Try again."


def make_policy(
    *, lora: bool = False, need_reference: bool = False, value_head: bool = False, seed: int = 0
) -> Policy:
    """A fresh policy on a deep copy of the shared tiny model (PEFT edits its model in place)."""
    model, tokenizer = tiny_model_and_tokenizer()
    torch.manual_seed(seed)  # LoRA A init
    cfg = LoraConfig(enabled=lora, r=4, alpha=8)
    return Policy(
        copy.deepcopy(model),
        tokenizer,
        lora=cfg,
        value_head=value_head,
        need_reference=need_reference,
    )


def chat(policy: Policy, messages: list[dict[str, str]]) -> list[int]:
    return list(
        policy.tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
    )


def sampled_turn(policy: Policy, prompt: list[int], text: str, reward: float) -> Turn:
    """A turn whose completion ``text`` (+ EOS) carries the policy's own logprobs."""
    tok = policy.tokenizer
    completion = tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt + completion])
    with torch.no_grad():
        lp = policy(ids, torch.ones_like(ids)).logprobs[0, len(prompt) :]
    return Turn(prompt, completion, lp.numpy(), text=text, reward=reward)


def trajectories(policy: Policy, episodes=EPISODES, *, turns: int = 1) -> list[Trajectory]:
    """One trajectory per episode, grouped by task; with ``turns=2`` the first reply is answered
    with ``OBSERVATION`` and the same text is sampled again (reward on the last turn)."""
    out = []
    for task, text, reward in episodes:
        messages = [{"role": "user", "content": task}]
        steps = []
        for k in range(turns):
            last = k == turns - 1
            steps.append(sampled_turn(policy, chat(policy, messages), text, reward if last else 0))
            messages += [
                {"role": "assistant", "content": text},
                {"role": "user", "content": OBSERVATION},
            ]
        out.append(
            Trajectory(env_id="test", task_id=task, group_id=task, turns=steps, reward=reward)
        )
    return out


def make_update(
    policy: Policy, *, lr: float = 0.0, micro_batch: int = 8, shared_prefix: bool = False, **algo
) -> Update:
    """Plain SGD (lr 0 keeps the weights, so ``.grad`` can be compared) and no grad clipping.
    The shared-prompt pass is off unless asked for: it computes the same values in another
    order, so float rounding would blur the exact comparisons here (it has its own tests, and
    ``test_the_shared_prompt_update_takes_the_same_step``)."""
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=lr)
    return build_update(
        policy,
        opt,
        AlgoConfig(**algo),
        TrainerConfig(micro_batch=micro_batch, grad_clip=0.0, shared_prefix=shared_prefix),
        SamplingConfig(temperature=1.0),
        RolloutConfig(max_tokens=16),
    )


def ids(trajs: list[Trajectory]) -> list[str]:
    return [t.id for t in trajs]


def grads(policy: Policy) -> list[torch.Tensor]:
    return [p.grad.clone() for p in policy.trainable_parameters()]


def test_the_shared_prompt_update_takes_the_same_step(monkeypatch):
    """``trainer.shared_prefix`` (on by default) changes how the forward pass is computed, not
    what it computes: the same loss and gradient as the plain pass, to float rounding."""
    from ptgym import prefix

    shared_passes = []
    real = prefix.suffix_logits
    monkeypatch.setattr(
        prefix, "suffix_logits", lambda *a: shared_passes.append(1) or real(*a)
    )  # counts the shared passes, runs the real one
    policy = make_policy()
    batch_trajs = trajectories(policy)
    results = {}
    for shared in (False, True):
        update = make_update(policy, shared_prefix=shared)
        stats = update.step(update.make_batch(update.select(batch_trajs)[0]))
        results[shared] = (grads(policy), stats)
    assert sum(float(g.abs().sum()) for g in results[False][0]) > 0
    assert shared_passes  # the groups' prompts did run once
    for g, ref in zip(results[True][0], results[False][0], strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-3, atol=1e-5)
    for key in ("loss/total", "loss/pg_loss", "loss/entropy"):
        assert results[True][1][key] == pytest.approx(results[False][1][key], rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "constant"])
def test_micro_batches_accumulate_to_the_full_batch_gradient(aggregation):
    policy = make_policy()
    batch_trajs = trajectories(policy)
    results = {}
    for mb in (4, 3, 1):  # one micro-batch, uneven (3 + 1), one row each
        update = make_update(policy, micro_batch=mb, aggregation=aggregation)
        stats = update.step(update.make_batch(update.select(batch_trajs)[0]))
        results[mb] = (grads(policy), stats)
    full_grads, full_stats = results[4]
    assert sum(float(g.abs().sum()) for g in full_grads) > 0
    for mb in (3, 1):
        for g, ref in zip(results[mb][0], full_grads, strict=True):
            torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-7)
        # The reported loss is the full batch's, whatever the micro-batch.
        for key in ("loss/total", "loss/pg_loss"):
            assert results[mb][1][key] == pytest.approx(full_stats[key], rel=1e-4, abs=1e-7)
        assert results[mb][1]["loss/ratio_max"] == pytest.approx(full_stats["loss/ratio_max"])


def test_token_mean_loss_on_policy_is_minus_the_token_weighted_advantage():
    """At ratio 1 the GRPO surrogate is -sum(A_i * n_i) / sum(n_i), n_i the tokens of row i."""
    policy = make_policy()
    update = make_update(policy)
    batch = update.make_batch(trajectories(policy))
    n = batch.mask.sum(-1)  # (B,)
    adv = (batch.advantages * batch.mask).sum(-1) / n  # (B,): one value per single-turn row
    stats = update.step(batch)
    assert adv.tolist() == pytest.approx([0.70710, -0.70710, 0.70710, -0.70710], abs=1e-4)
    assert stats["loss/total"] == pytest.approx(float(-(adv * n).sum() / n.sum()), abs=1e-6)
    assert stats["loss/ratio_mean"] == pytest.approx(1.0, abs=1e-5)


def test_errored_trajectories_are_dropped_before_credit():
    policy = make_policy()
    trajs = trajectories(policy)
    trajs[3].error = "judge unreachable"
    update = make_update(policy)
    kept, stats = update.select(trajs)
    assert ids(kept) == ids(trajs[:3]) and stats["rollout/kept_frac"] == 0.75
    batch = update.make_batch(kept)
    # Group "9 + 9" now holds one trajectory: advantage 0, not a comparison with a fake 0.
    assert batch.advantages[2].abs().max() == 0


def test_dynamic_sampling_drops_zero_variance_groups():
    policy = make_policy()
    episodes = [EPISODES[0], EPISODES[1], (EPISODES[2][0], "8", 1.0), EPISODES[2]]
    trajs = trajectories(policy, episodes)
    update = make_update(policy, dynamic_sampling=True)
    kept, stats = update.select(trajs)
    assert ids(kept) == ids(trajs[:2]) and stats["rollout/kept_frac"] == 0.5
    kept, stats = make_update(policy).select(trajs)
    assert ids(kept) == ids(trajs) and stats["rollout/kept_frac"] == 1.0


def test_turn_credit_trains_on_every_turn():
    policy = make_policy()
    trajs = trajectories(policy, turns=2)
    update = make_update(policy, credit="turn")
    batch = update.make_batch(trajs)
    assert batch.input_ids.shape[0] == 4  # turn 2 extends turn 1: one row per trajectory
    assert set(batch.turn_index.unique().tolist()) == {-1, 0, 1}
    stats = update.step(batch)
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert sum(float(g.abs().sum()) for g in grads(policy)) > 0


def test_ppo_step_trains_policy_and_critic():
    policy = make_policy(lora=True, value_head=True)
    update = make_update(policy, lr=0.1, name="ppo", credit="gae")
    batch = update.make_batch(trajectories(policy, turns=2))
    assert batch.old_values.abs().max() == 0  # zero-initialised head
    assert batch.returns is not None and batch.advantages[batch.mask.bool()].abs().max() > 0
    head = policy.value_head.weight.detach().clone()
    stats = update.step(batch)
    assert {"loss/value_loss", "loss/vf_clip_frac", "loss/pg_loss"} <= stats.keys()
    assert all(torch.isfinite(torch.tensor(v)) for v in stats.values())
    assert not torch.equal(policy.value_head.weight, head)


def test_beta_adds_the_kl_to_the_reference():
    policy = make_policy(lora=True, need_reference=True)
    update = make_update(policy, lr=0.5, beta=0.1, epochs=2)
    batch = update.make_batch(trajectories(policy))
    torch.testing.assert_close(batch.ref_logprobs * batch.mask, batch.old_logprobs)
    stats = update.step(batch)
    # Epoch 1 starts at the reference (KL 0); epoch 2 has moved away from it.
    assert stats["loss/kl"] > 0
    # token-mean of (pg + beta * k3) = token-mean(pg) + beta * token-mean(k3)
    assert stats["loss/total"] == pytest.approx(stats["loss/pg_loss"] + 0.1 * stats["loss/kl"])
    no_ref = make_update(policy)
    batch = no_ref.make_batch(trajectories(policy))
    assert batch.ref_logprobs is None and "loss/kl" not in no_ref.step(batch)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_a_step_changes_the_trainable_parameters_only(lora):
    policy = make_policy(lora=lora, need_reference=True)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    update = make_update(policy, lr=0.1, beta=0.1)
    update.step(update.make_batch(trajectories(policy)))
    after = dict(policy.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n])}
    if lora:
        assert trainable and all("lora_" in n for n in trainable)
        # lora_A gets no gradient while lora_B is still 0; every lora_B moves.
        assert {n for n in trainable if "lora_B" in n} <= changed
    else:
        assert trainable and all(not n.startswith("_frozen_ref.") for n in trainable)
        assert {n for n in trainable if "layers.0.self_attn" in n} <= changed
    assert changed <= trainable


def test_the_algorithm_picks_its_update_class_once():
    policy = make_policy()
    assert type(make_update(policy)).__name__ == "GRPOUpdate"
    assert type(make_update(policy, name="ppo", credit="gae")).__name__ == "PPOUpdate"


def test_each_aggregation_carries_its_normaliser():
    from ptgym.losses import AGGREGATIONS

    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]])
    assert AGGREGATIONS["token-mean"].norm(mask, 16) == 4.0  # sampled tokens
    assert AGGREGATIONS["seq-mean-token-mean"].norm(mask, 16) == 2.0  # rows with a sampled token
    assert AGGREGATIONS["constant"].norm(mask, 16) == 16.0  # the token budget
    assert AGGREGATIONS["constant"].micro_weight(1, 4) == 0.25
    assert AGGREGATIONS["token-mean"].micro_weight(1, 4) == 1.0


def test_turn_advantages_are_the_mean_over_each_turns_sampled_tokens():
    from ptgym.update import Batch, turn_advantages

    turn_index = torch.tensor([[-1, 0, 0, -1, 1], [-1, 0, -1, -1, -1]])
    adv = torch.tensor([[9.0, 1.0, 3.0, 9.0, -2.0], [9.0, 0.5, 9.0, 9.0, 9.0]])
    z = torch.zeros_like(adv)
    batch = Batch(z, z, turn_index >= 0, z, turn_index, torch.tensor([1, 0]), adv)
    assert turn_advantages(batch, 2) == [[0.5], [2.0, -2.0]]
