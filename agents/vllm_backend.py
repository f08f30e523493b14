"""The ``vllm`` backend: an in-process vLLM engine on an NVIDIA GPU (DESIGN §6, optional extra).

UNTESTED HERE: the machine that built ptgym has neither vLLM nor a GPU, so this module was written
against vLLM's documented API (``vllm.LLM``, ``TokensPrompt``, ``LoRARequest``, sleep mode,
``logprobs_mode``; vLLM >= 0.10.2) and its tests (``tests/test_vllm_backend.py``) are skipped.
It imports without vLLM; constructing a backend without it raises ``VLLM_MISSING``.

- Token in, token out: prompts go in as ``TokensPrompt(prompt_token_ids=...)``; the sampled ids
  and, with ``SamplingParams(logprobs=0)``, each sampled token's logprob come back.
- Logprobs: the engine is built with ``logprobs_mode="processed_logprobs"``, i.e. after the
  temperature, which is ``backend.py``'s convention while top-p and top-k are off. With them on,
  vLLM renormalises over the kept tokens, which the convention does not; a warning says so once.
- Weight sync: ``load_lora(path)`` points every later request at a new adapter folder (PEFT
  ``save_pretrained``); each call gets a fresh adapter id, so vLLM loads the new weights instead
  of reusing its cached copy. Much cheaper than reloading the base model. Given the live
  ``policy_model`` (a PEFT model), ``sync(version)`` saves its adapter to a scratch folder and
  loads it: the trainer calls it before each rollout, so every step samples the current policy.
- The sampler is not the trainer (bf16, vLLM's kernels): the update corrects the mismatch with
  truncated importance weights (``algo.correction=auto`` is ``token`` for this backend).
- Colocated with training: ``sleep()`` frees the GPU memory of the weights (level 2) or offloads
  them to CPU (level 1) and drops the KV cache; ``wake_up()`` restores them.
- Seeds (``backend.py``'s contract): prompt i's request gets ``SamplingParams(seed=seeds[i])``, or
  ``params.seed + i`` without ``seeds`` (vLLM seeds per request, independently of the batch), so
  identical prompts in a GRPO group still get different samples.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .backend import Completion, SamplingParams, check_prompts, row_seeds

log = logging.getLogger(__name__)
VLLM_MISSING = "the vllm backend needs vLLM: pip install 'ptgym[vllm]'; needs an NVIDIA GPU"


def vllm_unavailable() -> str | None:
    """Why the vllm backend cannot run here (``VLLM_MISSING``), or None when it can."""
    if importlib.util.find_spec("vllm") is None:
        return VLLM_MISSING
    import torch

    if not torch.cuda.is_available():
        return f"no NVIDIA GPU is visible to torch; {VLLM_MISSING}"
    return None


class VLLMBackend:
    """Generate with ``vllm.LLM`` in this process.

    ``model_name``: a ptgym short name (``smollm2-135m``, ``tiny``: the cached folder is used), a
    local folder or a Hugging Face id. ``tokenizer``: the policy's (decodes ``Completion.text``).
    ``enable_lora``/``max_lora_rank`` must be set at construction for ``load_lora`` to work;
    ``enable_sleep_mode`` for ``sleep``. ``engine_kwargs`` go to ``vllm.LLM`` as they are.
    """

    def __init__(
        self,
        model_name: str,
        tokenizer: Any,
        *,
        gpu_memory_utilization: float = 0.5,
        enable_lora: bool = True,
        max_lora_rank: int = 64,
        enable_sleep_mode: bool = True,
        dtype: str = "auto",
        policy_model: Any = None,
        **engine_kwargs: Any,
    ):
        reason = vllm_unavailable()
        if reason is not None:
            raise ImportError(reason)
        from vllm import LLM

        from .models import KNOWN_MODELS, pull_model

        path = str(pull_model(model_name)) if model_name in KNOWN_MODELS else model_name
        self.tokenizer = tokenizer
        self.llm = LLM(
            model=path,
            tokenizer=path,
            dtype=dtype,
            gpu_memory_utilization=gpu_memory_utilization,
            enable_lora=enable_lora,
            max_lora_rank=max_lora_rank,
            enable_sleep_mode=enable_sleep_mode,
            **{"logprobs_mode": "processed_logprobs", **engine_kwargs},
        )
        self._lora: Any = None
        self._lora_ids = 0
        self._warned_truncation = False
        self.policy_model = policy_model
        self._synced: int | None = None
        self._scratch: Any = None

    def sync(self, version: int) -> None:
        """Hot-load the live policy's LoRA adapter for ``version`` (no-op if already loaded)."""
        if self.policy_model is None or version == self._synced:
            return
        if not hasattr(self.policy_model, "peft_config"):
            raise ValueError(
                "the vllm backend syncs weights through LoRA adapters: train with "
                "lora.enabled=true, or serve full weights with rollout.backend=openai"
            )
        import tempfile

        if self._scratch is None:
            self._scratch = tempfile.TemporaryDirectory(prefix="ptgym-vllm-lora-")
        path = Path(self._scratch.name) / f"v{version}"
        self.policy_model.save_pretrained(str(path))
        self.load_lora(path)
        self._synced = version

    def load_lora(self, path: str | Path | None) -> None:
        """Sample later requests with the LoRA adapter saved in ``path``; None: the base model."""
        if path is None:
            self._lora = None
            return
        from vllm.lora.request import LoRARequest

        self._lora_ids += 1  # a new id makes vLLM load the folder again, not reuse its cache
        self._lora = LoRARequest(f"ptgym-{self._lora_ids}", self._lora_ids, str(path))

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory for training; both levels drop the KV cache. Level 1 offloads the
        weights to CPU memory (use it with LoRA: the base weights come back on ``wake_up``);
        level 2 discards them, for callers that load full weights again after ``wake_up``."""
        self.llm.sleep(level=level)

    def wake_up(self) -> None:
        self.llm.wake_up()

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        """One completion per prompt, in prompt order (see ``backend.py`` for the contract)."""
        from vllm import SamplingParams as VLLMSamplingParams
        from vllm.inputs import TokensPrompt

        check_prompts(prompts)
        if (params.top_p < 1 or params.top_k) and not self._warned_truncation:
            log.warning(
                "vllm backend: with top_p/top_k the logprobs are renormalised over the "
                "kept tokens, unlike backend.py's convention"
            )
            self._warned_truncation = True
        per_row = row_seeds(len(prompts), params, seeds) or [None] * len(prompts)
        sampling = [
            VLLMSamplingParams(
                n=1,
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k if params.top_k else -1,
                stop=list(params.stop) or None,
                include_stop_str_in_output=True,
                seed=seed,
                logprobs=0,
            )
            for seed in per_row
        ]
        inputs = [TokensPrompt(prompt_token_ids=[int(t) for t in p]) for p in prompts]
        outputs = self.llm.generate(inputs, sampling, lora_request=self._lora, use_tqdm=False)
        return [self._completion(out.outputs[0]) for out in outputs]

    def _completion(self, out: Any) -> Completion:
        ids = list(out.token_ids)
        # out.logprobs: one {token id: Logprob} per sampled token, holding at least that token
        logprobs = [step[t].logprob for t, step in zip(ids, out.logprobs, strict=True)]
        finish = "length" if out.finish_reason == "length" else "stop"
        text = self.tokenizer.decode(ids, skip_special_tokens=True)
        return Completion(ids, logprobs, finish, text)
