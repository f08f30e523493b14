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

Batching (``agents/batcher.py``): requests that arrive while the model is busy share the next
``generate`` call; a seeded request's samples depend on the request only. Request parsing and the
response messages are in ``agents/openai_wire.py``. Errors are OpenAI-shaped, 4xx for bad
requests, 500 when generation itself fails.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from .backend import Backend, Completion
from .batcher import Batcher
from .chat import ChatRenderer
from .openai_wire import (
    RequestError,
    chat_message,
    incoming_message,
    request_prompts,
    sampling_params,
    strip_stop,
    wants_logprobs,
)

MAX_BODY_BYTES = 32 * 2**20
CHAT_DEFAULT_MAX_TOKENS = 512  # OpenAI's default is "up to the context"; keep local runs bounded
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # OpenAI's documented default for /v1/completions


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
        with_logprobs = wants_logprobs(body, chat=False)
        as_ids = bool(body.get("return_tokens_as_token_ids"))
        keep_stop = bool(body.get("include_stop_str_in_output"))
        prompts = request_prompts(body, self.tokenizer)
        completions = self.batcher.submit([p for p in prompts for _ in range(n)], params)
        choices = []
        for i, c in enumerate(completions):
            ids = c.token_ids.tolist()
            choice: dict[str, Any] = {
                "index": i,
                "text": strip_stop(c.text, c, params.stop, keep_stop),
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
        with_logprobs = wants_logprobs(body, chat=True)
        keep_stop = bool(body.get("include_stop_str_in_output"))
        messages = [incoming_message(m) for m in messages]
        try:
            prompt = self.renderer.initial(messages, tools)
        except Exception as exc:  # a template error is the request's fault
            raise RequestError(
                f"the chat template could not render these messages: {exc}", param="messages"
            ) from exc
        completions = self.batcher.submit([prompt] * n, params)
        choices = []
        for i, c in enumerate(completions):
            text = strip_stop(c.text, c, params.stop, keep_stop)
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
