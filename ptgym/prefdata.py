"""Token ids and loss masks for SFT conversations and preference pairs (shared by sft, rm, dpo).

The model's tokens of an assistant turn are its content and the end-of-turn token the template
writes after it (the model must learn to stop), not the newline or role header the template adds
around it: exactly what a rollout samples (``agents/chat.py``). Each piece of the rendered text is
tokenised on its own, the way a rollout builds its ids, so training scores the token boundaries
the policy produces.

Conversations are found by rendering growing prefixes with the chat template: the text an
assistant message adds is ``render(messages[:i+1])`` minus ``render(messages[:i],
add_generation_prompt=True)``. A template that rewrites earlier turns (Qwen3 drops old
``<think>`` blocks) breaks that prefix; such a conversation is refused with a message rather than
silently mis-masked.

Standard (string) records: ``prompt`` then ``response + eos``, the response and eos trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ptgym.agents.chat import ChatRenderer
from ptgym.prefs import Preference


@dataclass
class Encoded:
    ids: list[int]
    mask: list[int]  # 1 on tokens the model is trained to produce


def encode_messages(
    renderer: ChatRenderer, messages: list[dict], *, train_from: int = 0
) -> Encoded:
    """Ids of a rendered conversation; ``mask`` covers assistant messages at index >= train_from."""
    tok = renderer.tokenizer
    eos = tok.eos_token or ""
    ids: list[int] = []
    mask: list[int] = []
    done = ""

    def add(text: str, trained: bool) -> None:
        piece = renderer.encode(text) if text else []
        ids.extend(piece)
        mask.extend([int(trained)] * len(piece))

    for i, message in enumerate(messages):
        if message.get("role") != "assistant":
            continue
        prefix = renderer.render(messages[:i], add_generation_prompt=True) if i else ""
        full = renderer.render(messages[: i + 1])
        if not prefix.startswith(done) or not full.startswith(prefix):
            raise ValueError(
                f"the chat template rewrites earlier turns (message {i}): split this conversation "
                "into one row per assistant turn, or pass model.chat_template"
            )
        add(prefix[len(done) :], False)
        piece = full[len(prefix) :]
        cut = piece.rfind(eos) + len(eos) if eos and eos in piece else len(piece)
        add(piece[:cut], i >= train_from)
        add(piece[cut:], False)
        done = full
    rest = renderer.render(messages)[len(done) :] if done else renderer.render(messages)
    add(rest, False)
    return Encoded(ids, mask)


def encode_text(tokenizer: Any, prompt: str, response: str) -> Encoded:
    """A standard-format row: ``prompt`` (not trained), ``response`` + eos (trained)."""
    p = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    r = list(tokenizer(response, add_special_tokens=False)["input_ids"]) + [tokenizer.eos_token_id]
    return Encoded(p + r, [0] * len(p) + [1] * len(r))


def encode_side(
    renderer: ChatRenderer | None, tokenizer: Any, pref: Preference, side: str
) -> Encoded:
    """Prompt + the ``side`` ("chosen" or "rejected") response of a preference."""
    response = getattr(pref, side)
    if pref.conversational:
        if renderer is None:
            raise ValueError(
                "conversational preferences need a chat template; pass model.chat_template"
            )
        return encode_messages(renderer, pref.prompt + response, train_from=len(pref.prompt))
    return encode_text(tokenizer, pref.prompt, response)


def truncate(row: Encoded, max_length: int) -> Encoded:
    """Keep the first ``max_length`` tokens (the prompt and the start of the response)."""
    return Encoded(row.ids[:max_length], row.mask[:max_length])


def pad(rows: list[Encoded], pad_id: int, *, side: str = "right") -> tuple[Tensor, Tensor, Tensor]:
    """``(input_ids, attention_mask, loss_mask)``, each (B, T), padded on ``side``."""
    T = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), T), dtype=torch.long)
    loss = torch.zeros((len(rows), T), dtype=torch.long)
    for b, r in enumerate(rows):
        n = len(r.ids)
        span = slice(0, n) if side == "right" else slice(T - n, T)
        ids[b, span] = torch.tensor(r.ids, dtype=torch.long)
        attn[b, span] = 1
        loss[b, span] = torch.tensor(r.mask, dtype=torch.long)
    return ids, attn, loss


def renderer_for(tokenizer: Any, chat_template: str | None = None) -> ChatRenderer | None:
    """A chat renderer when the tokenizer (or the config) has a template, else None."""
    if chat_template is None and not getattr(tokenizer, "chat_template", None):
        return None
    return ChatRenderer(tokenizer, chat_template)
