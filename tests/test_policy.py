"""``ptgym.policy.Policy``: logprobs, the reference policy, ``first=``, the value head (issue 4).

The base model is the real tiny Llama, loaded once and never modified; every policy wraps a deep
copy of it. Logprobs are checked against ``log_softmax`` of the plain base model's logits.
"""

from __future__ import annotations

import copy

import pytest
import torch

from ptgym.config import LoraConfig
from ptgym.policy import Policy
from tests.tiny import tiny_model_and_tokenizer

PROMPTS = ["Compute (3 + 4) mod 10. Answer with a single digit.", "Say hello."]
REPLIES = ["7", "Hello there, how are you today?"]


def make_policy(*, lora: bool, need_reference: bool = False, value_head: bool = False) -> Policy:
    model, tokenizer = tiny_model_and_tokenizer()
    torch.manual_seed(0)
    cfg = LoraConfig(enabled=lora, r=4, alpha=8)
    return Policy(
        copy.deepcopy(model),
        tokenizer,
        lora=cfg,
        value_head=value_head,
        need_reference=need_reference,
    )


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor, int]:
    """Two right-padded rows (prompt + reply + EOS) and the first reply position."""
    _, tok = tiny_model_and_tokenizer()
    rows, starts = [], []
    for prompt, reply in zip(PROMPTS, REPLIES, strict=True):
        ids = list(
            tok.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True
            )["input_ids"]
        )
        starts.append(len(ids))
        rows.append(ids + tok(reply, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    T = max(map(len, rows))
    input_ids = torch.full((2, T), tok.pad_token_id)
    attention = torch.zeros((2, T), dtype=torch.long)
    for i, row in enumerate(rows):
        input_ids[i, : len(row)] = torch.tensor(row)
        attention[i, : len(row)] = 1
    return input_ids, attention, min(starts)


# Equal up to float32 rounding: the same weights through another kernel path (logits_to_keep,
# adapters disabled) differ by a few ulps, and log-probabilities reach -20 where an ulp is 2e-6.
SAME = dict(rtol=2e-6, atol=1e-5)


def base_logprobs(input_ids: torch.Tensor, attention: torch.Tensor, temperature: float = 1.0):
    """(B, T) log p(x_t | x_<t) of the untouched base model; 0 at t = 0."""
    model, _ = tiny_model_and_tokenizer()
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention).logits[:, :-1] / temperature
    lp = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, 1:, None])[..., 0]
    return torch.cat([torch.zeros(lp.shape[0], 1), lp], 1)


def sgd_step(policy: Policy, input_ids: torch.Tensor, attention: torch.Tensor) -> None:
    """One step that raises the likelihood of the batch (any loss that moves the weights)."""
    opt = torch.optim.SGD(policy.trainable_parameters(), lr=1.0)
    (-policy(input_ids, attention).logprobs[attention.bool()].mean()).backward()
    opt.step()


def test_lora_reference_is_the_base_model_before_and_after_training(batch):
    input_ids, attention, _ = batch
    base = base_logprobs(input_ids, attention, 0.7)
    policy = make_policy(lora=True, need_reference=True)
    assert sum(p.numel() for p in policy.parameters()) < 1.01 * sum(
        p.numel() for p in tiny_model_and_tokenizer()[0].parameters()
    )  # no second copy

    def ref():
        return policy.reference_logprobs(input_ids, attention, temperature=0.7)

    def own():
        with torch.no_grad():
            return policy(input_ids, attention, temperature=0.7).logprobs

    torch.testing.assert_close(ref(), base, **SAME)
    torch.testing.assert_close(own(), base, **SAME)  # lora_B starts at 0
    sgd_step(policy, input_ids, attention)
    torch.testing.assert_close(ref(), base, **SAME)
    assert (own() - base).abs().max() > 1e-2


def test_full_fine_tuning_keeps_a_frozen_copy_only_when_the_kl_needs_it(batch):
    input_ids, attention, _ = batch
    base = base_logprobs(input_ids, attention)
    n_base = sum(p.numel() for p in tiny_model_and_tokenizer()[0].parameters())
    assert sum(p.numel() for p in make_policy(lora=False).parameters()) == n_base
    policy = make_policy(lora=False, need_reference=True)
    assert sum(p.numel() for p in policy.parameters()) == 2 * n_base
    assert sum(p.numel() for p in policy.trainable_parameters()) == n_base
    sgd_step(policy, input_ids, attention)
    torch.testing.assert_close(policy.reference_logprobs(input_ids, attention), base, **SAME)
    with torch.no_grad():
        assert (policy(input_ids, attention).logprobs - base).abs().max() > 1e-2
    with pytest.raises(RuntimeError, match="lora.enabled=true"), policy.adapters_disabled():
        pass


def test_first_computes_only_the_logits_it_needs_and_agrees_with_the_full_pass(batch):
    input_ids, attention, first = batch
    policy = make_policy(lora=True)
    with torch.no_grad():
        full = policy(input_ids, attention, with_entropy=True, first=1)
        short = policy(input_ids, attention, with_entropy=True, first=first)
    assert short.logprobs.shape == full.logprobs.shape == input_ids.shape
    torch.testing.assert_close(short.logprobs[:, first:], full.logprobs[:, first:], **SAME)
    torch.testing.assert_close(short.entropy[:, first:], full.entropy[:, first:], rtol=0, atol=1e-4)
    assert short.logprobs[:, :first].abs().max() == 0 and short.entropy[:, :first].abs().max() == 0
    torch.testing.assert_close(full.logprobs, base_logprobs(input_ids, attention), **SAME)


def test_values_at_t_read_the_hidden_state_before_token_t(batch):
    input_ids, attention, first = batch
    policy = make_policy(lora=True, value_head=True)
    with torch.no_grad():
        assert policy(input_ids, attention).values.abs().max() == 0  # zero-initialised head
        policy.value_head.weight.normal_()
        policy.value_head.bias.fill_(0.5)
        values = policy(input_ids, attention, first=first).values
        hidden = policy.model(
            input_ids=input_ids, attention_mask=attention, output_hidden_states=True
        ).hidden_states[-1]  # (B, T, H)
    expected = policy.value_head(hidden).squeeze(-1)  # (B, T): V after reading token t
    assert values.shape == input_ids.shape
    assert values[:, 0].abs().max() == 0
    torch.testing.assert_close(values[:, 1:], expected[:, :-1], rtol=0, atol=1e-5)


def test_activation_checkpointing_with_lora_gives_the_same_gradients():
    """model.gradient_checkpointing=true (the code-tools preset) trains LoRA like the plain pass."""
    from ptgym.config import ModelConfig
    from ptgym.policy import build_policy

    torch.manual_seed(0)
    ids = torch.randint(3, 1000, (2, 10))
    attn = torch.ones_like(ids)
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(1)  # same adapter init
        policy = build_policy(
            ModelConfig(name="tiny", device="cpu", gradient_checkpointing=checkpointing),
            LoraConfig(),
            value_head=False,
            need_reference=False,
        )
        with torch.no_grad():  # non-zero B so the A matrices get gradients too
            for n, p in policy.named_parameters():
                if "lora_B" in n:
                    p.fill_(0.01)
        policy.train()
        policy(ids, attn).logprobs.sum().backward()
        grads.append({n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys() and grads[1]
    for name, g in grads[0].items():
        assert torch.allclose(g, grads[1][name], atol=1e-5), name
        assert g.abs().sum() > 0, name
