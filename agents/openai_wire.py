"""The OpenAI HTTP API's wire format for ``ptgym serve``: request parsing and response messages.

Errors are OpenAI-shaped (``RequestError`` -> ``{"error": {"message", "type", "param", "code"}}``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from .backend import Completion, SamplingParams
from .chat import assistant_message


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


def request_prompts(body: dict[str, Any], tokenizer: Any) -> list[list[int]]:
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


def wants_logprobs(body: dict[str, Any], chat: bool) -> bool:
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


def strip_stop(text: str, completion: Completion, stop: Sequence[str], keep: bool) -> str:
    """OpenAI cuts the stop string and what follows from the text, unless asked to keep it."""
    if keep or completion.finish_reason != "stop" or not stop:
        return text
    cuts = [text.find(s) for s in stop if s in text]
    return text[: min(cuts)] if cuts else text


def incoming_message(m: Any) -> dict[str, Any]:
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
    """The assistant message for a completion's text in OpenAI's wire format: when ``tools`` were
    offered and the text calls them, the calls move to ``tool_calls`` (``chat.assistant_message``)
    with unique ids and JSON-string arguments, and ``content`` keeps the rest (None if empty)."""
    message = assistant_message(text, tools, strip_calls=True) if tools else {}
    if not message.get("tool_calls"):
        return {"role": "assistant", "content": text}
    for call in message["tool_calls"]:
        call["id"] = f"call_{uuid.uuid4().hex[:24]}"
        call["function"]["arguments"] = json.dumps(call["function"]["arguments"])
    message["content"] = message["content"] or None
    return message
