"""``ptgym serve``: the OpenAI HTTP API over the hf backend, spoken to over loopback with raw JSON."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from ptgym.agents.backend import SamplingParams
from ptgym.agents.batcher import Batcher
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.agents.openai_wire import chat_message
from ptgym.agents.serve import OpenAIServer
from tests.tiny import tiny_model_and_tokenizer

USER = [{"role": "user", "content": "What is 2+2?"}]
ADD = {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def server():
    model, tokenizer = tiny_model_and_tokenizer()
    server = OpenAIServer(HFBackend(model, tokenizer), "tiny", port=0).start()
    yield server
    server.close()


def call(server, path: str, body: dict | bytes | None = None) -> tuple[int, dict]:
    """(HTTP status, decoded JSON) of one request; POST when ``body`` is given."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    url = server.url.removesuffix("/v1") + path
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_health_and_models_list_the_served_model(server):
    assert call(server, "/health") == (200, {"status": "ok", "model": "tiny"})
    status, models = call(server, "/v1/models")
    assert status == 200 and [m["id"] for m in models["data"]] == ["tiny"]


def test_chat_completion_answers_an_openai_style_request_with_logprobs(server):
    _, tokenizer = tiny_model_and_tokenizer()
    body = {
        "model": "tiny",
        "messages": USER,
        "max_tokens": 7,
        "temperature": 0,
        "logprobs": True,
        "return_token_ids": True,
    }
    status, reply = call(server, "/v1/chat/completions", body)
    assert status == 200 and reply["object"] == "chat.completion"
    (choice,) = reply["choices"]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] == "length"
    ids = choice["token_ids"]
    assert len(ids) == 7 and reply["usage"]["completion_tokens"] == 7
    assert reply["prompt_token_ids"] == ChatRenderer(tokenizer).initial(USER)
    assert choice["message"]["content"] == tokenizer.decode(ids, skip_special_tokens=True)
    content = choice["logprobs"]["content"]
    assert [c["token"] for c in content] == [tokenizer.decode([t]) for t in ids]
    expected = HFBackend(*tiny_model_and_tokenizer()).generate(
        [reply["prompt_token_ids"]], SamplingParams(7, temperature=0)
    )[0]
    assert ids == expected.token_ids.tolist()
    np.testing.assert_allclose([c["logprob"] for c in content], expected.logprobs, atol=1e-5)


def test_completions_take_a_string_or_token_ids_and_return_n_choices_per_prompt(server):
    _, tokenizer = tiny_model_and_tokenizer()
    ids = tokenizer("Once upon a time")["input_ids"]
    body = {
        "model": "tiny",
        "prompt": ["Once upon a time", ids],
        "max_tokens": 4,
        "n": 2,
        "seed": 1,
        "logprobs": 0,
        "return_token_ids": True,
        "return_tokens_as_token_ids": True,
    }
    status, reply = call(server, "/v1/completions", body)
    assert status == 200 and reply["object"] == "text_completion"
    choices = reply["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    assert all(c["prompt_token_ids"] == ids for c in choices)
    for c in choices:
        assert c["logprobs"]["tokens"] == [f"token_id:{t}" for t in c["token_ids"]]
        assert len(c["logprobs"]["token_logprobs"]) == len(c["token_ids"]) == 4
    assert choices[0]["token_ids"] != choices[1]["token_ids"]  # n samples, not n copies
    assert reply["usage"]["prompt_tokens"] == 4 * len(ids)


def test_a_stop_string_is_cut_from_the_text_unless_asked_to_keep_it(server):
    _, tokenizer = tiny_model_and_tokenizer()
    body = {"prompt": "Hello", "max_tokens": 8, "temperature": 0, "return_token_ids": True}
    free = call(server, "/v1/completions", body)[1]["choices"][0]
    stop = tokenizer.decode(free["token_ids"][2:4])[-2:]
    cut = call(server, "/v1/completions", {**body, "stop": stop})[1]["choices"][0]
    kept = call(
        server, "/v1/completions", {**body, "stop": [stop], "include_stop_str_in_output": True}
    )[1]["choices"][0]
    assert cut["finish_reason"] == "stop" and stop not in cut["text"]
    assert kept["text"].endswith(stop) and kept["text"] == cut["text"] + stop
    assert cut["token_ids"] == kept["token_ids"] == free["token_ids"][: len(cut["token_ids"])]


def test_offered_tools_reach_the_prompt_and_history_with_json_string_arguments_renders(server):
    _, tokenizer = tiny_model_and_tokenizer()
    history = USER + [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "add", "arguments": '{"a": 2, "b": 2}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "4"},
    ]
    body = {"messages": history, "tools": [ADD], "max_tokens": 3, "return_token_ids": True}
    status, reply = call(server, "/v1/chat/completions", body)
    assert status == 200
    prompt = tokenizer.decode(reply["prompt_token_ids"])
    assert '<tools>\n{"type": "function", "function": {"name": "add"' in prompt


def test_a_tool_call_in_the_text_becomes_openai_tool_calls():
    text = 'Let me add.<tool_call>{"name": "add", "arguments": {"a": 2, "b": 2}}</tool_call>'
    message = chat_message(text, [ADD])
    (call_,) = message["tool_calls"]
    assert message["content"].strip() == "Let me add."
    assert call_["type"] == "function" and call_["id"].startswith("call_")
    assert call_["function"] == {"name": "add", "arguments": '{"a": 2, "b": 2}'}
    assert chat_message(text, None) == {"role": "assistant", "content": text}


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/chat/completions", b"{not json", 400, None),
        ("/v1/chat/completions", {"messages": []}, 400, "messages"),
        ("/v1/chat/completions", {"messages": USER, "temperature": "hot"}, 400, "temperature"),
        ("/v1/chat/completions", {"messages": USER, "stream": True}, 400, "stream"),
        ("/v1/chat/completions", {"messages": USER, "top_logprobs": 5}, 400, "top_logprobs"),
        ("/v1/chat/completions", {"messages": USER, "model": "gpt-4o"}, 404, "model"),
        ("/v1/completions", {"prompt": [1, 2, 10**9]}, 400, "prompt"),
        ("/v1/completions", {"prompt": "x", "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": "x", "top_p": 0}, 400, None),
        ("/v1/embeddings", {"input": "x"}, 404, None),
    ],
)
def test_bad_requests_get_an_openai_shaped_error(server, path, body, status, param):
    got, reply = call(server, path, body)
    assert got == status
    assert set(reply["error"]) == {"message", "type", "param", "code"}
    assert reply["error"]["param"] == param and reply["error"]["message"]


def test_waiting_requests_with_equal_parameters_share_one_generate_call():
    model, tokenizer = tiny_model_and_tokenizer()
    batcher = Batcher(HFBackend(model, tokenizer))
    greedy, seeded = SamplingParams(5, temperature=0), SamplingParams(5, seed=3)
    prompts = [[1, 2, 3], [4, 5], [6], [7, 8]]
    jobs = [(p, greedy) for p in prompts[:3]] + [(prompts[3], seeded)]
    results: dict[int, list] = {}
    threads = [
        threading.Thread(
            target=lambda i=i, p=p, s=s: results.__setitem__(i, batcher.submit([p], s))
        )
        for i, (p, s) in enumerate(jobs)
    ]
    for t in threads:  # all four wait in the queue before the worker starts
        t.start()
    while batcher._queue.qsize() < 4:
        time.sleep(0.01)
    batcher.start()
    for t in threads:
        t.join()
    batcher.stop()
    assert (batcher.batches, batcher.requests) == (2, 4)  # the three greedy ones, then the seeded
    alone = HFBackend(model, tokenizer).generate(prompts[:3], greedy)
    for i in range(3):
        assert results[i][0].token_ids.tolist() == alone[i].token_ids.tolist()


@pytest.mark.slow  # starts a Python that imports torch and transformers (about 9 s)
def test_the_cli_prints_its_url_and_stops_on_ctrl_c():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from ptgym.cli import main; raise SystemExit(main())",
            "serve",
            "--model",
            "tiny",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        lines = []
        while not any("serving" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        assert f"http://127.0.0.1:{port}/v1" in lines[-1]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as reply:
            assert json.loads(reply.read())["status"] == "ok"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
