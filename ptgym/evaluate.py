"""``ptgym rollout`` and ``ptgym eval``: collect trajectories into a run; score pass@k.

pass@k uses the unbiased estimator of Chen et al. 2021 (HumanEval paper, eq. 1): with n samples
of which c are correct, ``pass@k = 1 - C(n - c, k) / C(n, k)``, averaged over tasks.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ptgym.build import make_backend, make_collector, task_seeds
from ptgym.config import EvalCommand, RolloutCommand, TrainCommand, make_out_dir, to_yaml
from ptgym.metrics import batch_metrics, passed
from ptgym.store import TrajectoryStore, atomic_write_bytes
from ptgym.types import Trajectory

TEST_SEED_OFFSET = 1_000_000  # eval draws task seeds far from the training run's


def pass_at_k(n: int, c: int, k: int) -> float:
    """Probability that at least one of k samples drawn from n (c correct) is correct."""
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per task, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - float(np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


def score(trajs: list[Trajectory], k: int) -> dict[str, float]:
    """Mean reward, pass@1, pass@k (per task, then averaged), turns and lengths."""
    by_task: dict[str, list[Trajectory]] = defaultdict(list)
    for t in trajs:
        if t.error is None:
            by_task[t.group_id].append(t)
    out = batch_metrics(trajs)  # a fresh dict per call
    if by_task:
        counts = [(len(ts), sum(passed(t) for t in ts)) for ts in by_task.values()]
        out["eval/pass@1"] = float(np.mean([pass_at_k(n, c, 1) for n, c in counts]))
        ks = min(k, min(n for n, _ in counts))
        out[f"eval/pass@{ks}"] = float(np.mean([pass_at_k(n, c, ks) for n, c in counts]))
        out["eval/tasks"] = float(len(by_task))
    return out


class HeldOutEval:
    """Greedy pass@1 on ``split=test`` while training (``trainer.eval_every``).

    The tasks are those ``ptgym eval tasks=N k=1 sampling.temperature=0`` draws (the same
    ``rollout.seed``, the same test offset), one greedy episode each, with the trainer's own
    backend (the policy's current weights) and envs of their own, so every eval scores the same
    tasks and the curve moves with the policy alone. Keys: ``eval/pass@1``, ``eval/mean_reward``,
    ``eval/error_frac``, ``eval/response_tokens``, ``eval/tasks``, ``eval/seconds``.
    """

    def __init__(self, backend: Any, tokenizer: Any, cfg: TrainCommand):
        rollout = dataclasses.replace(cfg.rollout, tasks=cfg.trainer.eval_tasks, group=1)
        self.collector = make_collector(
            backend,
            tokenizer,
            cfg.env,
            dataclasses.replace(cfg.sampling, temperature=0.0),
            rollout,
            model_name=cfg.model.name,
            split="test",
        )
        self.seeds = [s + TEST_SEED_OFFSET for s in task_seeds(rollout, 0)]

    def __call__(self, version: int) -> dict[str, float]:
        """Scores of the policy after ``version`` updates."""
        t0 = time.perf_counter()
        if (sync := getattr(self.collector.backend, "sync", None)) is not None:
            sync(version)  # a sampler with its own copy of the weights rebuilds it first
        trajs = self.collector.collect(self.seeds, 1, group_prefix="eval/")
        s = score(trajs, 1)
        nan = float("nan")
        return {
            "eval/pass@1": s.get("eval/pass@1", nan),
            "eval/mean_reward": s.get("reward/mean", nan),
            "eval/error_frac": s["rollout/error_frac"],
            "eval/response_tokens": s.get("rollout/response_tokens", nan),
            "eval/tasks": float(len(trajs)),
            "eval/seconds": time.perf_counter() - t0,
        }

    def close(self) -> None:
        self.collector.close()


def _load(cfg: RolloutCommand) -> tuple[Any, Any]:
    from ptgym.agents.models import load_model

    model, tokenizer = load_model(
        cfg.model.name,
        dtype=cfg.model.dtype,
        device=cfg.model.device,
        chat_template=cfg.model.chat_template,
    )
    if cfg.model.adapter:
        from peft import PeftModel

        if not (Path(cfg.model.adapter) / "adapter_config.json").exists():
            raise FileNotFoundError(
                f"model.adapter={cfg.model.adapter} holds no adapter_config.json; point it at a "
                "checkpoint's adapter folder, e.g. runs/NAME/checkpoints/step-000020/adapter"
            )
        model = PeftModel.from_pretrained(model, cfg.model.adapter).merge_and_unload()
    return model, tokenizer


def _collect(cfg: RolloutCommand, desc: str) -> tuple[Path, list[Trajectory]]:
    if cfg.rollout.sampler == "auto":  # a preset's choice for training: score the model itself
        cfg = dataclasses.replace(cfg, rollout=dataclasses.replace(cfg.rollout, sampler="exact"))
    run = make_out_dir(cfg.out)
    atomic_write_bytes(run / "config.yaml", to_yaml(cfg).encode())  # records what ran
    model, tokenizer = _load(cfg)
    backend = make_backend(cfg.rollout, model, tokenizer, cfg.model.name)
    collector = make_collector(
        backend,
        tokenizer,
        cfg.env,
        cfg.sampling,
        cfg.rollout,
        model_name=cfg.model.name,
        split=cfg.split,
    )
    store = TrajectoryStore(run)
    # Tasks go in chunks of batch_size episodes, so the progress bar moves and a crash keeps
    # every finished chunk on disk.
    per_chunk = max(1, cfg.rollout.batch_size // cfg.rollout.group)
    offset = TEST_SEED_OFFSET if cfg.split == "test" else 0
    seeds = [s + offset for s in task_seeds(cfg.rollout, 0)]
    trajs: list[Trajectory] = []
    bar = tqdm(total=len(seeds) * cfg.rollout.group, desc=desc, unit="episode", dynamic_ncols=True)
    try:
        for i in range(0, len(seeds), per_chunk):
            chunk = collector.collect(
                seeds[i : i + per_chunk], cfg.rollout.group, group_prefix=f"{i}+"
            )
            store.extend(chunk)
            trajs.extend(chunk)
            bar.update(len(chunk))
            rewards = [t.reward for t in trajs if t.error is None]
            bar.set_postfix(reward=f"{np.mean(rewards):.3f}" if rewards else "-")
    finally:
        bar.close()
        store.close()
        collector.close()
    return run, trajs


def run_rollout_command(cfg: RolloutCommand) -> dict[str, float]:
    t0 = time.perf_counter()
    run, trajs = _collect(cfg, "rollout")
    summary = batch_metrics(trajs)
    summary["perf/seconds"] = time.perf_counter() - t0
    atomic_write_bytes(run / "summary.json", json.dumps(summary, indent=2).encode())
    print(
        f"{len(trajs)} trajectories -> {run}/trajectories  "
        f"reward {summary.get('reward/mean', float('nan')):.3f}"
    )
    return summary


def run_eval_command(cfg: EvalCommand) -> dict[str, float]:
    t0 = time.perf_counter()
    run, trajs = _collect(cfg, "eval")
    summary = score(trajs, cfg.rollout.group)
    summary["perf/seconds"] = time.perf_counter() - t0
    atomic_write_bytes(run / "eval.json", json.dumps(summary, indent=2).encode())
    keys = ["reward/mean", "eval/pass@1"] + [
        k for k in summary if k.startswith("eval/pass@") and k != "eval/pass@1"
    ]
    keys += ["rollout/turns", "rollout/response_tokens", "rollout/error_frac"]
    width = max(len(k) for k in keys)
    print(
        f"eval of {cfg.model.name} on {cfg.env.name}: {int(summary.get('eval/tasks', 0))} tasks"
        f" x {cfg.rollout.group} samples -> {run}"
    )
    for k in keys:
        if k in summary:
            print(f"  {k:<{width}}  {summary[k]:.4f}")
    return summary
