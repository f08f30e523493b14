"""A lean decode loop for the bf16 sampler copy: the model's own weights, fewer passes over memory.

On this CPU a decode step of SmolLM2-135M through ``transformers`` spends more of its time around
the matmuls than in them (cProfile of a 64-row bf16 decode: Linear layers 31%, attention 15%,
per-row float64 Gumbel noise 11%, growing the KV cache with ``torch.cat`` 9%, dropping finished
rows 5%, and most of the rest Python and module-call overhead). ``LeanDecoder`` runs the same
network as a few tensor operations per layer:

- **fused projections**: one ``[q; k; v]`` matmul and one ``[gate; up]`` matmul per layer
  instead of five, from weights concatenated once per policy version;
- **a preallocated KV cache**: one tensor for every layer, keys and values
  (``layers x 2 x rows x kv-heads x capacity x head-dim``); a step writes one column in place, so
  nothing is copied as the sequence grows, and dropping finished rows is one ``index_select``;
- **grouped-query attention without repeating keys**: queries are viewed as
  ``kv-heads x group``, so each key/value head is read once for its whole group;
- **rotary tables once per batch**: ``cos``/``sin`` for every position the batch can reach are
  computed by the model's own rotary module (so every rope scaling it knows applies) and indexed
  per step.

It is a *sampler*, not the trainer's forward: its logits differ from ``transformers``' in the
last bits of bf16 rounding, so it runs only behind ``rollout.sampler=bf16``, whose update already
corrects for the difference (``losses.sampler_is_weights``). Supported: Llama-family models
(``llama``, ``qwen2``, ``qwen3``) without sliding-window attention; ``supports`` says why another
model is not, and the bf16 sampler then decodes it with the ``transformers`` loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from .hf import left_pad

FAMILIES = ("llama", "qwen2", "qwen3")


def _base(model: Any) -> Any:
    """The transformers model inside a PEFT wrapper (its layers still hold the LoRA modules)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def supports(model: Any) -> str | None:
    """None if ``LeanDecoder`` can run ``model`` (a causal LM, bare or with PEFT LoRA adapters on
    its linear layers), else why not."""
    model = _base(model)
    config = model.config
    if config.model_type not in FAMILIES:
        return f"model_type {config.model_type!r} is not one of {FAMILIES}"
    if getattr(config, "use_sliding_window", False):
        return "sliding-window attention is on"
    layer_types = getattr(config, "layer_types", None) or []
    if any(kind != "full_attention" for kind in layer_types):
        return f"layer types {sorted(set(layer_types))} are not all full attention"
    if config.hidden_act not in ("silu", "swish"):
        return f"hidden_act {config.hidden_act!r} is not silu"
    if getattr(config, "mlp_bias", False):
        return "the MLP has biases"
    if not hasattr(model, "model") or not hasattr(model.model, "rotary_emb"):
        return "no model.model.rotary_emb"
    for name, module in model.named_modules():
        if hasattr(module, "base_layer") and not hasattr(module, "get_delta_weight"):
            return f"{name} is an adapter layer with no get_delta_weight"
        if any(getattr(module, "use_dora", {}).values()):
            return f"{name} uses DoRA"
        if hasattr(module, "base_layer") and isinstance(module.base_layer, torch.nn.Embedding):
            return f"{name}: adapters on the embeddings"
    return None


def _weight(linear: Any) -> torch.Tensor:
    """A linear layer's effective weight: with its active LoRA adapters merged in, if any (the
    PEFT model itself is not touched)."""
    base = getattr(linear, "base_layer", None)
    if base is None:
        return linear.weight.detach()
    weight = base.weight.detach()
    if getattr(linear, "merged", False) or getattr(linear, "disable_adapters", False):
        return weight
    with torch.no_grad():
        for name in linear.active_adapters:
            if name in linear.lora_A:
                weight = weight + linear.get_delta_weight(name)
    return weight


def _bias(linear: Any) -> torch.Tensor | None:
    bias = getattr(linear, "base_layer", linear).bias
    return None if bias is None else bias.detach()


def _packed(weight: torch.Tensor, rows: int) -> torch.Tensor | None:
    """``weight`` reordered once into oneDNN's blocked layout, or None where this torch cannot.

    ``F.linear`` on a bf16 CPU tensor reorders the weight on every call; prepacked, a decode
    step's matmuls took 1.3-1.9x less time (SmolLM2-135M's shapes, 8 and 64 rows, this CPU).
    The ops are the ones ``torch.compile``'s CPU backend emits for a frozen linear
    (``mkldnn._reorder_linear_weight`` / ``_linear_pointwise``); they are not public API, so any
    failure here falls back to ``F.linear``.
    """
    if weight.device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return None
    try:
        packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
        probe = torch.zeros((1, weight.shape[1]), dtype=weight.dtype)
        out = torch.ops.mkldnn._linear_pointwise(probe, packed, None, "none", [], "")
    except (AttributeError, RuntimeError):
        return None
    return packed if out.shape == (1, weight.shape[0]) else None


class _Linear:
    """``y = x W^T + b`` with the weight prepacked where the CPU backend allows it."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, rows: int = 32):
        self.bias = bias
        self.packed = _packed(weight.contiguous(), rows)
        self.weight = weight.contiguous() if self.packed is None else None  # one copy kept

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


class _Layer:
    """One decoder layer's weights in ``dtype``, fused for the lean step."""

    def __init__(self, layer: Any, heads: int, kv_heads: int, head_dim: int, dtype: Any):
        attn, mlp = layer.self_attn, layer.mlp
        cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
        projections = (attn.q_proj, attn.k_proj, attn.v_proj)
        qkv = torch.cat([_weight(p) for p in projections])
        biases = [_bias(p) for p in projections]
        bias = None
        if any(b is not None for b in biases):
            sizes = (heads * head_dim, kv_heads * head_dim, kv_heads * head_dim)
            bias = torch.cat(
                [
                    b if b is not None else qkv.new_zeros(n)
                    for b, n in zip(biases, sizes, strict=True)
                ]
            )
        self.qkv = _Linear(cast(qkv), cast(bias))
        self.o = _Linear(cast(_weight(attn.o_proj)), cast(_bias(attn.o_proj)))
        self.gate_up = _Linear(cast(torch.cat([_weight(mlp.gate_proj), _weight(mlp.up_proj)])))
        self.down = _Linear(cast(_weight(mlp.down_proj)))
        self.norm_in = _norm(layer.input_layernorm, dtype)
        self.norm_post = _norm(layer.post_attention_layernorm, dtype)
        q_norm, k_norm = getattr(attn, "q_norm", None), getattr(attn, "k_norm", None)  # qwen3
        self.q_norm = _norm(q_norm, dtype) if q_norm is not None else None
        self.k_norm = _norm(k_norm, dtype) if k_norm is not None else None


def _norm(module: Any, dtype: Any) -> tuple[torch.Tensor, float]:
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
    return module.weight.detach().to(dtype), float(eps)


def _rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """RMSNorm as ``transformers`` computes it: statistics in float32, scale in the model dtype."""
    weight, eps = norm
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding (Su et al., 2021, "RoFormer", Eq. 34) in the half-split layout."""
    first, second = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class LeanDecoder:
    """Prefill and decode a batch of rows with a merged Llama-family model's weights.

    ``prefill(prompts, capacity)`` runs the left-padded prompts and returns each one's
    next-token logits; ``select(rows)`` keeps (or repeats) rows of the batch; ``step(tokens)``
    appends one token per row and returns the next logits. ``capacity`` bounds prompt plus new
    tokens. The weights are read from ``model`` once, at construction, LoRA adapters merged in and
    cast to ``dtype`` (default: the model's); the model itself is not changed. Build a new
    decoder when the weights change.

    The KV cache is float32 whatever the weights' dtype: on this CPU a float32 batched matmul
    over the cache's strided columns ran 2-3x faster than a bf16 one for attention's small
    per-head matrices (3 queries x 64 dims against the cache), and attention then needs no
    casts.
    """

    def __init__(self, model: Any, pad_token_id: int, dtype: Any = None):
        reason = supports(model)
        if reason is not None:
            raise ValueError(f"LeanDecoder cannot run this model: {reason}")
        model = _base(model)
        config = model.config
        self.heads = config.num_attention_heads
        self.kv_heads = getattr(config, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.group = self.heads // self.kv_heads
        self.scale = self.head_dim**-0.5
        self.pad_token_id = pad_token_id
        inner = model.model
        self.dtype = dtype or inner.embed_tokens.weight.dtype
        self.rotary = inner.rotary_emb
        with torch.no_grad():
            self.embed = inner.embed_tokens.weight.detach().to(self.dtype)
            self.final_norm = _norm(inner.norm, self.dtype)
            self.lm_head = _Linear(_weight(model.get_output_embeddings()).to(self.dtype))
            self.layers = [
                _Layer(layer, self.heads, self.kv_heads, self.head_dim, self.dtype)
                for layer in inner.layers
            ]
        self.device = self.embed.device
        self.cache: torch.Tensor | None = None  # (layers, 2, rows, kv_heads, capacity, head_dim)
        self.mask: torch.Tensor | None = None  # (rows, capacity) bool: which columns are tokens
        self.position: torch.Tensor | None = None  # (rows,) the last token's position
        self.filled = 0  # columns written so far (shared by every row: prompts are left-padded)
        self.live: torch.Tensor | None = None  # cache rows of the caller's rows (None: all, 1:1)

    def prefill(self, prompts: Sequence[Sequence[int]], capacity: int) -> torch.Tensor:
        """Run the prompts (left-padded to one width) into a fresh cache of ``capacity``
        columns; the last position's logits, (rows, vocabulary)."""
        width = max(len(p) for p in prompts)
        if capacity < width:
            raise ValueError(f"capacity {capacity} is below the longest prompt ({width} tokens)")
        tokens, mask, positions = left_pad(prompts, self.pad_token_id, self.device)
        rows = len(prompts)
        self.mask = torch.zeros((rows, capacity), dtype=torch.bool, device=self.device)
        self.mask[:, :width] = mask.bool()
        self.cache = torch.empty(  # every column is written before attention reads it
            (len(self.layers), 2, rows, self.kv_heads, capacity, self.head_dim),
            dtype=torch.float32,
            device=self.device,
        )
        table = torch.arange(capacity, device=self.device)[None]
        cos, sin = self.rotary(self.embed[:1], table)  # (1, capacity, head_dim) each
        self._cos, self._sin = cos[0], sin[0]
        self.filled, self.live = 0, None
        logits = self._forward(tokens, positions)[:, -1]
        self.position = positions[:, -1]
        return logits

    def select(self, rows: torch.Tensor) -> None:
        """Keep the batch's rows ``rows`` (in that order; a row may repeat).

        Dropping finished rows is lazy: the cache keeps them (their columns are computed but
        never read back) until a quarter of its rows are dead, then it is compacted, copying the
        written columns only. A compaction moves the whole cache through memory, about two
        steps' worth of attention reads; compacting at every finished row spent 20% of a 64-row
        decode there.
        """
        assert self.cache is not None and self.mask is not None and self.position is not None
        live = rows if self.live is None else self.live[rows]
        held = self.cache.shape[2]
        if len(live) > held or len(live) <= 0.75 * held or len(live.unique()) < len(live):
            self._compact(live)
        else:
            self.live = live

    def _compact(self, live: torch.Tensor) -> None:
        assert self.cache is not None and self.mask is not None and self.position is not None
        layers, _, _, kv_heads, capacity, dim = self.cache.shape
        cache = self.cache.new_empty((layers, 2, len(live), kv_heads, capacity, dim))
        cache[..., : self.filled, :] = self.cache[..., : self.filled, :].index_select(2, live)
        self.cache = cache  # columns past ``filled`` are written before they are read
        self.mask = self.mask.index_select(0, live)
        self.position = self.position.index_select(0, live)
        self.live = None

    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Append one token per row, (rows,); the next logits, (rows, vocabulary)."""
        assert self.cache is not None and self.mask is not None and self.position is not None
        if self.live is not None:  # rows the caller dropped still hold a place: feed them pad
            held = tokens.new_full((self.cache.shape[2],), self.pad_token_id)
            held[self.live] = tokens
            tokens = held
        self.position = self.position + 1
        self.mask[:, self.filled] = True
        logits = self._forward(tokens[:, None], self.position[:, None])[:, -1]
        return logits if self.live is None else logits[self.live]

    def _forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Run ``tokens`` (rows, S) at ``positions`` (rows, S) into columns
        ``[filled, filled + S)``; logits (rows, 1, vocabulary) of the last position."""
        assert self.cache is not None and self.mask is not None
        rows, length = tokens.shape
        start, end = self.filled, self.filled + length
        cos, sin = self._cos[positions][:, :, None], self._sin[positions][:, :, None]  # (r,S,1,D)
        if length == 1:  # a decode step: the row's tokens, this one included (``step``)
            hidden = ~self.mask[:, None, None, :end]  # (r, 1, 1, end)
        else:  # the prompt: the row's tokens, causally; a padding query sees itself, so no
            # softmax row is all -inf and no NaN reaches the cache
            column = torch.arange(end, device=self.device)
            query = torch.arange(start, end, device=self.device)[:, None]  # (S, 1)
            keys = self.mask[:, None, :end]  # (r, 1, end)
            visible = ((keys & (column <= query)) | (column == query))[:, None]  # (r, 1, S, end)
        heads, kv_heads, dim = self.heads, self.kv_heads, self.head_dim
        x = F.embedding(tokens, self.embed)  # (r, S, hidden)
        for index, layer in enumerate(self.layers):
            qkv = layer.qkv(_rms(x, layer.norm_in)).view(rows, length, heads + 2 * kv_heads, dim)
            q, k, v = qkv.split((heads, kv_heads, kv_heads), dim=2)
            if layer.q_norm is not None:
                q = _rms(q, layer.q_norm)
            if layer.k_norm is not None:
                k = _rms(k, layer.k_norm)
            q, k = _rotate(q.float(), cos, sin), _rotate(k.float(), cos, sin)
            cache = self.cache[index]  # (2, r, kv_heads, capacity, D)
            cache[0, :, :, start:end] = k.transpose(1, 2)
            cache[1, :, :, start:end] = v.transpose(1, 2)
            keys, values = cache[0, :, :, :end], cache[1, :, :, :end]  # (r, kv_heads, end, D)
            if length == 1:
                # queries as (r, kv_heads, group, D): each key/value head is read once for its
                # whole group, with no broadcast copy of the cache
                q = q.view(rows, kv_heads, self.group, dim)
                scores = (q @ keys.transpose(-1, -2)) * self.scale  # (r, kv_heads, group, end)
                weights = scores.masked_fill_(hidden, float("-inf")).softmax(dim=-1)
                attended = (weights @ values).view(rows, 1, heads * dim)
            else:  # the prompt: torch's fused attention, which never holds S x S scores per head
                attended = F.scaled_dot_product_attention(
                    q.transpose(1, 2), keys, values, visible, scale=self.scale, enable_gqa=True
                )  # (r, heads, S, D)
                attended = attended.transpose(1, 2).reshape(rows, length, heads * dim)
            x = x + layer.o(attended.to(self.dtype))
            gate, up = layer.gate_up(_rms(x, layer.norm_post)).chunk(2, dim=-1)
            x = x + layer.down(F.silu(gate) * up)
        self.filled = end
        return self.lm_head(_rms(x[:, -1:], self.final_norm))
