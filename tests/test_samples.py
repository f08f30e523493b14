"""Training rows, token in, token out (DESIGN §3): a row holds exactly the ids that were sampled.

Nothing here decodes text to check tokens: every check compares ids. The sampled ids come from the
real tiny model (``HFBackend``) recorded as it returned them, or, for the ``<think>`` test, from a
scripted backend over the real tokenizer.
"""

from __future__ import annotations

import numpy as np
import pytest

from ptgym.agents.backend import SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.envs.digits import DigitsEnv
from ptgym.metrics import batch_metrics
from ptgym.rollout import Budget, Collector
from ptgym.samples import build_rows, collate
from ptgym.types import Trajectory, Turn
from tests.envs_for_tests import DROP_THINK, EchoEnv, RecordingBackend, ScriptedBackend
from tests.tiny import tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = tiny_model_and_tokenizer()
    return HFBackend(model, tokenizer), ChatRenderer(tokenizer)


def run(backend, renderer, factory, seeds, group, turns, max_new=6):
    sampling = SamplingParams(max_new_tokens=max_new, temperature=1.0, seed=1)
    collector = Collector(backend, renderer, factory, sampling, Budget(max_turns=turns))
    try:
        return collector.collect(seeds, group)
    finally:
        collector.close()


def sampled_segments(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` of each run of mask 1."""
    edges = np.diff(np.concatenate([[0], mask, [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def assert_rows_are_the_recorded_samples(rows, calls) -> None:
    """Each mask-1 run of a row is one recorded completion, preceded by the exact prompt it was
    sampled from, carrying its logprobs; every recorded completion is used exactly once."""
    recorded = [
        (p, c) for call in calls for p, c in zip(call.prompts, call.completions, strict=True)
    ]
    for row in rows:
        assert row.input_ids.dtype == np.int32 and row.mask.dtype == np.float32
        assert set(np.unique(row.mask)) <= {0.0, 1.0}
        assert not row.old_logprobs[row.mask == 0].any()
        assert np.array_equal(row.turn_index >= 0, row.mask == 1)
        for start, end in sampled_segments(row.mask):
            prompt, ids = row.input_ids[:start].tolist(), row.input_ids[start:end]
            match = next(
                i
                for i, (p, c) in enumerate(recorded)
                if p == prompt and np.array_equal(c.token_ids, ids)
            )
            _, completion = recorded.pop(match)
            assert np.array_equal(row.old_logprobs[start:end], completion.logprobs)
    assert recorded == []


def test_single_turn_row_is_the_prompt_then_exactly_the_sampled_ids(tiny):
    backend = RecordingBackend(tiny[0])
    trajs = run(backend, tiny[1], DigitsEnv, [3, 4], group=2, turns=1)
    rows = build_rows(trajs)
    assert [r.traj_index for r in rows] == [0, 1, 2, 3]
    assert_rows_are_the_recorded_samples(rows, backend.calls)
    for row, t in zip(rows, trajs, strict=True):
        prompt = tiny[1].initial(t.messages[:1])
        assert row.input_ids[: len(prompt)].tolist() == prompt
        assert row.mask.tolist() == [0.0] * len(prompt) + [1.0] * (len(row) - len(prompt))
        assert row.turn_index.tolist() == [-1] * len(prompt) + [0] * (len(row) - len(prompt))


def test_three_turn_row_holds_the_sampled_ids_and_the_renderers_observation_ids(tiny):
    backend = RecordingBackend(tiny[0])
    renderer = tiny[1]
    trajs = run(backend, renderer, EchoEnv, [0, 1], group=2, turns=3)
    rows = build_rows(trajs)
    assert [r.traj_index for r in rows] == [0, 1, 2, 3]  # SmolLM2's template keeps the prefix
    assert sum(len(c.prompts) for c in backend.calls) == 4 * 3  # batching varies with timing
    assert_rows_are_the_recorded_samples(rows, backend.calls)
    for row, t in zip(rows, trajs, strict=True):
        segments = sampled_segments(row.mask)
        assert len(segments) == 3
        assert [row.turn_index[s] for s, _ in segments] == [0, 1, 2]
        for k in range(2):
            (start, end), (next_start, _) = segments[k], segments[k + 1]
            history, obs = t.messages[: 2 + 2 * k], t.messages[2 + 2 * k : 3 + 2 * k]
            assert obs == [{"role": "user", "content": f"echo {k + 1}"}]
            expected, extends = renderer.next_prompt(
                row.input_ids[:start].tolist(), row.input_ids[start:end], history, obs
            )
            assert extends and expected[:end] == row.input_ids[:end].tolist()
            assert row.input_ids[end:next_start].tolist() == expected[end:]
            assert not row.mask[end:next_start].any()


def test_a_template_that_drops_earlier_think_blocks_gives_one_aligned_row_per_turn(tiny):
    """The backend is scripted (fixed ``<think>`` replies through the real tokenizer): the test
    is about the collector and the rows, and a random tiny model never writes ``<think>``."""
    tokenizer = tiny[1].tokenizer
    replies = [f"<think>step {k}</think>answer {k}" for k in range(3)]
    backend = ScriptedBackend(tokenizer, replies)
    renderer = ChatRenderer(tokenizer, chat_template=DROP_THINK)
    trajs = run(backend, renderer, EchoEnv, [0], group=2, turns=3, max_new=64)
    rows = build_rows(trajs)
    assert [r.traj_index for r in rows] == [0, 0, 0, 1, 1, 1]
    for row, (ti, k) in zip(rows, [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)], strict=True):
        turn = trajs[ti].turns[k]
        expected_ids = backend.replies[k]
        assert turn.completion_ids.tolist() == expected_ids
        n = len(turn.prompt_ids)
        assert len(row) == n + len(expected_ids)
        assert np.array_equal(row.input_ids[:n], turn.prompt_ids)
        assert row.input_ids[n:].tolist() == expected_ids
        assert row.mask.tolist() == [0.0] * n + [1.0] * len(expected_ids)
        logprobs = (-np.arange(1, len(expected_ids) + 1) / 100).astype(np.float32)
        assert np.array_equal(row.old_logprobs[n:], logprobs)
        assert row.turn_index.tolist() == [-1] * n + [k] * len(expected_ids)
    # The earlier think block is gone from the later prompts: that is what broke the prefix.
    think = tokenizer("<think>step 0</think>", add_special_tokens=False)["input_ids"]
    later = trajs[0].turns[1].prompt_ids.tolist()
    assert not any(later[i : i + len(think)] == think for i in range(len(later)))
    # The same scripted episode under SmolLM2's own template is one row per trajectory.
    same = run(ScriptedBackend(tokenizer, replies), tiny[1], EchoEnv, [0], group=1, turns=3)
    assert len(build_rows(same)) == 1
    # The collector counts the breaks (a metric the user sees: each costs a row of compute).
    assert [t.metrics.get("prefix_breaks", 0) for t in trajs] == [2, 2]
    assert same[0].metrics.get("prefix_breaks", 0) == 0
    assert batch_metrics(trajs)["rollout/prefix_breaks"] == 2.0


def hand_turn(prompt, completion, logprobs) -> Turn:
    return Turn(np.array(prompt), np.array(completion), np.array(logprobs))


def test_rows_and_collate_on_hand_built_trajectories():
    extend_then_break = Trajectory(
        "e",
        turns=[
            hand_turn([1, 2, 3], [4, 5], [-0.1, -0.2]),
            hand_turn([1, 2, 3, 4, 5, 6, 7], [8], [-0.3]),  # extends: observation [6, 7]
            hand_turn([1, 2, 9], [10], [-0.4]),  # breaks the prefix: a new row
            hand_turn([1, 2], [11], [-0.5]),  # shorter than the row so far: a new row
        ],
    )
    no_turns = Trajectory("e", error="OSError: dataset missing")
    one_turn = Trajectory("e", turns=[hand_turn([7], [8, 9], [-1.0, -2.0])])
    rows = build_rows([extend_then_break, no_turns, one_turn])
    assert [r.traj_index for r in rows] == [0, 0, 0, 2]
    assert rows[0].input_ids.tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    assert rows[0].mask.tolist() == [0, 0, 0, 1, 1, 0, 0, 1]
    assert rows[0].old_logprobs.tolist() == pytest.approx([0, 0, 0, -0.1, -0.2, 0, 0, -0.3])
    assert rows[0].turn_index.tolist() == [-1, -1, -1, 0, 0, -1, -1, 1]
    assert rows[1].input_ids.tolist() == [1, 2, 9, 10] and rows[1].turn_index.tolist()[-1] == 2
    assert rows[2].input_ids.tolist() == [1, 2, 11] and rows[2].mask.tolist() == [0, 0, 1]
    batch = collate([rows[0], rows[3]], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [7, 8, 9, 0, 0, 0, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1] * 8, [1, 1, 1, 0, 0, 0, 0, 0]]
    assert batch["mask"].tolist() == [[0, 0, 0, 1, 1, 0, 0, 1], [0, 1, 1, 0, 0, 0, 0, 0]]
    assert batch["old_logprobs"][1].tolist() == [0, -1, -2, 0, 0, 0, 0, 0]
    assert batch["turn_index"][1].tolist() == [-1, 0, 0, -1, -1, -1, -1, -1]
    assert batch["traj_index"].tolist() == [0, 2]
    assert {k: v.dtype for k, v in batch.items()} == {
        "input_ids": np.int64,
        "attention_mask": np.int64,
        "mask": np.float32,
        "old_logprobs": np.float32,
        "turn_index": np.int64,
        "traj_index": np.int64,
    }
