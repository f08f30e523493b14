"""The tiny model and SmolLM2 tokenizer for tests, loaded once per test session.

``tiny`` is a seeded random 2-layer Llama over SmolLM2's real tokenizer and chat template
(``ptgym.agents.models``). Its first build reads the tokenizer from the SmolLM2 GGUF (a few
seconds); afterwards it loads from ``cache_dir()/tiny`` in well under a second.
"""

from __future__ import annotations

import functools
from typing import Any

from ptgym.agents.models import load_model, load_tokenizer


@functools.cache
def tiny_model_and_tokenizer() -> tuple[Any, Any]:
    """``(model, tokenizer)`` of the tiny model on CPU in float32. Shared: do not modify the
    model in place (deep-copy it first) or its tokenizer."""
    return load_model("tiny", dtype="float32", device="cpu")


@functools.cache
def tiny_tokenizer() -> Any:
    """SmolLM2's tokenizer (left padding, pad token set), without loading any weights."""
    return load_tokenizer("tiny")
