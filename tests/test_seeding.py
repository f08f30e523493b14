"""Reproducible sampling independent of batching (``backend.py``'s seeding contract).

The collector batches whichever episodes' envs have answered, so batch composition follows thread
timing. These tests prove that the tokens sampled for an episode depend only on the model, the
run's seed, the policy version, the task and the episode's place in the batch: never on which
other prompts shared its ``generate`` call. Real tiny model, real tokenizer, real ``ptgym serve``.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from ptgym.agents.backend import Completion, SamplingParams
from ptgym.agents.batcher import Batcher
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.agents.openai_backend import OpenAIBackend
from ptgym.agents.serve import OpenAIServer
from ptgym.rollout import Budget, Collector, turn_seed
from ptgym.types import Trajectory
from tests.envs_for_tests import EchoEnv
from tests.tiny import tiny_model_and_tokenizer

SAMPLING = SamplingParams(max_new_tokens=5, temperature=1.0)
TASKS, GROUP, TURNS = [3, 4, 5], 2, 3


class JitterEnv(EchoEnv):
    """``EchoEnv`` whose ``reset`` and ``step`` sleep a random 0-30 ms from an unseeded RNG, so
    the envs answer in a different order, and batch differently, on every run."""

    def __init__(self) -> None:
        super().__init__()
        self.jitter = random.Random()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        time.sleep(self.jitter.uniform(0, 0.03))
        return super().reset(seed=seed, options=options)

    def step(self, action):
        time.sleep(self.jitter.uniform(0, 0.03))
        return super().step(action)


class BatchLog:
    """Passes every call to ``inner`` and records how many prompts each call held."""

    def __init__(self, inner: HFBackend):
        self.inner, self.tokenizer, self.sizes = inner, inner.tokenizer, []

    def generate(
        self,
        prompts: list[Sequence[int]],
        params: SamplingParams,
        seeds: Sequence[int] | None = None,
    ) -> list[Completion]:
        self.sizes.append(len(prompts))
        return self.inner.generate(prompts, params, seeds)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = tiny_model_and_tokenizer()
    return HFBackend(model, tokenizer), ChatRenderer(tokenizer)


def collect(tiny, *, batch_size: int = 32, seed: int = 0, version: int = 0):
    backend = BatchLog(tiny[0])
    collector = Collector(
        backend,
        tiny[1],
        JitterEnv,
        SAMPLING,
        Budget(max_turns=TURNS),
        batch_size=batch_size,
        seed=seed,
        env_workers=4,
    )
    try:
        return collector.collect(TASKS, GROUP, policy_version=version), backend.sizes
    finally:
        collector.close()


def sampled(trajs: list[Trajectory]) -> list[list[list[int]]]:
    return [[turn.completion_ids.tolist() for turn in t.turns] for t in trajs]


def test_collect_samples_the_same_tokens_however_the_episodes_were_batched(tiny):
    """One prompt per call versus whatever the jittery envs gather: identical ids and logprobs."""
    one_by_one, sizes_a = collect(tiny, batch_size=1)
    batched, sizes_b = collect(tiny)
    again, _ = collect(tiny)
    assert set(sizes_a) == {1} and max(sizes_b) > 1
    assert len(one_by_one) == len(TASKS) * GROUP
    assert all(len(t.turns) == TURNS and t.error is None for t in one_by_one + batched)
    assert sampled(one_by_one) == sampled(batched) == sampled(again)
    for a, b in zip(one_by_one, batched, strict=True):
        for ta, tb in zip(a.turns, b.turns, strict=True):
            assert ta.prompt_ids.tolist() == tb.prompt_ids.tolist()
            np.testing.assert_allclose(ta.completion_logprobs, tb.completion_logprobs, atol=1e-4)


def test_group_members_versions_and_run_seeds_sample_differently(tiny):
    base, _ = collect(tiny)
    first_turns = [t.turns[0].completion_ids.tolist() for t in base]
    assert len(set(map(tuple, first_turns))) == len(first_turns)  # even within a task's group
    assert sampled(collect(tiny, version=1)[0]) != sampled(base)
    assert sampled(collect(tiny, seed=1)[0]) != sampled(base)


def test_turn_seed_changes_with_every_coordinate():
    coords = (7, 2, 1000, 3, 1)
    seeds = {turn_seed(*coords)}
    for k in range(5):
        moved = list(coords)
        moved[k] += 1
        seeds.add(turn_seed(*moved))
    assert len(seeds) == 6 and all(0 <= s < 2**32 for s in seeds)
    assert turn_seed(*coords) == turn_seed(*coords)


def test_openai_backend_over_ptgym_serve_samples_what_hf_samples_for_each_seed(tiny):
    hf, renderer = tiny
    prompts = [renderer.initial([{"role": "user", "content": q}]) for q in ("Hi", "2+2?", "Sea")]
    server = OpenAIServer(hf, "tiny", port=0).start()
    try:
        remote = OpenAIBackend(server.url, hf.tokenizer, model="tiny")
        params = SamplingParams(max_new_tokens=6, temperature=1.0, seed=99)  # seeds override it
        over_http = remote.generate(prompts, params, seeds=[5, 6, 7])
    finally:
        server.close()
    local = hf.generate(prompts, SamplingParams(max_new_tokens=6), seeds=[5, 6, 7])
    assert [c.token_ids.tolist() for c in over_http] == [c.token_ids.tolist() for c in local]


def test_serve_batches_seeded_requests_together_with_their_own_seeds(tiny):
    """Three seeded requests waiting together share one call; each gets the tokens it gets alone
    (a request's seed s gives its n choices the seeds s, s + 1, ...)."""
    hf, renderer = tiny
    prompt = renderer.initial([{"role": "user", "content": "Hi"}])
    params = [SamplingParams(max_new_tokens=6, seed=s) for s in (10, 20, 30)]
    batcher = Batcher(hf)
    results: dict[int, list[Completion]] = {}
    threads = [
        threading.Thread(
            target=lambda i=i: results.__setitem__(i, batcher.submit([prompt] * 2, params[i]))
        )
        for i in range(3)
    ]
    for t in threads:
        t.start()
    while batcher._queue.qsize() < 3:
        time.sleep(0.01)
    batcher.start()
    for t in threads:
        t.join()
    batcher.stop()
    assert (batcher.batches, batcher.requests) == (1, 3)
    for i, s in enumerate((10, 20, 30)):
        alone = hf.generate([prompt], SamplingParams(max_new_tokens=6), seeds=[s + 1])[0]
        assert results[i][1].token_ids.tolist() == alone.token_ids.tolist()
