"""The bf16 sampler's lean decode loop (``agents/lean.py``) and its inverse-CDF row sampler:
the same network as ``transformers`` (checked in float32, where the two must agree to rounding),
for Llama, Qwen2 (biases) and Qwen3 (q/k norms) with grouped-query attention, through prefill,
steps, and rows dropped lazily or compacted."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ptgym.agents.backend import SamplingParams
from ptgym.agents.hf import HFBackend, _InverseCDFSampler
from ptgym.agents.lean import LeanDecoder, _Linear, supports
from ptgym.agents.quantized import CopyBackend
from tests.tiny import tiny_model_and_tokenizer

PAD = 0
SHAPE = dict(
    vocab_size=97,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention: two query heads per key/value head
)
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(**SHAPE)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(**SHAPE)),  # q/k/v biases
    "qwen3": lambda: Qwen3ForCausalLM(Qwen3Config(**SHAPE, head_dim=8)),  # q/k RMSNorm
}
PROMPTS = [[5, 6, 7, 8, 9], [11, 12], [20, 21, 22, 23, 24, 25, 26]]  # left-padded to 7


def random_model(family: str):
    torch.manual_seed(0)
    model = FAMILIES[family]()
    with torch.no_grad():  # random init is near-flat; spread the weights so the test can fail
        for p in model.parameters():
            p.mul_(3.0) if p.dim() > 1 else p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def reference_logits(model, ids: list[int]) -> torch.Tensor:
    """transformers' logits at every position of one unpadded sequence, (len, vocab)."""
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_lean_logits_equal_transformers_through_prefill_steps_and_dropped_rows(family):
    model = random_model(family)
    assert supports(model) is None
    bias = model.model.layers[0].self_attn.q_proj.bias
    assert (bias is not None) == (family == "qwen2")
    decoder = LeanDecoder(model, PAD)
    following = [[30, 31, 32, 33], [40, 41, 42, 43], [50, 51, 52, 53]]
    with torch.no_grad():
        first = decoder.prefill(PROMPTS, capacity=16)  # (3, vocab)
        for r, prompt in enumerate(PROMPTS):
            torch.testing.assert_close(first[r], reference_logits(model, prompt)[-1])
        # repeat rows as a GRPO group does: (0, 0, 1, 2, 2) share their prompts' prefill
        rows = [0, 0, 1, 2, 2]
        decoder.select(torch.tensor(rows))
        alive = list(range(5))
        for step in range(4):
            if step == 2:  # batch positions 1 and 3 finish: 3 of 5 stay, so the cache compacts
                alive = [0, 2, 4]
                decoder.select(torch.tensor([0, 2, 4]))
            if step == 3:  # one more finishes: 2 of 3 stay, kept lazily
                alive = [0, 4]
                decoder.select(torch.tensor([0, 2]))
            tokens = torch.tensor([following[rows[a]][step] for a in alive])
            logits = decoder.step(tokens)
            assert logits.shape == (len(alive), model.config.vocab_size)
            for at, a in enumerate(alive):
                row = rows[a]
                ids = PROMPTS[row] + following[row][: step + 1]
                torch.testing.assert_close(logits[at], reference_logits(model, ids)[-1])


def test_lean_drops_rows_lazily_until_a_quarter_are_dead():
    decoder = LeanDecoder(random_model("llama"), PAD)
    with torch.no_grad():
        decoder.prefill([[1, 2, 3]], capacity=8)
        decoder.select(torch.zeros(8, dtype=torch.long))  # eight rows of one prompt: copied
        assert decoder.cache.shape[2] == 8 and decoder.live is None
        decoder.step(torch.arange(8))
        decoder.select(torch.arange(7))  # one dead of eight: kept in place
        assert decoder.cache.shape[2] == 8 and decoder.live.tolist() == list(range(7))
        assert decoder.step(torch.arange(7)).shape[0] == 7
        decoder.select(torch.arange(6))  # two of eight dead: one quarter, compacted
        assert decoder.cache.shape[2] == 6 and decoder.live is None


def test_unsupported_models_are_refused_with_the_reason_and_the_copy_falls_back():
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=97))
    assert "gpt2" in supports(gpt2)
    with pytest.raises(ValueError, match="gpt2"):
        LeanDecoder(gpt2, PAD)
    biased = LlamaForCausalLM(LlamaConfig(**SHAPE, mlp_bias=True))
    assert "MLP has biases" in supports(biased)
    windowed = Qwen2ForCausalLM(Qwen2Config(**SHAPE, use_sliding_window=True, sliding_window=4))
    assert supports(windowed) is not None


def test_the_bf16_copy_decodes_with_the_lean_loop_and_says_when_it_cannot(monkeypatch):
    model, tok = tiny_model_and_tokenizer()
    backend = CopyBackend(model, tok, sampler="bf16")
    backend.sync(0)
    (out,) = backend.generate([[1, 2, 3]], SamplingParams(max_new_tokens=3, seed=1))
    assert len(out.token_ids) == 3
    assert isinstance(backend._inner.decoder, LeanDecoder)
    assert backend._inner.sampling == "inverse-cdf"
    monkeypatch.setattr("ptgym.agents.lean.FAMILIES", ())  # as if the model were unknown
    fallback = CopyBackend(model, tok, sampler="bf16")
    with pytest.warns(UserWarning, match="without the lean loop: model_type 'llama'"):
        fallback.generate([[1, 2, 3]], SamplingParams(max_new_tokens=3, seed=1))
    assert not isinstance(fallback._inner.decoder, LeanDecoder)
    assert fallback._inner.sampling == "gumbel"
    plain = CopyBackend(model, tok, sampler="bf16", lean_loop=False)
    plain.generate([[1, 2, 3]], SamplingParams(max_new_tokens=3, seed=1))
    assert not isinstance(plain._inner.decoder, LeanDecoder)


def test_lean_generation_matches_the_exact_decoder_in_float32():
    """Greedy and sampled (inverse-CDF, same seeds) generation of the tiny model in float32 through
    the lean loop equals transformers' loop token for token, with rows ending at different steps
    (so rows leave the batch both lazily and by compaction)."""
    model, tok = tiny_model_and_tokenizer()
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8, 9], [10, 11, 12, 13], [14, 15], [16, 17, 18, 19, 20]]
    probe = HFBackend(model, tok).generate(
        prompts, SamplingParams(max_new_tokens=12, temperature=0)
    )
    # end tokens that finish the greedy rows at different steps
    eos = {int(c.token_ids[min(2 + 2 * i, len(c.token_ids) - 1)]) for i, c in enumerate(probe)}
    lean = LeanDecoder(copy.deepcopy(model), tok.pad_token_id)
    for params in (
        SamplingParams(max_new_tokens=12, temperature=0),
        SamplingParams(max_new_tokens=12, temperature=1.0, seed=4),
    ):
        exact = HFBackend(model, tok, eos_token_ids=eos, sampling="inverse-cdf")
        fast = HFBackend(model, tok, eos_token_ids=eos, sampling="inverse-cdf", decoder=lean)
        want, got = exact.generate(prompts, params), fast.generate(prompts, params)
        assert [c.token_ids.tolist() for c in got] == [c.token_ids.tolist() for c in want]
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(torch.as_tensor(a.logprobs), torch.as_tensor(b.logprobs))
        if params.temperature == 0:
            assert len({len(c.token_ids) for c in got}) >= 3  # rows ended at different steps


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_prepacked_linear_computes_what_f_linear_does(dtype):
    torch.manual_seed(0)
    weight, bias = torch.randn(48, 32, dtype=dtype), torch.randn(48, dtype=dtype)
    layer = _Linear(weight, bias, rows=8)
    for shape in [(1, 32), (5, 32), (3, 4, 32)]:
        x = torch.randn(*shape, dtype=dtype)
        torch.testing.assert_close(layer(x), torch.nn.functional.linear(x, weight, bias))


@pytest.mark.parametrize(
    ("top_k", "top_p", "kept"), [(0, 1.0, 5), (2, 1.0, 2), (0, 0.9, 3), (3, 0.5, 1)]
)
def test_inverse_cdf_draws_from_the_truncated_tempered_softmax(top_k, top_p, kept):
    """20,000 seeded rows over a 700-token vocabulary whose likely tokens sit in three different
    256-token blocks (so both levels of the search are exercised). At T = 0.7 the probabilities
    are token 0: .521, 300: .255, 1: .125, 699: .061, 2: .030 (and 3: .007); top-p 0.9 keeps
    three (mass before the fourth is .901), top-p 0.5 keeps one."""
    logits = torch.full((700,), -30.0)
    order = [0, 300, 1, 699, 2, 3]
    logits[order] = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -1.0])
    rows = 20_000
    sampler = _InverseCDFSampler(
        SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p),
        [torch.Generator().manual_seed(s) for s in range(rows)],
    )
    scores = logits.repeat(rows, 1)
    chosen, logprobs = sampler.draw(scores)
    freq = torch.bincount(chosen, minlength=700).double() / rows
    full = torch.softmax(logits.double() / 0.7, dim=-1)
    expected = torch.zeros(700, dtype=torch.double)
    expected[order[:kept]] = full[order[:kept]] / full[order[:kept]].sum()
    mass = float(freq[order[:kept]].sum())
    assert mass == 1.0 if kept < 5 else mass > 0.99  # nothing outside what top-k/p keeps
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)
    # logprobs are of the untruncated tempered softmax (backend.py's convention)
    torch.testing.assert_close(logprobs, full.log()[chosen].float(), atol=1e-5, rtol=0)


def test_inverse_cdf_rows_draw_only_from_their_own_streams():
    logits = torch.randn(4, 600)
    seeds = [3, 4, 5, 6]

    def draw(rows):
        generators = [torch.Generator().manual_seed(seeds[r]) for r in rows]
        sampler = _InverseCDFSampler(SamplingParams(temperature=1.0), generators)
        return [sampler.draw(logits[rows])[0].tolist() for _ in range(5)]  # five steps

    together = draw([0, 1, 2, 3])
    alone = draw([2])
    assert [step[2] for step in together] == [step[0] for step in alone]


def test_no_nan_reaches_the_cache_from_padding():
    """Left padding makes whole prompt rows of padding queries; each sees itself, so the cache
    holds finite values and later steps stay finite."""
    decoder = LeanDecoder(random_model("llama"), PAD)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with torch.no_grad():
            decoder.prefill([[1], [1, 2, 3, 4, 5, 6, 7, 8]], capacity=12)
            logits = decoder.step(torch.tensor([3, 4]))
    assert torch.isfinite(decoder.cache[..., :9, :]).all() and torch.isfinite(logits).all()


def test_lean_reads_a_peft_model_with_its_lora_merged_and_leaves_it_unmerged():
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(
        random_model("llama"),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "gate_proj"]),
    )
    with torch.no_grad():  # LoRA B starts at zero: give the adapters an effect to merge
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    decoder = LeanDecoder(model, PAD)
    with torch.no_grad():
        logits = decoder.prefill(PROMPTS, capacity=8)
        base = model.get_base_model()
        with model.disable_adapter():
            plain = reference_logits(base, PROMPTS[2])[-1]
    for r, prompt in enumerate(PROMPTS):
        torch.testing.assert_close(logits[r], reference_logits(model, prompt)[-1])
    assert (logits[2] - plain).abs().max() > 0.1  # the adapters mattered
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # nothing merged in place
