"""``ptgym serve``: a model behind the OpenAI HTTP API, for judges, evals and the ``openai`` backend.

Standard library only (``http.server``); one process serves one model through ``HFBackend``.

Endpoints:

- ``POST /v1/chat/completions``: ``messages``, ``tools``, ``max_tokens`` (or
  ``max_completion_tokens``), ``temperature``, ``top_p``, ``top_k`` (vLLM extension), ``n``,
  ``stop``, ``seed``, ``logprobs: true`` (-> ``choices[i].logprobs.content[j] = {token, logprob,
  bytes, top_logprobs: []}``), ``return_token_ids`` (vLLM extension). Tool calls the model writes
  come back as ``message.tool_calls`` with ``finish_reason: "tool_calls"``.
- ``POST /v1/completions``: ``prompt`` as a string, a list of token ids (the vLLM token-in
  extension), or a list of either. With ``return_token_ids: true`` every choice carries
  ``token_ids`` and ``prompt_token_ids`` (vLLM's extension); with ``logprobs: 0`` the sampled
  tokens' ``logprobs.token_logprobs``; ``return_tokens_as_token_ids`` writes ``logprobs.tokens``
  as ``"token_id:N"`` like vLLM.
- ``GET /v1/models``, ``GET /health``.

Logprobs follow ``backend.py``: ``log_softmax(logits / temperature)`` of the sampled token, top-p
and top-k not applied. Top-k alternatives (``top_logprobs > 0``) are not computed: such requests
get a 400. Stop strings are cut from ``text``/``content`` (OpenAI's behaviour) unless
``include_stop_str_in_output`` is true; ``token_ids`` always hold every sampled token.

Batching: handler threads put requests on a queue; one worker thread takes the oldest request
plus every waiting request with the same sampling parameters and runs them as one ``generate``
call, so clients that arrive while the model is busy share the next batch. A request's ``seed`` s
gives its rows (each prompt's ``n`` choices, in order) the per-prompt seeds s, s + 1, ... of
``backend.py``'s seeding contract, so a seeded request's samples depend on the request only, not on
who else was waiting: seeded requests batch with seeded ones, unseeded with unseeded.
Errors are OpenAI-shaped: ``{"error": {"message", "type", "param", "code"}}``, 4xx for bad
requests, 500 when generation itself fails.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .backend import Backend, Completion, SamplingParams, row_seeds
from .chat import ChatRenderer
from .toolcalls import parse_tool_calls

MAX_BODY_BYTES = 32 * 2**20
CHAT_DEFAULT_MAX_TOKENS = 512  # OpenAI's default is "up to the context"; keep local runs bounded
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


class RequestError(Exception):
    """A bad request: becomes an OpenAI-shaped error with this HTTP status."""

    def __init__(
        self,
        message: str,
        status: int = 400,
        param: str | None = None,
        kind: str = "invalid_request_error",
    ):
        super().__init__(message)
        self.status, self.param, self.kind = status, param, kind


@dataclass
class _Job:
    prompts: list[list[int]]
    params: SamplingParams  # with seed=None: the per-prompt seeds are in ``seeds``
    seeds: list[int] | None
    future: Future = field(default_factory=Future)


class Batcher:
    """Groups waiting requests into one ``backend.generate`` call (see the module docstring).

    ``batches`` and ``requests`` count the calls made and the requests served.
    """

    def __init__(self, backend: Backend, max_rows: int = 64):
        self.backend, self.max_rows = backend, max_rows
        self.batches = self.requests = 0
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._held: list[_Job] = []  # taken from the queue but not batchable with the last group
        self._thread = threading.Thread(target=self._run, name="ptgym-batcher", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join()

    def submit(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        """Block until this request's completions (one per prompt, in order) are ready."""
        seeds = row_seeds(len(prompts), params, None)
        job = _Job(prompts, replace(params, seed=None), seeds)
        self._queue.put(job)
        return job.future.result()

    def _next_group(self) -> list[_Job] | None:
        first = self._held.pop(0) if self._held else self._queue.get()
        if first is None:
            return None
        group, rows = [first], len(first.prompts)
        seeded = first.seeds is not None
        waiting = self._held + self._drain()
        self._held = []
        for job in waiting:
            if job is None:
                self._held.append(job)  # stop after this group
            elif (
                job.params == first.params
                and (job.seeds is not None) == seeded
                and rows + len(job.prompts) <= self.max_rows
            ):
                group.append(job)
                rows += len(job.prompts)
            else:
                self._held.append(job)
        return group

    def _drain(self) -> list[_Job | None]:
        jobs = []
        while True:
            try:
                jobs.append(self._queue.get_nowait())
            except queue.Empty:
                return jobs

    def _run(self) -> None:
        while (group := self._next_group()) is not None:
            prompts = [p for job in group for p in job.prompts]
            seeds = None if group[0].seeds is None else [s for job in group for s in job.seeds]
            try:
                completions = self.backend.generate(prompts, group[0].params, seeds)
            except Exception as exc:  # handed to the waiting request threads
                for job in group:
                    job.future.set_exception(exc)
                continue
            self.batches += 1
            self.requests += len(group)
            start = 0
            for job in group:
                job.future.set_result(completions[start : start + len(job.prompts)])
                start += len(job.prompts)


# --- request parsing ---------------------------------------------------------------------------


def _number(
    body: dict[str, Any],
    key: str,
    default: Any,
    kind: type,
    lo: float | None = None,
    hi: float | None = None,
) -> Any:
    value = body.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise RequestError(
            f"{key} must be {'a number' if kind is float else 'an integer'}, got {value!r}",
            param=key,
        )
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise RequestError(f"{key} must be in [{lo}, {hi}], got {value!r}", param=key)
    return kind(value)


def sampling_params(body: dict[str, Any], default_max_tokens: int) -> tuple[SamplingParams, int]:
    """``SamplingParams`` and ``n`` from an OpenAI request body."""
    body = {**body, "max_tokens": body.get("max_completion_tokens", body.get("max_tokens"))}
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise RequestError(
            f"stop must be a non-empty string or a list of them, got {stop!r}", param="stop"
        )
    if body.get("stream"):
        raise RequestError(
            "streaming is not supported by ptgym serve; send stream=false", param="stream"
        )
    try:
        params = SamplingParams(
            max_new_tokens=_number(body, "max_tokens", default_max_tokens, int, 1),
            temperature=_number(body, "temperature", 1.0, float, 0, 2),
            top_p=_number(body, "top_p", 1.0, float, 0, 1),
            top_k=max(_number(body, "top_k", 0, int, -1), 0),  # vLLM writes -1 for "off"
            stop=stop,
            seed=_number(body, "seed", None, int),
        )
    except ValueError as exc:
        raise RequestError(str(exc)) from exc
    return params, _number(body, "n", 1, int, 1, 128)


def _prompts(body: dict[str, Any], tokenizer: Any) -> list[list[int]]:
    """``prompt`` as a string, token ids, or a list of either -> lists of token ids."""
    prompt = body.get("prompt")
    if isinstance(prompt, str) or (
        isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt)
    ):
        prompt = [prompt]
    if not isinstance(prompt, list) or not prompt:
        raise RequestError(
            "prompt must be a string, a list of token ids, or a non-empty list of either",
            param="prompt",
        )
    vocab = len(tokenizer)
    out = []
    for p in prompt:
        if isinstance(p, str):
            p = list(tokenizer(p)["input_ids"])
        if (
            not isinstance(p, list)
            or not p
            or not all(isinstance(t, int) and not isinstance(t, bool) for t in p)
        ):
            raise RequestError(
                "each prompt must be a non-empty string or list of token ids", param="prompt"
            )
        if min(p) < 0 or max(p) >= vocab:
            raise RequestError(
                f"token ids must be in [0, {vocab}), got {min(p)}..{max(p)}", param="prompt"
            )
        out.append(p)
    return out


def _wants_logprobs(body: dict[str, Any], chat: bool) -> bool:
    """Whether the sampled tokens' logprobs are asked for; top-k alternatives are refused."""
    key = "top_logprobs" if chat else "logprobs"
    top = body.get(key)
    if top is not None and top != 0:
        raise RequestError(
            f"ptgym serve returns the sampled tokens' logprobs only, no "
            f"alternatives: set {key} to 0 (got {top!r})",
            param=key,
        )
    return bool(body.get("logprobs")) if chat else top is not None


def _strip_stop(text: str, completion: Completion, stop: Sequence[str], keep: bool) -> str:
    """OpenAI cuts the stop string and what follows from the text, unless asked to keep it."""
    if keep or completion.finish_reason != "stop" or not stop:
        return text
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def _message(m: Any) -> dict[str, Any]:
    """An incoming chat message with OpenAI's JSON-string tool arguments made dicts for
    templates."""
    if not isinstance(m, dict) or "role" not in m:
        raise RequestError("each message needs a role", param="messages")
    m = dict(m)
    calls = []
    for call in m.get("tool_calls") or []:
        fn = dict(call.get("function", {}))
        if isinstance(fn.get("arguments"), str):
            try:
                fn["arguments"] = json.loads(fn["arguments"] or "{}")
            except json.JSONDecodeError as exc:
                raise RequestError(
                    f"tool call arguments are not JSON: {exc}", param="messages"
                ) from exc
        calls.append({**call, "function": fn})
    if calls:
        m["tool_calls"] = calls
    if isinstance(m.get("content"), list):  # content parts: keep the text ones
        m["content"] = "".join(p.get("text", "") for p in m["content"] if isinstance(p, dict))
    return m


def chat_message(text: str, tools: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The assistant message for a completion's text, in OpenAI's wire format: when ``tools``
    were offered and the text calls them (``toolcalls.parse_tool_calls``), the calls move to
    ``tool_calls`` with unique ids and JSON-string arguments, and ``content`` keeps the rest."""
    parsed = parse_tool_calls(text, tools) if tools else None
    if not parsed or not parsed.calls:
        return {"role": "assistant", "content": text}
    calls = [
        {
            "id": f"call_{uuid.uuid4().hex[:24]}",
            "type": "function",
            "function": {"name": call.name, "arguments": json.dumps(call.arguments)},
        }
        for call in parsed.calls
    ]
    return {"role": "assistant", "content": parsed.content or None, "tool_calls": calls}


# --- the server ---------------------------------------------------------------------------------


class OpenAIServer(ThreadingHTTPServer):
    """Serves ``backend`` as ``model_name``. ``start()`` runs it in a thread (tests, notebooks);
    ``serve_forever()`` in the caller's thread (the CLI)."""

    daemon_threads = True

    def __init__(
        self,
        backend: Backend,
        model_name: str,
        host: str = "127.0.0.1",
        port: int = 8000,
        *,
        max_batch_rows: int = 64,
    ):
        self.backend, self.model_name = backend, model_name
        self.tokenizer = backend.tokenizer
        self.renderer = ChatRenderer(self.tokenizer)
        self.batcher = Batcher(backend, max_batch_rows)
        self.created = int(time.time())
        super().__init__((host, port), _Handler)
        self.batcher.start()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The base URL clients use: ``http://HOST:PORT/v1``."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> OpenAIServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving, finish the batch in progress, release the port."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
        self.server_close()
        self.batcher.stop()

    # -- endpoints --

    def models(self) -> dict[str, Any]:
        card = {
            "id": self.model_name,
            "object": "model",
            "created": self.created,
            "owned_by": "ptgym",
        }
        return {"object": "list", "data": [card]}

    def _check_model(self, body: dict[str, Any]) -> None:
        model = body.get("model")
        if model is not None and model != self.model_name:
            raise RequestError(
                f"the model {model!r} does not exist; this server serves {self.model_name!r}",
                404,
                "model",
                "model_not_found",
            )

    def completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_model(body)
        if body.get("echo") or body.get("suffix"):
            raise RequestError("echo and suffix are not supported by ptgym serve")
        params, n = sampling_params(body, COMPLETIONS_DEFAULT_MAX_TOKENS)
        with_logprobs = _wants_logprobs(body, chat=False)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        keep_stop = bool(body.get("include_stop_str_in_output"))
        prompts = _prompts(body, self.tokenizer)
        completions = self.batcher.submit([p for p in prompts for _ in range(n)], params)
        choices = []
        for i, c in enumerate(completions):
            ids = c.token_ids.tolist()
            choice: dict[str, Any] = {
                "index": i,
                "text": _strip_stop(c.text, c, params.stop, keep_stop),
                "finish_reason": c.finish_reason,
                "logprobs": None,
            }
            if body.get("return_token_ids"):
                choice.update(token_ids=ids, prompt_token_ids=prompts[i // n])
            if with_logprobs:
                tokens = [f"token_id:{t}" if as_ids else self.tokenizer.decode([t]) for t in ids]
                choice["logprobs"] = {
                    "tokens": tokens,
                    "token_logprobs": c.logprobs.tolist(),
                    "top_logprobs": None,
                    "text_offset": None,
                }
            choices.append(choice)
        return self._envelope("cmpl", "text_completion", choices, prompts, completions, n)

    def chat_completions(self, body: dict[str, Any]) -> dict[str, Any]:
        self._check_model(body)
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise RequestError("messages must be a non-empty list", param="messages")
        tools = body.get("tools") or None
        params, n = sampling_params(body, CHAT_DEFAULT_MAX_TOKENS)
        with_logprobs = _wants_logprobs(body, chat=True)
        keep_stop = bool(body.get("include_stop_str_in_output"))
        messages = [_message(m) for m in messages]
        try:
            prompt = self.renderer.initial(messages, tools)
        except Exception as exc:  # a template error is the request's fault
            raise RequestError(
                f"the chat template could not render these messages: {exc}", param="messages"
            ) from exc
        completions = self.batcher.submit([prompt] * n, params)
        choices = []
        for i, c in enumerate(completions):
            text = _strip_stop(c.text, c, params.stop, keep_stop)
            out = chat_message(text, tools)
            calls = "tool_calls" in out
            finish = "tool_calls" if calls and c.finish_reason == "stop" else c.finish_reason
            choice: dict[str, Any] = {
                "index": i,
                "message": out,
                "finish_reason": finish,
                "logprobs": None,
            }
            if with_logprobs:
                pieces = [self.tokenizer.decode([t]) for t in c.token_ids.tolist()]
                choice["logprobs"] = {
                    "content": [
                        {"token": s, "logprob": lp, "bytes": list(s.encode()), "top_logprobs": []}
                        for s, lp in zip(pieces, c.logprobs.tolist(), strict=True)
                    ]
                }
            if body.get("return_token_ids"):
                choice["token_ids"] = c.token_ids.tolist()
            choices.append(choice)
        reply = self._envelope("chatcmpl", "chat.completion", choices, [prompt], completions, n)
        if body.get("return_token_ids"):
            reply["prompt_token_ids"] = prompt
        return reply

    def _envelope(
        self,
        prefix: str,
        kind: str,
        choices: list[dict[str, Any]],
        prompts: list[list[int]],
        completions: list[Completion],
        n: int,
    ) -> dict[str, Any]:
        prompt_tokens = sum(len(p) for p in prompts) * n
        completion_tokens = sum(len(c.token_ids) for c in completions)
        return {
            "id": f"{prefix}-{uuid.uuid4().hex}",
            "object": kind,
            "created": int(time.time()),
            "model": self.model_name,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive; every reply sets Content-Length
    server: OpenAIServer

    def log_message(self, format: str, *args: Any) -> None:  # stdlib's name
        pass  # one line per request would drown the startup message; errors still reply in JSON

    def _reply(self, status: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, err: RequestError) -> None:
        self._reply(
            err.status,
            {
                "error": {
                    "message": str(err),
                    "type": err.kind,
                    "param": err.param,
                    "code": err.status,
                }
            },
        )

    def do_GET(self) -> None:  # http.server's naming
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            self._reply(200, {"status": "ok", "model": self.server.model_name})
        elif path == "/v1/models":
            self._reply(200, self.server.models())
        else:
            self._error(RequestError(f"no route GET {path}", 404, kind="not_found_error"))

    def do_POST(self) -> None:  # http.server's naming
        path = self.path.split("?")[0].rstrip("/")
        routes = {
            "/v1/completions": self.server.completions,
            "/v1/chat/completions": self.server.chat_completions,
        }
        try:
            if path not in routes:
                raise RequestError(
                    f"no route POST {path}; try {', '.join(routes)}", 404, kind="not_found_error"
                )
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                raise RequestError(f"request body over {MAX_BODY_BYTES} bytes", 413)
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise RequestError(f"the body is not valid JSON: {exc}") from exc
            if not isinstance(body, dict):
                raise RequestError("the body must be a JSON object")
            self._reply(200, routes[path](body))
        except RequestError as err:
            self._error(err)
        except Exception as exc:  # the client gets a 500, the server keeps running
            self._error(
                RequestError(
                    f"generation failed: {type(exc).__name__}: {exc}", 500, kind="server_error"
                )
            )


def serve(
    model: str = "smollm2-135m",
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    dtype: str = "auto",
    device: str = "auto",
    max_batch_size: int = 32,
) -> None:
    """Load ``model`` (``agents.models.load_model``) and serve it until Ctrl-C."""
    from .hf import HFBackend
    from .models import load_model

    print(f"loading {model} ...", flush=True)
    lm, tokenizer = load_model(model, dtype=dtype, device=device)
    server = OpenAIServer(
        HFBackend(lm, tokenizer, max_batch_size=max_batch_size),
        model,
        host,
        port,
        max_batch_rows=max_batch_size,
    )
    print(
        f"serving {model} at {server.url} (OpenAI API: /chat/completions, /completions, "
        "/models; Ctrl-C stops)",
        flush=True,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        server.server_close()
        server.batcher.stop()
