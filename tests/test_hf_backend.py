"""The hf generation backend: exact sampled ids, their logprobs, EOS/stop handling, batching."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from ptgym.agents.backend import Backend, Completion, SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend, _RowSampler
from tests.tiny import tiny_model_and_tokenizer

QUESTIONS = ["What is 2+2?", "Hi", "Write a long poem about the sea, with many verses please."]


def prompts_for(tokenizer) -> list[list[int]]:
    renderer = ChatRenderer(tokenizer)
    return [renderer.initial([{"role": "user", "content": q}]) for q in QUESTIONS]


def forward_logprobs(model, prompt: list[int], completion: np.ndarray, temperature: float):
    """log_softmax(logits / T) of the completion ids, from one forward pass over prompt+completion."""
    ids = torch.tensor([prompt + completion.tolist()])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()  # (n, V)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return logprobs.gather(1, torch.as_tensor(completion, dtype=torch.long)[:, None])[:, 0].numpy()


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = tiny_model_and_tokenizer()
    return model, tokenizer, HFBackend(model, tokenizer), prompts_for(tokenizer)


def test_hf_backend_is_a_backend(tiny):
    assert isinstance(tiny[2], Backend)


@pytest.mark.parametrize("temperature", [0.7, 1.0, 0.0])
def test_logprobs_match_a_forward_pass_over_prompt_and_completion(tiny, temperature):
    model, _, backend, prompts = tiny
    params = SamplingParams(max_new_tokens=12, temperature=temperature, seed=3)
    completions = backend.generate(prompts, params)
    for prompt, c in zip(prompts, completions, strict=True):
        assert c.token_ids.dtype == np.int32 and c.logprobs.dtype == np.float32
        assert len(c.token_ids) == 12 and c.finish_reason == "length"
        expected = forward_logprobs(model, prompt, c.token_ids, temperature or 1.0)
        np.testing.assert_allclose(c.logprobs, expected, atol=1e-4)


def test_greedy_is_deterministic_and_batching_changes_nothing(tiny):
    _, _, backend, prompts = tiny
    params = SamplingParams(max_new_tokens=10, temperature=0)
    batched = backend.generate(prompts, params)
    again = backend.generate(prompts, params)
    one_by_one = [backend.generate([p], params)[0] for p in prompts]
    small_batches = HFBackend(*tiny[:2], max_batch_size=2).generate(prompts, params)
    for b, a, o, s in zip(batched, again, one_by_one, small_batches, strict=True):
        assert b.token_ids.tolist() == a.token_ids.tolist() == o.token_ids.tolist()
        assert b.token_ids.tolist() == s.token_ids.tolist()
        np.testing.assert_allclose(b.logprobs, o.logprobs, atol=1e-4)
    assert len({tuple(c.token_ids) for c in batched}) == 3  # the tiny model's answers differ


def test_seeded_sampling_repeats_and_leaves_the_global_rng_alone(tiny):
    _, _, backend, prompts = tiny
    state = torch.get_rng_state()
    first = backend.generate(prompts, SamplingParams(max_new_tokens=8, seed=11))
    second = backend.generate(prompts, SamplingParams(max_new_tokens=8, seed=11))
    other = backend.generate(prompts, SamplingParams(max_new_tokens=8, seed=12))
    assert torch.equal(state, torch.get_rng_state())
    assert [c.token_ids.tolist() for c in first] == [c.token_ids.tolist() for c in second]
    assert [c.token_ids.tolist() for c in first] != [c.token_ids.tolist() for c in other]


def ids(completions) -> list[list[int]]:
    return [c.token_ids.tolist() for c in completions]


def test_a_seeded_prompt_samples_the_same_tokens_alone_in_any_batch_and_any_order(tiny):
    """The seeding contract: prompt i's tokens depend on (model, prompt, params, seed) only."""
    _, _, backend, prompts = tiny
    params = SamplingParams(max_new_tokens=12, temperature=1.0)
    seeds = [101, 202, 303]
    alone = [
        backend.generate([p], params, seeds=[s])[0] for p, s in zip(prompts, seeds, strict=True)
    ]
    batch = backend.generate(prompts, params, seeds=seeds)
    reordered = backend.generate(prompts[::-1], params, seeds=seeds[::-1])[::-1]
    split = HFBackend(*tiny[:2], max_batch_size=2).generate(prompts, params, seeds=seeds)
    crowd = backend.generate([prompts[2], prompts[0], prompts[0]], params, seeds=[7, 101, 8])
    assert ids(batch) == ids(alone) == ids(reordered) == ids(split)
    assert ids(crowd)[1] == ids(alone)[0]  # beside a longer prompt (padding) and its own twin
    for a, b in zip(alone, batch, strict=True):
        np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)


def test_different_seeds_sample_differently_and_the_global_rng_is_untouched(tiny):
    _, _, backend, prompts = tiny
    params = SamplingParams(max_new_tokens=8, temperature=1.0)
    state = torch.get_rng_state()
    twins = backend.generate([prompts[0]] * 3, params, seeds=[1, 2, 3])
    assert torch.equal(state, torch.get_rng_state())
    assert len(set(map(tuple, ids(twins)))) == 3
    assert ids(backend.generate(prompts[:1], params, seeds=[2])) == ids(twins)[1:2]


def test_seeds_override_params_seed_which_means_seed_plus_i(tiny):
    _, _, backend, prompts = tiny
    by_params = backend.generate(prompts, SamplingParams(max_new_tokens=8, seed=40))
    by_seeds = backend.generate(
        prompts, SamplingParams(max_new_tokens=8, seed=9), seeds=[40, 41, 42]
    )
    assert ids(by_params) == ids(by_seeds)
    with pytest.raises(ValueError, match="2 seeds for 3 prompts"):
        backend.generate(prompts, SamplingParams(max_new_tokens=2), seeds=[1, 2])


def test_unseeded_sampling_follows_the_global_rng(tiny):
    _, _, backend, prompts = tiny
    params = SamplingParams(max_new_tokens=8)
    torch.manual_seed(5)
    first = backend.generate(prompts, params)
    torch.manual_seed(5)
    assert ids(backend.generate(prompts, params)) == ids(first)
    assert ids(backend.generate(prompts, params)) != ids(first)


@pytest.mark.parametrize(
    ("top_k", "top_p", "kept"), [(0, 1.0, 4), (2, 1.0, 2), (0, 0.9, 2), (3, 0.5, 1)]
)
def test_row_sampler_draws_from_the_truncated_tempered_softmax(top_k, top_p, kept):
    """Argmax of the noisy scores over 20,000 seeded rows: frequencies match softmax(logits / T)
    renormalised over the kept tokens. At T = 0.7 the probabilities are (.763, .183, .044, .011):
    top_p = 0.9 keeps two tokens (mass before the third is .946), top_p = 0.5 keeps one."""
    logits = torch.tensor([2.0, 1.0, 0.0, -1.0])
    rows = 20_000
    scores = logits.repeat(rows, 1)  # (B, V)
    before = scores.clone()
    sampler = _RowSampler(
        SamplingParams(temperature=0.7, top_k=top_k, top_p=top_p),
        [torch.Generator().manual_seed(s) for s in range(rows)],
    )
    drawn = sampler(scores).argmax(dim=-1)
    assert torch.equal(scores, before)  # the raw logits kept for logprobs are not modified
    freq = torch.bincount(drawn, minlength=4).double() / rows
    expected = torch.zeros(4, dtype=torch.double)
    expected[:kept] = torch.softmax(logits[:kept].double() / 0.7, dim=-1)
    assert torch.all(freq[kept:] == 0)
    torch.testing.assert_close(freq, expected, atol=0.01, rtol=0)


def test_a_row_ends_at_its_eos_which_is_kept_and_nothing_follows(tiny):
    model, tokenizer, backend, prompts = tiny
    params = SamplingParams(max_new_tokens=10, temperature=0)
    free = backend.generate(prompts, params)
    eos = int(free[0].token_ids[3])  # make the first row's 4th greedy token an end of sequence
    assert eos not in free[1].token_ids[:10].tolist()
    stopped = HFBackend(model, tokenizer, eos_token_ids=[eos]).generate(prompts, params)
    assert stopped[0].token_ids.tolist() == free[0].token_ids[:4].tolist()
    assert stopped[0].finish_reason == "stop"
    np.testing.assert_allclose(stopped[0].logprobs, free[0].logprobs[:4], atol=1e-5)
    assert stopped[1].token_ids.tolist() == free[1].token_ids.tolist()  # other rows go on
    assert stopped[1].finish_reason == "length"


def test_stop_string_cuts_at_the_token_that_completes_it(tiny):
    _, tokenizer, backend, prompts = tiny
    free = backend.generate(prompts[:1], SamplingParams(max_new_tokens=10, temperature=0))[0]
    ids = free.token_ids.tolist()
    piece = tokenizer.decode(ids[4:6], skip_special_tokens=True)
    stop = piece[-3:]  # ends inside or at the end of token 5
    (cut,) = backend.generate(prompts[:1], SamplingParams(10, temperature=0, stop=[stop]))
    k = next(n for n in range(1, 11) if stop in tokenizer.decode(ids[:n], skip_special_tokens=True))
    assert cut.token_ids.tolist() == ids[:k] and cut.finish_reason == "stop"
    assert stop in cut.text and k <= 6


def test_text_is_the_decoded_completion_without_special_tokens(tiny):
    _, tokenizer, backend, prompts = tiny
    for c in backend.generate(prompts, SamplingParams(max_new_tokens=6)):
        assert c.text == tokenizer.decode(c.token_ids.tolist(), skip_special_tokens=True)


@pytest.mark.parametrize("training", [True, False])
def test_generate_restores_the_models_mode(tiny, training):
    model, _, backend, prompts = tiny
    model.train(training)
    backend.generate(prompts[:1], SamplingParams(max_new_tokens=2))
    assert model.training is training
    model.eval()


def test_generation_sees_in_place_lora_updates_of_a_shared_peft_model(tiny):
    from peft import LoraConfig, get_peft_model

    base, tokenizer, _, prompts = tiny
    peft_model = get_peft_model(
        copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    )
    backend = HFBackend(peft_model, tokenizer)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    before = backend.generate(prompts, params)
    base_out = HFBackend(base, tokenizer).generate(prompts, params)
    assert [c.token_ids.tolist() for c in before] == [c.token_ids.tolist() for c in base_out]
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # what an optimizer step does: update the adapter weights in place
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.copy_(2.0 * torch.randn(p.shape, generator=gen))
    after = backend.generate(prompts, params)
    assert [c.token_ids.tolist() for c in after] != [c.token_ids.tolist() for c in before]
    for prompt, c in zip(prompts, after, strict=True):
        np.testing.assert_allclose(
            c.logprobs, forward_logprobs(peft_model, prompt, c.token_ids, 1.0), atol=1e-4
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
def test_cuda_generation_matches_a_forward_pass(tiny):
    model, tokenizer, _, prompts = tiny
    gpu_model = copy.deepcopy(model).to("cuda")
    completions = HFBackend(gpu_model, tokenizer).generate(
        prompts, SamplingParams(max_new_tokens=8, temperature=0.8, seed=0)
    )
    for prompt, c in zip(prompts, completions, strict=True):
        expected = forward_logprobs(model, prompt, c.token_ids, 0.8)
        np.testing.assert_allclose(c.logprobs, expected, atol=1e-3)


@pytest.mark.slow
def test_smollm2_answers_and_ends_with_im_end():
    from ptgym.agents.models import load_model

    model, tokenizer = load_model("smollm2-135m", device="cpu")
    prompt = ChatRenderer(tokenizer).initial([{"role": "user", "content": "Say hello."}])
    (c,) = HFBackend(model, tokenizer).generate([prompt], SamplingParams(64, temperature=0))
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert c.finish_reason == "stop" and c.token_ids[-1] == im_end
    assert "<|im_end|>" not in c.text and c.text.strip()


def test_sampling_params_reject_bad_values_with_the_field_name():
    for kwargs, field in [
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"stop": [""]}, "stop"),
    ]:
        with pytest.raises(ValueError, match=field):
            SamplingParams(**kwargs)


def test_completion_holds_numpy_arrays():
    c = Completion([1, 2], [-0.5, -1.5], "stop", "ab")
    assert c.token_ids.dtype == np.int32 and c.logprobs.dtype == np.float32
