"""Tool calls in model text -> ``ToolCall``s, and tool results -> chat messages.

Conventions accepted, in order of precedence:

1. Hermes / Qwen blocks: ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>`` (the format
   Qwen2.5 and NousResearch Hermes templates teach; ptgym's tool instructions ask for it). A final
   block left unclosed (the completion hit its token limit or a ``</tool_call>`` stop string was
   cut) is parsed too.
2. When the text has no ``<tool_call>`` tag: JSON objects with ``"name"`` and ``"arguments"``, in
   fenced ```json blocks or bare in the text (what small models often write instead).

``"parameters"`` is accepted for ``"arguments"`` (Llama 3.x style) and ``arguments`` may itself be
a JSON string that parses to an object (OpenAI's wire format).

Parsing never raises on model output: a malformed call becomes an entry in ``errors``, written to
the model ("tool call 1: invalid JSON at char 17: ...; write <tool_call>{...}</tool_call>"), which
an env sends back as an observation so the model can correct itself.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ptgym.types import ToolCall

OPEN, CLOSE = "<tool_call>", "</tool_call>"
FORMAT_HINT = 'write <tool_call>{"name": "...", "arguments": {...}}</tool_call>'
_BLOCK = re.compile(r"<tool_call>(.*?)(?:</tool_call>|\Z)", re.DOTALL)
_FENCE = re.compile(r"```(?:json)?[ \t]*\n(.*?)```", re.DOTALL)
_DECODER = json.JSONDecoder()


@dataclass
class ParseResult:
    """What the model's text asked for.

    ``calls``: the well-formed calls, with ids ``call_0``, ``call_1``, ... in order.
    ``errors``: one message per malformed call, addressed to the model.
    ``content``: the text with the call blocks removed (what the assistant said).
    """

    calls: list[ToolCall] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    content: str = ""


def _schemas(tools: list[dict[str, Any]] | None) -> dict[str, dict[str, Any]] | None:
    """Tool name -> JSON schema of its parameters, from OpenAI function-calling tool specs."""
    if tools is None:
        return None
    out: dict[str, dict[str, Any]] = {}
    for tool in tools:
        fn = tool.get("function", tool)
        out[str(fn.get("name", ""))] = fn.get("parameters") or {}
    return out


def _json_error(where: str, err: ValueError | RecursionError) -> str:
    if isinstance(err, json.JSONDecodeError):
        return f"{where}: invalid JSON at char {err.pos}: {err.msg}; {FORMAT_HINT}"
    if isinstance(err, RecursionError):
        return f"{where}: JSON nested too deeply; {FORMAT_HINT}"
    return f"{where}: invalid JSON: {err}; {FORMAT_HINT}"  # e.g. an integer too long to convert


def _call_from_obj(
    obj: Any, where: str, schemas: dict[str, dict[str, Any]] | None
) -> tuple[ToolCall | None, str | None]:
    """Validate one decoded call object; return ``(call, None)`` or ``(None, error)``."""
    if not isinstance(obj, dict):
        return None, f"{where}: expected a JSON object, got {type(obj).__name__}; {FORMAT_HINT}"
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return None, f'{where}: missing "name" (a non-empty string); {FORMAT_HINT}'
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except (ValueError, RecursionError):
            return (
                None,
                f'{where} ({name}): "arguments" is a string that is not JSON; {FORMAT_HINT}',
            )
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return None, f'{where} ({name}): "arguments" must be a JSON object; {FORMAT_HINT}'
    if schemas is not None:
        if name not in schemas:
            available = ", ".join(sorted(schemas)) or "none"
            return None, f"{where}: unknown tool {name!r}; available tools: {available}"
        required = schemas[name].get("required") or []
        missing = [str(r) for r in required if r not in args]
        if missing:
            names = ", ".join(repr(m) for m in missing)
            return None, f"{where} ({name}): missing required argument(s) {names}"
    return ToolCall(name=name, arguments=args), None


def _hermes_blocks(text: str) -> tuple[list[tuple[Any, str | None]], str]:
    """Decoded ``<tool_call>`` blocks as ``(object, json_error)`` pairs, and the text without them."""
    found: list[tuple[Any, str | None]] = []
    for i, match in enumerate(_BLOCK.finditer(text)):
        body = match.group(1).strip()
        try:
            found.append((json.loads(body), None))
        except (ValueError, RecursionError) as err:
            found.append((None, _json_error(f"tool call {i + 1}", err)))
    return found, _BLOCK.sub("", text)


def _looks_like_call(obj: Any) -> bool:
    return isinstance(obj, dict) and "name" in obj and ("arguments" in obj or "parameters" in obj)


def _json_calls(text: str) -> tuple[list[Any], str]:
    """Call-shaped JSON objects in fenced blocks or bare in the text, and the text without them.

    Only objects shaped like a call count: prose with braces in it is not an attempted call.
    """
    found: list[Any] = []
    spans: list[tuple[int, int]] = []
    for match in _FENCE.finditer(text):
        try:
            obj = json.loads(match.group(1))
        except (ValueError, RecursionError):
            continue
        if _looks_like_call(obj):
            found.append(obj)
            spans.append(match.span())
    if not found:
        pos = text.find("{")
        while pos != -1:
            try:
                obj, end = _DECODER.raw_decode(text, pos)
            except (ValueError, RecursionError):
                pos = text.find("{", pos + 1)
                continue
            if _looks_like_call(obj):
                found.append(obj)
                spans.append((pos, end))
                pos = text.find("{", end)
            else:
                pos = text.find("{", pos + 1)
    for start, end in reversed(spans):
        text = text[:start] + text[end:]
    return found, text


def parse_tool_calls(text: str, tools: list[dict[str, Any]] | None = None) -> ParseResult:
    """Parse the tool calls in ``text``; never raises.

    ``tools`` (OpenAI function-calling specs) enables validation: an unknown tool name or a missing
    required argument becomes an error listing what is available.
    """
    schemas = _schemas(tools)
    result = ParseResult()
    if OPEN in text:
        found, rest = _hermes_blocks(text)
    else:
        objs, rest = _json_calls(text)
        found = [(obj, None) for obj in objs]
    for i, (obj, error) in enumerate(found):
        if error is None:
            call, error = _call_from_obj(obj, f"tool call {i + 1}", schemas)
            if call is not None:
                call.id = f"call_{len(result.calls)}"
                result.calls.append(call)
                continue
        result.errors.append(error)
    result.content = rest.strip()
    return result


def format_tool_result(call: ToolCall, result: str) -> dict[str, Any]:
    """The chat message that answers ``call`` with ``result`` (OpenAI ``role="tool"`` shape)."""
    return {"role": "tool", "content": result, "tool_call_id": call.id, "name": call.name}


def format_errors(errors: list[str]) -> dict[str, Any]:
    """One ``role="tool"`` message telling the model what was wrong with its calls."""
    return {"role": "tool", "content": "\n".join(errors), "name": "error"}
