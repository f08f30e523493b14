"""The vllm backend. Without vLLM or a GPU (this machine) only the error message is checked; the
engine tests are skipped with the reason. They mirror the hf backend's: exact ids, logprobs against
a forward pass, LoRA weight sync, sleep mode."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest
import torch

from ptgym.agents.backend import Backend, SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.agents.vllm_backend import VLLM_MISSING, VLLMBackend, vllm_unavailable
from tests.tiny import tiny_model_and_tokenizer, tiny_tokenizer

UNAVAILABLE = vllm_unavailable()
needs_vllm = pytest.mark.skipif(UNAVAILABLE is not None, reason=UNAVAILABLE or "")
QUESTIONS = ["What is 2+2?", "Hi", "Write a long poem about the sea, with many verses please."]


def test_without_vllm_or_a_gpu_construction_says_what_to_install():
    if UNAVAILABLE is None:
        pytest.skip("vLLM and a GPU are present")
    with pytest.raises(ImportError, match=re.escape(VLLM_MISSING)):
        VLLMBackend("tiny", tiny_tokenizer())


@pytest.fixture(scope="module")
def engine():
    model, tokenizer = tiny_model_and_tokenizer()
    renderer = ChatRenderer(tokenizer)
    prompts = [renderer.initial([{"role": "user", "content": q}]) for q in QUESTIONS]
    gpu_model = copy.deepcopy(model).to("cuda")
    backend = VLLMBackend("tiny", tokenizer, dtype="float32", gpu_memory_utilization=0.3)
    return gpu_model, tokenizer, backend, prompts


def forward_logprobs(model, prompt: list[int], completion: np.ndarray, temperature: float):
    """log_softmax(logits / T) of the completion ids, from one forward pass over prompt+completion."""
    ids = torch.tensor([prompt + completion.tolist()], device=model.device)
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()  # (n, V)
    logprobs = torch.log_softmax(logits / temperature, dim=-1).cpu()
    return logprobs.gather(1, torch.as_tensor(completion, dtype=torch.long)[:, None])[:, 0].numpy()


@needs_vllm
@pytest.mark.gpu
def test_greedy_ids_and_logprobs_match_the_hf_backend(engine):
    model, tokenizer, backend, prompts = engine
    assert isinstance(backend, Backend)
    params = SamplingParams(max_new_tokens=10, temperature=0)
    for a, b in zip(
        HFBackend(model, tokenizer).generate(prompts, params),
        backend.generate(prompts, params),
        strict=True,
    ):
        assert b.token_ids.tolist() == a.token_ids.tolist()
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-3)


@needs_vllm
@pytest.mark.gpu
def test_sampled_logprobs_match_a_forward_pass(engine):
    model, _, backend, prompts = engine
    for prompt, c in zip(
        prompts, backend.generate(prompts, SamplingParams(12, 0.7, seed=1)), strict=True
    ):
        np.testing.assert_allclose(
            c.logprobs, forward_logprobs(model, prompt, c.token_ids, 0.7), atol=1e-3
        )


@needs_vllm
@pytest.mark.gpu
def test_a_loaded_lora_adapter_is_sampled_and_none_returns_to_the_base(engine, tmp_path):
    from peft import LoraConfig, get_peft_model

    model, tokenizer, backend, prompts = engine
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(copy.deepcopy(model), lora)  # random B: the adapter changes outputs
    adapted.save_pretrained(tmp_path)
    params = SamplingParams(max_new_tokens=8, temperature=0)
    base = [c.token_ids.tolist() for c in backend.generate(prompts, params)]
    backend.load_lora(tmp_path)
    with_lora = backend.generate(prompts, params)
    expected = HFBackend(adapted, tokenizer).generate(prompts, params)
    assert [c.token_ids.tolist() for c in with_lora] == [c.token_ids.tolist() for c in expected]
    assert [c.token_ids.tolist() for c in with_lora] != base
    backend.load_lora(None)
    assert [c.token_ids.tolist() for c in backend.generate(prompts, params)] == base


@needs_vllm
@pytest.mark.gpu
def test_sync_hot_loads_the_live_adapter_once_per_version(engine):
    from peft import LoraConfig, get_peft_model

    model, tokenizer, backend, prompts = engine
    lora = LoraConfig(r=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    live = get_peft_model(copy.deepcopy(model), lora)
    backend.policy_model = live
    params = SamplingParams(max_new_tokens=8, temperature=0)
    backend.sync(1)
    first = backend._lora_ids
    backend.sync(1)  # same version: nothing reloaded
    assert backend._lora_ids == first
    expected = HFBackend(live, tokenizer).generate(prompts, params)
    got = backend.generate(prompts, params)
    assert [c.token_ids.tolist() for c in got] == [c.token_ids.tolist() for c in expected]
    backend.policy_model = None
    backend.load_lora(None)


@needs_vllm
@pytest.mark.gpu
def test_sleep_and_wake_up_keep_the_weights(engine):
    _, _, backend, prompts = engine
    params = SamplingParams(max_new_tokens=8, temperature=0)
    before = [c.token_ids.tolist() for c in backend.generate(prompts, params)]
    backend.sleep(level=1)
    backend.wake_up()
    assert [c.token_ids.tolist() for c in backend.generate(prompts, params)] == before
