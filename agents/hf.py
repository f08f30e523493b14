"""The ``hf`` backend: batched transformers ``generate`` on CPU or GPU (DESIGN §6).

Prompts are sorted by length and cut into batches of ``max_batch_size``; each batch is left-padded
with an attention mask so every row's next token sits in the last column and the KV cache is
shared. Logprobs come from the raw per-step logits (``output_logits=True``), divided by the
temperature in float32 (the convention in ``backend.py``), so they do not depend on top-p/top-k.

The model is used in place: a PEFT/LoRA model that the trainer updates is sampled with its
current weights, no copy. ``generate`` switches it to eval mode and restores the previous mode.
Sampling follows ``SamplingParams`` only: the neutral values below override whatever the model's
``generation_config.json`` sets (e.g. Qwen's ``repetition_penalty=1.1``), since a penalty the
trainer does not reproduce would bias the importance ratios.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from .backend import Completion, SamplingParams, stop_index

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


@contextlib.contextmanager
def _seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Seed sampling without disturbing the global RNG state that training uses."""
    if seed is None:
        yield
        return
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _sampling_flags(params: SamplingParams) -> dict[str, Any]:
    return dict(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k)


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

    def generate(self, prompts: list[Sequence[int]], params: SamplingParams) -> list[Completion]:
        """One completion per prompt, in prompt order (see ``backend.py`` for the contract)."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("every prompt needs at least one token")
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        results: list[Completion | None] = [None] * len(prompts)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), _seeded(params.seed, self.device):
                for start in range(0, len(order), self.max_batch_size):
                    chunk = order[start : start + self.max_batch_size]
                    batch = self._generate_batch([prompts[i] for i in chunk], params)
                    for i, completion in zip(chunk, batch, strict=True):
                        results[i] = completion
        finally:
            self.model.train(was_training)
        return [c for c in results if c is not None]

    def _generate_batch(
        self, prompts: list[Sequence[int]], params: SamplingParams
    ) -> list[Completion]:
        rows, width = len(prompts), max(len(p) for p in prompts)
        input_ids = torch.full((rows, width), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((rows, width), dtype=torch.long)  # (B, L)
        for r, prompt in enumerate(prompts):
            input_ids[r, width - len(prompt) :] = torch.as_tensor(list(prompt), dtype=torch.long)
            attention_mask[r, width - len(prompt) :] = 1
        sampling = params.temperature > 0
        stopping = StoppingCriteriaList(
            [_StopStrings(self.tokenizer, width, params.stop)] if params.stop else []
        )
        out = self.model.generate(
            input_ids=input_ids.to(self.device),
            attention_mask=attention_mask.to(self.device),
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            **(_sampling_flags(params) if sampling else {}),
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
