"""The ``hf`` backend: batched transformers ``generate`` on CPU or GPU (DESIGN §6).

Prompts are sorted by length and cut into batches of ``max_batch_size``; each batch is left-padded
with an attention mask so every row's next token sits in the last column and the KV cache is
shared. Logprobs come from the raw per-step logits (``output_logits=True``), divided by the
temperature in float32 (the convention in ``backend.py``), so they do not depend on top-p/top-k.

Sampling is per row, so a row's tokens do not depend on its batch (``backend.py``'s seeding
contract). Each row owns a ``torch.Generator`` seeded with its seed; ``generate`` runs in greedy
mode with ``_RowSampler`` as the logits processor, which applies temperature, top-k and top-p and
adds Gumbel noise drawn from the row's own generator. The argmax of ``logits / T + Gumbel`` is an
exact sample from ``softmax(logits / T)`` (the Gumbel-max trick; Gumbel, 1954; Maddison et al.,
2014, "A* Sampling", §2), and every row draws exactly one vocabulary-sized noise vector per step,
whoever else is in the batch. Rows without a given seed get one drawn from torch's global RNG.

The model is used in place: a PEFT/LoRA model that the trainer updates is sampled with its
current weights, no copy. ``generate`` switches it to eval mode and restores the previous mode.
Sampling follows ``SamplingParams`` only: the neutral values below override whatever the model's
``generation_config.json`` sets (e.g. Qwen's ``repetition_penalty=1.1``), since a penalty the
trainer does not reproduce would bias the importance ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from .backend import Completion, SamplingParams, check_prompts, row_seeds, stop_index

SEED_BOUND = 2**63 - 1  # rows without a seed draw one below this from the global RNG

NEUTRAL = dict(
    repetition_penalty=1.0,
    no_repeat_ngram_size=0,
    typical_p=1.0,
    epsilon_cutoff=0.0,
    eta_cutoff=0.0,
    min_length=0,
)


class _StopStrings(StoppingCriteria):
    """Marks a row done once its completion's text contains a stop string.

    It decodes exactly as ``HFBackend`` does when it cuts the rows, so both agree on where each
    completion ends (transformers' own ``stop_strings`` matches on token strings and can differ).
    """

    def __init__(self, tokenizer: Any, prompt_len: int, stop: Sequence[str]):
        self.tokenizer, self.prompt_len, self.stop = tokenizer, prompt_len, list(stop)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        new = input_ids[:, self.prompt_len :].tolist()  # (B, t)
        done = [
            any(s in self.tokenizer.decode(row, skip_special_tokens=True) for s in self.stop)
            for row in new
        ]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


class _RowSampler(LogitsProcessor):
    """Turns greedy decoding into per-row sampling: temperature, top-k, top-p, then Gumbel noise.

    Returns new scores (the raw logits that ``output_logits`` keeps are not modified). Truncated
    tokens get -inf, so no noise can revive them. The uniforms and their first log are float64: from
    float32 uniforms the Gumbel noise would stop at about 16.6, so tokens ~19 nats below the best
    one could never be drawn; from float64 the cut is at 36.7.
    """

    def __init__(self, params: SamplingParams, generators: list[torch.Generator]):
        self.temperature, self.top_k, self.top_p = params.temperature, params.top_k, params.top_p
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
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


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


class HFBackend:
    """Generate with a transformers causal LM (optionally wrapped by PEFT).

    ``max_batch_size`` bounds the rows per ``generate`` call: memory grows with rows x length,
    and with ``output_logits`` also with rows x new tokens x vocabulary. ``eos_token_ids`` are
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
        rows, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)  # (B, L)
        for r, prompt in enumerate(prompts):
            input_ids[r, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention_mask[r, width - len(prompt) :] = 1
        sampling = params.temperature > 0
        processors = LogitsProcessorList()
        if sampling:
            generators = [torch.Generator(self.device).manual_seed(s) for s in seeds]
            processors.append(_RowSampler(params, generators))
        stopping = StoppingCriteriaList(
            [_StopStrings(self.tokenizer, width, params.stop)] if params.stop else []
        )
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            max_new_tokens=params.max_new_tokens,
            do_sample=False,  # _RowSampler samples: argmax of its noisy scores
            logits_processor=processors,
            eos_token_id=sorted(self.eos_ids),
            pad_token_id=self.tokenizer.pad_token_id,
            stopping_criteria=stopping,
            output_logits=True,
            return_dict_in_generate=True,
            use_cache=True,
            **NEUTRAL,
        )
        new = out.sequences[:, width:]  # (B, N)
        scale = params.temperature if sampling else 1.0
        logprobs = torch.empty(new.shape, dtype=torch.float32, device=new.device)  # (B, N)
        for t, step_logits in enumerate(out.logits):  # N tensors of (B, V)
            step = torch.log_softmax(step_logits.float() / scale, dim=-1)
            logprobs[:, t] = step.gather(1, new[:, t : t + 1]).squeeze(1)
        return [
            self._cut(ids, lps, params)
            for ids, lps in zip(new.tolist(), logprobs.cpu().numpy(), strict=True)
        ]

    def _cut(self, ids: list[int], logprobs: Any, params: SamplingParams) -> Completion:
        """Keep one row up to and including its EOS or the token completing a stop string;
        what follows is padding that ``generate`` added after the row finished."""
        end = next((i + 1 for i, tok in enumerate(ids) if tok in self.eos_ids), None)
        searched = end - 1 if end is not None else len(ids)
        k = stop_index(
            lambda n: self.tokenizer.decode(ids[:n], skip_special_tokens=True),
            searched,
            params.stop,
        )
        if k is not None:
            end = k
        finish = "stop" if end is not None else "length"
        end = end if end is not None else len(ids)
        text = self.tokenizer.decode(ids[:end], skip_special_tokens=True)
        return Completion(ids[:end], logprobs[:end], finish, text)
