"""CodeTools' practice tasks and the demonstrations played on them: every task is solvable by its
own reference body through the real grader, a wrong body is not, and no demonstration touches
HumanEval, the benchmark the env is scored on."""

from __future__ import annotations

import difflib
import json
import random
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from ptgym.agents.chat import ChatRenderer
from ptgym.agents.toolcalls import parse_tool_calls
from ptgym.demos import (
    BAD_SUBMITS,
    DemosCommand,
    _with_tools,
    code_tools_demos,
    slipped_call,
    without_docstrings,
    write_demos,
)
from ptgym.envs.code_tools import SOLUTION, TOOLS, CodeToolsEnv, tool_call_text
from ptgym.envs.humaneval_tasks import load_tasks
from ptgym.envs.practice_tasks import load_practice_tasks
from ptgym.prefdata import encode_messages
from ptgym.sft import read_conversations
from tests.sandbox_fixtures import fixture_sandbox_image, fixture_sandbox_pool  # noqa: F401
from tests.tiny import tiny_tokenizer

PRACTICE = load_practice_tasks()


def play(pool, task, solution: str) -> tuple[dict, list]:
    """write solution -> run_tests -> submit on a practice task; (last info, observations)."""
    env = CodeToolsEnv(tasks="practice", pool=pool)
    env.reset(options={"task_id": task.task_id})
    seen = []
    for action in [
        tool_call_text("write_file", path=SOLUTION, content=solution),
        tool_call_text("run_tests"),
        tool_call_text("submit"),
    ]:
        obs, _, terminated, _, info = env.step(action)
        seen += obs
        assert "error" not in info, info["error"]
    assert terminated
    return info, seen


def rl_system_message() -> dict:
    """The system message RL renders for code-tools (HumanEval), as ``_with_tools`` writes it."""
    obs, info = CodeToolsEnv().reset(seed=0)
    return _with_tools(obs, info["tools"])[0]


# ---- without Docker ---------------------------------------------------------------------------


def test_practice_tasks_are_fixed_and_none_is_a_humaneval_task():
    assert 60 <= len(PRACTICE) <= 100
    assert [t.task_id for t in PRACTICE] == [f"practice/{i}" for i in range(len(PRACTICE))]
    assert load_practice_tasks.__wrapped__() == PRACTICE  # rebuilt from the tables: the same
    humaneval = load_tasks()
    names = [t.entry_point for t in PRACTICE]
    assert len(set(names)) == len(names)
    assert not set(names) & {t.entry_point for t in humaneval}
    assert not {t.prompt for t in PRACTICE} & {t.prompt for t in humaneval}


def test_each_prompt_shows_two_different_examples_and_the_tests_call_the_candidate():
    for task in PRACTICE:
        assert len(task.examples) == 2, task.task_id
        assert task.examples[0][1] != task.examples[1][1], task.task_id
        asserts = task.test.splitlines()[1:]
        assert len(asserts) >= 5 and all(a.startswith("    assert candidate(") for a in asserts)
    add_two = PRACTICE[0]
    assert add_two.prompt == (
        "def add_two(x: int) -> int:\n"
        '    """Return x plus 2.\n'
        "    >>> add_two(0)\n    2\n"
        "    >>> add_two(5)\n    7\n"
        '    """\n'
    )
    assert add_two.canonical_solution == "    return x + 2\n"
    assert add_two.test.splitlines()[1:4] == [
        "    assert candidate(0) == 2",
        "    assert candidate(5) == 7",
        "    assert candidate(-3) == -1",
    ]


def test_the_task_set_is_chosen_by_name_and_a_wrong_name_says_the_choices():
    assert CodeToolsEnv().tasks == load_tasks()
    env = CodeToolsEnv(tasks="practice")
    assert env.tasks == PRACTICE and env.num_tasks == len(PRACTICE)
    _, info = env.reset(options={"task_id": "practice/3"})
    assert info["task_id"] == "practice/3"
    with pytest.raises(ValueError, match=r"unknown tasks='bogus' for CodeToolsEnv; choose one of "):
        CodeToolsEnv(tasks="bogus")
    with pytest.raises(ValueError, match=r"in the practice tasks; use practice/0\.\.practice/"):
        env.reset(options={"task_id": "HumanEval/0"})


def test_demonstrations_refuse_humaneval_and_a_test_split():
    with pytest.raises(ValueError, match="no 'test' split"):
        code_tools_demos(1, split="test")
    with pytest.raises(ValueError, match="tasks=practice only, never HumanEval"):
        code_tools_demos(1, tasks="humaneval")
    with pytest.raises(ValueError, match="need a CodeToolsEnv"):
        code_tools_demos(1, env=CodeToolsEnv())


# ---- with Docker ------------------------------------------------------------------------------


@pytest.mark.docker
@pytest.mark.slow
def test_every_practice_solution_scores_1_and_passes_its_examples(sandbox_pool):
    def one(task):
        info, obs = play(sandbox_pool, task, task.prompt + task.canonical_solution)
        return info["passed"], info["total"], obs[1]["content"]

    with ThreadPoolExecutor(max_workers=4) as ex:
        results = list(ex.map(one, PRACTICE))
    for task, (passed, total, shown) in zip(PRACTICE, results, strict=True):
        assert (passed, total) == (len(task.test.splitlines()) - 1,) * 2, task.task_id
        assert shown.endswith("2/2 visible examples passed\n"), (task.task_id, shown)


@pytest.mark.docker
def test_a_wrong_body_scores_the_fraction_of_asserts_it_passes(sandbox_pool):
    task = next(t for t in PRACTICE if t.entry_point == "clamp_percent")
    info, obs = play(sandbox_pool, task, task.prompt + "    return p\n")  # never clamps
    assert [t["passed"] for t in info["tests"]] == [True, False, False, True, True, False, False]
    assert obs[-1]["content"] == "submitted: 3/7 hidden tests passed"


@pytest.mark.docker
def test_demonstrations_write_the_reference_then_submit_and_score_1(sandbox_pool):
    env = CodeToolsEnv(tasks="practice", pool=sandbox_pool)
    rows, failed = code_tools_demos(6, seed=70, env=env)
    assert failed == 0
    # Episode i plays task (seed + i) % num_tasks: consecutive tasks, wrapping round the set.
    expected = [f"practice/{(70 + i) % len(PRACTICE)}" for i in range(6)]
    assert [r["task_id"] for r in rows] == expected
    by_id = {t.task_id: t for t in PRACTICE}
    rl_system = rl_system_message()
    for row in rows:
        assert not row["task_id"].startswith("HumanEval") and row["reward"] == 1.0
        task, messages = by_id[row["task_id"]], row["messages"]
        roles = [m["role"] for m in messages]
        assert roles == ["system", "user", "assistant", "tool", "assistant", "tool"]
        assert messages[0] == rl_system
        assert f"Implement `{task.entry_point}`" in messages[1]["content"]
        write, submit = (parse_tool_calls(messages[i]["content"], TOOLS) for i in (2, 4))
        assert not write.errors and not submit.errors
        assert [c.name for c in write.calls + submit.calls] == ["write_file", "submit"]
        content = task.prompt + task.canonical_solution
        assert write.calls[0].arguments == {"path": SOLUTION, "content": content}
        assert messages[3]["content"] == f"wrote {len(content.encode())} bytes to {SOLUTION}"
        n = len(task.test.splitlines()) - 1
        assert messages[5]["content"] == f"submitted: {n}/{n} hidden tests passed"


@pytest.mark.docker
def test_cli_writes_code_tools_demos_that_sft_reads(tmp_path, sandbox_image):
    out = tmp_path / "demos.jsonl"
    cmd = [sys.executable, "-m", "ptgym.cli", "envs", "demos", "code-tools", "n=3", f"out={out}"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "wrote 3 solved code-tools demonstrations" in run.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["task_id"] for r in rows] == ["practice/0", "practice/1", "practice/2"]
    conversations = read_conversations(str(out), min_reward=1.0)
    assert [len(m) for m, _ in conversations] == [6, 6, 6]
    cmd = [sys.executable, "-m", "ptgym.cli", "envs", "demos", "code-tools", "split=test"]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "no 'test' split" in run.stderr


@pytest.mark.docker
def test_block_demonstrations_save_a_python_block_then_submit_and_score_1(sandbox_pool):
    """``write=block``: the program travels in a fenced block the env saves (no JSON escaping);
    the env counts it in ``saved_blocks``, not as a tool call, and the submit still scores 1."""
    env = CodeToolsEnv(tasks="practice", pool=sandbox_pool)
    rows, failed = code_tools_demos(3, seed=5, env=env, write="block")
    assert failed == 0 and [r["reward"] for r in rows] == [1.0] * 3
    by_id = {t.task_id: t for t in PRACTICE}
    for row in rows:
        task, messages = by_id[row["task_id"]], row["messages"]
        assert [m["role"] for m in messages] == [
            "system", "user", "assistant", "user", "assistant", "tool"
        ]  # fmt: skip
        code = task.prompt + task.canonical_solution
        assert messages[2]["content"] == f"```python\n{code}```"
        assert not parse_tool_calls(messages[2]["content"], TOOLS).calls
        assert messages[3]["content"].startswith(
            f"Your last ```python block was saved as {SOLUTION}"
        )
        (submit,) = parse_tool_calls(messages[4]["content"], TOOLS).calls
        assert submit.name == "submit"
    env.reset(seed=0, options={"index": 0})
    info = env.step(f"```python\n{env.task.prompt}    return None\n```")[4]
    assert (info["saved_blocks"], info["valid_turns"], info["tool_calls"]) == (1, 0, 0)
    assert env.step("no code, no call")[4]["saved_blocks"] == 1


@pytest.mark.docker
def test_block_submit_demonstrations_are_one_reply_a_block_then_a_valid_submit(sandbox_pool):
    """``write=block-submit``: one reply, the program without docstrings in a fenced block and
    the submit call after it; the env saves the block first, so the submit grades it and scores
    1, and the one reply is a valid tool call."""
    env = CodeToolsEnv(tasks="practice", pool=sandbox_pool)
    rows, failed = code_tools_demos(3, seed=7, env=env, write="block-submit")
    assert failed == 0 and [r["reward"] for r in rows] == [1.0] * 3
    by_id = {t.task_id: t for t in PRACTICE}
    for row in rows:
        task, messages = by_id[row["task_id"]], row["messages"]
        assert [m["role"] for m in messages] == ["system", "user", "assistant", "tool"]
        code = without_docstrings(task.prompt + task.canonical_solution)
        assert '"""' in task.prompt and '"""' not in code
        assert messages[2]["content"].startswith(f"```python\n{code}```\n")
        parsed = parse_tool_calls(messages[2]["content"], TOOLS)
        assert [c.name for c in parsed.calls] == ["submit"] and not parsed.errors
        assert re.fullmatch(r"submitted: (\d+)/\1 hidden tests passed", messages[3]["content"])
    env.reset(seed=0, options={"task_id": rows[0]["task_id"]})
    _, reward, terminated, _, info = env.step(rows[0]["messages"][2]["content"])
    assert (reward, terminated, info["valid_turn_frac"], info["saved_blocks"]) == (
        1.0,
        True,
        1.0,
        1,
    )
    # A wrong program in the same form is graded as written, not as the reference.
    wrong = f"```python\ndef {env.task.entry_point}(*args):\n    return None\n```\n"
    env.reset(seed=0, options={"task_id": rows[0]["task_id"]})
    assert env.step(wrong + tool_call_text("submit"))[1] < 1.0


@pytest.mark.docker
def test_recovery_demonstrations_train_on_the_valid_submit_after_the_envs_real_answer(
    sandbox_pool, tmp_path
):
    """``recover=0.5``: every other block-submit demonstration is a recovery. Its bad replies (the
    block with one of the kinds or, every other one, a random slip; every other pair sends the bad
    call again, alone), in the prompt, get the env's real answers and leave the episode open; its last reply, the only
    trained one, is a valid submit that scores 1."""
    env = CodeToolsEnv(tasks="practice", pool=sandbox_pool)
    kinds = len(BAD_SUBMITS)
    rows, failed = code_tools_demos(4 * kinds, seed=3, env=env, write="block-submit", recover=0.5)
    assert failed == 0 and [r["reward"] for r in rows] == [1.0] * 4 * kinds
    assert [i for i, r in enumerate(rows) if "prompt" in r] == list(range(1, 4 * kinds, 2))
    assert all("messages" in r for r in rows[::2])
    recoveries = rows[1::2]
    firsts = [r["prompt"][2]["content"].split("```\n", 1)[1] for r in recoveries]
    assert firsts[::2] == list(BAD_SUBMITS)  # the kinds seen, alternating with random slips
    slips = firsts[1::2]
    assert len(set(slips)) == kinds and tool_call_text("submit") not in slips
    for k, (row, bad) in enumerate(zip(recoveries, firsts, strict=True)):
        prompt, completion = row["prompt"], row["completion"]
        repeats = 1 + k // 2 % 2 if bad else 1  # every other pair loops once on its bad call
        answer_role = "tool" if bad else "user"  # a malformed call's errors, or a reminder
        roles = ["system", "user"] + ["assistant", answer_role] * repeats
        assert [m["role"] for m in prompt] == roles
        assert [m["content"] for m in prompt[4::2]] == [bad] * (repeats - 1)
        for reply, answer in zip(prompt[2::2], prompt[3::2], strict=True):
            parsed = parse_tool_calls(reply["content"], TOOLS)
            assert not parsed.calls
            if parsed.errors:  # a malformed call: the parser's errors, as the policy would see them
                assert answer["content"] == "\n".join(parsed.errors)
            elif "```python" in reply["content"]:  # no call: the reminder says the block was saved
                assert answer["content"].startswith(
                    f"Your last ```python block was saved as {SOLUTION}"
                )
        assert [m["role"] for m in completion] == ["assistant", "tool"]
        assert completion[0]["content"] == tool_call_text("submit")
        assert re.fullmatch(r"submitted: (\d+)/\1 hidden tests passed", completion[1]["content"])
    # ptgym sft reads a recovery as prompt + completion and trains on the submit alone.
    path = tmp_path / "demos.jsonl"
    path.write_text(json.dumps(recoveries[0]) + "\n")
    ((messages, train_from),) = read_conversations(str(path))
    assert train_from == 4 and messages[4]["content"] == tool_call_text("submit")
    path.write_text(json.dumps(recoveries[2]) + "\n")  # two bad replies, both untrained
    ((messages, train_from),) = read_conversations(str(path))
    assert train_from == 6 and messages[6]["content"] == tool_call_text("submit")
    tok = tiny_tokenizer()
    encoded = encode_messages(ChatRenderer(tok), messages, train_from=train_from)
    trained = tok.decode([t for t, m in zip(encoded.ids, encoded.mask, strict=True) if m])
    assert tool_call_text("submit") in trained and "```python" not in trained
    with pytest.raises(ValueError, match="recover= is for write=block-submit"):
        code_tools_demos(1, env=env, write="block", recover=0.5)
    with pytest.raises(ValueError, match="recover=2.0 is a share"):
        code_tools_demos(1, env=env, write="block-submit", recover=2.0)


def test_a_slipped_call_is_one_small_slip_the_parser_refuses():
    """``slipped_call``: a seeded random slip of the valid submit, every one refused by the
    parser for the env's tools, never empty, and close to the call it slips from."""
    good = tool_call_text("submit")
    slips = [slipped_call(good, TOOLS, random.Random(i)) for i in range(200)]
    assert slips == [slipped_call(good, TOOLS, random.Random(i)) for i in range(200)]
    for bad in slips:
        assert bad.strip() and not parse_tool_calls(bad, TOOLS).calls
        cut = good.startswith(bad) and len(bad) > len("<tool_call>")
        assert cut or difflib.SequenceMatcher(None, bad, good).ratio() > 0.85
    assert len(set(slips)) > 100  # many different slips, not a few fixed ones
    assert any(s.endswith("}}>") for s in slips)  # the closing tag the 135M policy mangled


@pytest.mark.docker
def test_raw_demonstrations_are_two_valid_xml_calls_with_the_program_unescaped(sandbox_pool):
    """``write=raw``: write_file in the XML call form, the program as it is (no JSON escapes) and
    without docstrings, then the JSON submit; the env counts both replies as valid tool calls,
    and the program still passes every hidden test."""
    env = CodeToolsEnv(tasks="practice", pool=sandbox_pool)
    rows, failed = code_tools_demos(3, seed=11, env=env, write="raw")
    assert failed == 0 and [r["reward"] for r in rows] == [1.0] * 3
    by_id = {t.task_id: t for t in PRACTICE}
    for row in rows:
        task, messages = by_id[row["task_id"]], row["messages"]
        assert [m["role"] for m in messages] == [
            "system", "user", "assistant", "tool", "assistant", "tool"
        ]  # fmt: skip
        code = without_docstrings(task.prompt + task.canonical_solution)
        assert '"""' in task.prompt and '"""' not in code and f"def {task.entry_point}(" in code
        assert code in messages[2]["content"] and "<function=write_file>" in messages[2]["content"]
        write, submit = (parse_tool_calls(messages[i]["content"], TOOLS) for i in (2, 4))
        assert write.calls[0].arguments == {"path": SOLUTION, "content": code}
        assert [c.name for c in submit.calls] == ["submit"] and not submit.errors
        assert messages[3]["content"] == f"wrote {len(code.encode())} bytes to {SOLUTION}"
    env.reset(seed=0, options={"task_id": rows[0]["task_id"]})
    write, submit = rows[0]["messages"][2]["content"], rows[0]["messages"][4]["content"]
    assert env.step(write)[4]["valid_turns"] == 1
    _, reward, _, _, info = env.step(submit)
    assert (reward, info["valid_turn_frac"], info["saved_blocks"]) == (1.0, 1.0, 0)


def test_without_docstrings_keeps_the_code_and_drops_only_docstrings():
    code = '"""Module."""\nimport math\ndef f(x):\n    """Doc."""\n    s = "not a docstring"\n    return s\n\nclass C:\n    """Only a docstring."""\n'
    out = without_docstrings(code)
    assert "Doc." not in out and "Module." not in out and "Only a docstring" not in out
    namespace: dict = {}
    exec(out, namespace)
    assert namespace["f"](1) == "not a docstring" and isinstance(namespace["C"](), namespace["C"])


def test_block_demonstrations_are_for_code_tools_only(tmp_path):
    cfg = DemosCommand(n=1, out=str(tmp_path / "d.jsonl"), write="block")
    with pytest.raises(ValueError, match="write=block is for code-tools"):
        write_demos("math-tools", cfg)
