"""The rollout collector: groups of multi-turn episodes, token in, token out (DESIGN §2, §3).

One loop drives every episode of a batch: the episodes whose env has answered are batched into one
``backend.generate`` call; each completion goes to its env's ``step`` in an env runner
(``runners.py``: a thread pool here, or Ray actors), so a slow env (a Docker sandbox running tests)
never blocks generation for the others. The runner only calls the env and returns plain values;
this loop alone renders, tokenises and writes the trajectories, so no episode state is shared
between threads, and a renderer failure ends its own episode only. The next prompt extends the
previous one with the observation tokens (``ChatRenderer.next_prompt``), never re-tokenising what was
sampled.

Budgets end an episode with ``truncated=True``: ``max_turns`` assistant turns, ``max_tokens``
sampled tokens, ``timeout_s`` wall time. An exception inside an env, or ``info["error"]``, marks the
trajectory ``error`` (infrastructure failure): the trainer drops it instead of scoring it 0.

Reproducible despite timing: which episodes share a ``generate`` call depends on which envs happen
to answer within the gather window (below), so each turn gets its own sampling seed
(``turn_seed``: the collector's ``seed``, the policy version, the task seed, the episode's place in
the batch, the turn) and the backend samples each prompt from its own seed only (``backend.py``'s
seeding contract).
The same config, seed and weights sample the same tokens however the batches were split.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gymnasium
import numpy as np

from ptgym.agents.backend import Backend, SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.runners import EnvResult, EnvRunner, LocalRunner
from ptgym.types import Action, Trajectory, Turn

# After the first env answers, the collector waits for the others so that they share one generate
# call: a batch split in two costs a second full decode. It waits at most GATHER_SHARE of the last
# generate call's time (a first call is guessed to take FIRST_GENERATE_S), and never less than
# GATHER_MIN_S; it stops waiting as soon as every pending env has answered.
GATHER_MIN_S = 0.02
GATHER_SHARE = 0.25
FIRST_GENERATE_S = 2.0


@dataclass
class Budget:
    max_turns: int = 1
    max_tokens: int = 1024
    timeout_s: float = 600.0


def turn_seed(base: int, policy_version: int, task_seed: int, episode: int, turn: int) -> int:
    """The sampling seed of one turn of one episode: a hash of where the turn sits in the run
    (NumPy's ``SeedSequence``, so nearby inputs give unrelated seeds), never of when it ran.
    All arguments must be >= 0."""
    entropy = [base, policy_version, task_seed, episode, turn]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


@dataclass
class _Episode:
    """One episode's state; only the collector's own thread reads or writes it."""

    index: int  # place in the collect call's batch: task i, group member g -> i * group + g
    traj: Trajectory
    options: dict[str, Any] | None
    tools: list[dict] | None = None
    prompt: list[int] = field(default_factory=list)
    extends: bool = True  # the prompt extends the previous turn's sequence (else: a new row)
    started: float = 0.0
    pending: Any = None  # the runner's handle of the env call in flight
    completion: Any = None  # the last turn's Completion, for the history when its step returns
    retried: bool = False
    done: bool = False


@dataclass
class CollectStats:
    """Where the wall time of a ``collect`` call went (seconds), and its infrastructure failures;
    ``ptgym.metrics.collect_metrics`` names them as metrics."""

    total: float = 0.0
    generation: float = 0.0  # inside backend.generate
    env_wait: float = 0.0  # waiting for env steps with nothing to generate
    generated_tokens: int = 0
    generate_calls: int = 0  # backend.generate calls: fewer, fuller batches decode faster
    episodes: int = 0
    retries: int = 0  # episodes started again after their env worker was lost before sampling
    infra_errors: int = 0  # episodes ended because their env worker was lost


class Collector:
    """Runs groups of episodes of one env with one backend.

    ``runner`` is where env calls run (``runners.py``); by default a ``LocalRunner`` of
    ``env_workers`` threads over envs made by ``env_factory``. ``seed`` (>= 0) is the base of every
    turn's sampling seed (``turn_seed``); ``sampling.seed`` is not used.
    """

    def __init__(
        self,
        backend: Backend,
        renderer: ChatRenderer,
        env_factory: Callable[[], gymnasium.Env] | None,
        sampling: SamplingParams,
        budget: Budget,
        *,
        env_id: str = "",
        model_name: str = "",
        env_workers: int = 8,
        batch_size: int = 32,
        seed: int = 0,
        runner: EnvRunner | None = None,
    ):
        if runner is None:
            assert env_factory is not None, "a Collector needs env_factory or runner"
            runner = LocalRunner(env_factory, env_workers)
        self.backend = backend
        self.renderer = renderer
        self.runner = runner
        self.sampling = sampling
        self.budget = budget
        self.env_id = env_id
        self.model_name = model_name
        self.batch_size = batch_size
        self.seed = seed
        self.stats = CollectStats()
        self._last_generate_s = FIRST_GENERATE_S

    def close(self) -> None:
        self.runner.close()

    def collect(
        self,
        seeds: list[int],
        group: int,
        *,
        policy_version: int = 0,
        group_prefix: str = "",
        options: dict[str, Any] | None = None,
    ) -> list[Trajectory]:
        """``group`` episodes for each seed (the same seed gives the same task): a GRPO batch."""
        start = time.perf_counter()
        self.stats = CollectStats()
        episodes = []
        for i, seed in enumerate(seeds):
            for g in range(group):
                traj = Trajectory(
                    env_id=self.env_id,
                    group_id=f"{group_prefix}{i}",
                    seed=seed,
                    model=self.model_name,
                    policy_version=policy_version,
                )
                traj.info["group_member"] = g
                episodes.append(_Episode(i * group + g, traj, options))
        for ep in episodes:
            ep.started = time.perf_counter()
            ep.pending = self.runner.reset(ep.index, ep.traj.seed, ep.options)
        self._run(episodes)
        self.stats.total = time.perf_counter() - start
        self.stats.episodes = len(episodes)
        return [ep.traj for ep in episodes]

    # --- the loop ---------------------------------------------------------------------------

    def _run(self, episodes: list[_Episode]) -> None:
        while True:
            waiting = [ep.pending for ep in episodes if ep.pending is not None]
            if waiting:
                answered = self.runner.wait(waiting, 0)
                if len(answered) < len(waiting):
                    t0 = time.perf_counter()
                    if not answered and all(ep.done or ep.pending is not None for ep in episodes):
                        self.runner.wait(waiting, None, first=True)  # nothing to generate yet
                    gather_s = max(GATHER_MIN_S, GATHER_SHARE * self._last_generate_s)
                    answered = self.runner.wait(waiting, gather_s)  # returns once all answered
                    self.stats.env_wait += time.perf_counter() - t0
                for ep in episodes:
                    if ep.pending is not None and ep.pending in answered:
                        result = self.runner.result(ep.pending)
                        ep.pending = None
                        self._receive(ep, result)
            ready = [ep for ep in episodes if not ep.done and ep.pending is None]
            if not ready:
                if all(ep.done for ep in episodes):
                    return
                continue
            for ep in ready:
                self._check_budgets(ep)
            ready = [ep for ep in ready if not ep.done][: self.batch_size]
            if ready:
                self._generate(ready)

    def _check_budgets(self, ep: _Episode) -> None:
        traj = ep.traj
        if len(traj.turns) >= self.budget.max_turns:
            self._finish(ep, truncated=True, reason="max_turns")
        elif traj.num_completion_tokens >= self.budget.max_tokens:
            self._finish(ep, truncated=True, reason="max_tokens")
        elif time.perf_counter() - ep.started > self.budget.timeout_s:
            self._finish(ep, truncated=True, reason="timeout")

    def _generate(self, ready: list[_Episode]) -> None:
        # One call per distinct token budget keeps each episode within max_tokens.
        by_budget: dict[int, list[_Episode]] = {}
        for ep in ready:
            left = self.budget.max_tokens - ep.traj.num_completion_tokens
            by_budget.setdefault(min(self.sampling.max_new_tokens, left), []).append(ep)
        for max_new, eps in by_budget.items():
            params = SamplingParams(**{**vars(self.sampling), "max_new_tokens": max_new})
            seeds = [
                turn_seed(
                    self.seed, ep.traj.policy_version, ep.traj.seed, ep.index, len(ep.traj.turns)
                )
                for ep in eps
            ]
            t0 = time.perf_counter()
            completions = self.backend.generate([ep.prompt for ep in eps], params, seeds=seeds)
            dt = time.perf_counter() - t0
            self.stats.generation += dt
            self.stats.generate_calls += 1
            self._last_generate_s = dt
            for ep, c in zip(eps, completions, strict=True):
                self.stats.generated_tokens += len(c.token_ids)
                turn = Turn(
                    prompt_ids=ep.prompt,
                    completion_ids=c.token_ids,
                    completion_logprobs=c.logprobs,
                    text=c.text,
                    finish_reason=c.finish_reason,
                    gen_seconds=dt,
                )
                ep.traj.turns.append(turn)
                if not ep.extends:  # the template rewrote the past (dropped <think>): a new row
                    ep.traj.metrics["prefix_breaks"] = ep.traj.metrics.get("prefix_breaks", 0) + 1
                ep.completion = c
                action = Action(c.text, c.token_ids, c.logprobs, c.finish_reason)
                ep.pending = self.runner.step(ep.index, action)

    # --- what the envs answered (this thread only) ------------------------------------------

    def _receive(self, ep: _Episode, result: EnvResult) -> None:
        """Apply one env call's result to its episode: render, tokenise, record. A failure
        here (the renderer's or the env's) ends this episode only."""
        stepped = bool(ep.traj.turns)
        if stepped:
            ep.traj.turns[-1].env_seconds = result.seconds
        if result.error is not None:
            if result.infra and not stepped and not ep.retried:
                # The worker died before anything was sampled: starting again changes nothing
                # the trajectory records (its turn seeds depend on where it sits, not when).
                ep.retried = True
                self.stats.retries += 1
                ep.pending = self.runner.reset(ep.index, ep.traj.seed, ep.options)
                return
            if result.infra:
                self.stats.infra_errors += 1
                ep.traj.info["infra_error"] = True
            self._fail(ep, result.error, result.traceback)
            return
        assert result.value is not None
        try:
            if stepped:
                self._after_step(ep, *result.value)
            else:
                self._after_reset(ep, *result.value)
        except Exception as exc:  # a renderer failure is ours, not the model's
            self._fail(ep, f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=-5))

    def _after_reset(self, ep: _Episode, obs: list[dict], info: dict[str, Any]) -> None:
        ep.tools = info.get("tools") or None
        ep.traj.task_id = str(info.get("task_id", ""))
        ep.traj.messages = list(obs)
        ep.prompt = list(self.renderer.initial(obs, ep.tools))

    def _after_step(
        self,
        ep: _Episode,
        obs: list[dict],
        reward: float,
        terminated: bool,
        truncated: bool,
        info: dict[str, Any],
    ) -> None:
        turn = ep.traj.turns[-1]
        turn.reward = float(reward)
        turn.observation = list(obs)
        assistant = self.renderer.assistant_message(ep.completion.text)
        history = ep.traj.messages + [assistant]
        ep.traj.messages = history + list(obs)
        ep.traj.reward += float(reward)
        for key, value in info.items():
            if key not in ("tools", "error") and isinstance(value, (int, float, str, bool)):
                ep.traj.metrics[key] = value
        if info.get("error"):
            ep.traj.error = str(info["error"])
            self._finish(ep, truncated=True, reason="error")
        elif terminated or truncated:
            # Gymnasium's TimeLimit also sets truncated on a step that terminates at the limit;
            # an episode the env ended was not cut short, so terminated wins.
            self._finish(
                ep,
                terminated=bool(terminated),
                truncated=bool(truncated) and not terminated,
                reason="env" if terminated else "env_truncated",
            )
        else:
            ids, extends = self.renderer.next_prompt(
                ep.prompt, ep.completion.token_ids, history, list(obs), ep.tools
            )
            ep.prompt, ep.extends = list(ids), extends

    def _fail(self, ep: _Episode, error: str, trace: str | None) -> None:
        ep.traj.error = error
        ep.traj.info["traceback"] = trace or ""
        self._finish(ep, truncated=True, reason="error")

    def _finish(
        self, ep: _Episode, *, terminated: bool = False, truncated: bool = False, reason: str
    ) -> None:
        ep.traj.terminated = terminated
        ep.traj.truncated = truncated
        ep.traj.info["end"] = reason
        ep.done = True
