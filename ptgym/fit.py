"""The supervised optimisation loop shared by ``ptgym sft``, ``ptgym rm`` and ``ptgym dpo``.

Each command supplies rows (already tokenised), a ``loss_fn(rows) -> (loss, stats)`` that is a
mean over its rows, and an ``evaluate() -> metrics`` on held-out rows (``held_out_metrics`` does
the chunking and averaging), after ``start_output`` made OUT; this module shuffles,
splits batches into micro-batches (gradients accumulate, each micro-batch weighted by its share of
the rows), clips, steps AdamW under the warm-up/decay schedule the RL trainer uses, and writes
one record per optimizer step to ``OUT/metrics.msgpack`` (``loss/``, ``eval/``, ``perf/``).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ptgym.config import to_yaml
from ptgym.metrics import MetricsLogger
from ptgym.prefconfig import FitConfig


def split(rows: Sequence[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """``(train, held_out)``: a seeded shuffle, the last ``fraction`` held out (at least one row
    when the fraction is positive and there are two rows or more)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    n = round(len(rows) * fraction) if fraction > 0 else 0
    n = min(max(n, 1 if fraction > 0 and len(rows) > 1 else 0), len(rows) - 1)
    return [rows[i] for i in order[: len(rows) - n]], [rows[i] for i in order[len(rows) - n :]]


def _schedule(cfg: FitConfig, total: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if cfg.warmup_steps and step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = min((step - cfg.warmup_steps) / max(total - cfg.warmup_steps, 1), 1.0)
        if cfg.schedule == "linear":
            return max(1.0 - progress, 0.0)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0

    return factor


def total_steps(cfg: FitConfig, n_rows: int) -> int:
    per_epoch = math.ceil(n_rows / cfg.batch)
    return min(cfg.max_steps, cfg.epochs * per_epoch) if cfg.max_steps else cfg.epochs * per_epoch


def fit(
    params: list[torch.nn.Parameter],
    rows: Sequence[Any],
    cfg: FitConfig,
    *,
    loss_fn: Callable[[list[Any]], tuple[torch.Tensor, dict[str, Any]]],
    evaluate: Callable[[], dict[str, float]],
    out: str | Path,
    log: Callable[[str], Any] = print,
) -> dict[str, float]:
    """Train; returns the last step's metrics (with the final held-out eval)."""
    if not rows:
        raise ValueError("no training rows: the data file is empty or every row was filtered out")
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    total = total_steps(cfg, len(rows))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(cfg, total))
    rng = random.Random(cfg.seed)
    logger = MetricsLogger(out)
    step, last = 0, {}
    try:
        while step < total:
            order = list(range(len(rows)))
            rng.shuffle(order)
            for start in range(0, len(order), cfg.batch):
                batch = [rows[i] for i in order[start : start + cfg.batch]]
                t0 = time.perf_counter()
                stats = _accumulate(batch, cfg.micro_batch, loss_fn)
                if cfg.grad_clip > 0:
                    norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    stats["loss/grad_norm"] = float(norm)
                optimizer.step()
                stats["loss/lr"] = scheduler.get_last_lr()[0]
                scheduler.step()
                step += 1
                stats["perf/step_s"] = time.perf_counter() - t0
                if step == total or (cfg.eval_every and step % cfg.eval_every == 0):
                    stats.update(evaluate())
                logger.log(step, stats)
                log(_line(step, total, stats))
                last = stats
                if step >= total:
                    break
    finally:
        logger.close()
    return last


def _accumulate(
    batch: list[Any], micro_batch: int, loss_fn: Callable[[list[Any]], tuple[torch.Tensor, dict]]
) -> dict[str, float]:
    totals: dict[str, float] = {}
    for start in range(0, len(batch), micro_batch):
        part = batch[start : start + micro_batch]
        weight = len(part) / len(batch)
        loss, stats = loss_fn(part)
        (loss * weight).backward()
        for k, v in {"loss": loss.detach(), **stats}.items():
            totals[f"loss/{k}"] = totals.get(f"loss/{k}", 0.0) + weight * float(v)
    return totals


def _line(step: int, total: int, m: dict[str, float]) -> str:
    keys = [k for k in m if k.startswith(("loss/loss", "loss/accuracy", "loss/margin", "eval/"))]
    shown = "  ".join(
        f"{k.split('/', 1)[1] if k.startswith('loss/') else k}={m[k]:.4g}" for k in keys
    )
    return f"step {step}/{total}  {shown}  {m['perf/step_s']:.2f}s"


def start_output(cfg: Any, default: str) -> Path:
    """``cfg.out`` (or ``default``) created with the command's whole config in ``config.yaml``,
    and every seed set from ``cfg.trainer.seed``, before the model is built."""
    from ptgym.trainer import seed_everything

    out = Path(cfg.out or default)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(to_yaml(cfg))
    seed_everything(cfg.trainer.seed)
    return out


@torch.no_grad()
def held_out_metrics(
    module: Any,
    rows: Sequence[Any],
    micro_batch: int,
    chunk_stats: Callable[[list[Any]], tuple[dict[str, Any], int]],
) -> dict[str, float]:
    """``eval/`` metrics over held-out rows: ``chunk_stats(chunk) -> (stats, weight)`` per
    micro-batch, averaged by weight, with ``module`` in eval mode and no gradients."""
    if not rows:
        return {}
    module.eval()
    parts, weights = [], []
    for start in range(0, len(rows), micro_batch):
        stats, weight = chunk_stats(list(rows[start : start + micro_batch]))
        parts.append(stats)
        weights.append(weight)
    module.train()
    return mean_stats(parts, weights, "eval/")


def mean_stats(values: list[dict[str, float]], weights: list[int], prefix: str) -> dict[str, float]:
    """Weighted mean of per-chunk stats dicts, keys prefixed (``eval/accuracy``)."""
    total = sum(weights)
    keys = values[0].keys() if values else []
    return {
        f"{prefix}{k}": sum(float(v[k]) * w for v, w in zip(values, weights, strict=True)) / total
        for k in keys
    }


def save_model(policy: Any, folder: str | Path, base: str) -> Path:
    """A trained ``Policy`` as a plain transformers folder (LoRA merged; the adapter alone also
    in ``<folder>-adapter``), written to a temp folder and renamed. ``base``: the model name the
    run started from, kept in ``ptgym_base.txt`` (a short name or Hub id, not a cache path)."""
    import shutil

    folder = Path(folder)
    model = policy.model
    if policy.use_lora:
        adapter = folder.with_name(f"{folder.name}-adapter")
        shutil.rmtree(adapter, ignore_errors=True)
        for peft_cfg in model.peft_config.values():  # portable: the name, not this cache path
            peft_cfg.base_model_name_or_path = base
        model.save_pretrained(adapter)
        model = model.merge_and_unload()
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    policy.tokenizer.save_pretrained(tmp)
    (tmp / "ptgym_base.txt").write_text(base + "\n")
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return folder


def fit_policy(
    policy: Any,
    rows: Sequence[Any],
    cfg: Any,
    *,
    loss_fn: Callable[[list[Any]], tuple[torch.Tensor, dict[str, Any]]],
    evaluate: Callable[[], dict[str, float]],
    out: Path,
    log: Callable[[str], Any] = print,
) -> dict[str, float]:
    """``fit`` a ``Policy``'s trainable parameters on ``cfg.trainer``, then ``save_model`` it to
    ``OUT/model`` (``ptgym sft`` and ``ptgym dpo``); returns the last step's metrics."""
    policy.train()
    last = fit(
        policy.trainable_parameters(),
        rows,
        cfg.trainer,
        loss_fn=loss_fn,
        evaluate=evaluate,
        out=out,
        log=log,
    )
    log(f"saved the model to {save_model(policy, out / 'model', cfg.model.name)}")
    return last


def refuse_adapter(model_cfg: Any, command: str) -> None:
    """``model.adapter`` applies to rollouts; these commands start from a full model folder."""
    if getattr(model_cfg, "adapter", None):
        raise ValueError(
            f"ptgym {command} does not apply model.adapter: pass a merged model folder as "
            "model=... (ptgym sft/dpo write one to OUT/model)"
        )
