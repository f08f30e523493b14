"""The env's own demonstrations: each one solves its task, and SFT sees the RL prompt."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ptgym.agents.chat import ChatRenderer
from ptgym.agents.toolcalls import parse_tool_calls
from ptgym.demos import DemosCommand, math_tools_demos, write_demos
from ptgym.envs.answer import extract_answer, verify_answer
from ptgym.envs.math_tools import TOOLS, MathToolsEnv
from ptgym.sft import read_conversations
from tests.sandbox_fixtures import fixture_sandbox_image, fixture_sandbox_pool  # noqa: F401
from tests.tiny import tiny_tokenizer


@pytest.mark.docker
def test_every_demonstration_solves_its_task(sandbox_pool):
    rows, failed = math_tools_demos(12, seed=100, env=MathToolsEnv(pool=sandbox_pool))
    assert len(rows) == 12 and failed == 0
    assert len({r["task_id"] for r in rows}) == 12
    checker = MathToolsEnv()
    for row in rows:
        roles = [m["role"] for m in row["messages"]]
        assert roles == ["system", "user", "assistant", "tool", "assistant"]
        _, call, result, final = (m["content"] for m in row["messages"][1:])
        parsed = parse_tool_calls(call, TOOLS)
        assert not parsed.errors and [c.name for c in parsed.calls] == ["python"]
        # The tool result is what the sandbox really prints for that code, run again here ...
        with sandbox_pool.lease() as sb:
            rerun = sb.run_python(parsed.calls[0].arguments["code"], timeout=5)
        assert rerun.stdout.strip() == result
        # ... and the final answer is right by the env's own checker for the task's gold answer.
        _, info = checker.reset(options={"task_id": row["task_id"]})
        assert row["messages"][1]["content"] == checker.messages[1]["content"]
        assert verify_answer(extract_answer(final), info["answer"])
        assert row["reward"] == 1.0


@pytest.mark.docker
def test_demonstrations_hold_the_prompt_the_policy_sees_in_rl(sandbox_pool):
    """SFT renders the demo without tools=; RL renders the env's messages with tools=. Same text."""
    (row,), _ = math_tools_demos(1, env=MathToolsEnv(pool=sandbox_pool, few_shot=False))
    renderer = ChatRenderer(tiny_tokenizer())
    env = MathToolsEnv(few_shot=False)
    obs, info = env.reset(options={"task_id": row["task_id"]})
    rl = renderer.render(obs, info["tools"], add_generation_prompt=True)
    sft = renderer.render(row["messages"][:2], None, add_generation_prompt=True)
    assert rl == sft and "<tools>" in rl


@pytest.mark.docker
def test_cli_writes_jsonl_that_sft_reads(tmp_path, sandbox_image):
    out = tmp_path / "demos.jsonl"
    cmd = [sys.executable, "-m", "ptgym.cli", "envs", "demos", "math-tools", "n=3", f"out={out}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote 3 solved math-tools demonstrations" in run.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and not out.with_name("demos.jsonl.tmp").exists()
    conversations = read_conversations(str(out), min_reward=1.0)
    assert [len(m) for m, _ in conversations] == [5, 5, 5]


def test_unknown_env_is_a_one_line_error(tmp_path):
    with pytest.raises(ValueError, match="no demonstration generator for env 'chat'; available"):
        write_demos("chat", DemosCommand(n=1, out=str(tmp_path / "x.jsonl")))
    cmd = [sys.executable, "-m", "ptgym.cli", "envs", "demos", "chat", "n=1"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip().startswith("ptgym envs demos: error: no demonstration generator")


def test_code_tools_few_shot_example_is_a_valid_episode_on_a_toy_task():
    """The example's calls parse, its tool result is what the env really answers, and its toy
    task is not a HumanEval task (no solution leaks into the prompt)."""
    from ptgym.envs.code_tools import FEW_SHOT, CodeToolsEnv
    from ptgym.envs.code_tools import TOOLS as CODE_TOOLS

    env = CodeToolsEnv(few_shot=True)
    obs, _ = env.reset(seed=0)
    assert obs[0]["content"].endswith(FEW_SHOT)
    assert FEW_SHOT not in CodeToolsEnv().reset(seed=0)[0][0]["content"]
    assert all(t.entry_point != "double" for t in env.tasks)
    lines = FEW_SHOT.splitlines()
    calls = [line.removeprefix("assistant: ") for line in lines if "<tool_call>" in line]
    parsed = [parse_tool_calls(c, CODE_TOOLS) for c in calls]
    assert [p.calls[0].name for p in parsed] == ["write_file", "submit"]
    assert not any(p.errors for p in parsed)
    result, *_ = env.step(calls[0])  # write_file runs on the host: no sandbox needed
    assert f"tool: {result[0]['content']}" in lines
