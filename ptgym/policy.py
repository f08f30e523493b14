"""The trainable policy: a causal LM, LoRA adapters (PEFT), an optional value head, the reference.

With LoRA the reference policy is the same network with its adapters disabled (DESIGN §5: no
second copy in memory); with full fine-tuning it is a frozen copy, made only when the KL term
needs it. The value head (PPO) is a linear layer on the policy's last hidden state, so the critic
shares the backbone and, with LoRA, its adapters.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ptgym import prefix
from ptgym.config import LoraConfig, ModelConfig
from ptgym.losses import entropy_from_logits, token_logprobs


@dataclass
class ForwardOut:
    logprobs: Tensor  # (B, T) log p(input_ids[:, t] | < t) / temperature; 0 at t = 0
    entropy: Tensor | None  # (B, T) entropy of the predictive distribution for token t
    values: Tensor | None  # (B, T) value estimate at the state before token t


class Policy(nn.Module):
    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        lora: LoraConfig,
        value_head: bool,
        need_reference: bool,
        shared_prefix: bool = True,
    ):
        super().__init__()
        self.tokenizer = tokenizer
        self.use_lora = lora.enabled
        if lora.enabled:
            from peft import LoraConfig as PeftLoraConfig
            from peft import get_peft_model

            model = get_peft_model(
                model,
                PeftLoraConfig(
                    r=lora.r,
                    lora_alpha=lora.alpha,
                    lora_dropout=lora.dropout,
                    target_modules=list(lora.target_modules),
                    task_type="CAUSAL_LM",
                ),
            )
        self.model = model
        self.shared_prefix = shared_prefix
        self.value_head = nn.Linear(model.config.hidden_size, 1) if value_head else None
        if self.value_head is not None:
            nn.init.zeros_(self.value_head.weight)
            nn.init.zeros_(self.value_head.bias)
            self.value_head.to(self.device, dtype=torch.float32)
        self._frozen_ref = None
        if need_reference and not lora.enabled:
            self._frozen_ref = copy.deepcopy(model).eval().requires_grad_(False)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        *,
        temperature: float = 1.0,
        with_entropy: bool = False,
        first: int = 1,
        starts: Tensor | None = None,
    ) -> ForwardOut:
        """Logprobs (and entropy, values) of every token from position ``first`` on.

        ``first`` is the earliest position that holds a sampled token in this batch: the
        vocabulary projection, the largest tensor of the pass (B x T x V), is only computed for
        the positions that predict tokens ``first..T-1`` (``logits_to_keep``); the rest is 0.
        ``starts`` (B,), each row's first sampled position, lets rows that share a prompt run it
        once (``ptgym.prefix``; not with a value head, and only where it saves positions); then
        only each row's own tokens from its prompt's last one on are filled in.
        """
        T = input_ids.shape[1]
        shared = None
        if starts is not None and self.shared_prefix and self.value_head is None:
            shared = prefix.plan(input_ids, attention_mask, starts)
        if shared is not None:
            out = None
            raw = prefix.suffix_logits(self.model, shared)  # (B, S, V)
            targets = shared.suffix_ids[:, 1:]
            place = lambda x: prefix.to_columns(shared, x, T)  # noqa: E731
        else:
            first = max(1, min(first, T - 1))
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                output_hidden_states=self.value_head is not None,
                use_cache=False,
                logits_to_keep=T - first + 1,
            )
            raw = out.logits  # (B, T-first+1, V)
            targets = input_ids[:, first:]
            place = lambda x: _left_pad(x, first)  # noqa: E731
        logits = _scaled(raw[:, :-1].float(), temperature)
        logprobs = place(token_logprobs(logits, targets))  # (B, T)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = place(entropy_from_logits(logits))
        values = None
        if out is not None and self.value_head is not None:
            hidden = out.hidden_states[-1].float()  # (B, T, H)
            v = self.value_head(hidden).squeeze(-1)  # (B, T): V(state before token t+1)
            values = _left_pad(v[:, :-1], 1)  # values[:, t] = V(state before token t)
        return ForwardOut(logprobs, entropy, values)

    @torch.no_grad()
    def reference_logprobs(
        self, input_ids: Tensor, attention_mask: Tensor, *, temperature: float = 1.0, first: int = 1
    ) -> Tensor:
        """Logprobs under the reference policy: adapters disabled, or the frozen copy."""
        T = input_ids.shape[1]
        first = max(1, min(first, T - 1))
        kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=T - first + 1,
        )
        if self._frozen_ref is not None:
            out = self._frozen_ref(**kwargs)
        else:
            with self.adapters_disabled():
                out = self.model(**kwargs)
        logits = _scaled(out.logits[:, :-1].float(), temperature)
        return _left_pad(token_logprobs(logits, input_ids[:, first:]), first)

    @contextlib.contextmanager
    def adapters_disabled(self) -> Iterator[None]:
        if not self.use_lora:
            raise RuntimeError("adapters_disabled needs a LoRA policy (lora.enabled=true)")
        with self.model.disable_adapter():
            yield


def _scaled(logits: Tensor, temperature: float) -> Tensor:
    """Logits / temperature: the sampler's convention (agents/backend.py), greedy counts as 1."""
    return logits / temperature if temperature > 0 and temperature != 1.0 else logits


def _left_pad(x: Tensor, n: int) -> Tensor:
    """(B, L) -> (B, n + L) with n zero columns in front."""
    return torch.cat([x.new_zeros(x.shape[0], n), x], dim=1)


def build_policy(
    model_cfg: ModelConfig, lora: LoraConfig, *, value_head: bool, need_reference: bool
) -> Policy:
    from ptgym.agents.models import load_model

    model, tokenizer = load_model(
        model_cfg.name,
        dtype=model_cfg.dtype,
        device=model_cfg.device,
        chat_template=model_cfg.chat_template,
    )
    if model_cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        if lora.enabled:  # frozen embeddings: checkpointed blocks still need inputs with grads
            model.enable_input_require_grads()
    return Policy(
        model,
        tokenizer,
        lora=lora,
        value_head=value_head,
        need_reference=need_reference,
        shared_prefix=not model_cfg.gradient_checkpointing,  # checkpointing turns the cache off
    )
