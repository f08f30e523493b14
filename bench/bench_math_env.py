"""Math-v0 step (extract + verify) and reset time, against bare math-verify in the same run.

Replies are realistic shapes of model output for real problems: short boxed answers, chains of
arithmetic ending in a box or an ``Answer:`` line, LaTeX fractions, wrong answers, rambling with
no answer. The baseline is what a plain math-verify reward function does per reply:
``verify(parse(gold), parse(reply))`` on the whole reply (main thread, its default timeouts).

    python bench/bench_math_env.py [--n 300]
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from math_verify import parse, verify

from ptgym.envs.math import MathEnv


def replies_for(question: str, gold: str, k: int) -> str:
    """One of six reply shapes, ~100-600 characters, right or wrong."""
    wrong = str(int(float(gold)) + 1) if gold.lstrip("-").replace(".", "").isdigit() else "7"
    steps = " ".join(f"Step {i}: {i * 7} + {i * 3} = {i * 10}." for i in range(1, 1 + k % 8))
    shapes = [
        f"\\boxed{{{gold}}}",
        f"Let me work it out. {steps} So the final answer is \\boxed{{{gold}}}.",
        f"We read the problem: {question[:200]} {steps}\nAnswer: {gold}",
        f"{steps} Therefore the result is $\\frac{{{gold}}}{{1}}$.",
        f"{steps} I think it is \\boxed{{{wrong}}}.",
        f"This is hard. {steps} I am not sure how to continue, let me think about the units.",
    ]
    return shapes[k % len(shapes)]


def timed(fn, items) -> np.ndarray:
    out = []
    for item in items:
        t = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - t)
    return np.array(out) * 1e3  # (N,) ms


def report(name: str, ms: np.ndarray, base: float | None = None) -> None:
    ratio = f"  {np.median(ms) / base:5.2f}x baseline" if base else ""
    print(f"{name:<44} median {np.median(ms):7.3f} ms  p95 {np.percentile(ms, 95):7.3f} ms{ratio}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300, help="replies to check")
    args = parser.parse_args()

    t = time.perf_counter()
    env = MathEnv()
    print(f"MathEnv() first build (imports reasoning-gym): {time.perf_counter() - t:.2f} s")
    t = time.perf_counter()
    MathEnv(split="test")
    print(f"MathEnv(split='test') train-overlap filter, 3 x 10k: {time.perf_counter() - t:.2f} s")

    resets = timed(lambda s: env.reset(seed=s), range(args.n))
    cases = []
    for seed in range(args.n):
        obs, info = env.reset(seed=seed)
        cases.append((seed, info["answer"], replies_for(obs[-1]["content"], info["answer"], seed)))

    def bare(case) -> bool:
        _, gold, reply = case
        return verify(parse(gold), parse(reply))

    def step(case) -> float:
        seed, _, reply = case
        env.reset(seed=seed)
        return env.step(reply)[1]

    bare(cases[0]), step(cases[0])  # warm caches (sympy, regexes) outside the timing
    base_ms = timed(bare, cases)
    base = float(np.median(base_ms))
    step_ms = timed(step, cases) - np.median(resets)  # reset is timed separately
    with ThreadPoolExecutor(max_workers=1) as pool:
        thread_ms = pool.submit(timed, step, cases).result() - np.median(resets)

    print(f"\n{args.n} replies, {np.mean([step(c) for c in cases]):.2f} mean reward")
    report("baseline: verify(parse(gold), parse(reply))", base_ms)
    report("env.step (extract + verify)", step_ms, base)
    report("env.step in a worker thread (no signals)", thread_ms, base)
    report("env.reset", resets, base)


if __name__ == "__main__":
    main()
