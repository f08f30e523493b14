"""The openai backend against a real ``ptgym serve`` on loopback: exact ids and logprobs, errors."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from ptgym.agents.backend import Backend, SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.agents.openai_backend import OpenAIBackend, ServerError, ServerUnavailable
from ptgym.agents.serve import OpenAIServer
from tests.tiny import tiny_model_and_tokenizer

QUESTIONS = ["What is 2+2?", "Hi", "Write a long poem about the sea, with many verses please."]


@pytest.fixture(scope="module")
def tiny():
    """(model, tokenizer, in-process HFBackend, prompts, server, OpenAIBackend on the server)."""
    model, tokenizer = tiny_model_and_tokenizer()
    renderer = ChatRenderer(tokenizer)
    prompts = [renderer.initial([{"role": "user", "content": q}]) for q in QUESTIONS]
    server = OpenAIServer(HFBackend(model, tokenizer), "tiny", port=0).start()
    yield (
        model,
        tokenizer,
        HFBackend(model, tokenizer),
        prompts,
        server,
        OpenAIBackend(server.url, tokenizer, model="tiny"),
    )
    server.close()


def forward_logprobs(model, prompt: list[int], completion: np.ndarray, temperature: float):
    """log_softmax(logits / T) of the completion ids, from one forward pass over prompt+completion."""
    ids = torch.tensor([prompt + completion.tolist()])
    with torch.no_grad():
        logits = model(ids).logits[0, len(prompt) - 1 : -1].float()  # (n, V)
    logprobs = torch.log_softmax(logits / temperature, dim=-1)
    return logprobs.gather(1, torch.as_tensor(completion, dtype=torch.long)[:, None])[:, 0].numpy()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_openai_backend_is_a_backend(tiny):
    assert isinstance(tiny[5], Backend)


def test_greedy_ids_and_logprobs_equal_the_in_process_hf_backend(tiny):
    _, _, hf, prompts, _, remote = tiny
    params = SamplingParams(max_new_tokens=10, temperature=0)
    local, over_http = hf.generate(prompts, params), remote.generate(prompts, params)
    for a, b in zip(local, over_http, strict=True):
        assert b.token_ids.tolist() == a.token_ids.tolist()
        np.testing.assert_allclose(b.logprobs, a.logprobs, atol=1e-4)
        assert (b.finish_reason, b.text) == (a.finish_reason, a.text)
    assert remote.exact


@pytest.mark.parametrize("temperature", [0.7, 1.0])
def test_sampled_logprobs_match_a_forward_pass_and_seed_i_reproduces_prompt_i(tiny, temperature):
    model, _, hf, prompts, _, remote = tiny
    params = SamplingParams(max_new_tokens=12, temperature=temperature, seed=5)
    completions = remote.generate(prompts, params)
    for i, (prompt, c) in enumerate(zip(prompts, completions, strict=True)):
        assert c.token_ids.dtype == np.int32 and c.logprobs.dtype == np.float32
        expected = forward_logprobs(model, prompt, c.token_ids, temperature)
        np.testing.assert_allclose(c.logprobs, expected, atol=1e-4)
        alone = hf.generate([prompt], SamplingParams(12, temperature=temperature, seed=5 + i))[0]
        assert c.token_ids.tolist() == alone.token_ids.tolist()


def test_a_group_of_identical_prompts_gets_different_samples(tiny):
    _, _, _, prompts, _, remote = tiny
    group = remote.generate([prompts[0]] * 4, SamplingParams(max_new_tokens=8, seed=0))
    assert len({tuple(c.token_ids.tolist()) for c in group}) == 4


def test_stop_strings_keep_their_tokens_like_the_hf_backend(tiny):
    _, tokenizer, hf, prompts, _, remote = tiny
    free = hf.generate(prompts[:1], SamplingParams(10, temperature=0))[0]
    stop = tokenizer.decode(free.token_ids[4:6].tolist(), skip_special_tokens=True)[-3:]
    params = SamplingParams(10, temperature=0, stop=[stop])
    (a,), (b,) = hf.generate(prompts[:1], params), remote.generate(prompts[:1], params)
    assert b.token_ids.tolist() == a.token_ids.tolist() and b.finish_reason == "stop"
    assert stop in b.text


def test_without_extension_fields_ids_are_retokenised_and_marked_inexact(tiny):
    _, tokenizer, _, prompts, server, remote = tiny
    plain = OpenAIBackend(server.url, tokenizer, model="tiny", extensions=False)
    params = SamplingParams(max_new_tokens=6, temperature=0)
    exact, guessed = remote.generate(prompts, params), plain.generate(prompts, params)
    assert not plain.exact
    for a, b in zip(exact, guessed, strict=True):
        assert b.text == a.text and len(b.logprobs) == len(b.token_ids)


def test_chat_returns_the_reply_text(tiny):
    _, tokenizer, hf, _, _, remote = tiny
    messages = [{"role": "user", "content": "Name a colour."}]
    reply = remote.chat(messages, SamplingParams(max_new_tokens=5, temperature=0))
    prompt = ChatRenderer(tokenizer).initial(messages)
    assert reply == hf.generate([prompt], SamplingParams(5, temperature=0))[0].text
    assert remote.models() == ["tiny"]


def test_a_bad_request_raises_the_servers_message_without_retrying(tiny):
    _, tokenizer, _, prompts, server, _ = tiny
    wrong = OpenAIBackend(server.url, tokenizer, model="gpt-4o", backoff_s=60)
    with pytest.raises(ServerError, match="'gpt-4o' does not exist; this server serves 'tiny'"):
        wrong.generate(prompts[:1], SamplingParams(max_new_tokens=2))


def test_an_unreachable_server_is_named_in_the_error():
    port = free_port()
    backend = OpenAIBackend(f"http://127.0.0.1:{port}", None, model="m", retries=2, backoff_s=0.01)
    assert backend.base_url == f"http://127.0.0.1:{port}/v1"
    with pytest.raises(ServerUnavailable, match=rf"127\.0\.0\.1:{port}/v1/completions after 3 "):
        backend.generate([[1, 2]], SamplingParams(max_new_tokens=2))
