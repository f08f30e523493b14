"""Fast CPU samplers: the policy's current weights, LoRA merged in, in a cheaper format.

On a CPU, decoding a small model is memory-bound: each decode step reads every weight once
(SmolLM2-135M in fp32: 540 MB per token). Two copies read fewer bytes:

- ``bf16``: the merged weights cast to bfloat16 (half the bytes; oneDNN's bf16 matmuls, AMX
  tiles where the CPU has them). Rounding the weights and activations to bf16 moves the logprobs
  a little: per-token KL to the fp32 forward about 1e-3 on SmolLM2-135M. For Llama-family models
  it decodes through ``lean.LeanDecoder``, read straight from the live model (no copy of the
  model is made): 1.2-1.7x faster than ``transformers``' loop (more at fewer rows).
- ``int8``: ``torch.ao``'s ``quantize_dynamic`` (int8 weights, activations quantized per batch on
  the fly, VNNI kernels where the CPU has them): a quarter of the bytes, but a per-tensor
  activation scale rounds harder: KL about 0.15-0.2.

Either sampler is then no longer the trainer's own forward pass, so the update corrects for the
difference with truncated importance weights (``losses.sampler_is_weights``;
``algo.correction=auto`` switches it on for these samplers) and reports ``rollout/sampler_kl``.

Weight sync: ``sync(version)`` rebuilds the copy from the live policy model when the policy
version changes (LoRA merged into a copy of the base; the training model is never touched). The
decode loop itself is ``HFBackend``'s (per-row seeded sampling, finish reasons), but the seeding
contract of ``backend.py`` holds only in part: dynamic quantization scales each ``Linear``'s input
per call, and the bf16 kernels may block a matmul differently for another batch size, so a row's
tokens can depend on the other rows batched with it. The same batch and seeds give the same
tokens; a different batch split can give others. Use ``sampler=exact`` where runs must reproduce
whatever the batching.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from . import lean
from .backend import Completion, SamplingParams
from .hf import HFBackend

# Linear layers left in fp32: the MLP's down projection reads activations with outliers that one
# per-tensor int8 scale rounds badly. Measured on SmolLM2-135M (8 prompts x 48 tokens, T=1):
# per-token KL to the fp32 forward 0.87 with every Linear quantized, 0.20 without down_proj, at
# 113 vs 102 tokens/s (fp32: 43).
KEEP_FP32 = ("down_proj",)


def merged_copy(model: Any) -> Any:
    """A frozen inference copy of ``model`` with its LoRA adapters (if any) merged in."""
    twin = copy.deepcopy(model)
    if hasattr(twin, "merge_and_unload"):  # a PEFT model: fold the adapters in
        twin = twin.merge_and_unload()
    twin.eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin


def bf16_copy(model: Any) -> Any:
    """A bfloat16 copy of ``model`` for inference (LoRA merged in first, in the model's dtype)."""
    return merged_copy(model).to(torch.bfloat16)


def quantized_copy(model: Any) -> Any:
    """An int8-weight copy of ``model`` for inference: LoRA adapters merged into their base
    weights, every ``nn.Linear`` but those named in ``KEEP_FP32`` (the tied LM head included)
    quantized dynamically."""
    twin = merged_copy(model)
    names = {
        name
        for name, module in twin.named_modules()
        if isinstance(module, torch.nn.Linear) and not any(k in name for k in KEEP_FP32)
    }
    return torch.ao.quantization.quantize_dynamic(twin, names, dtype=torch.qint8)


COPIES = {"int8": quantized_copy, "bf16": bf16_copy}  # rollout.sampler -> copy builder


class CopyBackend:
    """``rollout.sampler=int8|bf16``: generate with a cheaper copy of the policy, rebuilt per
    version.

    ``model`` is the live (training) model; the copy is made on the first ``generate`` and
    again after each ``sync`` to a new version. ``int8`` is CPU only (dynamic quantization has no
    CUDA kernels; on a GPU use vLLM, which needs the same correction). ``bf16`` runs anywhere,
    but is only fast on a CPU with native bf16 (AVX512-BF16 or AMX): elsewhere it warns.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        sampler: str = "int8",
        max_batch_size: int = 32,
        lean_loop: bool = True,
        eos_token_ids: Sequence[int] | None = None,
    ):
        if sampler not in COPIES:
            raise ValueError(f"unknown sampler copy {sampler!r}; choose one of {sorted(COPIES)}")
        if sampler == "bf16" and not native_bf16(next(model.parameters()).device.type):
            warnings.warn(
                "rollout.sampler=bf16: this CPU has no native bf16 matmul (AVX512-BF16 or AMX), "
                "so the bf16 copy may decode slower than rollout.sampler=exact",
                stacklevel=2,
            )
        self.sampler = sampler
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_size = max_batch_size
        self.version: int | None = None
        self._synced: int | None = None
        self._inner: HFBackend | None = None
        self.sync_seconds = 0.0  # time spent building copies (reported by benches)
        self.eos_token_ids = eos_token_ids  # HFBackend's (None: the model's own)
        self.lean_loop = lean_loop  # bf16: decode with lean.LeanDecoder where it supports the model
        self._told = False

    def sync(self, version: int) -> None:
        """The policy's weights changed (a new version): rebuild before the next ``generate``."""
        self.version = version

    def _backend(self) -> HFBackend:
        if self._inner is None or self._synced != self.version:
            t0 = time.perf_counter()
            was_training = self.model.training
            self.model.eval()
            try:
                with torch.no_grad():
                    self._inner = self._build()
            finally:
                self.model.train(was_training)
            self._synced = self.version
            self.sync_seconds += time.perf_counter() - t0
        return self._inner

    def _build(self) -> HFBackend:
        """The sampler for the policy's current weights. The bf16 copy of a model the lean loop
        supports is a ``lean.LeanDecoder`` read straight from the live model (LoRA merged per
        layer, no copy of the whole model) with inverse-CDF sampling; anything else is a merged
        copy decoded by the ``transformers`` loop."""
        common = {"max_batch_size": self.max_batch_size, "eos_token_ids": self.eos_token_ids}
        if self.sampler == "bf16" and self.lean_loop:
            reason = lean.supports(self.model)
            if reason is None:
                decoder = lean.LeanDecoder(
                    self.model, self.tokenizer.pad_token_id, dtype=torch.bfloat16
                )
                return HFBackend(
                    self.model, self.tokenizer, decoder=decoder, sampling="inverse-cdf", **common
                )
            if not self._told:
                warnings.warn(
                    f"the bf16 sampler decodes without the lean loop: {reason}", stacklevel=4
                )
                self._told = True
        return HFBackend(COPIES[self.sampler](self.model), self.tokenizer, **common)

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        return self._backend().generate(prompts, params, seeds)


def native_bf16(device: str) -> bool:
    """True on any GPU, and on a CPU where oneDNN runs bf16 matmuls natively (AVX512-BF16 or
    AMX): there the bf16 copy decodes faster than the fp32 model."""
    return device != "cpu" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
