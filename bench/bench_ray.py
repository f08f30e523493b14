"""Env-step throughput of the Ray collector against the local one, and Ray's cost per step.

Generation is taken out of the picture: an instant backend answers every prompt at once with the
same reply (real tokenizer, real chat rendering), so the wall time of a ``collect`` is the envs and
the collector's machinery. Three envs, each run through the local collector (a thread pool of
``--threads``) and through ``RayRunner`` with 1, 2 and 4 actors, in one process, one after
another:

- ``sleep``: a synthetic env whose ``step`` sleeps 200 ms (a slow judge);
- ``code-tools``: CodeTools-v0, every reply a ``run_python`` call in a Docker sandbox (each env
  process, i.e. the local one or each actor, has its own pool of ``--pool`` containers);
- ``trivial``: a ``step`` that does nothing, one episode of ``--trivial-turns`` turns at a time,
  ``--repeats`` times: Ray's overhead per step is (Ray's median wall time - the local one) /
  steps (goal: under 5 ms).

Each configuration first runs one warm-up ``collect`` (actors start, envs and pools are made),
then the measured one. Env steps/s and the ratio to the local collector are printed.

    python bench/bench_ray.py [--episodes 16] [--turns 3] [--threads 8] [--repeats 30] [--skip-docker]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
from typing import Any

import numpy as np
import ray

from ptgym.agents.backend import Completion, SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.models import load_tokenizer
from ptgym.config import EnvConfig
from ptgym.env import TextEnv
from ptgym.ray_collector import RayRunner, RegistryEnv
from ptgym.rollout import Budget, Collector


class SleepEnv(TextEnv):
    """Never ends by itself; each ``step`` sleeps ``delay`` seconds."""

    def __init__(self, delay: float = 0.2):
        super().__init__()
        self.delay = delay

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        return [{"role": "user", "content": f"Task {seed}."}], {"task_id": str(seed)}

    def step(self, action):
        time.sleep(self.delay)
        return [{"role": "user", "content": "go on"}], 0.0, False, False, {}


class InstantBackend:
    """Answers every prompt at once with ``reply`` (tokenised by the real tokenizer)."""

    def __init__(self, tokenizer: Any, reply: str):
        self.tokenizer = tokenizer
        ids = tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        self.ids, self.text = np.array(ids), reply

    def generate(self, prompts, params, seeds=None) -> list[Completion]:
        logprobs = np.zeros(len(self.ids), dtype=np.float32)
        return [Completion(self.ids, logprobs, "stop", self.text) for _ in prompts]


def run(
    make_runner,
    make_env,
    backend,
    renderer,
    episodes: int,
    turns: int,
    threads: int,
    *,
    repeats: int = 1,
):
    """Median seconds of ``repeats`` measured ``collect`` calls (after one warm-up) and the env
    steps of one call."""
    runner = make_runner() if make_runner else None
    sampling = SamplingParams(max_new_tokens=64)
    collector = Collector(
        backend,
        renderer,
        make_env,
        sampling,
        Budget(max_turns=turns),
        env_workers=threads,
        batch_size=episodes,
        runner=runner,
    )
    times = []
    try:
        collector.collect(list(range(episodes)), 1)
        for _ in range(repeats):
            start = time.perf_counter()
            trajs = collector.collect(list(range(episodes)), 1)
            times.append(time.perf_counter() - start)
    finally:
        collector.close()
    errors = [t.error for t in trajs if t.error]
    assert not errors, errors[:3]
    return float(np.median(times)), sum(len(t.turns) for t in trajs)


def table(name: str, rows: list[tuple[str, float, int]]) -> None:
    base = rows[0][1]
    print(f"\n{name}")
    print(f"  {'collector':<28} {'wall s':>8} {'steps':>6} {'steps/s':>8} {'vs local':>9}")
    for label, seconds, steps in rows:
        print(
            f"  {label:<28} {seconds:8.3f} {steps:6d} {steps / seconds:8.1f} {base / seconds:8.2f}x"
        )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--episodes", type=int, default=16)
    p.add_argument("--turns", type=int, default=3)
    p.add_argument("--threads", type=int, default=8, help="env threads, local and per actor")
    p.add_argument("--pool", type=int, default=2, help="sandbox containers per env process")
    p.add_argument("--trivial-turns", type=int, default=5)
    p.add_argument("--repeats", type=int, default=30, help="collect calls of the trivial env")
    p.add_argument("--skip-docker", action="store_true")
    args = p.parse_args()

    print(f"load average: {os.getloadavg()}; ray {ray.__version__}")
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    tokenizer = load_tokenizer("tiny")
    renderer = ChatRenderer(tokenizer)
    actors = (1, 2, 4)

    def ray_rows(make_env, backend, episodes, turns, threads) -> list[tuple[str, float, int]]:
        rows = []
        for n in actors:
            make = functools.partial(RayRunner, make_env, actors=n, threads=threads)
            rows.append(
                (
                    f"ray, {n} actor(s) x {threads} thr",
                    *run(make, None, backend, renderer, episodes, turns, threads),
                )
            )
        return rows

    sleep_env = functools.partial(SleepEnv, 0.2)
    plain = InstantBackend(tokenizer, "ok")
    e, t, w = args.episodes, args.turns, args.threads
    rows = [(f"local, {w} threads", *run(None, sleep_env, plain, renderer, e, t, w))]
    rows += ray_rows(sleep_env, plain, e, t, w)
    rows += ray_rows(sleep_env, plain, e, t, 1)
    table(f"sleep env (200 ms per step), {e} episodes x {t} turns", rows)

    if not args.skip_docker:
        call = {"name": "run_python", "arguments": {"code": "print(sum(range(10**5)))"}}
        coder = InstantBackend(tokenizer, f"<tool_call>{json.dumps(call)}</tool_call>")
        kwargs = {"pool_size": args.pool, "max_turns": t + 1}
        code_env = RegistryEnv(EnvConfig(name="code-tools", kwargs=kwargs))
        rows = [(f"local, {w} threads", *run(None, code_env, coder, renderer, e, t, w))]
        rows += ray_rows(code_env, coder, e, t, w)
        table(f"CodeTools-v0 (run_python per step, pool {args.pool} per process), {e} x {t}", rows)

    # Short episodes, many times: a long one would be dominated by rendering its growing history.
    trivial = functools.partial(SleepEnv, 0.0)
    n, r = args.trivial_turns, args.repeats
    local_s, steps = run(None, trivial, plain, renderer, 1, n, 1, repeats=r)
    one = functools.partial(RayRunner, trivial, actors=1, threads=1)
    ray_s, _ = run(one, None, plain, renderer, 1, n, 1, repeats=r)
    label = f"trivial env, 1 episode x {n} turns, median of {r} (latency)"
    table(label, [("local", local_s, steps), ("ray, 1 actor", ray_s, steps)])
    print(f"\nRay overhead per env step: {(ray_s - local_s) / steps * 1000:.2f} ms (goal < 5 ms)")
    ray.shutdown()


if __name__ == "__main__":
    main()
