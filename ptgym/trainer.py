"""``ptgym train``: the online RL loop (GRPO or PPO) over multi-turn trajectories.

Each step: collect ``rollout.tasks`` x ``rollout.group`` episodes with the current policy (the
``hf`` backend shares the policy's weights, so there is no weight sync), append them to the
store, run ``Update`` (credit assignment, loss, optimizer), log namespaced metrics, checkpoint.
Reads top to bottom: setup, resume, loop.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm import tqdm

from ptgym import checkpoint as ckpt
from ptgym.build import make_backend, make_collector, resolve_sampler, task_seeds
from ptgym.config import ConfigError, TrainCommand, _get, load_yaml, make_out_dir, to_yaml
from ptgym.evaluate import HeldOutEval
from ptgym.metrics import MetricsLogger, batch_metrics, step_metrics
from ptgym.notes import NOTES_FILE, trainer_notes
from ptgym.policy import build_policy
from ptgym.resume import drop_after
from ptgym.runstatus import Heartbeat
from ptgym.store import RecordWriter, TrajectoryStore, atomic_write_bytes
from ptgym.types import Trajectory
from ptgym.update import Update, make_update, turn_advantages


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_lambda(cfg: TrainCommand) -> Any:
    warmup, total, kind = cfg.trainer.warmup_steps, cfg.trainer.steps, cfg.trainer.schedule

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(total - warmup, 1)
        if kind == "linear":
            return max(1.0 - progress, 0.0)
        if kind == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return 1.0

    return factor


def gpu_metrics() -> dict[str, float]:
    if not torch.cuda.is_available():
        return {}
    return {
        "gpu/memory_allocated_gb": torch.cuda.memory_allocated() / 2**30,
        "gpu/max_memory_allocated_gb": torch.cuda.max_memory_allocated() / 2**30,
    }


# What makes two runs different runs: a resume may change trainer.steps or logging, not these.
SAME_RUN_KEYS = (
    "env.name",
    "env.kwargs",
    "model.name",
    "model.adapter",
    "algo.name",
    "lora.enabled",
    "lora.r",
    "lora.alpha",
    "lora.target_modules",
)


def _prepare_run_dir(cfg: TrainCommand) -> Path:
    run = Path(cfg.out)
    if (run / "config.yaml").exists():
        _refuse_another_run(run, cfg)
    elif (run / "metrics.msgpack").exists() or (run / "trajectories").exists():
        raise ConfigError(f"out={run} holds records but no config.yaml; choose another out=DIR")
    existing = ckpt.list_checkpoints(run)
    if existing and not cfg.resume:
        raise ConfigError(
            f"out={run} already holds a run with checkpoints (last: {existing[-1].name}); pass "
            "resume=true to continue it, or choose another out=DIR"
        )
    if cfg.resume and not existing:
        raise ConfigError(
            f"resume=true, but out={run} holds no checkpoint to resume from; drop resume=true "
            "to start the run there"
        )
    make_out_dir(cfg.out)
    atomic_write_bytes(run / "config.yaml", to_yaml(cfg).encode())
    return run


def _refuse_another_run(run: Path, cfg: TrainCommand) -> None:
    """A run directory is reused only by the same training run (its records may be dropped)."""
    try:
        trained = "trainer" in OmegaConf.load(run / "config.yaml")
        there = load_yaml(TrainCommand, run / "config.yaml")
    except Exception as exc:  # any config it cannot read is not this run
        raise ConfigError(
            f"out={run} holds a config.yaml this run cannot read ({exc}); choose another out=DIR"
        ) from None
    if not trained:
        raise ConfigError(
            f"out={run} holds the output of another command (ptgym rollout or eval), not a "
            "training run; choose another out=DIR"
        )
    for key in SAME_RUN_KEYS:
        if _get(there, key) != _get(cfg, key):
            raise ConfigError(
                f"out={run} holds a different run ({key}={_get(there, key)} there, "
                f"{_get(cfg, key)} here); choose another out=DIR"
            )


def _unscored_chat(cfg: TrainCommand) -> bool:
    from ptgym.registry import resolve

    return resolve(cfg.env.name).id == "ptgym/Chat-v0" and not cfg.env.kwargs.get("reward")


def train(cfg: TrainCommand, *, log: Any = print) -> dict[str, float]:
    """Run the loop; returns the last step's metrics."""
    if _unscored_chat(cfg):
        raise ConfigError(
            "env=chat has no reward to train on: add reward=rm:PATH (a `ptgym rm` checkpoint) or "
            "reward=judge:MODEL; without one it only samples (ptgym rollout env=chat group=2)"
        )
    if cfg.model.adapter:  # continue training it: its rank, alpha and targets win over lora.*
        cfg = dataclasses.replace(cfg, lora=ckpt.adapter_lora(cfg.model.adapter, cfg.lora))
    if cfg.rollout.sampler == "auto":  # config.yaml records what ran
        cfg = dataclasses.replace(cfg, rollout=resolve_sampler(cfg.rollout, cfg.model.device))
        log(f"rollout.sampler=auto -> {cfg.rollout.sampler} on this machine")
    run = _prepare_run_dir(cfg)
    seed_everything(cfg.trainer.seed)
    log(f"ptgym train: env={cfg.env.name} algo={cfg.algo.name} model={cfg.model.name} -> {run}")
    log(f"watch it live: ptgym tui monitor {run}")
    policy = build_policy(
        cfg.model, cfg.lora, value_head=cfg.algo.name == "ppo", need_reference=cfg.algo.beta > 0
    )
    optimizer = torch.optim.AdamW(
        policy.trainable_parameters(), lr=cfg.trainer.lr, weight_decay=cfg.trainer.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    if cfg.model.adapter:
        n = ckpt.load_adapter(policy, cfg.model.adapter)
        log(f"continuing model.adapter={cfg.model.adapter} ({n} tensors, lora.r={cfg.lora.r})")
    start = 0
    if cfg.resume:
        found = ckpt.list_checkpoints(run)
        start = ckpt.load_checkpoint(found[-1], policy, optimizer, scheduler)
        log(f"resumed from {found[-1]} (step {start})")
    # What steps after the checkpoint (or a first attempt without one) wrote is written again.
    if dropped := drop_after(run, start):
        what = ", ".join(f"{n} from {name}" for name, n in dropped.items())
        log(f"dropped the records of steps after {start}: {what}")
    backend = make_backend(cfg.rollout, policy.model, policy.tokenizer, cfg.model.name)
    collector = make_collector(
        backend,
        policy.tokenizer,
        cfg.env,
        cfg.sampling,
        cfg.rollout,
        model_name=cfg.model.name,
        split="train",
    )
    if cfg.rollout.collector == "ray":
        log(collector.runner.describe())  # nodes, CPUs, where the env actors landed
    held_out = None
    if cfg.trainer.eval_every > 0:  # greedy pass@1 on held-out tasks, same backend and weights
        held_out = HeldOutEval(backend, policy.tokenizer, cfg)
    update = make_update(policy, optimizer, cfg.algo, cfg.trainer, cfg.sampling, cfg.rollout)
    store = TrajectoryStore(run)
    notes = RecordWriter(run / NOTES_FILE)
    metrics = MetricsLogger(
        run,
        tensorboard=cfg.log.tensorboard,
        wandb={"project": cfg.log.wandb_project, "dir": str(run)} if cfg.log.wandb else None,
    )
    last: dict[str, float] = {}
    bar = tqdm(
        range(start, cfg.trainer.steps),
        initial=start,
        total=cfg.trainer.steps,
        desc="train",
        unit="step",
        dynamic_ncols=True,
    )
    heartbeat = Heartbeat(run, steps=cfg.trainer.steps, step=start)
    outcome = "failed"
    try:
        for step in bar:
            last, trajs = _one_step(step, cfg, policy, collector, update, store, notes)
            last["lr"] = scheduler.get_last_lr()[0]
            with warnings.catch_warnings():  # a step without an update (all dropped) still counts
                warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step")
                scheduler.step()
            if held_out is not None and (step + 1) % cfg.trainer.eval_every == 0:
                last.update(held_out(step + 1))
            metrics.log(step + 1, last)
            bar.write(_console_line(step + 1, cfg.trainer.steps, last))
            if report := error_report(step + 1, trajs):
                bar.write(report, file=sys.stderr)
            if trajs and all(t.error is not None for t in trajs):
                raise EpisodesFailed(
                    f"{report}; every episode failed: fix the env (errors and "
                    f"tracebacks are stored with the trajectories in {run})"
                )
            if (step + 1) % cfg.trainer.save_every == 0 or step + 1 == cfg.trainer.steps:
                ckpt.save_checkpoint(
                    run, step + 1, policy, optimizer, scheduler, keep=cfg.trainer.keep_checkpoints
                )
            heartbeat.beat(step + 1)
        outcome = "finished"
    finally:
        heartbeat.finish(outcome)
        bar.close()
        store.close()
        notes.close()
        metrics.close()
        collector.close()
        if held_out is not None:
            held_out.close()
    return last


def _one_step(
    step: int,
    cfg: TrainCommand,
    policy: Any,
    collector: Any,
    update: Update,
    store: TrajectoryStore,
    notes: RecordWriter | None = None,
) -> tuple[dict[str, float], list[Trajectory]]:
    t0 = time.perf_counter()
    if (sync := getattr(collector.backend, "sync", None)) is not None:
        sync(step)  # a sampler with its own copy of the weights (bf16, int8) rebuilds it
    trajs = collector.collect(
        task_seeds(cfg.rollout, step),
        cfg.rollout.group,
        policy_version=step,
        group_prefix=f"{step}/",
    )
    store.extend(trajs)
    m = batch_metrics(trajs)
    kept, sel = update.select(trajs)
    m.update(sel)
    t1 = time.perf_counter()
    advantages: list[list[float]] = []
    if kept:
        policy.train()
        batch = update.make_batch(kept)
        advantages = turn_advantages(batch, len(kept))
        m.update(update.step(batch))
    t_train = time.perf_counter() - t1
    if notes is not None:
        for note in trainer_notes(step + 1, trajs, kept, advantages):
            notes.append(note)
    m.update(step_metrics(collector.stats, t_train, time.perf_counter() - t0))
    m.update(gpu_metrics())
    return m, trajs


FRAME_LINE = re.compile(r'File "(.+)", line (\d+), in (.+)')


class EpisodesFailed(RuntimeError):
    """Every episode of a step failed: the env is broken, and training on would learn nothing."""


def error_report(step: int, trajs: list[Trajectory]) -> str | None:
    """One console line for a step whose episodes failed: how many, and the first error as the
    last line of its traceback with where it was raised (the rest is stored with it)."""
    failed = [t for t in trajs if t.error is not None]
    if not failed:
        return None
    first = failed[0]
    lines = [ln.strip() for ln in (first.info.get("traceback") or "").splitlines() if ln.strip()]
    last = lines[-1] if lines and lines[-1] != "NoneType: None" else first.error
    frames = [m for ln in lines if (m := FRAME_LINE.fullmatch(ln))]
    where = f" ({Path(frames[-1][1]).name}:{frames[-1][2]} in {frames[-1][3]})" if frames else ""
    return f"step {step}: {len(failed)}/{len(trajs)} episodes failed; first: {last}{where}"


def _console_line(step: int, steps: int, m: dict[str, float]) -> str:
    def f(key: str, fmt: str = ".3f") -> str:
        return format(m[key], fmt) if key in m else "-"

    return (
        f"step {step}/{steps}  reward {f('reward/mean')}  pass {f('reward/pass_rate', '.2f')}"
        f"  loss {f('loss/total', '.4f')}  kl {f('loss/approx_kl', '.4f')}"
        f"  ent {f('loss/entropy', '.2f')}  len {f('rollout/response_tokens', '.0f')}"
        f"  {f('perf/step_s', '.1f')}s (gen {f('perf/generation_frac', '.0%')},"
        f" env {f('perf/env_frac', '.0%')}, train {f('perf/train_frac', '.0%')})"
    ) + (f"  eval pass@1 {f('eval/pass@1', '.2f')}" if "eval/pass@1" in m else "")
