"""Chat rendering for token-in-token-out multi-turn rollouts (DESIGN §3).

The first prompt is the chat template's render of the env's first observation. After that, the
sampled completion ids are never re-tokenised: the next prompt is ``previous prompt + sampled ids
+ tokens of what the template adds``, as long as the template's render of the conversation still
begins with the previous prompt. Re-tokenising the decoded text can give different ids than the
sampler produced (BPE is not unique), so a trainer that did so would score tokens the policy never
sampled, and its importance ratios would be wrong. Templates that rewrite earlier turns (e.g.
Qwen3's, which drops earlier ``<think>`` blocks) break the prefix; then ``next_prompt`` renders
the whole conversation afresh and says so (``extends=False``), and the trainer starts a new row.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from .toolcalls import parse_tool_calls

SENTINEL = "<<ptgym-assistant-content>>"


def tools_system_prompt(tools: list[dict[str, Any]]) -> str:
    """Hermes-style tool instructions for templates that know nothing about tools.

    It asks for the ``<tool_call>`` format that ``toolcalls.parse_tool_calls`` reads first.
    """
    schemas = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "You can call functions to help with the user's request. "
        "Their signatures, as JSON schemas, are inside <tools></tools>:\n"
        f"<tools>\n{schemas}\n</tools>\n\n"
        "To call a function, reply with a JSON object holding its name and arguments inside "
        "<tool_call></tool_call> tags, one block per call:\n"
        '<tool_call>\n{"name": "function_name", "arguments": {"arg": "value"}}\n</tool_call>\n'
        "The results come back in messages with the role tool."
    )


class ChatRenderer:
    """Render conversations to prompt ids with a tokenizer's chat template.

    ``chat_template`` (a Jinja string) overrides the tokenizer's. When the template does not
    mention ``tools`` (SmolLM2's does not), tool schemas are injected into the system message in
    the Hermes style (``tools_system_prompt``) and assistant messages keep their ``<tool_call>``
    blocks in their content, since such a template would not render ``tool_calls``. When it does
    (Qwen2.5, Llama 3.1), the schemas go through ``apply_chat_template(tools=...)`` and the
    template renders ``tool_calls`` itself.
    """

    def __init__(self, tokenizer: Any, chat_template: str | None = None):
        source = chat_template if chat_template is not None else tokenizer.chat_template
        if not source:
            raise ValueError("the tokenizer has no chat template; pass chat_template='...'")
        self.tokenizer = tokenizer
        self.chat_template = chat_template
        self.native_tools = "tools" in str(source)

    def render(
        self,
        messages: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
        add_generation_prompt: bool = False,
    ) -> str:
        """The template's text for ``messages`` (tools injected or passed, see the class)."""
        messages = [{**m, "content": m.get("content") or ""} for m in messages]
        kwargs: dict[str, Any] = {}
        if tools and self.native_tools:
            kwargs["tools"] = tools
        elif tools:
            instructions = tools_system_prompt(tools)
            if messages and messages[0]["role"] == "system":
                content = f"{messages[0]['content']}\n\n{instructions}".lstrip()
                messages[0] = {**messages[0], "content": content}
            else:
                messages.insert(0, {"role": "system", "content": instructions})
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.chat_template,
            add_generation_prompt=add_generation_prompt,
            tokenize=False,
            **kwargs,
        )

    def encode(self, text: str) -> list[int]:
        """Token ids of rendered text; the template already wrote any BOS it wants."""
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ids with special tokens, inverse of ``encode`` for byte-level BPE."""
        return self.tokenizer.decode(
            list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    def initial(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> list[int]:
        """The first prompt: ``messages`` rendered with the generation prompt, tokenised."""
        return self.encode(self.render(messages, tools, add_generation_prompt=True))

    def next_prompt(
        self,
        prev_prompt_ids: Sequence[int],
        completion_ids: Sequence[int],
        history: list[dict[str, Any]],
        observation: list[dict[str, Any]],
        tools: list[dict[str, Any]] | None = None,
    ) -> tuple[list[int], bool]:
        """The prompt after the env answered, and whether it extends the previous sequence.

        ``history`` is the conversation ending with the assistant message just produced from
        ``completion_ids``; ``observation`` the env's new messages. When the template still
        renders ``history`` starting with the previous prompt, returns ``(prev_prompt_ids +
        completion_ids + encode(bridge + delta), True)``: ``bridge`` is what the template writes
        after an assistant message's content that the completion did not sample itself (ChatML:
        ``<|im_end|>\\n``, or just ``\\n`` when the model sampled ``<|im_end|>``), ``delta`` is the
        text the observation and the generation prompt add. Otherwise returns the fresh render
        of the whole conversation and ``False``.
        """
        full_next = self.render(history + observation, tools, add_generation_prompt=True)
        fresh = self.encode(full_next), False
        prev_text = self.decode(prev_prompt_ids)
        full_hist = self.render(history, tools)
        if not full_hist.startswith(prev_text) or not full_next.startswith(full_hist):
            return fresh
        probe = self.render(history[:-1] + [{"role": "assistant", "content": SENTINEL}], tools)
        if not probe.startswith(prev_text) or SENTINEL not in probe[len(prev_text) :]:
            return fresh
        tail = probe[len(prev_text) :].split(SENTINEL, 1)[1]
        sampled = self.decode(completion_ids)
        overlap = next(k for k in range(len(tail), -1, -1) if sampled.endswith(tail[:k]))
        delta = full_next[len(full_hist) :]
        bridge_and_delta = self.encode(tail[overlap:] + delta)
        return [*prev_prompt_ids, *completion_ids, *bridge_and_delta], True

    def assistant_message(
        self, text: str, tools: list[dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """The assistant message for a completion's text, with its parsed tool calls.

        With a tool-aware template the ``<tool_call>`` blocks move from ``content`` into
        ``tool_calls`` (the template renders them back); otherwise ``content`` stays the text.
        """
        return assistant_message(text, tools, strip_calls=self.native_tools)


def assistant_message(
    text: str, tools: list[dict[str, Any]] | None, *, strip_calls: bool
) -> dict[str, Any]:
    """An assistant message for ``text`` with its parsed ``tool_calls``; ``strip_calls`` removes the
    call blocks from ``content``. Malformed calls are left out here; envs report them
    (``parse_tool_calls(...).errors``)."""
    parsed = parse_tool_calls(text, tools)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": parsed.content if strip_calls else text,
    }
    if parsed.calls:
        message["tool_calls"] = [call.to_dict() for call in parsed.calls]
    return message
