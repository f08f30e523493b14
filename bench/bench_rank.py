"""Ranking: keypress to the next pair drawn, beside a plain append+fsync of the same events.

    python bench/bench_rank.py                    # 10,000 trajectories in groups of 4, 200 keys
    python bench/bench_rank.py --n 100000 --presses 300

Measured in one process, in this order:
- ``open``: ``RankSession(run, annotator)``: every pair of the run, the log replayed; beside it
  the baseline of iterating ``TrajectoryStore`` (decoding every trajectory) in plain Python.
- ``keypress``: the rank screen in a Textual app (Pilot, headless, 120x40). For each key (1, 2,
  t, s in turn) the time from posting the key to the end of the first screen refresh that shows
  the next pair (``RankScreen.drawn_at``, set after that refresh). It includes the judgment's
  ``os.write`` + ``fsync``, reading the next two trajectories and laying out their markdown.
- ``baseline``: the same judgment events (read back from the log) appended to a fresh file with
  ``os.write`` + ``os.fsync`` each, in plain Python: the floor the screen cannot beat.
The process's CPU time per keypress is printed too: on a loaded machine wall time mostly measures
waiting for a core. Goal (issue 9): keypress p95 <= 50 ms. Load matters: ``uptime`` is printed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np


def generate(run: Path, n: int, group: int) -> None:
    """``n`` two-turn trajectories (markdown, code, a tool call) in groups of ``group``."""
    from ptgym.store import TrajectoryStore
    from ptgym.types import Trajectory, Turn

    rng = np.random.default_rng(0)
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.yaml").write_text("model:\n  name: tiny\n")
    store = TrajectoryStore(run)
    batch = []
    for i in range(n):
        g, a, b = i // group, i % 97, (i // group) % 89
        reply = f"Let me check.\n\n```python\nprint({a} * {b})\n```\n\nSo the answer is **{a * b + i % group}**."
        messages = [
            {"role": "system", "content": "Answer with a number. Show your work."},
            {"role": "user", "content": f"Problem {g}: what is {a} * {b}?"},
            {"role": "assistant", "content": reply},
        ]
        ids = rng.integers(0, 49152, size=60, dtype=np.int32)
        turn = Turn(ids[:20], ids[20:], -rng.random(40).astype(np.float32), text=reply, reward=1.0)
        batch.append(
            Trajectory(
                env_id="ptgym/Math-v0",
                task_id=f"task-{g}",
                group_id=f"{g // 16 + 1}/{g}",
                turns=[turn],
                messages=messages,
                reward=float(i % group == 0),
                terminated=True,
                policy_version=g // 16,
            )
        )
        if len(batch) == 512:
            store.extend(batch)
            batch = []
    store.extend(batch)
    store.close()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


async def keypresses(run: Path, presses: int) -> tuple[list[float], list[float]]:
    from textual.app import App

    from ptgym.tui.screens.rank import RankScreen

    screen = RankScreen(run, "bench")

    class Host(App):
        def on_mount(self) -> None:
            self.push_screen(screen)

    times, cpu = [], []
    async with Host().run_test(size=(120, 40)) as pilot:
        while screen.draws < 1:
            await pilot.pause()
        for k in range(presses):
            draws = screen.draws
            t0, c0 = time.perf_counter(), time.process_time()
            await pilot.press("12ts"[k % 4])
            while screen.draws == draws:
                await pilot.pause()
            times.append(screen.drawn_at - t0)
            cpu.append(screen.drawn_cpu - c0)
    return times, cpu


def baseline(events: list[dict]) -> list[float]:
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        fd = os.open(Path(tmp) / "judgments.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            for e in events:
                t0 = time.perf_counter()
                os.write(fd, (json.dumps(e, separators=(",", ":")) + "\n").encode())
                os.fsync(fd)
                times.append(time.perf_counter() - t0)
        finally:
            os.close(fd)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="trajectories in the run")
    parser.add_argument("--group", type=int, default=4, help="trajectories per group")
    parser.add_argument("--presses", type=int, default=200, help="judgments to time")
    parser.add_argument("--dir", default="bench/results/rank", help="where the run is written")
    args = parser.parse_args()

    from ptgym.judgments import JUDGMENTS_FILE, RankSession
    from ptgym.store import TrajectoryStore

    run = Path(args.dir) / f"run-{args.n}-{args.group}"
    if not (run / "trajectories").is_dir():
        print(f"writing {args.n:,} trajectories to {run} ...")
        generate(run, args.n, args.group)
    (run / JUDGMENTS_FILE).unlink(missing_ok=True)

    t0 = time.perf_counter()
    session = RankSession(run, "bench")
    open_s = time.perf_counter() - t0
    pairs = len(session.pairs)
    session.close()
    t0 = time.perf_counter()
    rows = sum(1 for _ in TrajectoryStore(run))
    store_s = time.perf_counter() - t0

    times, cpu = asyncio.run(keypresses(run, args.presses))
    events = [json.loads(line) for line in (run / JUDGMENTS_FILE).read_text().splitlines()]
    base = baseline(events)

    ms = 1000
    print(f"run: {args.n:,} trajectories, groups of {args.group}, {pairs:,} pairs")
    print(f"open   RankSession {open_s:.2f} s | baseline: iterate the store ({rows:,}) "
          f"{store_s:.2f} s | ratio {open_s / store_s:.2f}x")  # fmt: skip
    print(f"keypress -> next pair drawn ({len(times)} keys): p50 {statistics.median(times) * ms:.1f} ms, "
          f"p95 {pct(times, 95) * ms:.1f} ms, max {max(times) * ms:.1f} ms  (goal p95 <= 50 ms)")  # fmt: skip
    print(f"  CPU time of this process per keypress (load-independent): p50 "
          f"{statistics.median(cpu) * ms:.1f} ms, p95 {pct(cpu, 95) * ms:.1f} ms")  # fmt: skip
    print(f"baseline append+fsync ({len(base)} events): p50 {statistics.median(base) * ms:.2f} ms, "
          f"p95 {pct(base, 95) * ms:.2f} ms")  # fmt: skip
    print(f"ratio p95 keypress / p95 append+fsync: {pct(times, 95) / pct(base, 95):.1f}x")
    print("uptime:", subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip())


if __name__ == "__main__":
    main()
