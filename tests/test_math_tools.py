"""MathTools-v0: problems, splits, the episode protocol, and the python tool in a real sandbox."""

from __future__ import annotations

import re

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import ptgym
from ptgym.config import TrainCommand, compose
from ptgym.envs.math_tools import (
    FEW_SHOT,
    NO_OUTPUT,
    MathToolsEnv,
    in_test_split,
    make_problem,
    tool_call_text,
)
from tests.sandbox_fixtures import fixture_sandbox_image, fixture_sandbox_pool  # noqa: F401


def hand_value(expression: str) -> int:
    """The expression's value by hand: a sum of signed products (no eval)."""
    total, sign = 0, 1
    for token in re.split(r" ([+-]) ", expression):
        if token in "+-":
            sign = 1 if token == "+" else -1
            continue
        product = 1
        for factor in token.split(" * "):
            product *= int(factor)
        total += sign * product
    return total


def test_problems_are_deterministic_and_answers_right():
    env = MathToolsEnv()
    for seed in range(40):
        _, info = env.reset(seed=seed)
        _, again = MathToolsEnv().reset(seed=seed)
        assert info == again
        assert info["answer"] == str(hand_value(info["expression"]))
    assert make_problem("mul", 5, seed=0, test=False) == make_problem("mul", 5, seed=0, test=False)
    assert make_problem("mul", 5, seed=1, test=False) != make_problem("mul", 5, seed=0, test=False)


def test_problems_are_out_of_a_small_models_head():
    for i in range(200):
        _, expr = make_problem("mul", i, seed=0, test=False)
        a, b = expr.split(" * ")
        assert 3 <= len(a) <= 4 and 3 <= len(b) <= 4
        _, expr = make_problem("chain", i, seed=0, test=False)
        assert 5 <= len(expr.split(" ")[::2]) <= 7
        assert set(expr) <= set("0123456789 +-*")


def test_train_and_test_splits_are_disjoint():
    train = {
        make_problem(k, i, seed=0, test=False)[1] for k in ("mul", "chain") for i in range(3000)
    }
    test = {make_problem(k, i, seed=0, test=True)[1] for k in ("mul", "chain") for i in range(3000)}
    assert not train & test
    assert all(in_test_split(e) for e in test) and not any(in_test_split(e) for e in train)
    _, info = MathToolsEnv(split="test").reset(seed=0)
    assert info["task_id"].split("/")[1] == "test" and in_test_split(info["expression"])


def test_reset_by_task_id_and_index_and_bad_ids():
    env = MathToolsEnv(dataset_size=10)
    assert env.num_tasks == 20
    assert env.reset(options={"index": 13})[1]["task_id"] == "chain/3"
    obs, info = env.reset(options={"task_id": "mul/7"})
    assert obs[1]["content"] == make_problem("mul", 7, seed=0, test=False)[0]
    with pytest.raises(ValueError, match="not a train task of this env; expected e.g. 'mul/0'"):
        env.reset(options={"task_id": "mul/test/7"})
    with pytest.raises(ValueError, match="kinds must name mul and/or chain"):
        MathToolsEnv(kinds=["div"])


def test_few_shot_example_is_an_option():
    assert FEW_SHOT in MathToolsEnv().reset(seed=0)[0][0]["content"]
    system = MathToolsEnv(few_shot=False).reset(seed=0)[0][0]["content"]
    assert "Example" not in system and "python tool" in system


def test_a_reply_without_a_call_is_the_final_answer():
    env = MathToolsEnv()
    _, info = env.reset(seed=1)
    obs, reward, terminated, truncated, step = env.step(f"It is \\boxed{{{info['answer']}}}.")
    assert (obs, reward, terminated, truncated) == ([], 1.0, True, False)
    assert step["correct"] and step["tool_calls"] == 0 and not step["valid_tool_call"]
    env.reset(seed=1)
    _, reward, terminated, _, step = env.step("It is \\boxed{12}.")
    assert (reward, terminated, step["correct"]) == (0.0, True, False)
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("again")


def test_malformed_calls_get_an_error_observation_until_the_turn_limit():
    env = MathToolsEnv(max_turns=2, tool_reward=0.5)
    env.reset(seed=0)
    obs, reward, terminated, truncated, info = env.step('<tool_call>{"name": "python"}</tool_call>')
    assert obs[0]["role"] == "tool" and obs[0]["name"] == "error"
    assert "code" in obs[0]["content"]  # the missing required argument is named
    assert (reward, terminated, truncated) == (0.0, False, False)
    assert info["tool_errors"] == 1 and not info["valid_tool_call"]
    obs, reward, terminated, truncated, info = env.step("<tool_call>{not json</tool_call>")
    assert obs[0]["name"] == "error" and (reward, terminated, truncated) == (0.0, False, True)
    assert info["tool_errors"] == 2 and info["correct"] is False


def test_gymnasium_env_checker_and_registration():
    check_env(MathToolsEnv(), skip_render_check=True)
    env = ptgym.make("math-tools", split="test")
    assert env.spec.id == "ptgym/MathTools-v0" and env.spec.max_episode_steps == 8
    assert "ptgym/MathTools-v0" in gymnasium.registry
    cfg = compose(TrainCommand, ["env=math-tools"])
    assert cfg.env.name == "math-tools" and cfg.env.kwargs["few_shot"] is True


@pytest.mark.docker
def test_tool_call_runs_in_the_sandbox_and_the_answer_is_scored(sandbox_pool):
    env = MathToolsEnv(pool=sandbox_pool, tool_reward=0.25)
    _, info = env.reset(seed=5)
    obs, reward, terminated, _, step = env.step(tool_call_text(f"print({info['expression']})"))
    assert obs[0]["role"] == "tool" and obs[0]["name"] == "python"
    assert obs[0]["content"] == info["answer"] and (reward, terminated) == (0.0, False)
    assert step["tool_calls"] == 1 and step["valid_tool_call"]
    _, reward, terminated, _, step = env.step(f"The answer is \\boxed{{{obs[0]['content']}}}.")
    assert (reward, terminated, step["correct"]) == (1.25, True, True)
    assert [m["role"] for m in env.messages] == ["system", "user", "assistant", "tool", "assistant"]


@pytest.mark.docker
def test_agent_code_failures_are_observations(sandbox_pool):
    env = MathToolsEnv(pool=sandbox_pool, timeout_s=1.0)
    env.reset(seed=0)
    obs, *_ = env.step(tool_call_text("1 / 0"))
    assert obs[0]["content"].startswith("stderr:") and "ZeroDivisionError" in obs[0]["content"]
    obs, *_ = env.step(tool_call_text("x = 2 + 2"))
    assert obs[0]["content"] == NO_OUTPUT
    obs, _, _, truncated, info = env.step(tool_call_text("while True: pass"))
    assert "timed out after 1s" in obs[0]["content"] and truncated and "error" not in info
