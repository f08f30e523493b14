"""Chat rendering: prompts extend each other token-for-token; templates that rewrite history don't."""

from __future__ import annotations

import json

import pytest

from ptgym.agents.backend import SamplingParams
from ptgym.agents.chat import ChatRenderer, tools_system_prompt
from ptgym.agents.hf import HFBackend
from tests.envs_for_tests import DROP_THINK
from tests.tiny import tiny_model_and_tokenizer, tiny_tokenizer

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "python",
            "description": "Run Python code and return its stdout.",
            "parameters": {
                "type": "object",
                "properties": {"code": {"type": "string"}},
                "required": ["code"],
            },
        },
    }
]
FIRST = [
    {"role": "system", "content": "You solve problems with tools."},
    {"role": "user", "content": "What is 2**10?"},
]
REPLIES = [
    '<tool_call>\n{"name": "python", "arguments": {"code": "print(2**10)"}}\n</tool_call>',
    "It printed 1024. Let me double-check with another call.",
    "The answer is 1024.",
]
OBSERVATIONS = [
    [{"role": "tool", "content": "1024\n", "tool_call_id": "call_0", "name": "python"}],
    [{"role": "user", "content": "Are you sure?"}],
]
# A minimal tool-aware template: renders the schemas and the structured tool_calls itself.
NATIVE_TOOLS = (
    "{% if tools %}<|im_start|>system\nTOOLS {{ tools | tojson }}<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}"
    "{% for c in m.tool_calls or [] %}<tool_call>{{ c.function | tojson }}</tool_call>{% endfor %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def run_conversation(renderer, completions, tools=TOOLS):
    """Play REPLIES/OBSERVATIONS through ``next_prompt``; return prompts and extends flags."""
    history = list(FIRST)
    prompts, extends = [renderer.initial(history, tools)], []
    for i, completion in enumerate(completions[:-1]):
        text = renderer.tokenizer.decode(completion, skip_special_tokens=True)
        history.append(renderer.assistant_message(text, tools))
        prompt, extended = renderer.next_prompt(
            prompts[-1], completion, history, OBSERVATIONS[i], tools
        )
        history += OBSERVATIONS[i]
        prompts.append(prompt)
        extends.append(extended)
    history.append(renderer.assistant_message(renderer.tokenizer.decode(completions[-1]), tools))
    return prompts, extends, history


def canonical(tokenizer, text: str) -> list[int]:
    """The ids a model would sample for ``text`` followed by its end-of-turn token."""
    return tokenizer(text + "<|im_end|>", add_special_tokens=False)["input_ids"]


def test_smollm2_prompts_extend_and_decode_to_the_templates_full_render():
    tokenizer = tiny_tokenizer()
    renderer = ChatRenderer(tokenizer)
    completions = [canonical(tokenizer, r) for r in REPLIES]
    prompts, extends, history = run_conversation(renderer, completions)
    assert extends == [True, True]
    for prev, completion, prompt in zip(prompts, completions, prompts[1:], strict=False):
        assert prompt[: len(prev) + len(completion)] == prev + completion
    history_so_far = history[:-1]
    full = renderer.render(history_so_far, TOOLS, add_generation_prompt=True)
    assert tokenizer.decode(prompts[-1], skip_special_tokens=False) == full
    assert prompts[-1] == renderer.encode(full)  # ChatML: even the ids equal a fresh tokenisation
    assert full.endswith("<|im_start|>user\nAre you sure?<|im_end|>\n<|im_start|>assistant\n")


def test_sampled_ids_stay_verbatim_at_their_offsets_even_when_cut_by_length():
    model, tokenizer = tiny_model_and_tokenizer()
    renderer = ChatRenderer(tokenizer)
    backend = HFBackend(model, tokenizer)
    history, tools = list(FIRST), TOOLS
    prompt = renderer.initial(history, tools)
    offsets = []
    for observation in OBSERVATIONS:
        (c,) = backend.generate([prompt], SamplingParams(max_new_tokens=7, seed=5))
        assert c.finish_reason == "length"  # random tokens: the template must add <|im_end|>\n
        history.append(renderer.assistant_message(c.text, tools))
        next_prompt, extended = renderer.next_prompt(
            prompt, c.token_ids.tolist(), history, observation, tools
        )
        assert extended
        offsets.append((len(prompt), c.token_ids.tolist()))
        bridge = next_prompt[len(prompt) + len(c.token_ids) :]
        assert tokenizer.decode(bridge).startswith("<|im_end|>\n<|im_start|>")
        history += observation
        prompt = next_prompt
    for offset, ids in offsets:
        assert prompt[offset : offset + len(ids)] == ids


def test_a_sampled_end_of_turn_is_not_repeated():
    tokenizer = tiny_tokenizer()
    renderer = ChatRenderer(tokenizer)
    prompt = renderer.initial(FIRST)
    completion = canonical(tokenizer, "Hi")
    history = [*FIRST, renderer.assistant_message("Hi")]
    user = [{"role": "user", "content": "again"}]
    next_prompt, extended = renderer.next_prompt(prompt, completion, history, user)
    delta = tokenizer.decode(next_prompt[len(prompt) + len(completion) :])
    assert extended and delta == "\n<|im_start|>user\nagain<|im_end|>\n<|im_start|>assistant\n"


def test_a_template_that_drops_earlier_think_blocks_breaks_the_prefix():
    tokenizer = tiny_tokenizer()
    renderer = ChatRenderer(tokenizer, chat_template=DROP_THINK)
    replies = [f"<think>step {i}</think>{r}" for i, r in enumerate(REPLIES)]
    completions = [canonical(tokenizer, r) for r in replies]
    prompts, extends, history = run_conversation(renderer, completions)
    # After a tool result turn 1's think stays; after a new user message it is dropped.
    assert extends == [True, False]
    fresh = renderer.render(history[:-1], TOOLS, add_generation_prompt=True)
    assert prompts[-1] == renderer.encode(fresh) and "<think>step 0" not in fresh


def test_tools_are_injected_hermes_style_into_a_template_without_tool_support():
    renderer = ChatRenderer(tiny_tokenizer())
    assert not renderer.native_tools
    text = renderer.render(FIRST, TOOLS, add_generation_prompt=True)
    system = "You solve problems with tools.\n\n" + tools_system_prompt(TOOLS)
    assert text.startswith(f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n")
    assert f"<tools>\n{json.dumps(TOOLS[0])}\n</tools>" in system
    no_system = renderer.render(FIRST[1:], TOOLS)
    assert no_system.startswith(f"<|im_start|>system\n{tools_system_prompt(TOOLS)}<|im_end|>")


def test_assistant_message_keeps_call_blocks_in_content_unless_the_template_renders_calls():
    call = {
        "id": "call_0",
        "type": "function",
        "function": {"name": "python", "arguments": {"code": "print(2**10)"}},
    }
    plain = ChatRenderer(tiny_tokenizer()).assistant_message("Sure. " + REPLIES[0], TOOLS)
    assert plain == {"role": "assistant", "content": "Sure. " + REPLIES[0], "tool_calls": [call]}
    native = ChatRenderer(tiny_tokenizer(), chat_template=NATIVE_TOOLS)
    assert native.native_tools
    message = native.assistant_message("Sure. " + REPLIES[0], TOOLS)
    assert message == {"role": "assistant", "content": "Sure.", "tool_calls": [call]}
    rendered = native.render([*FIRST, message], TOOLS)
    assert rendered.startswith('<|im_start|>system\nTOOLS [{"type": "function"')
    assert rendered.endswith(
        '<|im_start|>assistant\nSure.<tool_call>{"name": "python", '
        '"arguments": {"code": "print(2**10)"}}</tool_call><|im_end|>\n'
    )


def test_a_native_tool_template_extends_only_while_it_renders_calls_as_they_were_sampled():
    tokenizer = tiny_tokenizer()
    renderer = ChatRenderer(tokenizer, chat_template=NATIVE_TOOLS)
    as_rendered = '<tool_call>{"name": "python", "arguments": {"code": "print(2**10)"}}</tool_call>'
    completions = [canonical(tokenizer, r) for r in [as_rendered, *REPLIES[1:]]]
    prompts, extends, _ = run_conversation(renderer, completions)
    assert extends == [True, True]
    for prev, completion, prompt in zip(prompts, completions, prompts[1:], strict=False):
        assert prompt[: len(prev) + len(completion)] == prev + completion
    # The model wrote newlines inside the block; the template re-renders the call without them,
    # so from turn 3 on the template's conversation is not what was sampled: a new row starts.
    completions = [canonical(tokenizer, r) for r in REPLIES]
    assert run_conversation(renderer, completions)[1] == [True, False]


def test_a_tokenizer_without_a_template_needs_one():
    tokenizer = tiny_tokenizer()
    saved, tokenizer.chat_template = tokenizer.chat_template, None
    try:
        with pytest.raises(ValueError, match="chat_template"):
            ChatRenderer(tokenizer)
    finally:
        tokenizer.chat_template = saved
