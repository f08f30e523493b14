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

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from .backend import Completion, SamplingParams, check_prompts, row_seeds

SEED_BOUND = 2**63 - 1  # rows without a seed draw one below this from the global RNG


def left_pad(
    prompts: Sequence[Sequence[int]], pad_id: int, device: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Prompts left-padded to the longest: token ids, attention mask (1 on tokens) and positions
    (padding sits at position 0), each (U, L) long, on ``device``."""
    rows, width = len(prompts), max(len(p) for p in prompts)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for r, prompt in enumerate(prompts):
        ids[r, width - len(prompt) :] = torch.as_tensor(prompt, dtype=torch.long)
        mask[r, width - len(prompt) :] = 1
    ids, mask = ids.to(device), mask.to(device)
    return ids, mask, (mask.cumsum(dim=1) - 1).clamp(min=0)


def _truncate(scores: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Tempered ``scores`` with the tokens that top-k and top-p drop set to -inf (a new tensor
    where anything is dropped)."""
    if params.top_k and params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1:
        ordered, index = scores.sort(dim=-1, descending=True)  # (B, V)
        probs = ordered.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # the best token always stays (0 < top_p)
        sorted_drop = mass_before >= params.top_p  # (B, V), in descending-score order
        drop = sorted_drop.scatter(1, index, sorted_drop)  # back to vocabulary order
        scores = scores.masked_fill(drop, float("-inf"))
    return scores


class _RowSampler:
    """Turns argmax into per-row sampling: temperature, top-k, top-p, then Gumbel noise.

    Returns new scores (the raw logits, from which the logprobs come, are not modified). Truncated
    tokens get -inf, so no noise can revive them. The uniforms and their first log are float64: from
    float32 uniforms the Gumbel noise would stop at about 16.6, so tokens ~19 nats below the best
    one could never be drawn; from float64 the cut is at 36.7.
    """

    def __init__(self, params: SamplingParams, generators: list[torch.Generator]):
        self.params = params
        self.generators = generators

    def __call__(self, scores: torch.FloatTensor) -> torch.FloatTensor:
        return self._noisy(scores / self.params.temperature)

    def _noisy(self, tempered: torch.Tensor) -> torch.Tensor:
        scores = _truncate(tempered, self.params)  # (B, V)
        uniform = torch.empty(scores.shape, dtype=torch.float64, device=scores.device)  # (B, V)
        for row, generator in zip(uniform, self.generators, strict=True):
            row.uniform_(generator=generator)  # each row draws from its own stream only
        exponential = uniform.log_().neg_().to(scores.dtype)  # -log U ~ Exp(1), exact near 0
        return scores - exponential.log_()  # + Gumbel noise: -log(-log U)

    def draw(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row and its logprob under ``softmax(scores / T)``: (B,), (B,)."""
        tempered = scores / self.params.temperature
        chosen = self._noisy(tempered).argmax(dim=-1)
        return chosen, torch.log_softmax(tempered, dim=-1).gather(1, chosen[:, None])[:, 0]


class _InverseCDFSampler:
    """Per-row sampling by inversion: one uniform per row and step, located in the row's
    cumulative distribution.

    Draws from the same truncated, tempered softmax as ``_RowSampler`` but reads one number from
    each row's generator per step instead of a vocabulary's worth (the Gumbel noise was 11% of a
    64-row bf16 decode step). The search is in two levels, with sums in float64 so that 50k
    float32 probabilities add up without drift: the row's mass per block of ``BLOCK`` tokens,
    then the chosen block's own tokens. A token is drawn only if its float32 probability is
    above zero (about 1e-45: 103 nats below the best token, against 36.7 for the Gumbel noise).
    """

    BLOCK = 256

    def __init__(self, params: SamplingParams, generators: list[torch.Generator]):
        self.params = params
        self.generators = generators

    def draw(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row and its logprob under ``softmax(scores / T)``: (B,), (B,)."""
        tempered = scores / self.params.temperature  # (B, V)
        total = torch.logsumexp(tempered, dim=-1, keepdim=True)  # (B, 1)
        if self.params.top_k or self.params.top_p < 1:
            probs = _truncate(tempered, self.params).softmax(dim=-1)
        else:
            probs = (tempered - total).exp_()
        chosen = self._invert(probs)
        return chosen, (tempered.gather(1, chosen[:, None]) - total)[:, 0]

    def _invert(self, probs: torch.Tensor) -> torch.Tensor:
        rows, vocab = probs.shape
        blocks = -(-vocab // self.BLOCK)
        probs = F.pad(probs, (0, blocks * self.BLOCK - vocab)).view(rows, blocks, self.BLOCK)
        cdf = probs.sum(dim=-1, dtype=torch.float64).cumsum_(dim=-1)  # (B, blocks)
        uniform = torch.cat(
            [torch.rand(1, generator=g, dtype=torch.float64) for g in self.generators]
        ).to(probs.device)  # (B,): each row draws from its own stream only
        target = uniform * cdf[:, -1]
        block = torch.searchsorted(cdf, target[:, None], right=True)[:, 0]  # first cdf > target
        block = block.clamp_(max=blocks - 1)
        before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)[:, None])[:, 0], 0)
        inside = probs[torch.arange(rows, device=probs.device), block].double().cumsum_(dim=-1)
        # the two float64 sums of the block may differ in their last bit: stay inside its mass
        rest = torch.minimum(target - before, torch.nextafter(inside[:, -1], inside.new_zeros(())))
        token = torch.searchsorted(inside, rest[:, None], right=True)[:, 0]
        return block * self.BLOCK + token


SAMPLERS = {"gumbel": _RowSampler, "inverse-cdf": _InverseCDFSampler}


def cache_keyword(model: Any) -> str:
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


class _ModelDecoder:
    """The model's own forward with a ``transformers`` ``DynamicCache``: what the exact sampler
    runs, so its logprobs are the trainer's. Same interface as ``lean.LeanDecoder``."""

    def __init__(self, model: Any, pad_token_id: int):
        self.model, self.pad_token_id = model, pad_token_id
        self.keyword = cache_keyword(model)
        self.cache: Any = None
        self.mask: torch.Tensor | None = None  # (rows, columns)
        self.position: torch.Tensor | None = None  # (rows,)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> torch.Tensor:
        """Left-padded forward over the prompts; next-token logits (U, V). (The cache grows as
        needed, so ``capacity`` is not used.)"""
        input_ids, self.mask, position = left_pad(prompts, self.pad_token_id, self.device)
        self.cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=input_ids,
            attention_mask=self.mask,
            position_ids=position,
            use_cache=True,
            logits_to_keep=1,
            **{self.keyword: self.cache},
        )
        self.position = position[:, -1]
        return out.logits[:, -1]

    def select(self, rows: torch.Tensor) -> None:
        """Keep the batch's rows ``rows`` (in that order; a row may repeat)."""
        assert self.mask is not None and self.position is not None
        self.cache.batch_select_indices(rows)
        self.mask, self.position = self.mask[rows], self.position[rows]

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row, (rows,); the next logits, (rows, V)."""
        assert self.mask is not None and self.position is not None
        self.mask = torch.cat([self.mask, self.mask.new_ones(len(tokens), 1)], dim=1)
        self.position = self.position + 1
        return self.model(
            input_ids=tokens[:, None],
            attention_mask=self.mask,
            position_ids=self.position[:, None],
            use_cache=True,
            **{self.keyword: self.cache},
        ).logits[:, -1]


class HFBackend:
    """Generate with a transformers causal LM (optionally wrapped by PEFT).

    ``max_batch_size`` bounds the rows per ``generate`` call: the KV cache grows with rows x
    length (logprobs are taken per step, so no rows x tokens x vocabulary logits are kept).
    ``eos_token_ids`` are the ids that end a completion (default: the model's
    ``generation_config.eos_token_id`` and the tokenizer's EOS).

    ``decoder`` runs the prefill and the decode steps: by default the model's own forward
    (``_ModelDecoder``); the bf16 sampler copy passes a ``lean.LeanDecoder`` of its frozen
    weights. ``sampling`` is ``gumbel`` (default: the exact sampler's streams, unchanged since
    the first release) or ``inverse-cdf`` (one uniform per row and step; the lean copy's).
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch_size: int = 32,
        eos_token_ids: Sequence[int] | None = None,
        decoder: Any = None,
        sampling: str = "gumbel",
    ):
        if tokenizer.pad_token_id is None:
            raise ValueError(
                "the tokenizer has no pad token; load it with agents.models.load_tokenizer"
            )
        if sampling not in SAMPLERS:
            raise ValueError(f"unknown sampling {sampling!r}; choose one of {sorted(SAMPLERS)}")
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.eos_ids = set(eos_token_ids) if eos_token_ids else _eos_ids(model, tokenizer)
        self.decoder = decoder or _ModelDecoder(model, tokenizer.pad_token_id)
        self.sampling = sampling

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
        decoder = copy.copy(self.decoder)  # the batch's own state; weights are shared
        capacity = max(len(p) for p in prompts) + params.max_new_tokens
        logits = decoder.prefill(list(distinct), capacity)
        rows = torch.as_tensor(owner, device=self.device)
        decoder.select(rows)  # a GRPO group shares its prompt's prefill
        logits = logits[rows]  # (B, V)
        sampler = None
        if params.temperature > 0:
            generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]
            sampler = SAMPLERS[self.sampling](params, generators)
        running = list(range(len(prompts)))  # batch position -> row
        ids: list[list[int]] = [[] for _ in prompts]
        logprobs: list[list[float]] = [[] for _ in prompts]
        finish = ["length"] * len(prompts)  # until the row samples EOS or completes a stop string
        for step in range(params.max_new_tokens):
            scores = logits.float()  # (b, V)
            if sampler:
                chosen, picked = sampler.draw(scores)  # (b,) (b,)
            else:
                chosen = scores.argmax(dim=-1)
                picked = torch.log_softmax(scores, dim=-1).gather(1, chosen[:, None])[:, 0]
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
                decoder.select(index)
                chosen = chosen[index]
                running = [running[at] for at in keep]
                if sampler:
                    sampler.generators = [sampler.generators[at] for at in keep]
            logits = decoder.step(chosen)
        return [
            Completion(
                row_ids,
                np.asarray(row_lps, dtype=np.float32),
                reason,
                self.tokenizer.decode(row_ids, skip_special_tokens=True),
            )
            for row_ids, row_lps, reason in zip(ids, logprobs, finish, strict=True)
        ]

    def _finished(self, ids: list[int], params: SamplingParams) -> bool:
        """EOS sampled, or the completion's text now contains a stop string. Checked after every
        token, so a row ends at the token that completes the stop string, which is kept."""
        if ids[-1] in self.eos_ids:
            return True
        if not params.stop:
            return False
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return any(s in text for s in params.stop)
