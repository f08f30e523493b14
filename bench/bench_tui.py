"""The TUI over a big run: open 100,000 trajectories to a usable list, and a metrics record
appended by a trainer shown on the monitor, each beside the plain-Python baseline in the same run.

    python bench/bench_tui.py                     # 100,000 trajectories (generated once, cached)
    python bench/bench_tui.py --n 20000 --dir /tmp/small

Measured, each phase in a fresh process (times and resident memory are its own):
- ``index``: ``RunIndex(run).summaries()`` sorted by reward: what the rollouts list needs.
- ``baseline-store``: the same rows by iterating ``TrajectoryStore`` (decodes every trajectory).
- ``app-open``: ``ptgym tui RUN`` (Pilot, 120x40) from start to the rollouts list showing every row.
- ``app-runs``: ``ptgym tui FOLDER`` from start to the runs list showing its runs.
- ``monitor``: a monitor open on a run with 1,000 steps; a record appended by another writer
  until the status line shows it (median of 5), beside ``read_metrics`` of that run (what a
  monitor that re-reads the file per poll pays) and one ``MetricsFollower.poll``.
Targets (issue 9): open <= 1 s, appended record on screen <= 1 s. Load matters: `uptime` is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE / 2**20


def generate(run: Path, n: int) -> None:
    """``n`` one-turn trajectories in steps of 64, through the store (summary index included)."""
    from ptgym.metrics import MetricsLogger
    from ptgym.store import TrajectoryStore
    from ptgym.types import Trajectory, Turn

    rng = np.random.default_rng(0)
    store = TrajectoryStore(run)
    log = MetricsLogger(run)
    per_step = 64
    for start in range(0, n, per_step):
        step = start // per_step + 1
        batch = []
        for i in range(start, min(start + per_step, n)):
            reward = float(rng.random() < 0.4)
            batch.append(
                Trajectory(
                    env_id="ptgym/Math-v0" if i % 3 else "ptgym/CodeTools-v0",
                    task_id=f"task-{i // 8}",
                    group_id=f"{step - 1}/g{i // 8}",
                    turns=[
                        Turn(
                            prompt_ids=rng.integers(0, 49152, 32),
                            completion_ids=rng.integers(0, 49152, 16),
                            completion_logprobs=-rng.random(16),
                            text=f"so the answer is {i}",
                            reward=reward,
                        )
                    ],
                    messages=[
                        {"role": "user", "content": f"What is {i} + {i % 7}?"},
                        {"role": "assistant", "content": f"so the answer is \\boxed{{{i}}}"},
                    ],
                    reward=reward,
                    terminated=True,
                    policy_version=step - 1,
                )
            )
        store.extend(batch)
        log.log(step, {"reward/mean": float(np.mean([t.reward for t in batch]))})
    store.close()
    log.close()


def metrics_run(run: Path, steps: int) -> None:
    from ptgym.metrics import MetricsLogger

    log = MetricsLogger(run)
    for s in range(1, steps + 1):
        log.log(s, {"reward/mean": s / steps, "loss/total": 1 / s, "perf/step_s": 2.0})
    log.close()


# --- phases, each run in its own process -------------------------------------------------------


def phase_index(run: Path) -> dict:
    from ptgym.runindex import RunIndex

    rss0, t0 = rss_mb(), time.perf_counter()
    index = RunIndex(run)
    rows = index.summaries()
    order = rows.order("reward", descending=True)
    seconds = time.perf_counter() - t0
    t1 = time.perf_counter()
    hits = rows.select(reward_min=1.0, env="ptgym/Math-v0", text="boxed{7")
    filter_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    index.trajectory(int(order[0]))
    decode_s = time.perf_counter() - t2
    return {
        "rows": len(rows),
        "seconds": seconds,
        "mb": rss_mb() - rss0,
        "filter_s": filter_s,
        "hits": len(hits),
        "decode_one_s": decode_s,
    }


def phase_baseline_store(run: Path) -> dict:
    from ptgym.store import TrajectoryStore

    rss0, t0 = rss_mb(), time.perf_counter()
    rows = [
        (t.id, t.policy_version + 1, t.env_id, t.task_id, t.reward, len(t.turns), t.error)
        for t in TrajectoryStore(run)
    ]
    rows.sort(key=lambda r: -r[4])
    return {"rows": len(rows), "seconds": time.perf_counter() - t0, "mb": rss_mb() - rss0}


def _pilot(app, ready, size=(120, 40), timeout: float = 120.0) -> float:
    async def go() -> float:
        t0 = time.perf_counter()
        async with app.run_test(size=size) as pilot:
            while not ready(app):
                if time.perf_counter() - t0 > timeout:
                    raise TimeoutError("the app never became ready")
                await pilot.pause(0.01)
            return time.perf_counter() - t0

    return asyncio.run(go())


def phase_app_open(run: Path) -> dict:
    t_import = time.perf_counter()
    from ptgym.tui.app import PtgymApp

    import_s = time.perf_counter() - t_import
    rss0 = rss_mb()

    t0 = time.perf_counter()
    shown: list[float] = []

    def ready(app) -> bool:
        screen = app.screen
        if type(screen).__name__ != "RolloutsScreen":
            return False
        if not shown:
            shown.append(time.perf_counter() - t0)
        return "of" in str(screen.query_one("#status").content) and screen.index is not None

    seconds = _pilot(PtgymApp(run), ready)
    return {"import_s": import_s, "seconds": seconds, "screen_s": shown[0], "mb": rss_mb() - rss0}


def phase_app_runs(folder: Path) -> dict:
    t_import = time.perf_counter()
    from ptgym.tui.app import PtgymApp
    from ptgym.tui.screens.runs import RunsScreen

    import_s = time.perf_counter() - t_import

    def ready(app) -> bool:
        return isinstance(app.screen, RunsScreen) and app.screen.query_one("#runs").row_count > 0

    return {"import_s": import_s, "seconds": _pilot(PtgymApp(folder), ready)}


def phase_monitor(run: Path) -> dict:
    from ptgym.metrics import MetricsFollower, MetricsLogger, read_metrics
    from ptgym.tui.app import PtgymApp
    from ptgym.tui.system import HostProvider, SystemSampler

    t0 = time.perf_counter()
    n = len(read_metrics(run))
    read_all_s = time.perf_counter() - t0
    follower = MetricsFollower(run)
    follower.poll()
    latencies: list[float] = []
    polls: list[float] = []

    async def go() -> None:
        app = PtgymApp(
            run,
            view="monitor",
            poll_interval=0.25,
            sampler=lambda: SystemSampler(None, HostProvider()),
        )
        async with app.run_test(size=(120, 40)) as pilot:
            screen = app.screen
            while len(screen.records) < n:
                await pilot.pause(0.01)
            for k in range(5):
                step = n + k + 1
                log = MetricsLogger(run)
                t = time.perf_counter()
                log.log(step, {"reward/mean": 0.5, "loss/total": 0.1, "perf/step_s": 2.0})
                log.close()
                while f"step {step}/" not in str(screen.query_one("#status").content):
                    await pilot.pause(0.005)
                latencies.append(time.perf_counter() - t)
                t = time.perf_counter()
                follower.poll()
                polls.append(time.perf_counter() - t)

    asyncio.run(go())
    return {
        "steps": n,
        "on_screen_s": statistics.median(latencies),
        "on_screen_max_s": max(latencies),
        "read_metrics_s": read_all_s,
        "follower_poll_s": statistics.median(polls),
    }


PHASES = {
    "index": phase_index,
    "baseline-store": phase_baseline_store,
    "app-open": phase_app_open,
    "app-runs": phase_app_runs,
    "monitor": phase_monitor,
}


def run_phase(name: str, path: Path) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--phase", name, str(path)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    if out.returncode != 0:
        raise RuntimeError(f"phase {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="trajectories in the big run")
    ap.add_argument("--dir", default="/tmp/ptgym-bench-tui", help="where the runs are kept")
    ap.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    ap.add_argument("path", nargs="?", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.phase:
        print(json.dumps(PHASES[args.phase](Path(args.path))))
        return

    root = Path(args.dir)
    big = root / f"runs/big-{args.n}"
    if not (big / "trajectories").exists():
        t0 = time.perf_counter()
        generate(big, args.n)
        print(
            f"generated {args.n:,} trajectories through the store in {time.perf_counter() - t0:.1f} s"
        )
    live = root / "runs/live-1000"
    shutil.rmtree(live, ignore_errors=True)  # the monitor phase appends to it
    metrics_run(live, 1000)
    size = sum(p.stat().st_size for p in (big / "trajectories").iterdir())
    print(f"run: {big} ({size / 2**20:.0f} MiB on disk)  load: {os.getloadavg()[0]:.2f}")

    idx = run_phase("index", big)
    base = run_phase("baseline-store", big)
    print(
        f"\nopen {idx['rows']:,} trajectories to a sorted list (RunIndex): {idx['seconds']:.3f} s, "
        f"+{idx['mb']:.0f} MiB"
        f"\n  baseline, iterate TrajectoryStore in plain Python: {base['seconds']:.3f} s, "
        f"+{base['mb']:.0f} MiB  -> {base['seconds'] / idx['seconds']:.1f}x faster"
        f"\n  a filter over all rows: {idx['filter_s'] * 1000:.0f} ms ({idx['hits']} hits); "
        f"decode one trajectory: {idx['decode_one_s'] * 1000:.1f} ms"
    )
    try:
        app = run_phase("app-open", big)
        print(
            f"ptgym tui RUN to the rollouts list with every row: {app['seconds']:.3f} s "
            f"(screen up at {app['screen_s']:.3f} s, list filled after; "
            f"target <= 1 s; +{app['mb']:.0f} MiB; importing the app took {app['import_s']:.2f} s "
            f"before that) vs the store baseline {base['seconds']:.3f} s "
            f"-> {base['seconds'] / app['seconds']:.1f}x"
        )
    except RuntimeError as exc:
        print(f"ptgym tui RUN: not measured ({str(exc).splitlines()[-1]})")
    runs = run_phase("app-runs", root / "runs")
    print(
        f"ptgym tui FOLDER to the runs list: {runs['seconds']:.3f} s "
        f"(+ {runs['import_s']:.2f} s importing the app)"
    )
    mon = run_phase("monitor", live)
    print(
        f"\nmonitor, run of {mon['steps']} steps: appended record on screen in "
        f"{mon['on_screen_s'] * 1000:.0f} ms median, {mon['on_screen_max_s'] * 1000:.0f} ms max "
        "(target <= 1 s; polls every 250 ms)"
        f"\n  baseline, read_metrics of the whole run: {mon['read_metrics_s'] * 1000:.1f} ms per "
        f"poll; MetricsFollower.poll of one new record: {mon['follower_poll_s'] * 1000:.2f} ms "
        f"-> {mon['read_metrics_s'] / mon['follower_poll_s']:.0f}x less work per poll"
    )
    print(f"\nuptime: {os.popen('uptime').read().strip()}")


if __name__ == "__main__":
    main()
