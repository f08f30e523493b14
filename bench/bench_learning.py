"""The CPU learning curve of ``ptgym train env=math`` on the embedded default model.

Three CLI runs in subprocesses, exactly as a user types them, under one results folder:

1. ``ptgym eval env=math model=smollm2-135m tasks=N k=1 split=test``: held-out accuracy before;
2. ``ptgym train env=math model=smollm2-135m trainer.steps=S``: GRPO with the defaults
   (``rollout.tasks`` x ``rollout.group`` episodes per step, LoRA r=16 on q/k/v/o);
3. the same eval with ``model.adapter=<last checkpoint>/adapter``: held-out accuracy after.

Eval decodes greedily by default (``--eval-temperature 0``), so before/after differ only by the
adapter, not by sampling noise. The test split holds problems whose question text never occurs in
the train split (``ptgym.envs.math``). Prints reward per step (from ``metrics.msgpack``), the mean
reward of the first and last fifth of the run, and pass@1 before/after with a binomial standard
error. The defaults fit ~20-30 minutes on a quiet 2-core CPU.

    python bench/bench_learning.py [--steps 20] [--eval-tasks 96] [--train ARG=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

from ptgym.checkpoint import list_checkpoints
from ptgym.metrics import read_metrics

HERE = Path(__file__).resolve().parent


def ptgym(args: list[str]) -> float:
    """Run one ``ptgym`` command (this interpreter's install); returns its wall seconds."""
    print("$ ptgym " + " ".join(args), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ptgym.cli", *args], check=True, env=env)
    return time.perf_counter() - t


def evaluate(out: Path, args: argparse.Namespace, adapter: Path | None) -> dict[str, float]:
    cmd = [
        "eval",
        "env=math",
        f"model={args.model}",
        f"tasks={args.eval_tasks}",
        "k=1",
        "split=test",
        f"sampling.temperature={args.eval_temperature}",
        f"out={out}",
    ]
    if adapter is not None:
        cmd.append(f"model.adapter={adapter}")
    seconds = ptgym(cmd)
    result = json.loads((out / "eval.json").read_text())
    result["wall_s"] = seconds
    return result


def stderr(p: float, n: float) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="trainer.steps")
    parser.add_argument("--eval-tasks", type=int, default=96, help="held-out tasks per eval")
    parser.add_argument("--eval-temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--model", default="smollm2-135m", help="model=")
    parser.add_argument(
        "--train",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides for ptgym train, e.g. trainer.lr=2e-4 rollout.tasks=8",
    )
    parser.add_argument("--out", type=Path, default=HERE / "results" / "learning")
    args = parser.parse_args()

    root = args.out / time.strftime("%Y%m%d-%H%M%S")
    root.mkdir(parents=True)
    load_start = os.getloadavg()
    before = evaluate(root / "eval-before", args, None)
    run = root / "train"
    train_s = ptgym(
        [
            "train",
            "env=math",
            f"model={args.model}",
            f"trainer.steps={args.steps}",
            f"out={run}",
            *args.train,
        ]
    )
    adapter = list_checkpoints(run)[-1] / "adapter"
    after = evaluate(root / "eval-after", args, adapter)
    load_end = os.getloadavg()

    rows = read_metrics(run)
    print(f"\n{'step':>4}  {'reward':>6}  {'pass':>5}  {'tokens':>6}  {'step s':>6}")
    for r in rows:
        print(
            f"{r['step']:>4}  {r.get('reward/mean', float('nan')):>6.3f}  "
            f"{r.get('reward/pass_rate', float('nan')):>5.2f}  "
            f"{r.get('rollout/response_tokens', float('nan')):>6.1f}  {r['perf/step_s']:>6.1f}"
        )
    fifth = max(len(rows) // 5, 1)
    first = sum(r.get("reward/mean", 0.0) for r in rows[:fifth]) / fifth
    last = sum(r.get("reward/mean", 0.0) for r in rows[-fifth:]) / fifth
    print(f"mean reward, first {fifth} steps {first:.3f} -> last {fifth} steps {last:.3f}")
    n = before.get("eval/tasks", 0)
    for name, res in (("before", before), ("after", after)):
        p = res.get("eval/pass@1", float("nan"))
        print(
            f"held-out pass@1 {name:<6} {p:.3f} +- {stderr(p, n):.3f} ({int(n)} tasks, "
            f"temperature {args.eval_temperature}, {res['rollout/response_tokens']:.0f} tokens, "
            f"{res['wall_s']:.0f} s)"
        )
    print(
        f"train: {len(rows)} steps in {train_s:.0f} s; load average (1/5/15 min) at start "
        f"{' '.join(f'{x:.2f}' for x in load_start)}, at end {' '.join(f'{x:.2f}' for x in load_end)}"
    )
    summary = {
        "before": before,
        "after": after,
        "train_s": train_s,
        "rewards": rows,
        "load_start": load_start,
        "load_end": load_end,
        "args": vars(args) | {"out": str(args.out)},
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"results: {root}")


if __name__ == "__main__":
    main()
