"""Configs of ``ptgym sft``, ``ptgym rm`` and ``ptgym dpo`` (torch-free, so ``--help`` is fast).

Each is composed by ``ptgym.config.compose`` like ``ptgym train``'s: ``model=`` presets, dotted
overrides, "did you mean" for unknown keys. ``trainer`` is the shared optimisation loop
(``ptgym.fit``); ``model=tiny`` sets its ``lr`` and turns LoRA off, as it does for ``train``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ptgym.config import LoraConfig, ModelConfig, opt


@dataclass
class FitConfig:
    epochs: int = opt(1, "passes over the training rows", minimum=1)
    max_steps: int = opt(0, "stop after this many optimizer steps (0 = run all epochs)", minimum=0)
    batch: int = opt(8, "rows (pairs for rm/dpo) per optimizer step", minimum=1)
    micro_batch: int = opt(8, "rows per forward/backward; gradients accumulate", minimum=1)
    lr: float = opt(1e-4, "learning rate (LoRA-sized; use ~1e-5 for full fine-tuning)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    grad_clip: float = opt(1.0, "max global grad norm (0 = off)")
    warmup_steps: int = opt(0, "linear LR warm-up steps")
    schedule: str = opt(
        "constant", "LR schedule after warm-up", choices=("constant", "linear", "cosine")
    )
    max_length: int = opt(1024, "tokens per row; longer rows are cut at the end", minimum=8)
    eval_fraction: float = opt(0.1, "share of the data held out for evaluation")
    eval_every: int = opt(10, "held-out eval every N steps and at the end (0 = end only)")
    seed: int = opt(0, "seeds the split, the shuffling and torch")


@dataclass
class RMCommand:
    data: str = opt("", "preference JSONL (ptgym or TRL layout), e.g. prefs.jsonl")
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: FitConfig = field(default_factory=FitConfig)
    use_margin: bool = opt(False, "subtract each record's margin inside the sigmoid")
    center: float = opt(0.0, "reward-centering coefficient: + center * mean((r_w + r_l)^2)")
    include_ties: bool = opt(False, "train on ties too (as chosen > rejected; rarely wanted)")
    out: str | None = opt(None, "output folder (default runs/rm-<time>); the model in OUT/model")


@dataclass
class SFTCommand:
    data: str = opt(
        "",
        "JSONL with TRL 'messages' (or 'prompt'+'completion' message lists), ptgym's export_jsonl "
        "output, or a run directory",
    )
    min_reward: float | None = opt(
        None, "keep rows whose 'reward' is at least this (rejection sampling from a run)"
    )
    packing: bool = opt(
        False, "pack rows into trainer.max_length sequences (rows attend across their boundary)"
    )
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: FitConfig = field(default_factory=FitConfig)
    out: str | None = opt(None, "output folder (default runs/sft-<time>); the model in OUT/model")


@dataclass
class PrefAlgoConfig:
    name: str = opt("dpo", "preference objective", choices=("dpo", "ipo", "simpo"))
    beta: float = opt(0.1, "dpo: KL strength; ipo: tau; simpo: reward scale (algo=simpo sets 2.0)")
    gamma: float = opt(0.5, "simpo: target reward margin")
    label_smoothing: float = opt(0.0, "dpo: conservative-DPO label noise (0 = the paper's eq. 7)")


@dataclass
class DPOCommand:
    data: str = opt("", "preference JSONL (ptgym or TRL layout), e.g. prefs.jsonl")
    include_ties: bool = opt(False, "train on ties too (as chosen > rejected; rarely wanted)")
    algo: PrefAlgoConfig = field(default_factory=PrefAlgoConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    trainer: FitConfig = field(default_factory=FitConfig)
    out: str | None = opt(None, "output folder (default runs/dpo-<time>); the model in OUT/model")


@dataclass
class PairsCommand:
    out: str | None = opt(None, "preference JSONL to write (default RUN/pairs.jsonl)")
    per_group: int = opt(1, "pairs per prompt group (0 = every pair in the group)", minimum=0)
    seed: int = opt(0, "orders the pairs (the rank screen's order for the same seed)")
