"""The rollout collector (DESIGN §2, §3): groups, the multi-turn loop, budgets, env failures.

Generation is the real tiny model through ``HFBackend`` with SmolLM2's real tokenizer and chat
template; envs are the real ``Digits-v0`` or the scripted envs of ``tests/envs_for_tests.py``.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from gymnasium.wrappers import TimeLimit

from ptgym.agents.backend import SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.agents.toolcalls import parse_tool_calls
from ptgym.envs.digits import DigitsEnv
from ptgym.metrics import batch_metrics, collect_metrics
from ptgym.rollout import Budget, Collector
from tests.envs_for_tests import (
    ECHO_TOOL,
    EchoEnv,
    FailingEnv,
    RecordingBackend,
    ScriptedBackend,
    SlowEnv,
    ToolEnv,
)
from tests.tiny import tiny_model_and_tokenizer

SAMPLING = SamplingParams(max_new_tokens=4, temperature=1.0, seed=0)


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = tiny_model_and_tokenizer()
    return HFBackend(model, tokenizer), ChatRenderer(tokenizer)


def collect(backend, renderer, factory, budget, seeds, group=1, sampling=SAMPLING, **kwargs):
    collector = Collector(backend, renderer, factory, sampling, budget, env_id="test", **kwargs)
    try:
        return collector.collect(seeds, group, group_prefix="b0/"), collector.stats
    finally:
        collector.close()


def test_groups_share_a_task_and_keep_their_bookkeeping(tiny):
    seeds = [11, 12, 13]
    trajs, stats = collect(*tiny, DigitsEnv, Budget(max_turns=1), seeds, group=4)
    assert len(trajs) == 12 and stats.episodes == 12
    for i, seed in enumerate(seeds):
        members = trajs[4 * i : 4 * i + 4]
        expected_task = DigitsEnv().reset(seed=seed)[1]["task_id"]
        assert [t.seed for t in members] == [seed] * 4
        assert [t.task_id for t in members] == [expected_task] * 4
        assert [t.group_id for t in members] == [f"b0/{i}"] * 4
        assert [t.info["group_member"] for t in members] == [0, 1, 2, 3]
    assert len({t.id for t in trajs}) == 12
    for t in trajs:
        assert t.env_id == "test" and t.error is None
        assert len(t.turns) == 1 and t.terminated and not t.truncated and t.info["end"] == "env"
        assert t.reward == t.turns[0].reward == float(t.metrics["correct"])
        assert t.messages[0]["content"].startswith("Compute (")
        assert t.messages[-1] == {"role": "assistant", "content": t.turns[0].text}


def test_an_episode_the_env_ends_at_its_time_limit_is_terminated_not_truncated(tiny):
    """Gymnasium's TimeLimit flags truncated too when the last allowed step terminates; the
    trajectory (and rollout/truncated_frac) counts it as ended by the env."""
    factory = lambda: TimeLimit(DigitsEnv(), max_episode_steps=1)  # noqa: E731
    trajs, _ = collect(*tiny, factory, Budget(max_turns=1), [11, 12], group=2)
    assert all(t.terminated and not t.truncated and t.info["end"] == "env" for t in trajs)
    assert batch_metrics(trajs)["rollout/truncated_frac"] == 0.0


def test_collect_stats_count_every_sampled_token(tiny):
    trajs, stats = collect(*tiny, EchoEnv, Budget(max_turns=2), [1, 2], group=2)
    assert stats.generated_tokens == sum(t.num_completion_tokens for t in trajs) == 4 * 2 * 4
    m = collect_metrics(stats)
    shares = (
        m["perf/rollout_generation_frac"]
        + m["perf/rollout_env_frac"]
        + m["perf/rollout_other_frac"]
    )
    assert shares == pytest.approx(1.0)
    assert stats.generation > 0 and m["perf/episodes_per_s"] == pytest.approx(4 / stats.total)


def test_max_turns_truncates_an_episode_the_env_never_ends(tiny):
    trajs, _ = collect(*tiny, EchoEnv, Budget(max_turns=3), [0, 1])
    for t in trajs:
        assert len(t.turns) == 3 and t.truncated and not t.terminated
        assert t.info["end"] == "max_turns" and t.error is None
        assert [turn.observation for turn in t.turns] == [
            [{"role": "user", "content": f"echo {n}"}] for n in (1, 2, 3)
        ]
        assert t.reward == pytest.approx(0.3) and t.turn_rewards == pytest.approx([0.1] * 3)


def test_max_tokens_truncates_and_clips_the_last_turn_to_what_is_left(tiny):
    sampling = SamplingParams(max_new_tokens=8, temperature=1.0, seed=0)
    trajs, _ = collect(*tiny, EchoEnv, Budget(max_turns=100, max_tokens=20), [0], sampling=sampling)
    (t,) = trajs
    assert [len(turn.completion_ids) for turn in t.turns] == [8, 8, 4]
    assert [turn.finish_reason for turn in t.turns] == ["length"] * 3
    assert t.num_completion_tokens == 20 and t.truncated and t.info["end"] == "max_tokens"


def test_wall_time_budget_truncates_a_slow_episode(tiny):
    log: list = []
    budget = Budget(max_turns=100, timeout_s=0.5)
    start = time.perf_counter()
    trajs, _ = collect(*tiny, lambda: SlowEnv({0: 0.3}, log), budget, [0])
    (t,) = trajs
    assert t.truncated and not t.terminated and t.info["end"] == "timeout"
    # Each turn takes >= 0.3 s (its env step), so the check before turn 3 is past 0.5 s
    # whatever the generation speed; earlier turns ended before the budget ran out.
    assert 1 <= len(t.turns) <= 2 and len(log) == len(t.turns)
    assert sum(turn.gen_seconds + turn.env_seconds for turn in t.turns[:-1]) < 0.5
    assert time.perf_counter() - start >= 0.5


def test_generation_goes_on_for_other_episodes_while_one_env_is_slow(tiny):
    """Seed 0's first step sleeps 5 s; seeds 1-3 run all three turns meanwhile (a generate
    call of the tiny model took up to 1.3 s on a loaded 2-core machine: 2 s was too tight)."""
    backend = RecordingBackend(tiny[0])
    log: list[tuple[int, float, float]] = []
    trajs, stats = collect(
        backend,
        tiny[1],
        lambda: SlowEnv({0: 5.0}, log, slow_steps=1),
        Budget(max_turns=3),
        [0, 1, 2, 3],
    )
    assert all(len(t.turns) == 3 and t.info["end"] == "max_turns" for t in trajs)
    slow_start, slow_end = next((s, e) for seed, s, e in log if seed == 0)
    during = [
        p for c in backend.calls if slow_start < c.start and c.end < slow_end for p in c.prompts
    ]
    for t in trajs[1:]:
        assert t.turns[2].prompt_ids.tolist() in during
    fast_done = max(e for seed, _, e in log if seed != 0)
    assert fast_done < slow_end
    assert stats.env_wait >= slow_end - fast_done - 0.05  # then only the slow env was left


def test_envs_that_answer_at_different_times_still_share_one_generate_call(tiny):
    """Resets finishing 0-300 ms apart are gathered into one batch (a split batch would cost a
    second full decode); a step 2 s slower than the others is not waited for."""
    backend = RecordingBackend(tiny[0])
    delays = {0: 0.0, 1: 0.1, 2: 0.2, 3: 0.3}
    trajs, stats = collect(
        backend,
        tiny[1],
        lambda: SlowEnv({3: 2.0}, [], slow_steps=1, reset_delays=delays),
        Budget(max_turns=2),
        [0, 1, 2, 3],
    )
    sizes = [len(c.prompts) for c in backend.calls]
    assert sizes[0] == 4 and sizes[-1] == 1 and sum(sizes) == 8  # the slow one goes alone
    assert stats.generate_calls == len(sizes) == collect_metrics(stats)["perf/generate_calls"]
    assert all(len(t.turns) == 2 for t in trajs)


def test_an_env_that_raises_fails_only_its_own_trajectory(tiny):
    trajs, _ = collect(*tiny, lambda: FailingEnv(raise_on=[1]), Budget(max_turns=1), [0, 1, 2])
    ok0, failed, ok2 = trajs
    assert failed.error == "RuntimeError: sandbox for task 1 died"
    assert failed.truncated and not failed.terminated and failed.info["end"] == "error"
    assert "RuntimeError" in failed.info["traceback"] and len(failed.turns) == 1
    for t in (ok0, ok2):
        assert t.error is None and t.terminated and t.reward == 1.0 and t.info["end"] == "env"


def test_info_error_marks_an_infrastructure_failure_not_a_zero(tiny):
    trajs, _ = collect(*tiny, lambda: FailingEnv(error_on=[0]), Budget(max_turns=1), [0, 1])
    failed, ok = trajs
    assert failed.error == "judge unreachable" and failed.info["end"] == "error"
    assert "error" not in failed.metrics and failed.truncated
    assert ok.error is None and ok.metrics == {"correct": True}


def test_reset_failure_is_an_error_trajectory_without_turns(tiny):
    class BrokenReset(EchoEnv):
        def reset(self, *, seed=None, options=None):
            raise OSError("dataset missing")

    trajs, _ = collect(*tiny, BrokenReset, Budget(max_turns=2), [0])
    assert trajs[0].error == "OSError: dataset missing" and trajs[0].turns == []


def test_malformed_tool_call_gets_an_error_observation_and_the_episode_goes_on(tiny):
    """A scripted backend writes a malformed call, then a valid one, then a final answer."""
    tokenizer = tiny[1].tokenizer
    bad = '<tool_call>{"name": "echo", "arguments": {"text": "hi"</tool_call>'
    good = '<tool_call>{"name": "echo", "arguments": {"text": "hi"}}</tool_call>'
    backend = ScriptedBackend(tokenizer, [bad, good, "done"])
    sampling = SamplingParams(max_new_tokens=64)
    trajs, _ = collect(backend, tiny[1], ToolEnv, Budget(max_turns=5), [0], sampling=sampling)
    (t,) = trajs
    errors = parse_tool_calls(bad, None).errors
    assert len(errors) == 1 and errors[0].startswith("tool call 1: invalid JSON")
    assert [turn.text for turn in t.turns] == [bad, good, "done"]
    assert t.turns[0].observation == [{"role": "tool", "content": errors[0]}]
    assert t.turns[1].observation == [{"role": "tool", "content": "hi", "tool_call_id": "call_0"}]
    assert t.terminated and t.error is None and t.reward == 1.0 and t.turn_rewards == [0, 0, 1]
    assert {"role": "tool", "content": errors[0]} in t.messages
    # The error text reached the model: it is in the tokens of the second prompt.
    error_ids = tiny[1].encode(errors[0])
    second = t.turns[1].prompt_ids.tolist()
    assert any(second[i : i + len(error_ids)] == error_ids for i in range(len(second)))
    # Tool schemas were injected into the first prompt (SmolLM2's template knows no tools).
    assert np.array_equal(t.turns[0].prompt_ids, tiny[1].initial(t.messages[:1], [ECHO_TOOL]))


class BrokenRenderer(ChatRenderer):
    """The real renderer, except that it raises on the first prompt of task 1 and on the second
    prompt of task 2: a template bug that only some conversations hit."""

    def initial(self, messages, tools=None):
        if messages[0]["content"].startswith("Task 1:"):
            raise ValueError("template cannot render task 1")
        return super().initial(messages, tools)

    def next_prompt(self, prev_prompt_ids, completion_ids, history, observation, tools=None):
        if history[0]["content"].startswith("Task 2:"):
            raise ValueError("template cannot render task 2's second turn")
        return super().next_prompt(prev_prompt_ids, completion_ids, history, observation, tools)


def test_a_renderer_error_fails_only_its_own_episode(tiny):
    backend, renderer = tiny
    broken = BrokenRenderer(renderer.tokenizer)
    trajs, _ = collect(backend, broken, EchoEnv, Budget(max_turns=2), [0, 1, 2, 3])
    ok0, first, second, ok3 = trajs
    assert first.error == "ValueError: template cannot render task 1" and first.turns == []
    assert first.info["end"] == "error" and "initial" in first.info["traceback"]
    assert second.error == "ValueError: template cannot render task 2's second turn"
    assert len(second.turns) == 1 and second.turns[0].reward == pytest.approx(0.1)
    assert second.info["end"] == "error" and "next_prompt" in second.info["traceback"]
    for t in (ok0, ok3):
        assert t.error is None and len(t.turns) == 2 and t.info["end"] == "max_turns"


class ThreadCheckingTokenizer:
    """The real tokenizer behind a wrapper that records the thread of every call.

    Fast tokenizers raise "Already borrowed" when two threads use one at once; the collector keeps
    all tokenizer use on its own thread."""

    def __init__(self, inner):
        self._inner = inner
        self.threads: list[str] = []

    def _record(self):
        self.threads.append(threading.current_thread().name)

    def __call__(self, *args, **kwargs):
        self._record()
        return self._inner(*args, **kwargs)

    def apply_chat_template(self, *args, **kwargs):
        self._record()
        return self._inner.apply_chat_template(*args, **kwargs)

    def decode(self, *args, **kwargs):
        self._record()
        return self._inner.decode(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_the_tokenizer_is_used_on_the_collector_thread_only(tiny):
    """Slow, jittery multi-turn envs keep several env threads busy; every render, encode and
    decode (the backend's included) still runs on the thread that called ``collect``."""
    model, real = tiny_model_and_tokenizer()
    tokenizer = ThreadCheckingTokenizer(real)
    backend = HFBackend(model, tokenizer)
    delays = {s: 0.05 * s for s in range(6)}
    factory = lambda: SlowEnv(delays, [], reset_delays=delays)  # noqa: E731
    trajs, _ = collect(
        backend, ChatRenderer(tokenizer), factory, Budget(max_turns=3), list(range(6)), group=2
    )
    assert all(t.error is None and len(t.turns) == 3 for t in trajs)
    # 12 initial renders and 24 next prompts at least; all on this thread.
    assert len(tokenizer.threads) >= 36
    assert set(tokenizer.threads) == {threading.current_thread().name}


def test_an_env_that_raised_is_replaced_before_its_next_episode():
    """A reset or step that raised may leave the env half-done (Gymnasium's checker then fails
    its next call): the runner closes it and makes a fresh one for the slot's next reset."""
    from ptgym.runners import LocalRunner

    made = []

    class HalfResetEnv:
        def __init__(self):
            made.append(self)
            self.closed = False

        def reset(self, seed=None, options=None):
            if len(made) == 1:
                raise RuntimeError("half reset")
            return [{"role": "user", "content": "hi"}], {}

        def close(self):
            self.closed = True

    runner = LocalRunner(HalfResetEnv, workers=1)
    try:
        assert runner.result(runner.reset(0, 0, None)).error == "RuntimeError: half reset"
        again = runner.result(runner.reset(0, 1, None))
        assert again.error is None and len(made) == 2 and made[0].closed
    finally:
        runner.close()
