"""The generation-backend interface (DESIGN §6): token ids in, token ids and logprobs out.

Every backend (``hf`` here; ``vllm`` and ``openai`` elsewhere) takes a batch of prompts as token
ids plus one ``SamplingParams`` and returns one ``Completion`` per prompt, in order. Prompts are
token ids, not text, so multi-turn rollouts stay token-in-token-out (DESIGN §3).

Logprob convention (the trainer relies on it): ``Completion.logprobs[i]`` is
``log_softmax(logits_i / temperature)[token_ids[i]]`` in float32, where ``logits_i`` are the
model's raw logits at that position; for ``temperature == 0`` (greedy) the divisor is 1.
top-p/top-k truncation is *not* applied to these values. The trainer recomputes the same
quantity from a forward pass and takes the importance ratio against these logprobs (PPO, Schulman
et al., 2017, Eq. 6; GRPO, Shao et al., 2024, Eq. 3), so both sides must use the same temperature.

Seeding contract: ``generate(prompts, params, seeds)`` takes at most one seed per prompt. With
``seeds``, prompt i's completion depends only on (model, prompt i, params, seeds[i]): not on the
other prompts in the call, their order, the batch split, padding, or the global RNG. That is what
makes a rollout reproducible when the collector batches episodes by thread timing. Without
``seeds``, ``params.seed = s`` means ``seeds = [s, s + 1, ...]`` (identical prompts in a GRPO group
still differ); with neither, the backend draws from its global RNG. ``seeds`` overrides
``params.seed``. Greedy decoding (``temperature == 0``) ignores seeds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ptgym.types import as_ids, as_logprobs

FINISH_REASONS = ("stop", "length")


@dataclass
class SamplingParams:
    """How to sample one batch of completions."""

    max_new_tokens: int = 256  # the most tokens to generate per completion
    temperature: float = 1.0  # softmax temperature; 0 means greedy decoding
    top_p: float = 1.0  # nucleus sampling mass; 1.0 disables it
    top_k: int = 0  # sample among the k most likely tokens; 0 disables it
    stop: list[str] = field(default_factory=list)  # stop after a token completes any of these
    seed: int | None = None  # prompt i gets seed + i unless generate(seeds=...) says otherwise

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        self.stop = list(self.stop)
        if any(not s for s in self.stop):
            raise ValueError(f"stop strings must be non-empty, got {self.stop!r}")


@dataclass
class Completion:
    """One sampled completion.

    ``token_ids`` are exactly the sampled ids, ending with the EOS id when the model sampled it,
    never with padding; ``logprobs`` follow the module's convention; ``finish_reason`` is ``stop``
    (EOS or a stop string; the stop string's tokens are kept and ``text`` contains it) or
    ``length`` (``max_new_tokens`` reached).
    """

    token_ids: np.ndarray  # int32 (n,)
    logprobs: np.ndarray  # float32 (n,)
    finish_reason: str  # "stop" | "length"
    text: str  # decode(token_ids, skip_special_tokens=True)

    def __post_init__(self) -> None:
        self.token_ids = as_ids(self.token_ids)
        self.logprobs = as_logprobs(self.logprobs)
        assert self.token_ids.shape == self.logprobs.shape, (self.token_ids, self.logprobs)
        assert self.finish_reason in FINISH_REASONS, self.finish_reason


@runtime_checkable
class Backend(Protocol):
    """A policy sampler. ``generate`` returns one ``Completion`` per prompt, in prompt order;
    ``seeds`` (one per prompt) follow the module's seeding contract."""

    tokenizer: Any

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]: ...


def row_seeds(n: int, params: SamplingParams, seeds: Sequence[int] | None) -> list[int] | None:
    """The seed of each of ``n`` prompts under the seeding contract, or None (global RNG)."""
    if seeds is not None:
        if len(seeds) != n:
            raise ValueError(
                f"generate got {len(seeds)} seeds for {n} prompts; give one per prompt"
            )
        return [int(s) for s in seeds]
    if params.seed is None:
        return None
    return [params.seed + i for i in range(n)]


def check_prompts(prompts: list[Sequence[int]]) -> None:
    """Every backend's precondition: each prompt has at least one token."""
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
