"""Specification of the core types (DESIGN §3): messages, tool calls, turns and trajectories."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptgym.env import action_text
from ptgym.types import (
    Action,
    Message,
    ToolCall,
    Trajectory,
    Turn,
    as_ids,
    as_logprobs,
    new_id,
    pack_ids,
    unpack_ids,
)


def test_message_with_tool_calls_has_the_openai_shape_and_round_trips():
    m = Message("assistant", "", tool_calls=[ToolCall("run_python", {"code": "1+1"}, id="c0")])
    assert m.to_dict() == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {
                "id": "c0",
                "type": "function",
                "function": {"name": "run_python", "arguments": {"code": "1+1"}},
            }
        ],
    }
    assert Message.from_dict(m.to_dict()) == m
    tool = Message("tool", "2", tool_call_id="c0", name="run_python")
    assert tool.to_dict() == {
        "role": "tool",
        "content": "2",
        "tool_call_id": "c0",
        "name": "run_python",
    }
    assert Message.from_dict({"role": "assistant", "content": None}).content == ""


def test_tool_call_from_a_flat_dict():
    assert ToolCall.from_dict({"name": "f", "arguments": None}) == ToolCall("f", {}, "")


def test_ids_and_logprobs_are_coerced_to_1d_int32_and_float32():
    ids = as_ids([[1, 2], [3, 4]])
    assert (ids.dtype, ids.tolist()) == (np.int32, [1, 2, 3, 4])
    assert as_ids(None).tolist() == []
    assert as_ids(torch.tensor([[7, 8]])).tolist() == [
        7,
        8,
    ]  # a real tensor, without a copy of torch
    lp = as_logprobs(torch.tensor([-0.5, -1.25], dtype=torch.float64, requires_grad=True))
    assert (lp.dtype, lp.tolist()) == (np.float32, [-0.5, -1.25])


def test_turn_normalises_its_arrays():
    turn = Turn(
        prompt_ids=[1, 2, 3],
        completion_ids=np.array([4], dtype=np.int64),
        completion_logprobs=[-0.5],
    )
    assert turn.prompt_ids.dtype == np.int32 and turn.completion_ids.dtype == np.int32
    assert turn.completion_logprobs.dtype == np.float32


@pytest.mark.parametrize(
    ("ids", "width"),
    [([0, 65535], 2), ([], 2), ([65536], 4), ([-1, 5], 4), ([151935, 0], 4)],
)
def test_ids_are_packed_two_bytes_wide_when_they_fit(ids, width):
    arr = np.asarray(ids, dtype=np.int32)
    got_width, (data,) = pack_ids(arr)
    assert (got_width, len(data)) == (width, width * len(ids))
    back = unpack_ids(data, got_width)
    assert back.dtype == np.int32 and back.tolist() == ids


def test_one_wide_id_makes_the_whole_turn_four_bytes_wide():
    record = Turn([1, 2], [70000], [-0.1]).to_record()
    assert record["id_width"] == 4
    assert Turn.from_record(record).prompt_ids.tolist() == [1, 2]


def test_a_record_without_id_width_reads_as_four_byte_ids():
    record = Turn([1, 2], [3], [-0.1]).to_record()  # as written before ids were narrowed
    del record["id_width"]
    record["prompt_ids"] = np.array([1, 2], dtype="<i4").tobytes()
    record["completion_ids"] = np.array([3], dtype="<i4").tobytes()
    assert Turn.from_record(record).prompt_ids.tolist() == [1, 2]


def test_trajectory_record_round_trip_and_derived_values():
    traj = Trajectory(
        env_id="ptgym/Math-v0",
        task_id="t1",
        group_id="g",
        seed=3,
        turns=[
            Turn([1, 2], [3, 4, 5], [-0.1, -0.2, -0.3], reward=0.0),
            Turn([1, 2, 3, 4, 5, 9], [6], [-0.5], reward=1.0),
        ],
        messages=[{"role": "user", "content": "2+2?"}],
        reward=1.0,
        terminated=True,
        model="tiny",
        policy_version=2,
    )
    back = Trajectory.from_record(traj.to_record())
    assert back.to_record() == traj.to_record()
    assert back.turns[1].completion_logprobs.tolist() == [-0.5]
    assert (back.turn_rewards, back.num_completion_tokens) == ([0.0, 1.0], 4)
    assert Trajectory.from_record({"id": "x", "env_id": "e"}).turns == []


def test_ids_are_unique_16_hex_chars():
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000 and all(len(i) == 16 and int(i, 16) >= 0 for i in ids)


def test_action_text_accepts_str_and_action_and_explains_anything_else():
    assert action_text("hi") == "hi"
    assert action_text(Action("yo", token_ids=np.array([1]))) == "yo"
    with pytest.raises(TypeError, match="an action must be a str or ptgym.Action, got int"):
        action_text(3)
