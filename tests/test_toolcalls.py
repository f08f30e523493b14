"""Tool-call parsing: the accepted formats, the error messages, and that it never raises."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from ptgym.agents.toolcalls import (
    FORMAT_HINT,
    ParseResult,
    format_errors,
    format_tool_result,
    parse_tool_calls,
    raw_tool_call_text,
)
from ptgym.types import ToolCall

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python code.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    },
    {"type": "function", "function": {"name": "submit", "parameters": {"type": "object"}}},
]


def test_hermes_blocks_become_calls_with_ids_and_the_rest_is_content():
    text = (
        "Let me compute.\n"
        '<tool_call>\n{"name": "python", "arguments": {"code": "print(1)"}}\n</tool_call>\n'
        '<tool_call>{"name": "submit", "arguments": {}}</tool_call>'
    )
    result = parse_tool_calls(text, TOOLS)
    assert result.calls == [
        ToolCall("python", {"code": "print(1)"}, "call_0"),
        ToolCall("submit", {}, "call_1"),
    ]
    assert result.errors == [] and result.content == "Let me compute."


def test_an_unclosed_final_block_is_still_a_call():
    result = parse_tool_calls('ok <tool_call>{"name": "submit", "arguments": {"x": 1}}')
    assert result.calls == [ToolCall("submit", {"x": 1}, "call_0")]
    assert result.content == "ok"


def test_arguments_given_as_a_json_string_and_parameters_alias_are_accepted():
    text = (
        '<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"1+1\\"}"}</tool_call>'
        '<tool_call>{"name": "python", "parameters": {"code": "2"}}</tool_call>'
    )
    result = parse_tool_calls(text)
    assert [c.arguments for c in result.calls] == [{"code": "1+1"}, {"code": "2"}]


def test_invalid_json_gives_an_error_with_position_and_the_expected_format():
    result = parse_tool_calls('<tool_call>{"name": "python" "arguments": {}}</tool_call>')
    assert result.calls == []
    assert result.errors == [
        f"tool call 1: invalid JSON at char 18: Expecting ',' delimiter; {FORMAT_HINT}"
    ]


def test_errors_name_the_call_by_position_and_valid_calls_still_count():
    text = (
        '<tool_call>{"name": "python", "arguments": {"code": "1"}}</tool_call>'
        '<tool_call>{"arguments": {}}</tool_call>'
        '<tool_call>{"name": "python", "arguments": [1]}</tool_call>'
        '<tool_call>["python"]</tool_call>'
    )
    result = parse_tool_calls(text)
    assert result.calls == [ToolCall("python", {"code": "1"}, "call_0")]
    assert result.errors == [
        f'tool call 2: missing "name" (a non-empty string); {FORMAT_HINT}',
        f'tool call 3 (python): "arguments" must be a JSON object; {FORMAT_HINT}',
        f"tool call 4: expected a JSON object, got list; {FORMAT_HINT}",
    ]


def test_with_a_schema_unknown_tools_and_missing_arguments_are_errors():
    text = (
        '<tool_call>{"name": "bash", "arguments": {"cmd": "ls"}}</tool_call>'
        '<tool_call>{"name": "python", "arguments": {}}</tool_call>'
    )
    result = parse_tool_calls(text, TOOLS)
    assert result.calls == []
    assert result.errors == [
        "tool call 1: unknown tool 'bash'; available tools: python, submit",
        "tool call 2 (python): missing required argument(s) 'code'",
    ]
    assert len(parse_tool_calls(text).calls) == 2  # without a schema both are well-formed


def test_fenced_json_and_bare_json_calls_are_read_when_there_are_no_tags():
    fenced = 'I will run it.\n```json\n{"name": "python", "arguments": {"code": "2**10"}}\n```\n'
    result = parse_tool_calls(fenced)
    assert result.calls == [ToolCall("python", {"code": "2**10"}, "call_0")]
    assert result.content == "I will run it."
    bare = 'Calling {"name": "submit", "arguments": {"answer": 4}} now'
    result = parse_tool_calls(bare)
    assert result.calls == [ToolCall("submit", {"answer": 4}, "call_0")]
    assert result.content == "Calling  now"


def test_prose_with_braces_or_plain_json_is_not_a_call():
    for text in ["The set {1, 2} has two elements.", '{"answer": 4}', "\\boxed{4}", ""]:
        assert parse_tool_calls(text) == ParseResult(content=text.strip())


def test_tool_results_and_errors_become_tool_messages():
    call = ToolCall("python", {"code": "1"}, "call_0")
    assert format_tool_result(call, "1\n") == {
        "role": "tool",
        "content": "1\n",
        "tool_call_id": "call_0",
        "name": "python",
    }
    assert format_errors(["a", "b"]) == {"role": "tool", "content": "a\nb", "name": "error"}


def _check(result: ParseResult) -> None:
    assert isinstance(result, ParseResult)
    assert all(isinstance(c, ToolCall) and isinstance(c.arguments, dict) for c in result.calls)
    assert [c.id for c in result.calls] == [f"call_{i}" for i in range(len(result.calls))]
    assert all(isinstance(e, str) and e.startswith("tool call ") for e in result.errors)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parsing_arbitrary_text_never_raises(text):
    _check(parse_tool_calls(text))
    _check(parse_tool_calls(text, TOOLS))


CODE = 'def f(s):\n    """Say "hi".\\n"""\n    return s.replace("\\\\", "/") + \'\\t\'\n'
WRITE = {
    "type": "function",
    "function": {
        "name": "write",
        "parameters": {
            "type": "object",
            "properties": {"content": {"type": "string"}, "mode": {"type": "integer"}},
            "required": ["content"],
        },
    },
}


def test_raw_xml_calls_carry_code_unescaped_and_read_back_exactly():
    text = raw_tool_call_text("python", code=CODE)
    assert CODE in text  # written as it is: no JSON escapes for a small model to get wrong
    assert parse_tool_calls("Writing it.\n" + text, TOOLS) == ParseResult(
        [ToolCall("python", {"code": CODE}, "call_0")], [], "Writing it."
    )
    # No parameters, a value that is only a newline, and JSON and XML blocks in one reply.
    text = (
        raw_tool_call_text("submit") + '<tool_call>{"name": "submit", "arguments": {}}</tool_call>'
    )
    assert [c.name for c in parse_tool_calls(text, TOOLS).calls] == ["submit", "submit"]
    one = parse_tool_calls(
        "<tool_call><function=python><parameter=code>\n\n\n</parameter></function>"
    )
    assert one.calls[0].arguments == {"code": "\n"}


def test_raw_values_are_text_unless_the_schema_types_them():
    text = raw_tool_call_text("write", content="7", mode=3)
    assert parse_tool_calls(text, [WRITE]).calls[0].arguments == {"content": "7", "mode": 3}
    assert parse_tool_calls(text).calls[0].arguments == {"content": "7", "mode": "3"}
    bad = parse_tool_calls(text.replace("\n3\n", "\nthree\n"), [WRITE])
    assert bad.calls == [] and "'mode' must be integer" in bad.errors[0]


def test_a_raw_call_cut_or_malformed_is_an_error_never_a_partial_call():
    full = raw_tool_call_text("python", code=CODE)
    cut = parse_tool_calls(full[: full.index("return")], TOOLS)  # the token limit hit mid-program
    assert cut.calls == [] and "not closed by </function>" in cut.errors[0]
    assert "token limit" in cut.errors[0]
    # The hint is the call itself, with the schema's parameters: no placeholder name to copy.
    assert (
        "write <tool_call>\n<function=python>\n<parameter=code>\n...\n</parameter>" in cut.errors[0]
    )
    unclosed = full.replace("</parameter>", "")
    assert "not closed by </parameter>" in parse_tool_calls(unclosed, TOOLS).errors[0]
    stray = full.replace("<function=python>", "<function=python>\nhello")
    assert "text outside" in parse_tool_calls(stray, TOOLS).errors[0]
    missing = parse_tool_calls(raw_tool_call_text("python"), TOOLS)
    assert "missing required argument(s) 'code'" in missing.errors[0]
    unknown = parse_tool_calls(raw_tool_call_text("shell", cmd="ls"), TOOLS)
    assert "unknown tool 'shell'" in unknown.errors[0]


MARKUP = st.sampled_from(
    [
        "<tool_call>",
        "<function=",
        "</function>",
        "<parameter=",
        "</parameter>",
        ">",
        "\n",
        "</tool_call>",
        "{",
        "}",
        "[",
        "]",
        '"',
        ":",
        ",",
        "```json\n",
        "```",
        '"name"',
        '"arguments"',
        "\\",
        "null",
        "1e999",
        "9" * 5000,
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    name=st.text(max_size=10),
    args=st.dictionaries(st.text(max_size=5), st.integers() | st.text(max_size=5), max_size=3),
    cut=st.integers(min_value=0, max_value=200),
    insert=st.lists(st.tuples(st.integers(0, 200), MARKUP | st.text(max_size=3)), max_size=4),
    form=st.sampled_from(["json", "json string", "raw"]),
)
def test_mutated_valid_calls_never_raise(name, args, cut, insert, form):
    arguments = json.dumps(args) if form == "json string" else args
    text = (
        raw_tool_call_text(name, **args)
        if form == "raw"
        else f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"
    )
    for pos, piece in insert:
        text = text[:pos] + piece + text[pos:]
    for candidate in (text, text[:cut], text.replace("<tool_call>", "")):
        _check(parse_tool_calls(candidate))
        _check(parse_tool_calls(candidate, TOOLS))


def test_deeply_nested_json_is_an_error_not_a_crash():
    result = parse_tool_calls("<tool_call>" + "[" * 100_000 + "</tool_call>")
    assert result.calls == [] and len(result.errors) == 1
    assert parse_tool_calls("{" * 10_000).calls == []
