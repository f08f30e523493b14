"""Rollout throughput of the collector against bare ``model.generate`` of the same prompts.

The collector runs ``tasks x group`` episodes of an env (default Math-v0, one attempt) with the
``hf`` backend, as ``ptgym rollout`` does, and reports generated tokens/s, episodes/s and where its
wall time went (``CollectStats``: inside ``backend.generate``, waiting for envs, everything else).
The baseline, in the same run, is one bare transformers ``generate`` over the same first prompts
(left-padded, sampling at the same temperature), each row forced to the longest completion the
collector sampled, without logits output: the cost of the tokens alone, with none of the
collector's bookkeeping, logprobs, env steps or re-batching across turns.

Then the fast CPU samplers (``rollout.sampler=bf16|int8``, issue 12) against the exact hf decoder
on the same first-turn prompts and seeds: generated tokens/s of each, alternated ``--rounds``
times, and each fast sampler's per-token KL to the trainer's fp32 forward pass (what the update's
correction sees as ``rollout/sampler_kl``). ``bf16`` decodes through the lean loop
(``agents/lean.py``); ``bf16-hf`` is the same copy through transformers' loop. Every row decodes
``--max-new-tokens`` (no EOS) unless ``--natural-length``, so each sampler does the same work.

    python bench/bench_rollout.py [--tasks 4] [--group 4] [--max-new-tokens 64] [--attempts 1]
                                  [--rounds 2] [--skip-sampler] [--natural-length]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

from ptgym.agents.backend import SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend, left_pad
from ptgym.agents.models import load_model
from ptgym.agents.quantized import CopyBackend
from ptgym.build import env_factory
from ptgym.config import EnvConfig
from ptgym.losses import sampler_is_weights, token_logprobs
from ptgym.metrics import collect_metrics
from ptgym.rollout import Budget, Collector


class CountingBackend:
    """Passes calls to the real backend and keeps the number of prompts of each call."""

    def __init__(self, inner: HFBackend):
        self.inner, self.tokenizer, self.batches = inner, inner.tokenizer, []

    def generate(
        self, prompts: list[list[int]], params: SamplingParams, seeds: list[int] | None = None
    ) -> list:
        self.batches.append(len(prompts))
        return self.inner.generate(prompts, params, seeds)


def bare_generate(model, tokenizer, prompts: list[list[int]], new_tokens: int, temperature: float):
    """Sample exactly ``new_tokens`` for every prompt in one left-padded batch; seconds taken."""
    pad = tokenizer.pad_token_id
    input_ids, attention_mask, _ = left_pad(prompts, pad, "cpu")  # (B, L) each
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            do_sample=True,
            temperature=temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            pad_token_id=pad,
        )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="model name or folder")
    parser.add_argument("--env", default="math", help="env short name or id")
    parser.add_argument("--tasks", type=int, default=4, help="distinct tasks")
    parser.add_argument("--group", type=int, default=4, help="episodes per task")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per turn")
    parser.add_argument(
        "--attempts",
        type=int,
        default=1,
        help="Math-v0 max_attempts (and max turns): >1 makes episodes multi-turn",
    )
    parser.add_argument("--batch-size", type=int, default=32, help="prompts per generate call")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument(
        "--rounds", type=int, default=2, help="exact/bf16/int8 sampler alternations"
    )
    parser.add_argument(
        "--skip-sampler", action="store_true", help="skip the fast-sampler comparison"
    )
    parser.add_argument(
        "--natural-length",
        action="store_true",
        help="sampler comparison: let rows end at EOS (default: every row decodes "
        "--max-new-tokens, the same work for every sampler)",
    )
    args = parser.parse_args()

    print(
        f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
        f"(torch threads: {torch.get_num_threads()})"
    )
    t = time.perf_counter()
    model, tokenizer = load_model(args.model, dtype="float32", device="cpu")
    print(f"model {args.model} loaded in {time.perf_counter() - t:.1f} s")
    kwargs = {"max_attempts": args.attempts} if args.attempts > 1 else {}
    env_id, make_env = env_factory(EnvConfig(name=args.env, kwargs=kwargs))
    backend = HFBackend(model, tokenizer, max_batch_size=args.batch_size)
    renderer = ChatRenderer(tokenizer)
    sampling = SamplingParams(
        max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=0
    )
    budget = Budget(max_turns=args.attempts, max_tokens=args.attempts * args.max_new_tokens)
    collector = Collector(
        backend, renderer, make_env, sampling, budget, env_id=env_id, batch_size=args.batch_size
    )
    # Warm-up: a one-token collect builds the envs (kept and reused) and compiles the chat
    # template, as in every training step after the first: the measured call is the steady state.
    collector.sampling = SamplingParams(max_new_tokens=1, temperature=args.temperature, seed=1)
    collector.collect(list(range(args.tasks)), args.group)
    collector.sampling = sampling
    collector.backend = counting = CountingBackend(backend)
    try:
        trajs = collector.collect(list(range(args.tasks)), args.group)
    finally:
        collector.close()
    stats = collector.stats
    m = collect_metrics(stats)
    n = len(trajs)
    turns = sum(len(tr.turns) for tr in trajs)
    longest = max(len(turn.completion_ids) for tr in trajs for turn in tr.turns)
    print(
        f"\ncollector, {env_id}: {n} episodes ({args.tasks} tasks x {args.group}), {turns} "
        f"turns, {stats.generated_tokens} generated tokens (longest turn {longest}), "
        f"{stats.total:.1f} s"
    )
    print(
        f"  generated tokens/s: {stats.generated_tokens / stats.total:7.1f} overall, "
        f"{m['perf/gen_tokens_per_s']:7.1f} inside generate"
    )
    print(f"  episodes/s:         {m['perf/episodes_per_s']:7.3f}")
    print(
        f"  time shares:        generation {m['perf/rollout_generation_frac']:.3f}, "
        f"env {m['perf/rollout_env_frac']:.3f}, other {m['perf/rollout_other_frac']:.3f}"
    )
    print(f"  generate calls:     {len(counting.batches)}, prompts per call {counting.batches}")
    print(f"  mean reward:        {sum(tr.reward for tr in trajs) / n:.3f}")

    # Baseline: each turn's prompts once more, bare; rows forced to the longest completion.
    bare = 0.0
    by_turn: dict[int, list[list[int]]] = {}
    for tr in trajs:
        for k, turn in enumerate(tr.turns):
            by_turn.setdefault(k, []).append(turn.prompt_ids.tolist())
    for prompts in by_turn.values():
        for i in range(0, len(prompts), args.batch_size):
            bare += bare_generate(
                model, tokenizer, prompts[i : i + args.batch_size], longest, args.temperature
            )
    print(
        f"\nbare model.generate, same prompts, {longest} new tokens each: {bare:.1f} s, "
        f"{stats.generated_tokens / bare:.1f} tokens/s of the collector's tokens"
    )
    print(f"  ratio collector / bare wall time:           {stats.total / bare:.2f}x")
    print(f"  ratio collector generate time / bare:       {stats.generation / bare:.2f}x")
    if not args.skip_sampler:
        compare_samplers(model, tokenizer, by_turn[0], args)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def compare_samplers(model, tokenizer, prompts: list[list[int]], args) -> None:
    """tokens/s of each fast sampler vs the exact decoder (same prompts, seeds), and its KL.

    Unless ``--natural-length``, no token ends a row, so every sampler decodes the same rows x
    steps: samplers that sample different completions would otherwise be timed on different
    amounts of work (shorter completions spread the prefill over fewer tokens). ``bf16-hf`` is the
    bf16 copy decoded by transformers' loop instead of the lean one: the lean loop's own share."""
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=args.temperature)
    seeds = list(range(len(prompts)))
    never = None if args.natural_length else [-1]  # an id no row can sample
    backends = {
        "exact": HFBackend(model, tokenizer, max_batch_size=args.batch_size, eos_token_ids=never)
    }
    copies = {"bf16": ("bf16", True), "bf16-hf": ("bf16", False), "int8": ("int8", False)}
    for name, (sampler, lean_loop) in copies.items():
        backends[name] = CopyBackend(
            model,
            tokenizer,
            sampler=sampler,
            max_batch_size=args.batch_size,
            lean_loop=lean_loop,
            eos_token_ids=never,
        )
        t = time.perf_counter()
        backends[name].sync(0)
        backends[name].generate(prompts[:1], SamplingParams(max_new_tokens=1))  # builds the copy
        print(f"\n{name} sampler: copy built in {time.perf_counter() - t:.1f} s (once per version)")
    rates: dict[str, list[float]] = {name: [] for name in backends}
    outs = {}
    for _ in range(args.rounds):
        for name, backend in backends.items():
            t = time.perf_counter()
            outs[name] = backend.generate(prompts, params, seeds)
            tokens = sum(len(o.token_ids) for o in outs[name])
            rates[name].append(tokens / (time.perf_counter() - t))
    median = {name: statistics.median(r) for name, r in rates.items()}
    for name, r in rates.items():
        line = f"  {name:5s} sampler: {' '.join(f'{x:6.1f}' for x in r)} tokens/s"
        if name != "exact":
            kls = [
                sampler_kl(model, prompt, out, args.temperature)
                for prompt, out in zip(prompts, outs[name], strict=True)
            ]
            line += (
                f"  ({median[name] / median['exact']:.2f}x exact, median of rounds; per-token KL "
                f"to the fp32 forward: mean {sum(kls) / len(kls):.2e}, max {max(kls):.2e})"
            )
        print(line)


def sampler_kl(model, prompt: list[int], out, temperature: float) -> float:
    """k3 estimate of KL(sampler || trainer) over one completion's tokens."""
    ids = torch.tensor([prompt + out.token_ids.tolist()])
    with torch.no_grad():
        logits = model(ids).logits / max(temperature, 1e-6)
    lp = token_logprobs(logits[:, :-1], ids[:, 1:])[:, len(prompt) - 1 :]
    q = torch.as_tensor(out.logprobs).view(1, -1)
    return float(sampler_is_weights(lp, q, torch.ones_like(q))[1]["sampler_kl"])


if __name__ == "__main__":
    main()
