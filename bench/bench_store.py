"""Trajectory store vs JSONL: write and read throughput and file size, measured in one run.

Both sides start from the same in-memory ``Trajectory`` objects and end with equal ones: the store
writes msgpack records with packed token arrays (``TrajectoryStore``); the baseline writes one JSON
object per line with token ids and logprobs as lists (what a JSONL rollout dump holds) and parses
them back into numpy arrays. Goal (ptgym issue 2): the store at least 3x faster and at most half
the size.

    python bench/bench_store.py [--n 2000] [--turns 3] [--vocab 49152] [--repeats 3]

Token ids are drawn uniformly below ``--vocab``; logprobs are float32 draws from -Exp(0.5).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ptgym.store import TrajectoryStore
from ptgym.types import Trajectory, Turn

WORDS = ["the", "of", "a", "to", "and", "is", "in", "that", "we", "for", "it", "with", "as"]


def make_trajectories(n: int, turns: int, vocab: int = 49152, seed: int = 0) -> list[Trajectory]:
    """Episodes shaped like a multi-turn tool env: ~300 prompt ids and ~100 sampled ids per turn."""
    rng = np.random.default_rng(seed)

    def text(words: int) -> str:
        return " ".join(rng.choice(WORDS, size=words))

    out = []
    for i in range(n):
        messages = [{"role": "system", "content": text(40)}, {"role": "user", "content": text(60)}]
        built = []
        for _ in range(turns):
            completion = text(70)
            observation = [{"role": "tool", "content": text(30), "tool_call_id": "call_0"}]
            messages += [{"role": "assistant", "content": completion}, *observation]
            completion_ids = rng.integers(0, vocab, size=int(rng.integers(80, 120)))
            built.append(
                Turn(
                    prompt_ids=rng.integers(0, vocab, size=int(rng.integers(250, 350))),
                    completion_ids=completion_ids,
                    completion_logprobs=-rng.exponential(0.5, size=len(completion_ids)),
                    text=completion,
                    observation=observation,
                    reward=float(rng.random()),
                    gen_seconds=float(rng.random()),
                    env_seconds=float(rng.random()),
                )
            )
        out.append(
            Trajectory(
                env_id="ptgym/CodeTools-v0",
                task_id=f"HumanEval/{i % 164}",
                group_id=f"g{i // 8}",
                seed=i,
                turns=built,
                messages=messages,
                reward=float(rng.random()),
                terminated=True,
                metrics={"tool_calls": float(turns)},
                model="smollm2-135m",
                policy_version=i // 64,
            )
        )
    return out


def to_json_row(t: Trajectory) -> dict:
    """The trajectory as JSON-ready data: the record's fields, token arrays as lists."""
    row = t.to_record()
    row["turns"] = [
        {
            **vars(turn),
            "prompt_ids": turn.prompt_ids.tolist(),
            "completion_ids": turn.completion_ids.tolist(),
            "completion_logprobs": turn.completion_logprobs.tolist(),
        }
        for turn in t.turns
    ]
    return row


def from_json_row(row: dict) -> Trajectory:
    turns = [Turn(**turn) for turn in row.pop("turns")]  # Turn makes the lists int32/float32 arrays
    traj = Trajectory.from_record(row)
    traj.turns = turns
    return traj


def write_store(run: Path, trajs: list[Trajectory]) -> Path:
    store = TrajectoryStore(run)
    store.extend(trajs)
    store.close()
    return run / "trajectories" / "rollouts.msgpack"


def read_store(run: Path) -> list[Trajectory]:
    return list(TrajectoryStore(run))


def write_jsonl(path: Path, trajs: list[Trajectory]) -> Path:
    with open(path, "w") as f:
        for t in trajs:
            f.write(json.dumps(to_json_row(t)) + "\n")
    return path


def read_jsonl(path: Path) -> list[Trajectory]:
    with open(path) as f:
        return [from_json_row(json.loads(line)) for line in f]


def best_of(repeats: int, fn, *args):
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="trajectories")
    parser.add_argument("--turns", type=int, default=3, help="turns per trajectory")
    parser.add_argument(
        "--vocab",
        type=int,
        default=49152,
        help="ids drawn below this (SmolLM2: 49152; Qwen2.5: 151936)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs")
    args = parser.parse_args()

    trajs = make_trajectories(args.n, args.turns, args.vocab)
    tokens = sum(len(t.prompt_ids) + len(t.completion_ids) for tr in trajs for t in tr.turns)
    print(
        f"{args.n} trajectories x {args.turns} turns, {tokens / 1e6:.2f} M token ids "
        f"below {args.vocab}; "
        f"best of {args.repeats}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)

        def fresh_store():
            for p in (tmp / "run" / "trajectories").glob("*"):
                p.unlink()
            return write_store(tmp / "run", trajs)

        t_sw, store_path = best_of(args.repeats, fresh_store)
        t_sr, store_back = best_of(args.repeats, read_store, tmp / "run")
        t_jw, jsonl_path = best_of(args.repeats, write_jsonl, tmp / "t.jsonl", trajs)
        t_jr, jsonl_back = best_of(args.repeats, read_jsonl, jsonl_path)
        s_size, j_size = store_path.stat().st_size, jsonl_path.stat().st_size

    for a, b in zip(store_back, jsonl_back, strict=True):  # both sides read back the same data
        assert a.to_record() == b.to_record()
    mb = 1e6
    print(
        f"{'':8} {'write s':>8} {'write MB/s':>10} {'read s':>8} {'read MB/s':>10} {'size MB':>8}"
    )
    for name, tw, tr, size in (("store", t_sw, t_sr, s_size), ("jsonl", t_jw, t_jr, j_size)):
        print(
            f"{name:8} {tw:8.3f} {size / mb / tw:10.1f} {tr:8.3f} {size / mb / tr:10.1f} "
            f"{size / mb:8.2f}"
        )
    print(
        f"store vs jsonl: write {t_jw / t_sw:.1f}x faster, read {t_jr / t_sr:.1f}x faster, "
        f"write+read {(t_jw + t_jr) / (t_sw + t_sr):.1f}x faster, size {s_size / j_size:.2f}x "
        "(goal: >= 3x faster, <= 0.5x size)"
    )


if __name__ == "__main__":
    main()
