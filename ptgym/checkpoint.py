"""Checkpoints: written atomically, resumed exactly (DESIGN §8).

``RUN/checkpoints/step-000010/`` holds ``adapter/`` (PEFT format, loadable with
``PeftModel.from_pretrained``) or ``model/`` (full fine-tuning), ``trainable.pt`` (the trainable
tensors: adapters and value head), and ``state.pt`` (optimizer, scheduler, step, RNG states). It is
written to a hidden temp folder, every file fsynced, then renamed: a crash leaves either no
checkpoint or a whole one, never half of one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ptgym.agents.models import portable_name

PREFIX = "step-"


def _fsync_tree(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    for d in [folder, *[p for p in folder.rglob("*") if p.is_dir()]]:
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    run_dir: Path, step: int, policy: Any, optimizer: Any, scheduler: Any, *, keep: int = 2
) -> Path:
    root = Path(run_dir) / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".{final.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one line per step is ours; no shard bars in between
    if policy.use_lora:
        policy.model.save_pretrained(tmp / "adapter")
        _make_portable(tmp / "adapter", policy.tokenizer)
    else:
        policy.model.save_pretrained(tmp / "model")
        policy.tokenizer.save_pretrained(tmp / "model")
    trainable = {n: p.detach().cpu() for n, p in policy.named_parameters() if p.requires_grad}
    torch.save(trainable, tmp / "trainable.pt")
    torch.save(
        {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": rng_state(),
        },
        tmp / "state.pt",
    )
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    fd = os.open(root, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _make_portable(adapter: Path, tokenizer: Any) -> None:
    """PEFT names the base by the folder it was loaded from, an absolute path of this machine;
    name it so another machine can load it (``portable_name``), and keep the tokenizer (and the
    chat template the run used) beside the adapter."""
    path = adapter / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = portable_name(config.get("base_model_name_or_path"))
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(adapter)


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    if not root.exists():
        return []
    done = [p for p in root.iterdir() if p.name.startswith(PREFIX) and (p / "state.pt").exists()]
    return sorted(done, key=lambda p: int(p.name[len(PREFIX) :]))


def load_checkpoint(path: Path, policy: Any, optimizer: Any, scheduler: Any) -> int:
    """Restore weights, optimizer, scheduler and RNG; returns the step the checkpoint ended."""
    trainable = torch.load(path / "trainable.pt", map_location=policy.device, weights_only=True)
    params = dict(policy.named_parameters())
    missing = [n for n in trainable if n not in params]
    if missing:
        raise ValueError(
            f"checkpoint {path} does not fit this model (e.g. {missing[0]!r}); resume with the "
            "model, lora.* and algo settings the run was started with (see RUN/config.yaml)"
        )
    with torch.no_grad():
        for name, tensor in trainable.items():
            params[name].copy_(tensor)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])


def adapter_lora(adapter: str | Path, lora: Any) -> Any:
    """``lora`` with the shape of the adapter at ``adapter`` (rank, alpha, target modules): an
    adapter is continued with the structure it was trained with, whatever ``lora.*`` says."""
    saved = json.loads((Path(adapter) / "adapter_config.json").read_text())
    targets = saved.get("target_modules") or lora.target_modules
    return dataclasses.replace(
        lora,
        enabled=True,
        r=int(saved.get("r", lora.r)),
        alpha=int(saved.get("lora_alpha", lora.alpha)),
        target_modules=[targets] if isinstance(targets, str) else sorted(targets),
    )


def load_adapter(policy: Any, adapter: str | Path) -> int:
    """Copy a saved PEFT adapter's weights into the policy's LoRA layers (built with
    ``adapter_lora``'s settings) so training continues from them; returns the tensors loaded."""
    from peft import load_peft_weights, set_peft_model_state_dict

    weights = load_peft_weights(str(adapter), device=str(policy.device))
    result = set_peft_model_state_dict(policy.model, weights)
    if result.unexpected_keys:
        raise ValueError(
            f"model.adapter={adapter} does not fit model={policy.model.config._name_or_path} "
            f"(e.g. {result.unexpected_keys[0]!r}); give the base model it was trained on"
        )
    return len(weights)


def export_merged(checkpoint: Path, out: Path, base_model: str | None = None) -> Path:
    """Merge a LoRA checkpoint into its base model and save a plain transformers folder (what
    vLLM or any transformers user loads). ``base_model`` defaults to the base the adapter names;
    the tokenizer saved beside the adapter (with the run's chat template) is used when present."""
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ptgym.agents.models import load_model

    adapter = Path(checkpoint) / "adapter"
    if not (adapter / "adapter_config.json").exists():
        raise FileNotFoundError(f"{checkpoint}: no adapter/adapter_config.json (a LoRA checkpoint)")
    if base_model is None:
        config = json.loads((adapter / "adapter_config.json").read_text())
        base_model = config["base_model_name_or_path"]
    model, tokenizer = load_model(base_model, dtype="float32", device="cpu")
    if (adapter / "tokenizer_config.json").exists():
        tokenizer = AutoTokenizer.from_pretrained(adapter)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    _fsync_tree(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
