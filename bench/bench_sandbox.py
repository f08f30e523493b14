"""Sandbox latency (warm pool vs docker exec vs docker run vs a local subprocess), lease fairness
at 1, 8 and 32 concurrent callers, and CodeTools-v0 episode throughput at pool sizes 1, 4 and 8,
all measured in one run.

Latency: the same trivial snippet, ``python3 -c "print(1)"``, four ways:
- warm pool: one exec request to a pre-started container (``Sandbox.exec``, msgpack round trip);
  the container's fork server forks a pre-imported Python for it (no interpreter start-up),
- ``docker exec`` into a running sandbox container (the CLI, as a user would),
- ``docker run --rm`` of a fresh container from the same image with the same limits,
- a bare local subprocess of the host's system python3 (no isolation at all): the floor.
Also the bare protocol cost: ``true`` through the pool (no Python start-up in the container).
Goals: warm pool p50 >= 50x faster than docker run, and no slower than the local subprocess.

Fairness: N callers (1, 8, 32) loop lease + ``true`` over a pool of 4 for ``--seconds``; the
lease wait (p50, p99) and the spread of leases per caller (min / median / max).

Throughput: scripted CodeTools-v0 episodes (write the canonical solution, run_tests, submit:
two sandbox leases, one of them the hidden-test grading), 16 at a time, over pools of 1, 4, 8.

    python bench/bench_sandbox.py [--n 40] [--episodes 48] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ptgym.envs.code_tools import CodeToolsEnv
from ptgym.envs.humaneval_tasks import load_tasks
from ptgym.sandbox import SandboxConfig, SandboxPool, ensure_image

SNIPPET = ["python3", "-c", "print(1)"]
# The local baseline runs the system interpreter (Debian's python3, as in the image) rather than
# whatever `python3` is on PATH: a pyenv shim or a venv full of .pth files starts 2-3x slower.
LOCAL_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def interleaved(methods: dict[str, tuple[object, int]], n: int) -> dict[str, np.ndarray]:
    """Time each method round-robin (sample i of every method back to back), so that load from
    other processes on a shared machine hits all of them alike. ``every``: sample only each
    every-th round (for the slow ones)."""
    out: dict[str, list[float]] = {name: [] for name in methods}
    for i in range(n):
        for name, (fn, every) in methods.items():
            if i % every == 0:
                t = time.perf_counter()
                fn()
                out[name].append(time.perf_counter() - t)
    return {name: np.array(v) * 1e3 for name, v in out.items()}  # (samples,) ms


def docker_run_argv(config: SandboxConfig) -> list[str]:
    uid = config.user
    return [
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "--memory",
        config.memory,
        "--memory-swap",
        config.memory,
        "--pids-limit",
        str(config.pids),
        "--cpus",
        str(config.cpus),
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--user",
        uid,
        config.image,
        *SNIPPET,
    ]


def check(out: subprocess.CompletedProcess) -> None:
    assert out.returncode == 0 and out.stdout.strip() == b"1", out


def latency(n: int) -> None:
    config = SandboxConfig()
    with SandboxPool(size=1, config=config) as pool, pool.lease() as sb:
        assert sb.exec(SNIPPET).stdout == "1\n"
        rows = interleaved(
            {
                "warm pool (msgpack over attach)": (lambda: sb.exec(SNIPPET), 1),
                "docker exec": (
                    lambda: check(
                        subprocess.run(
                            ["docker", "exec", sb.container.id, *SNIPPET], capture_output=True
                        )
                    ),
                    1,
                ),
                "docker run --rm (fresh container)": (
                    lambda: check(subprocess.run(docker_run_argv(config), capture_output=True)),
                    4,
                ),
                "local subprocess (no sandbox)": (
                    lambda: check(
                        subprocess.run([LOCAL_PYTHON, *SNIPPET[1:]], capture_output=True)
                    ),
                    1,
                ),
                "warm pool, `true` (protocol only)": (lambda: sb.exec(["true"]), 1),
            },
            n,
        )
    base = np.median(rows["warm pool (msgpack over attach)"])
    print(
        f"\nLatency of {' '.join(SNIPPET)!r} (ms; ratio = p50 / warm-pool p50; "
        f"local: {LOCAL_PYTHON})"
    )
    print(f"{'':<36}{'p50':>9}{'p95':>9}{'ratio':>9}")
    for name, ms in rows.items():
        p50, p95 = np.median(ms), np.percentile(ms, 95)
        print(f"{name:<36}{p50:9.1f}{p95:9.1f}{p50 / base:8.2f}x")
    run = np.median(rows["docker run --rm (fresh container)"])
    local = np.median(rows["local subprocess (no sandbox)"])
    print(
        f"warm pool is {run / base:.1f}x faster than docker run (goal >= 50x) and "
        f"{base / local:.2f}x a local subprocess (goal <= 1x)"
    )


def fairness(callers: list[int], seconds: float, size: int = 4) -> None:
    print(f"\nLease fairness: callers loop lease + `true` over a pool of {size} for {seconds:g} s")
    print(f"{'callers':>8}{'wait p50':>10}{'wait p99':>10}{'leases/caller min/median/max':>31}")
    with SandboxPool(size=size) as pool:
        for n in callers:
            waits: list[list[float]] = [[] for _ in range(n)]
            stop = time.perf_counter() + seconds

            def loop(mine: list[float], stop: float) -> None:
                while time.perf_counter() < stop:
                    t = time.perf_counter()
                    with pool.lease() as sb:
                        mine.append(time.perf_counter() - t)
                        sb.exec(["true"])

            with ThreadPoolExecutor(max_workers=n) as ex:
                list(ex.map(loop, waits, [stop] * n))
            ms = np.concatenate([np.array(w) for w in waits]) * 1e3  # (leases,)
            counts = sorted(len(w) for w in waits)
            spread = f"{counts[0]} / {counts[len(counts) // 2]} / {counts[-1]}"
            print(
                f"{n:>8}{np.median(ms):9.1f} {np.percentile(ms, 99):9.1f} {spread:>30}"
                f"  (ms; {len(ms)} leases)"
            )


def throughput(sizes: list[int], episodes: int, concurrency: int) -> None:
    tasks = load_tasks()

    def episode(pool: SandboxPool, i: int) -> float:
        task = tasks[i % len(tasks)]
        env = CodeToolsEnv(pool=pool)
        env.reset(options={"task_id": task.task_id})
        total = 0.0
        for name, args in [
            (
                "write_file",
                {"path": "solution.py", "content": task.prompt + task.canonical_solution},
            ),
            ("run_tests", {}),
            ("submit", {}),
        ]:
            text = f"<tool_call>{json.dumps({'name': name, 'arguments': args})}</tool_call>"
            _, reward, *_, info = env.step(text)
            assert "error" not in info, info["error"]
            total += reward
        return total

    print(f"\nCodeTools-v0 episodes (write, run_tests, submit), {concurrency} concurrent")
    base = None
    for size in sizes:
        with SandboxPool(size=size) as pool:
            episode(pool, 0)  # warm-up
            t = time.perf_counter()
            with ThreadPoolExecutor(max_workers=concurrency) as ex:
                returns = list(ex.map(lambda i: episode(pool, i), range(episodes)))
            seconds = time.perf_counter() - t
        assert returns == [1.0] * episodes
        per_min = episodes / seconds * 60
        base = base or per_min
        print(
            f"pool of {size}: {per_min:7.0f} episodes/min  ({seconds:5.1f} s for {episodes}; "
            f"{per_min / base:.2f}x pool of {sizes[0]})"
        )


def load(when: str) -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average at {when} (1/5/15 min, {os.cpu_count()} CPUs): {one} {five} {fifteen}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=40, help="latency samples per method")
    parser.add_argument("--episodes", type=int, default=48, help="episodes per pool size")
    parser.add_argument("--concurrency", type=int, default=16, help="episodes in flight")
    parser.add_argument("--seconds", type=float, default=5.0, help="per fairness setting")
    args = parser.parse_args()
    ensure_image(progress=print)
    print(load("start"))
    latency(args.n)
    fairness([1, 8, 32], args.seconds)
    throughput([1, 4, 8], args.episodes, args.concurrency)
    print(load("end"))


if __name__ == "__main__":
    main()
