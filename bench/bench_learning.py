"""The CPU learning curve of ``ptgym train env=ENV`` on the embedded default model, with a chart.

CLI runs in subprocesses, exactly as a user types them, under one results folder:

1. ``ptgym eval env=ENV model=smollm2-135m tasks=N k=1 split=test``: held-out accuracy before;
2. with ``--demos D`` (tool envs: ``math-tools``), the warm start README describes:
   ``ptgym envs demos ENV n=D`` then ``ptgym sft data=...``, and the same eval of that model;
3. ``ptgym train env=ENV model=<base or warm> trainer.steps=S``: GRPO with the defaults;
4. the same eval with ``model.adapter=<last checkpoint>/adapter``: held-out accuracy after.

Eval decodes greedily by default (``--eval-temperature 0``), so evals differ only by the weights,
not by sampling noise. The test splits hold problems never trained on (``ptgym.envs.math``,
``ptgym.envs.math_tools``). Prints reward per step (from ``metrics.msgpack``), the tool-call rate
per step when the env reports ``valid_tool_call`` (math-tools), the mean reward of the first and
last fifth of the run, and pass@1 of each eval with a binomial standard error. Writes
``summary.json`` and ``curve.svg`` beside it: reward (and tool-call rate) per step, and pass@1
before/after with +-1 standard error bars. The SVG is written by hand (no plotting dependency);
``--plot SUMMARY`` redraws it from an existing summary. The math defaults take ~11 minutes on a
quiet 2-core CPU.

    python bench/bench_learning.py [--env math] [--steps 30] [--eval-tasks 145] [--train K=V ...]
    python bench/bench_learning.py --env math-tools --demos 200 --steps 30
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
from typing import Any

from ptgym.checkpoint import list_checkpoints
from ptgym.metrics import passed, read_metrics
from ptgym.store import TrajectoryStore

HERE = Path(__file__).resolve().parent


def ptgym(args: list[str]) -> float:
    """Run one ``ptgym`` command (this interpreter's install); returns its wall seconds."""
    print("$ ptgym " + " ".join(args), flush=True)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ptgym.cli", *args], check=True, env=env)
    return time.perf_counter() - t


def call_rates(run: Path) -> dict[int, float]:
    """Per training step (numbered as in metrics: policy version + 1): the share of episodes
    with a valid tool call; {} if the env does not report ``valid_tool_call``."""
    by_step: dict[int, list[bool]] = {}
    for t in TrajectoryStore(run):
        if "valid_tool_call" in t.metrics:
            by_step.setdefault(t.policy_version + 1, []).append(bool(t.metrics["valid_tool_call"]))
    return {s: sum(v) / len(v) for s, v in sorted(by_step.items())}


def evaluate(out: Path, args: argparse.Namespace, model: str, adapter: Path | None) -> dict:
    cmd = [
        "eval",
        f"env={args.env}",
        f"model={model}",
        f"tasks={args.eval_tasks}",
        "k=1",
        "split=test",
        f"sampling.temperature={args.eval_temperature}",
        f"out={out}",
        *args.eval,
    ]
    if adapter is not None:
        cmd.append(f"model.adapter={adapter}")
    seconds = ptgym(cmd)
    result = json.loads((out / "eval.json").read_text())
    result["wall_s"] = seconds
    rates = call_rates(out)
    if rates:
        result["tool_call_rate"] = sum(rates.values()) / len(rates)
    return result


def stderr(p: float, n: float) -> float:
    return math.sqrt(p * (1 - p) / n) if n else float("nan")


def solved(run: Path) -> dict[str, bool]:
    """Per held-out task (its task id): solved by that eval's one greedy episode."""
    return {t.task_id: passed(t) for t in TrajectoryStore(run) if t.error is None}


def gain(before: dict[str, bool], after: dict[str, bool]) -> dict[str, float]:
    """The change in pass@1 over the tasks both evals scored, with two standard errors: the
    unpaired one (two independent binomials) and the paired one (the same tasks before and
    after: only the tasks that changed carry variance, as in McNemar's test)."""
    tasks = sorted(before.keys() & after.keys())
    n = len(tasks)
    fixed = sum(after[t] and not before[t] for t in tasks)  # wrong before, right after
    broken = sum(before[t] and not after[t] for t in tasks)
    p0 = sum(before[t] for t in tasks) / max(n, 1)
    p1 = sum(after[t] for t in tasks) / max(n, 1)
    diff = p1 - p0
    unpaired = math.sqrt(stderr(p0, n) ** 2 + stderr(p1, n) ** 2) if n else float("nan")
    paired = math.sqrt(max(fixed + broken - n * diff**2, 0.0)) / n if n else float("nan")
    return {
        "tasks": n,
        "gain": diff,
        "se_unpaired": unpaired,
        "se_paired": paired,
        "fixed": fixed,
        "broken": broken,
    }


def _polyline(points: list[tuple[float, float]], color: str, dash: str = "") -> str:
    path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
    extra = f' stroke-dasharray="{dash}"' if dash else ""
    return f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="2"{extra}/>'


def write_svg(summary: dict[str, Any], path: Path) -> Path:
    """Two panels: reward (and tool-call rate) per step; held-out pass@1 per eval, +-1 s.e."""
    W, H, pad = 760, 320, 50
    pw = (W - 3 * pad) / 2  # panel width
    ph = H - 2 * pad
    top, base = pad, H - pad
    y = lambda v: base - max(0.0, min(1.0, v)) * ph  # noqa: E731 (0..1 -> pixels)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif"'
        ' font-size="12"><rect width="100%" height="100%" fill="white"/>',
        f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="14">{summary["title"]}</text>',
    ]
    for x0 in (pad, 2 * pad + pw):
        out.append(
            f'<path d="M{x0},{top} V{base} H{x0 + pw}" fill="none" stroke="black"/>'
            + "".join(
                f'<text x="{x0 - 6}" y="{y(v) + 4}" text-anchor="end">{v:.1f}</text>'
                f'<line x1="{x0}" x2="{x0 + pw}" y1="{y(v)}" y2="{y(v)}" stroke="#eee"/>'
                for v in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
            )
        )
    steps = [r["step"] for r in summary["rewards"]]
    lo, hi = (min(steps), max(steps)) if steps else (0, 1)
    sx = lambda s: pad + (s - lo) / max(hi - lo, 1) * pw  # noqa: E731
    reward = [(sx(r["step"]), y(r.get("reward/mean", 0.0))) for r in summary["rewards"]]
    out.append(_polyline(reward, "#1f77b4"))
    legend = [("#1f77b4", "", "reward (mean per step)")]
    rates = {int(k): v for k, v in summary.get("call_rates", {}).items()}
    if rates:
        out.append(_polyline([(sx(s), y(v)) for s, v in sorted(rates.items())], "#ff7f0e", "5,3"))
        legend.append(("#ff7f0e", "5,3", "valid tool-call rate"))
    for i, (color, dash, label) in enumerate(legend):
        ly = top + 14 + 16 * i
        out.append(_polyline([(pad + 8, ly), (pad + 30, ly)], color, dash))
        out.append(f'<text x="{pad + 36}" y="{ly + 4}">{label}</text>')
    out.append(
        f'<text x="{pad + pw / 2}" y="{H - 14}" text-anchor="middle">training step</text>'
        f'<text x="{sx(lo)}" y="{base + 16}" text-anchor="middle">{lo}</text>'
        f'<text x="{sx(hi)}" y="{base + 16}" text-anchor="middle">{hi}</text>'
    )
    evals = summary["evals"]
    bw = pw / (2 * len(evals) + 1)
    x0 = 2 * pad + pw
    for i, (name, res) in enumerate(evals.items()):
        p, n = res.get("eval/pass@1", 0.0), res.get("eval/tasks", 0)
        se = stderr(p, n)
        bx = x0 + bw * (2 * i + 1)
        out.append(
            f'<rect x="{bx:.1f}" y="{y(p):.1f}" width="{bw:.1f}" height="{base - y(p):.1f}"'
            ' fill="#2ca02c"/>'
            f'<line x1="{bx + bw / 2:.1f}" x2="{bx + bw / 2:.1f}" y1="{y(p - se):.1f}"'
            f' y2="{y(p + se):.1f}" stroke="black" stroke-width="2"/>'
            f'<text x="{bx + bw / 2:.1f}" y="{y(p + se) - 6:.1f}" text-anchor="middle">'
            f"{p:.2f}±{se:.2f}</text>"
            f'<text x="{bx + bw / 2:.1f}" y="{base + 16}" text-anchor="middle">{name}</text>'
        )
    out.append(
        f'<text x="{x0 + pw / 2}" y="{H - 14}" text-anchor="middle">held-out greedy pass@1 '
        f"({int(next(iter(evals.values())).get('eval/tasks', 0))} tasks, ±1 s.e.)</text></svg>"
    )
    path.write_text("\n".join(out), encoding="utf-8")
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--env", default="math", help="env= (math, math-tools, ...)")
    parser.add_argument("--steps", type=int, default=30, help="trainer.steps")
    parser.add_argument(
        "--eval-tasks", type=int, default=145, help="held-out tasks per eval (math: all 145)"
    )
    parser.add_argument("--eval-temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--model", default="smollm2-135m", help="model=")
    parser.add_argument("--demos", type=int, default=0, help="SFT warm start on N env demos")
    parser.add_argument("--sft", nargs="*", default=[], metavar="KEY=VALUE", help="ptgym sft args")
    parser.add_argument(
        "--train",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="extra overrides for ptgym train, e.g. trainer.lr=2e-4 rollout.tasks=8",
    )
    parser.add_argument("--eval", nargs="*", default=[], metavar="KEY=VALUE", help="for eval")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "learning")
    parser.add_argument("--plot", type=Path, help="only redraw curve.svg from this summary.json")
    args = parser.parse_args()
    if args.plot:
        print(write_svg(json.loads(args.plot.read_text()), args.plot.with_name("curve.svg")))
        return

    root = args.out / f"{args.env}-{time.strftime('%Y%m%d-%H%M%S')}"
    root.mkdir(parents=True)
    load_start = os.getloadavg()
    evals = {"before": evaluate(root / "eval-before", args, args.model, None)}
    model, warm_s = args.model, 0.0
    if args.demos:
        demos = root / "demos.jsonl"
        warm_s = ptgym(["envs", "demos", args.env, f"n={args.demos}", f"out={demos}"])
        warm_s += ptgym(
            ["sft", f"data={demos}", f"model={args.model}", f"out={root / 'sft'}", *args.sft]
        )
        model = str(root / "sft" / "model")
        evals["after SFT"] = evaluate(root / "eval-warm", args, model, None)
    run = root / "train"
    train_s = ptgym(
        ["train", f"env={args.env}", f"model={model}", f"trainer.steps={args.steps}", f"out={run}"]
        + args.train
    )
    adapter = list_checkpoints(run)[-1] / "adapter"
    evals["after RL"] = evaluate(root / "eval-after", args, model, adapter)
    load_end = os.getloadavg()

    rows = read_metrics(run)
    rates = call_rates(run)
    print(f"\n{'step':>4}  {'reward':>6}  {'pass':>5}  {'calls':>5}  {'tokens':>6}  {'step s':>6}")
    for r in rows:
        print(
            f"{r['step']:>4}  {r.get('reward/mean', float('nan')):>6.3f}  "
            f"{r.get('reward/pass_rate', float('nan')):>5.2f}  "
            f"{rates.get(r['step'], float('nan')):>5.2f}  "
            f"{r.get('rollout/response_tokens', float('nan')):>6.1f}  {r['perf/step_s']:>6.1f}"
        )
    fifth = max(len(rows) // 5, 1)
    first = sum(r.get("reward/mean", 0.0) for r in rows[:fifth]) / fifth
    last = sum(r.get("reward/mean", 0.0) for r in rows[-fifth:]) / fifth
    print(f"mean reward, first {fifth} steps {first:.3f} -> last {fifth} steps {last:.3f}")
    for name, res in evals.items():
        p, n = res.get("eval/pass@1", float("nan")), res.get("eval/tasks", 0)
        calls = f", tool-call rate {res['tool_call_rate']:.2f}" if "tool_call_rate" in res else ""
        print(
            f"held-out pass@1 {name:<9} {p:.3f} +- {stderr(p, n):.3f} ({int(n)} tasks, "
            f"temperature {args.eval_temperature}, {res['rollout/response_tokens']:.0f} tokens, "
            f"{res['wall_s']:.0f} s{calls})"
        )
    change = gain(solved(root / "eval-before"), solved(root / "eval-after"))
    print(
        f"held-out gain {change['gain']:+.3f} over {change['tasks']} tasks ({change['fixed']} "
        f"fixed, {change['broken']} broken): {change['gain'] / change['se_unpaired']:.1f} "
        f"standard errors unpaired (s.e. {change['se_unpaired']:.3f}), "
        f"{change['gain'] / max(change['se_paired'], 1e-9):.1f} paired (s.e. "
        f"{change['se_paired']:.3f})"
    )
    print(
        f"warm start {warm_s:.0f} s; train: {len(rows)} steps in {train_s:.0f} s; load average "
        f"(1/5/15 min) at start {' '.join(f'{x:.2f}' for x in load_start)}, at end "
        f"{' '.join(f'{x:.2f}' for x in load_end)}"
    )
    summary = {
        "title": f"ptgym train env={args.env} model={args.model}, {len(rows)} steps"
        + (f", SFT warm start on {args.demos} demos" if args.demos else ""),
        "evals": evals,
        "gain": change,
        "warm_s": warm_s,
        "train_s": train_s,
        "rewards": rows,
        "call_rates": rates,
        "load_start": load_start,
        "load_end": load_end,
        "args": vars(args) | {"out": str(args.out)},
    }
    (root / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(f"results: {root}\nchart: {write_svg(summary, root / 'curve.svg')}")


if __name__ == "__main__":
    main()
