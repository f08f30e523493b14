"""Tool calls in model text -> ``ToolCall``s, and tool results -> chat messages.

Conventions accepted, in order of precedence:

1. Hermes / Qwen blocks: ``<tool_call>{"name": "f", "arguments": {...}}</tool_call>`` (the format
   Qwen2.5 and NousResearch Hermes templates teach; ptgym's tool instructions ask for it). A final
   block left unclosed (the completion hit its token limit or a ``</tool_call>`` stop string was
   cut) is parsed too.
   Inside a block, the body may instead be Qwen3-Coder's XML form, whose values are raw text, so
   code needs no JSON escaping (``raw_tool_call_text`` writes it)::

       <tool_call>
       <function=write_file>
       <parameter=path>
       solution.py
       </parameter>
       <parameter=content>
       print("a\\tb")
       </parameter>
       </function>
       </tool_call>

   One newline after ``<parameter=...>`` and one before ``</parameter>`` are part of the tags.
   A value is kept as text unless the tool's schema types that parameter otherwise (integer,
   number, boolean, array, object): then it is read as JSON. Each ``<function=`` and
   ``<parameter=`` must be closed; a value cut by the token limit is an error, never a
   truncated program.
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
_FUNCTION_OPEN = re.compile(r"\s*<function=([^>\n]*)>")
_PARAM = re.compile(r"<parameter=([^>\n]*)>(.*?)</parameter>", re.DOTALL)


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


def _raw_value(value: str) -> str:
    """A parameter's text without the newline that ends its opening tag and the one before
    ``</parameter>``."""
    value = value[1:] if value.startswith("\n") else value
    return value[:-1] if value.endswith("\n") else value


def _raw_hint(name: str, schemas: dict[str, dict[str, Any]] | None) -> str:
    """How to write a call of ``name`` in the XML form, with its parameters from the schema.
    Concrete on purpose: small models copy placeholders such as ``<function=NAME>`` verbatim."""
    schema = (schemas or {}).get(name)
    if schema is None:
        return "write <tool_call>\n<function=TOOL>\n<parameter=ARG>\nvalue\n</parameter>\n</function>\n</tool_call>"
    return "write " + raw_tool_call_text(
        name, **dict.fromkeys(schema.get("properties") or {}, "...")
    )


def _raw_call(
    body: str, where: str, schemas: dict[str, dict[str, Any]] | None
) -> tuple[Any, str | None]:
    """A ``<function=NAME>`` body -> ``({"name", "arguments"}, None)`` or ``(None, error)``.

    Values are strings unless ``schemas`` types the parameter otherwise; then they are JSON."""
    head = _FUNCTION_OPEN.match(body)  # the caller checked that it matches
    name = head.group(1).strip()
    hint = _raw_hint(name, schemas)
    end = body.rfind("</function>")
    if end < head.end():
        return None, (
            f"{where} ({name}): <function={name}> is not closed by </function> (was the reply cut "
            f"by its token limit?); {hint}"
        )
    inner = body[head.end() : end]
    props = ((schemas or {}).get(name) or {}).get("properties") or {}
    args: dict[str, Any] = {}
    for match in _PARAM.finditer(inner):
        key, value = match.group(1).strip(), _raw_value(match.group(2))
        kind = (props.get(key) or {}).get("type", "string")
        if kind != "string":
            try:
                value = json.loads(value)
            except (ValueError, RecursionError):
                return (
                    None,
                    f"{where} ({name}): parameter {key!r} must be {kind} (as JSON), got {value[:40]!r}",
                )
        args[key] = value
    leftover = _PARAM.sub("", inner)
    if "<parameter=" in leftover:
        return None, (f"{where} ({name}): a <parameter=...> is not closed by </parameter>; {hint}")
    if leftover.strip():
        return None, (
            f"{where} ({name}): text outside <parameter=...></parameter> tags: "
            f"{leftover.strip()[:40]!r}; {hint}"
        )
    return {"name": name, "arguments": args}, None


def _hermes_blocks(
    text: str, schemas: dict[str, dict[str, Any]] | None
) -> tuple[list[tuple[Any, str | None]], str]:
    """Decoded ``<tool_call>`` blocks (JSON or XML bodies) as ``(object, error)`` pairs, and the
    text without them."""
    found: list[tuple[Any, str | None]] = []
    for i, match in enumerate(_BLOCK.finditer(text)):
        body = match.group(1)
        if _FUNCTION_OPEN.match(body):
            found.append(_raw_call(body, f"tool call {i + 1}", schemas))
            continue
        try:
            found.append((json.loads(body.strip()), None))
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
        found, rest = _hermes_blocks(text, schemas)
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


def raw_tool_call_text(name: str, /, **arguments: Any) -> str:
    """The XML-form call of tool ``name`` (see the module docstring): values are written as they
    are (strings) or as JSON (anything else), never escaped."""
    params = "".join(
        f"<parameter={k}>\n{v if isinstance(v, str) else json.dumps(v)}\n</parameter>\n"
        for k, v in arguments.items()
    )
    return f"{OPEN}\n<function={name}>\n{params}</function>\n{CLOSE}"


def format_tool_result(call: ToolCall, result: str) -> dict[str, Any]:
    """The chat message that answers ``call`` with ``result`` (OpenAI ``role="tool"`` shape)."""
    return {"role": "tool", "content": result, "tool_call_id": call.id, "name": call.name}


def format_errors(errors: list[str]) -> dict[str, Any]:
    """One ``role="tool"`` message telling the model what was wrong with its calls."""
    return {"role": "tool", "content": "\n".join(errors), "name": "error"}
