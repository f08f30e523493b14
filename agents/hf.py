"""The ``hf`` backend: batched decoding with a transformers causal LM on CPU or GPU (DESIGN §6).

Prompts are sorted by length and cut into batches of ``max_batch_size``. Each batch is decoded by
a loop of its own rather than ``model.generate``, for three savings that matter to RL rollouts:

- **shared prefill**: a GRPO group sends the same prompt G times; each distinct prompt is run
  through the model once, left-padded, and its KV cache is copied to the G rows;
- **rows leave when done**: a row that samples EOS (or completes a stop string) is dropped from
  the batch and the cache, so later steps compute only the rows still running;
- **logprobs on the fly**: the sampled token's logprob is taken from each step's logits, instead
  of keeping rows x steps x vocabulary logits until the end.

Positions are explicit (``cumsum`` of the attention mask), so left padding never shifts a row.
Logprobs are ``log_softmax(logits / T)`` in float32 (the convention in ``backend.py``), so they do
not depend on top-p/top-k. Only ``SamplingParams`` shape the distribution: nothing from the
model's ``generation_config.json`` (e.g. Qwen's ``repetition_penalty=1.1``) applies, since a
penalty the trainer does not reproduce would bias the importance ratios.

Sampling is per row, so a row's tokens do not depend on its batch (``backend.py``'s seeding
contract). Each row owns a ``torch.Generator`` seeded with its seed; ``_RowSampler`` applies
temperature, top-k and top-p and adds Gumbel noise drawn from the row's own generator. The argmax
of ``logits / T + Gumbel`` is an exact sample from ``softmax(logits / T)`` (the Gumbel-max trick;
Gumbel, 1954; Maddison et al., 2014, "A* Sampling", §2), and every row draws exactly one
vocabulary-sized noise vector per step, whoever else is in the batch. Rows without a given seed
get one drawn from torch's global RNG.

The model is used in place: a PEFT/LoRA model that the trainer updates is sampled with its
current weights, no copy. ``generate`` switches it to eval mode and restores the previous mode.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from .backend import Completion, SamplingParams, check_prompts, row_seeds

SEED_BOUND = 2**63 - 1  # rows without a seed draw one below this from the global RNG


class _RowSampler:
    """Turns argmax into per-row sampling: temperature, top-k, top-p, then Gumbel noise.

    Returns new scores (the raw logits, from which the logprobs come, are not modified). Truncated
    tokens get -inf, so no noise can revive them. The uniforms and their first log are float64: from
    float32 uniforms the Gumbel noise would stop at about 16.6, so tokens ~19 nats below the best
    one could never be drawn; from float64 the cut is at 36.7.
    """

    def __init__(self, params: SamplingParams, generators: list[torch.Generator]):
        self.temperature, self.top_k, self.top_p = params.temperature, params.top_k, params.top_p
        self.generators = generators

    def __call__(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores / self.temperature  # (B, V)
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]  # (B, 1)
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1:
            ordered, index = scores.sort(dim=-1, descending=True)  # (B, V)
            probs = ordered.softmax(dim=-1)
            mass_before = probs.cumsum(dim=-1) - probs  # the best token always stays (0 < top_p)
            sorted_drop = mass_before >= self.top_p  # (B, V), in descending-score order
            drop = sorted_drop.scatter(1, index, sorted_drop)  # back to vocabulary order
            scores = scores.masked_fill(drop, float("-inf"))
        uniform = torch.empty(scores.shape, dtype=torch.float64, device=scores.device)  # (B, V)
        for row, generator in zip(uniform, self.generators, strict=True):
            row.uniform_(generator=generator)  # each row draws from its own stream only
        exponential = uniform.log_().neg_().to(scores.dtype)  # -log U ~ Exp(1), exact near 0
        return scores - exponential.log_()  # + Gumbel noise: -log(-log U)


def _cache_keyword(model: Any) -> str:
    """The forward argument that takes the KV cache: ``cache`` in recent transformers (which
    deprecates ``past_key_values``), ``past_key_values`` before."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class HFBackend:
    """Generate with a transformers causal LM (optionally wrapped by PEFT).

    ``max_batch_size`` bounds the rows per ``generate`` call: the KV cache grows with rows x
    length (logprobs are taken per step, so no rows x tokens x vocabulary logits are kept).
    ``eos_token_ids`` are
    the ids that end a completion (default: the model's ``generation_config.eos_token_id`` and
    the tokenizer's EOS).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 32,
        eos_token_ids: Sequence[int] | None = None,
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; load it with agents.models.load_tokenizer"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_ids = set(eos_token_ids) if eos_token_ids else _eos_ids(model, tokenizer)
        self._cache_keyword = _cache_keyword(model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """One completion per prompt, in prompt order (see ``backend.py`` for the contract)."""
        check_prompts(prompts)
        per_row = row_seeds(len(prompts), params, seeds)
        if per_row is None:  # greedy needs no seeds; sampling without them uses the global RNG
            sampling = params.temperature > 0
            n = len(prompts)
            per_row = torch.randint(SEED_BOUND, (n,)).tolist() if sampling else [0] * n
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), self.max_batch_size):
                    chunk = order[start : start + self.max_batch_size]
                    batch = self._generate_batch(
                        [prompts[i] for i in chunk], params, [per_row[i] for i in chunk]
                    )
                    for i, completion in zip(chunk, batch, strict=True):
                        results[i] = completion
        finally:
            self.model.train(was_training)
        return [c for c in results if c is not None]

    def _generate_batch(
        self, prompts: list[Sequence[int]], params: SamplingParams, seeds: list[int]
    ) -> list[Completion]:
        """Decode one batch with a shared KV cache: prefill once per distinct prompt, then one
        token per step for the rows still running; a row that finishes leaves the batch."""
        distinct: dict[tuple[int, ...], int] = {}
        owner = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
        logits, cache, mask, position = self._prefill(list(distinct))
        rows = torch.as_tensor(owner, device=self.device)
        cache.batch_select_indices(rows)  # a GRPO group shares its prompt's prefill
        logits, mask, position = logits[rows], mask[rows], position[rows]  # (B, V) (B, L) (B,)
        sampler = None
        if params.temperature > 0:
            generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]
            sampler = _RowSampler(params, generators)
        scale = params.temperature if sampler else 1.0
        running = list(range(len(prompts)))  # batch position -> row
        ids: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        finish = ["length"] * len(prompts)  # until the row samples EOS or completes a stop string
        for step in range(params.max_new_tokens):
            scores = logits.float()  # (b, V)
            chosen = (sampler(scores) if sampler else scores).argmax(dim=-1)  # (b,)
            picked = torch.log_softmax(scores / scale, dim=-1).gather(1, chosen[:, None])[:, 0]
            keep = []
            for at, (row, token, lp) in enumerate(
                zip(running, chosen.tolist(), picked.tolist(), strict=True)
            ):
                ids[row].append(token)
                logprobs[row].append(lp)
                if self._finished(ids[row], params):
                    finish[row] = "stop"
                else:
                    keep.append(at)
            if not keep or step + 1 == params.max_new_tokens:
                break
            if len(keep) < len(running):  # finished rows leave the batch and the cache
                index = torch.as_tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                chosen, mask, position = chosen[index], mask[index], position[index]
                running = [running[at] for at in keep]
                if sampler:
                    sampler.generators = [sampler.generators[at] for at in keep]
            mask = torch.cat([mask, mask.new_ones(len(running), 1)], dim=1)
            position = position + 1
            logits = self.model(
                input_ids=chosen[:, None],
                attention_mask=mask,
                position_ids=position[:, None],
                use_cache=True,
                **{self._cache_keyword: cache},
            ).logits[:, -1]
        return [
            Completion(
                row_ids,
                np.asarray(row_lps, dtype=np.float32),
                reason,
                self.tokenizer.decode(row_ids, skip_special_tokens=True),
            )
            for row_ids, row_lps, reason in zip(ids, logprobs, finish, strict=True)
        ]

    def _prefill(self, prompts: list[tuple[int, ...]]) -> tuple[Any, Any, Any, Any]:
        """Left-padded forward over the prompts: next-token logits (U, V), the filled cache, the
        attention mask (U, L) and each row's last position (U,)."""
        rows, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((rows, width), dtype=torch.long)  # (U, L)
        for r, prompt in enumerate(prompts):
            input_ids[r, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
            mask[r, width - len(prompt) :] = 1
        input_ids, mask = input_ids.to(self.device), mask.to(self.device)
        position = (mask.cumsum(dim=1) - 1).clamp(min=0)  # padding sits at position 0
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_keyword: cache},
        )
        return out.logits[:, -1], cache, mask, position[:, -1]

    def _finished(self, ids: list[int], params: SamplingParams) -> bool:
        """EOS sampled, or the completion's text now contains a stop string. Checked after every
        token, so a row ends at the token that completes the stop string, which is kept."""
        if ids[-1] in self.eos_ids:
            return True
        if not params.stop:
            return False
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in params.stop)
