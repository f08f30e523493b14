"""The update's shared-prompt forward pass (``ptgym.prefix``): the same logprobs, entropies and
LoRA gradients as running every row from position 0, with each distinct prompt run once."""

from __future__ import annotations

import copy

import torch

from ptgym import prefix
from ptgym.config import LoraConfig, ModelConfig
from ptgym.policy import Policy, build_policy
from tests.tiny import tiny_model_and_tokenizer

# two GRPO groups (prompts of 5 and 8 tokens) and one row alone; completions of varied length
GROUP_A = [3, 4, 5, 6, 7]
GROUP_B = [9, 10, 11, 12, 13, 14, 15, 16]
ROWS = [
    (GROUP_A, [20, 21, 22]),
    (GROUP_A, [23, 24, 25, 26, 27, 28]),
    (GROUP_A, [29]),
    (GROUP_B, [30, 31, 32, 33]),
    (GROUP_B, [34, 35]),
    (GROUP_B, [36, 37, 38, 39, 40, 41, 42, 43, 44]),
    ([50, 51, 52], [53, 54]),
]


def batch():
    width = max(len(p) + len(c) for p, c in ROWS)
    ids = torch.zeros((len(ROWS), width), dtype=torch.long)
    attention = torch.zeros_like(ids)
    mask = torch.zeros((len(ROWS), width))
    for i, (p, c) in enumerate(ROWS):
        ids[i, : len(p) + len(c)] = torch.tensor(p + c)
        attention[i, : len(p) + len(c)] = 1
        mask[i, len(p) : len(p) + len(c)] = 1
    return ids, attention, mask


def lora_policy(shared: bool) -> Policy:
    model, tok = tiny_model_and_tokenizer()
    torch.manual_seed(0)  # the same adapters for both passes
    policy = Policy(
        copy.deepcopy(model),
        tok,
        lora=LoraConfig(enabled=True, r=4, alpha=8),
        value_head=False,
        need_reference=False,
        shared_prefix=shared,
    )
    with torch.no_grad():  # LoRA B starts at zero: make the adapters matter
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return policy


def test_the_plan_groups_rows_by_their_prompt():
    ids, attention, mask = batch()
    p = prefix.plan(ids, attention, mask.argmax(dim=1))
    assert p is not None
    assert p.owner.tolist() == [0, 0, 0, 1, 1, 1, 2]
    assert p.lengths.tolist() == [4, 7, 2]  # the last prompt token runs with the row
    assert p.prefix_ids.shape == (3, 7) and p.prefix_mask[0].tolist() == [0, 0, 0, 1, 1, 1, 1]
    assert p.suffix_ids[1].tolist() == [7, 23, 24, 25, 26, 27, 28, 0, 0, 0]
    # every row different: nothing to share
    alone = prefix.plan(ids[[0, 3, 6]], attention[[0, 3, 6]], mask[[0, 3, 6]].argmax(dim=1))
    assert alone is None


def test_shared_prompt_pass_equals_the_plain_pass_values_and_gradients():
    ids, attention, mask = batch()
    starts = mask.argmax(dim=1)
    outs, grads = {}, {}
    for shared in (False, True):
        policy = lora_policy(shared)
        first = int(mask.any(0).nonzero()[0])
        out = policy(ids, attention, with_entropy=True, first=first, starts=starts, temperature=0.7)
        loss = (out.logprobs * mask).sum()
        loss.backward()
        outs[shared] = out
        grads[shared] = {
            n: p.grad.clone() for n, p in policy.named_parameters() if p.grad is not None
        }
    plain, shared = outs[False], outs[True]
    on = mask.bool()
    torch.testing.assert_close(shared.logprobs[on], plain.logprobs[on], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(shared.entropy[on], plain.entropy[on], atol=1e-5, rtol=1e-5)
    assert (shared.logprobs[~on] == 0).all()
    assert grads[True].keys() == grads[False].keys() and len(grads[True]) > 0
    for name, g in grads[False].items():
        torch.testing.assert_close(grads[True][name], g, atol=1e-4, rtol=1e-3)
    assert any(g.abs().max() > 1e-3 for g in grads[True].values())


def test_off_with_shared_prefix_false_a_value_head_or_gradient_checkpointing():
    ids, attention, mask = batch()
    out = lora_policy(shared=False)(ids, attention, first=5, starts=mask.argmax(dim=1))
    # the plain pass fills every column from ``first`` on, padding included
    assert (out.logprobs[0, 5:] != 0).all()
    model, tok = tiny_model_and_tokenizer()
    critic = Policy(
        copy.deepcopy(model), tok, lora=LoraConfig(enabled=False), value_head=True,
        need_reference=False,
    )  # fmt: skip
    out = critic(ids, attention, first=5, starts=mask.argmax(dim=1))
    assert out.values is not None and (out.logprobs[0, 5:] != 0).all()
    checkpointed = build_policy(
        ModelConfig(name="tiny", device="cpu", gradient_checkpointing=True),
        LoraConfig(enabled=True),
        value_head=False,
        need_reference=False,
    )
    assert not checkpointed.shared_prefix
