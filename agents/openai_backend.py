"""The ``openai`` backend: any OpenAI-compatible server over HTTP (DESIGN §6).

Token in, token out (DESIGN §3): each prompt's token ids go to ``POST /v1/completions`` as
``prompt: [ids]`` (vLLM and ``ptgym serve`` accept token lists; so does OpenAI's legacy endpoint),
one request per prompt, up to ``max_concurrency`` in flight (the server batches them). The
completion's ids are taken from the server, in this order of preference:

1. ``choices[0].token_ids`` (the ``return_token_ids`` extension of vLLM and ``ptgym serve``);
2. ``logprobs.tokens`` written as ``"token_id:N"`` (vLLM's ``return_tokens_as_token_ids``);
3. otherwise the returned token strings are tokenised again: each piece must give exactly one id,
   else the whole text is re-tokenised and must give as many ids as there are logprobs. BPE is not
   unique, so these ids may differ from what the server sampled: ``exact`` turns False and a
   warning is logged once. Do not train on such completions.

The extension fields (``return_token_ids``, ``return_tokens_as_token_ids``,
``include_stop_str_in_output``, ``top_k``) are sent unless ``extensions=False``, for servers that
reject unknown fields (api.openai.com). Logprobs are ``logprobs.token_logprobs``; a server that
returns none gives NaN logprobs (``exact`` False). Whether they follow ``backend.py``'s convention
(``log_softmax(logits / T)``, no top-p/top-k) depends on the server: ``ptgym serve`` does; a vLLM
server does with ``--logprobs-mode processed_logprobs`` (its default returns T=1 logprobs) when
top-p/top-k are off.

Seeds (``backend.py``'s contract): prompt i's request carries ``seed = seeds[i]``, or
``params.seed + i`` without ``seeds``, so a group of identical prompts (GRPO) gets different
samples while the whole batch stays reproducible. Whether a seed fixes the sample is up to the
server: ``ptgym serve`` honours it per prompt, vLLM per request, hosted APIs only "mostly".
"""

from __future__ import annotations

import http.client
import json
import logging
import math
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .backend import Completion, SamplingParams, check_prompts, row_seeds

log = logging.getLogger(__name__)
_TOKEN_ID = re.compile(r"token_id:(\d+)")


class ServerUnavailable(ConnectionError):
    """The server could not be reached (or kept failing with 5xx) after all retries."""


class ServerError(RuntimeError):
    """The server refused a request (4xx) or answered something that is not a completion."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


def _base_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept as given."""
    url = url.rstrip("/")
    return url + "/v1" if not urllib.parse.urlsplit(url).path else url


class OpenAIBackend:
    """Generate with an OpenAI-compatible server at ``base_url`` (``http://HOST:PORT/v1``).

    ``tokenizer`` is the policy's tokenizer (decodes ``Completion.text``; the fallback in the
    module docstring). ``model`` is the server's model name. ``api_key`` defaults to
    ``$OPENAI_API_KEY`` when set. ``timeout`` bounds one request in seconds; connection errors,
    429 and 5xx are retried ``retries`` times with exponential backoff from ``backoff_s``.
    ``exact`` stays True while every completion's token ids and logprobs came from the server.
    """

    def __init__(
        self,
        base_url: str,
        tokenizer: Any,
        *,
        model: str,
        api_key: str | None = None,
        timeout: float = 600.0,
        max_concurrency: int = 8,
        retries: int = 4,
        backoff_s: float = 0.5,
        extensions: bool = True,
    ):
        self.base_url = _base_url(base_url)
        self.tokenizer = tokenizer
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.retries = retries
        self.backoff_s = backoff_s
        self.extensions = extensions
        self.exact = True

    # -- HTTP --

    def request(self, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        """POST ``body`` (GET when None) to ``base_url + path``; the decoded JSON reply."""
        url = self.base_url + path
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = None if body is None else json.dumps(body).encode()
        reason = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            req = urllib.request.Request(url, data=data, headers=headers)
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as reply:
                    return json.loads(reply.read())
            except urllib.error.HTTPError as err:
                message = _error_message(err)
                if err.code != 429 and err.code < 500:
                    raise ServerError(f"{url} answered {err.code}: {message}", err.code) from None
                reason = f"HTTP {err.code}: {message}"
            except TimeoutError as err:
                raise ServerUnavailable(
                    f"{url} did not answer within {self.timeout} s (raise timeout=...)"
                ) from err
            except (urllib.error.URLError, OSError, http.client.HTTPException) as err:
                reason = str(getattr(err, "reason", err))
            except json.JSONDecodeError as err:
                raise ServerError(f"{url} answered with something that is not JSON: {err}") from err
        raise ServerUnavailable(
            f"cannot reach an OpenAI-compatible server at {url} after {self.retries + 1} attempts "
            f"({reason}); start one with `ptgym serve --model NAME` or fix rollout.base_url"
        )

    # -- Backend --

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """One completion per prompt, in prompt order (see ``backend.py`` for the contract)."""
        check_prompts(prompts)
        if params.top_k and not self.extensions:
            raise ValueError("top_k is an extension field; it needs extensions=True (vLLM, ptgym)")
        per_row = row_seeds(len(prompts), params, seeds) or [None] * len(prompts)
        bodies = [
            self._completion_body(p, params, s) for p, s in zip(prompts, per_row, strict=True)
        ]
        with ThreadPoolExecutor(max_workers=max(1, min(self.max_concurrency, len(bodies)))) as ex:
            replies = list(ex.map(lambda b: self.request("/completions", b), bodies))
        return [self._completion(reply) for reply in replies]

    def _completion_body(
        self, prompt: Sequence[int], params: SamplingParams, seed: int | None
    ) -> dict:
        body: dict[str, Any] = {
            "model": self.model,
            "prompt": [int(t) for t in prompt],
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "n": 1,
            "logprobs": 0,
        }
        if params.stop:
            body["stop"] = params.stop
        if seed is not None:
            body["seed"] = seed
        if self.extensions:
            body.update(
                return_token_ids=True,
                return_tokens_as_token_ids=True,
                include_stop_str_in_output=True,
            )
            if params.top_k:
                body["top_k"] = params.top_k
        return body

    def _completion(self, reply: dict[str, Any]) -> Completion:
        try:
            choice = reply["choices"][0]
        except (KeyError, IndexError, TypeError):
            raise ServerError(
                f"{self.base_url}/completions answered without choices: {str(reply)[:300]}"
            ) from None
        logprobs = choice.get("logprobs") or {}
        values = logprobs.get("token_logprobs")
        ids = choice.get("token_ids")
        if ids is None:
            ids = self._ids_from_tokens(logprobs.get("tokens"), choice.get("text", ""), values)
        if values is None or len(values) != len(ids):
            self._inexact("the server returned no per-token logprobs; they are NaN")
            values = [math.nan] * len(ids)
        finish = "length" if choice.get("finish_reason") == "length" else "stop"
        text = self.tokenizer.decode(list(ids), skip_special_tokens=True)
        return Completion(ids, [math.nan if v is None else v for v in values], finish, text)

    def _ids_from_tokens(
        self, tokens: list[str] | None, text: str, values: list[float] | None
    ) -> list[int]:
        if tokens and all(_TOKEN_ID.fullmatch(t) for t in tokens):
            return [int(t.split(":", 1)[1]) for t in tokens]
        self._inexact("the server returned no token ids; completions were re-tokenised")
        encode = self.tokenizer.encode
        if tokens:
            pieces = [encode(t, add_special_tokens=False) for t in tokens]
            if all(len(p) == 1 for p in pieces):
                return [p[0] for p in pieces]
        ids = list(encode(text, add_special_tokens=False))
        if values is not None and len(ids) != len(values):
            raise ServerError(
                f"{self.base_url} returns neither token ids nor token strings that map to them "
                f"({len(ids)} ids for {len(values)} logprobs); use a vLLM server or `ptgym serve`"
            )
        return ids

    def _inexact(self, why: str) -> None:
        if self.exact:
            log.warning(
                "openai backend at %s: %s; do not train on these samples", self.base_url, why
            )
        self.exact = False

    # -- conveniences for judges and evals --

    def chat(
        self,
        messages: list[dict[str, Any]],
        params: SamplingParams | None = None,
        *,
        tools: list[dict[str, Any]] | None = None,
    ) -> str:
        """The assistant's reply text to ``messages`` (``POST /chat/completions``)."""
        params = params or SamplingParams()
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.stop:
            body["stop"] = params.stop
        if params.seed is not None:
            body["seed"] = params.seed
        if tools:
            body["tools"] = tools
        reply = self.request("/chat/completions", body)
        try:
            return reply["choices"][0]["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            raise ServerError(
                f"{self.base_url}/chat/completions answered without a message: {str(reply)[:300]}"
            ) from None

    def models(self) -> list[str]:
        """The model names the server offers (``GET /models``)."""
        return [m["id"] for m in self.request("/models").get("data", [])]


def _error_message(err: urllib.error.HTTPError) -> str:
    """The ``error.message`` of an OpenAI-shaped error body, else the raw body's start."""
    raw = err.read().decode(errors="replace")
    try:
        return str(json.loads(raw)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return raw[:300] or str(err.reason)
