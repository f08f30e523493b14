"""``ptgym/CodeTools-v0``: Gymnasium contract, tools, rewards, anti-forgery, sandbox failures,
and 32 concurrent episodes over a pool of 4."""

from __future__ import annotations

import json
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from gymnasium.utils.env_checker import check_env

from ptgym.envs.code_tools import CodeToolsEnv, workspace_path
from ptgym.envs.humaneval_tasks import load_tasks, visible_examples
from ptgym.sandbox import SandboxPool
from ptgym.sandbox.reaper import LABEL_POOL
from tests.sandbox_fixtures import (  # noqa: F401 (fixtures)
    TEST_CONFIG,
    fixture_sandbox_image,
    fixture_sandbox_pool,
    labelled_containers,
)

TASKS = load_tasks()
CLOSE = TASKS[0]  # HumanEval/0 has_close_elements: 7 asserts, expected True/False/True/F/T/T/F
ALWAYS_FALSE = "def has_close_elements(numbers, threshold):\n    return False\n"  # passes 3 of 7


def call(name: str, **arguments: str) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def canonical(task) -> str:
    return task.prompt + task.canonical_solution


# ---- without Docker ---------------------------------------------------------------------------


def test_reset_gives_system_and_task_messages_tools_and_a_seeded_task():
    env = CodeToolsEnv()
    obs, info = env.reset(seed=3)
    assert [m["role"] for m in obs] == ["system", "user"]
    assert [t["function"]["name"] for t in info["tools"]] == [
        "run_python",
        "write_file",
        "read_file",
        "run_tests",
        "submit",
    ]
    assert info["task_id"] in obs[1]["content"] or env.task.prompt in obs[1]["content"]
    assert env.reset(seed=3)[1]["task_id"] == info["task_id"]
    assert env.reset(options={"task_id": "HumanEval/7"})[1]["entry_point"] == "filter_by_substring"
    assert env.reset(options={"index": 164})[1]["task_id"] == "HumanEval/0"
    assert env.num_tasks == 164 and len({t.task_id for t in TASKS}) == 164
    with pytest.raises(ValueError, match="unknown task_id"):
        env.reset(options={"task_id": "HumanEval/999"})


@pytest.mark.filterwarnings("ignore:.*(spec|render fps).*")
def test_gymnasium_env_checker_passes():
    check_env(CodeToolsEnv(), skip_render_check=True)


def test_reply_without_tool_call_gets_a_reminder_and_python_block_is_saved():
    env = CodeToolsEnv(max_turns=3)
    env.reset(options={"task_id": CLOSE.task_id})
    obs, reward, terminated, truncated, info = env.step("I think I should loop.")
    assert obs[0]["role"] == "user" and obs[0]["content"].startswith("No tool call found.")
    assert (reward, terminated, truncated, info["tool_calls"]) == (0.0, False, False, 0)
    obs, *_ = env.step(f"Here:\n```python\n{ALWAYS_FALSE}```")
    assert obs[0]["content"].startswith("Your last ```python block was saved as solution.py.")
    assert env.files["solution.py"] == ALWAYS_FALSE.encode()
    obs, reward, terminated, truncated, info = env.step('<tool_call>{"name": "nope"}</tool_call>')
    assert obs[0]["role"] == "tool" and "nope" in obs[0]["content"]
    assert (terminated, truncated, info["turn"]) == (False, True, 3)  # max_turns reached
    # prose, a python block and an unknown tool: not one of the three replies was a valid call
    assert (info["valid_turns"], info["valid_turn_frac"], info["submitted"]) == (0, 0.0, False)
    assert info["saved_blocks"] == 1
    with pytest.raises(RuntimeError, match="after the episode ended"):
        env.step("more")


def test_a_python_block_fence_is_matched_whatever_its_case():
    """The 135M model wrote ```Python once in 16 episodes; that block is code too."""
    env = CodeToolsEnv(max_turns=3)
    env.reset(options={"task_id": CLOSE.task_id})
    obs, *_, info = env.step(f"```Python\n{ALWAYS_FALSE}```")
    assert obs[0]["content"].startswith("Your last ```python block was saved as solution.py.")
    assert env.files["solution.py"] == ALWAYS_FALSE.encode() and info["saved_blocks"] == 1


def test_write_and_read_file_stay_in_the_workspace():
    env = CodeToolsEnv(tool_call_penalty=0.25)
    env.reset(options={"task_id": CLOSE.task_id})
    obs, reward, *_ = env.step(
        call("write_file", path="pkg/a.py", content="x = 1\n")
        + call("read_file", path="/work/pkg/a.py")
        + call("write_file", path="../evil", content="")
        + call("read_file", path="missing.txt")
    )
    assert [m["content"] for m in obs] == [
        "wrote 6 bytes to pkg/a.py",
        "x = 1\n",
        "error: '../evil' is outside the workspace (/work); use a relative path",
        "error: missing.txt does not exist; files: pkg/a.py, solution.py",
    ]
    assert [m["tool_call_id"] for m in obs] == ["call_0", "call_1", "call_2", "call_3"]
    assert reward == -1.0  # 4 calls x 0.25


def test_workspace_paths():
    assert workspace_path("a/./b/../c.py") == "a/c.py"
    assert workspace_path("/work/x.py") == "x.py"
    for bad in ["", "..", "../x", "/etc/passwd", "a/../../x", "."]:
        with pytest.raises(ValueError):
            workspace_path(bad)


def test_visible_examples_come_from_the_prompt():
    assert CLOSE.examples == (
        ("has_close_elements([1.0, 2.0, 3.0], 0.5)", "False"),
        ("has_close_elements([1.0, 2.8, 3.0, 4.0, 5.0, 2.0], 0.3)", "True"),
    )
    informal = "def f(x):\n    '''\n    f(2) ==> 4\n    * f(3) -> 9 (nine)\n    f(1) => one\n'''"
    assert visible_examples(informal, "f") == (("f(2)", "4"), ("f(3)", "9"))


def test_truncated_by_the_time_budget():
    env = CodeToolsEnv(time_limit_s=0.0)
    env.reset(seed=0)
    *_, terminated, truncated, _ = env.step("thinking")
    assert (terminated, truncated) == (False, True)


# ---- with Docker ------------------------------------------------------------------------------


def episode(pool, task, solution: str, extra: list[str] = ()) -> tuple[float, dict, list]:
    """write solution -> extra actions -> run_tests -> submit; returns (return, last info, obs)."""
    env = CodeToolsEnv(pool=pool)
    env.reset(options={"task_id": task.task_id})
    total, seen = 0.0, []
    for action in [
        call("write_file", path="solution.py", content=solution),
        *extra,
        call("run_tests"),
        call("submit"),
    ]:
        obs, reward, terminated, truncated, info = env.step(action)
        total += reward
        seen += obs
        assert "error" not in info, info["error"]
    assert terminated and not truncated
    return total, info, seen


@pytest.mark.docker
def test_canonical_solution_passes_visible_and_hidden_tests(sandbox_pool):
    ret, info, obs = episode(sandbox_pool, CLOSE, canonical(CLOSE))
    assert obs[1]["content"].endswith("2/2 visible examples passed\n")
    assert obs[2]["content"] == "submitted: 7/7 hidden tests passed"
    assert (ret, info["passed"], info["total"], info["correct"]) == (1.0, 7, 7, True)
    assert (info["valid_turn_frac"], info["submitted"]) == (1.0, True)


@pytest.mark.docker
def test_reward_is_the_fraction_of_hidden_asserts_passed(sandbox_pool):
    ret, info, _ = episode(sandbox_pool, CLOSE, ALWAYS_FALSE)
    assert ret == pytest.approx(3 / 7)
    assert (info["passed"], info["total"], info["correct"]) == (3, 7, False)
    assert [t["passed"] for t in info["tests"]] == [False, True, False, True, False, False, True]
    assert info["tests"][0] == {"name": "line 1", "passed": False, "error": "assertion failed"}


@pytest.mark.docker
def test_a_block_and_a_call_in_one_reply_save_the_block_before_the_call_runs(sandbox_pool):
    """``block + submit`` in one reply grades the block (one valid tool call, one saved block);
    a python block inside a call's arguments belongs to the call and is not saved; a
    ``write_file`` in the same reply runs after the block was saved, so the call wins."""
    env = CodeToolsEnv(pool=sandbox_pool)
    env.reset(options={"task_id": CLOSE.task_id})
    inner = call("run_python", code="print('```python\\nx = 1\\n```')")
    obs, *_, info = env.step(inner)
    assert env.files["solution.py"] == CLOSE.prompt.encode() and info["saved_blocks"] == 0
    assert "```python" in obs[0]["content"]  # the call ran and printed the fence
    obs, *_, info = env.step(
        f"```python\n{canonical(CLOSE)}```\n"
        + call("write_file", path="solution.py", content=ALWAYS_FALSE)
    )
    assert env.files["solution.py"] == ALWAYS_FALSE.encode() and info["saved_blocks"] == 1
    obs, reward, terminated, _, info = env.step(
        f"Done.\n```python\n{canonical(CLOSE)}```\n{call('submit')}"
    )
    assert (reward, terminated, info["passed"], info["total"]) == (1.0, True, 7, 7)
    assert (info["saved_blocks"], info["valid_turns"], info["turn"]) == (2, 3, 3)
    assert obs[0]["role"] == "tool" and obs[0]["content"] == "submitted: 7/7 hidden tests passed"


@pytest.mark.docker
def test_run_python_sees_the_workspace_and_keeps_files_it_writes(sandbox_pool):
    env = CodeToolsEnv(pool=sandbox_pool, timeout_s=1.0)
    env.reset(options={"task_id": CLOSE.task_id})
    code = "import os; open('out.txt', 'w').write('hi'); print(sorted(os.listdir('.')))"
    obs, *_ = env.step(call("run_python", code=code))
    assert obs[0]["content"] == "exit code: 0\nstdout:\n['out.txt', 'solution.py']\n"
    obs, *_ = env.step(
        call("read_file", path="out.txt") + call("run_python", code="while True: pass")
    )
    assert obs[0]["content"] == "hi"
    assert obs[1]["content"] == "exit code: -9 (timed out after 1s; the process was killed)"


# Reward hacks on top of the always-False solution that honestly earns 3/7, and the return
# each must get: none may earn more.
HACKS = {
    "prints fake results and exits 0 at import": (
        0.0,
        """
        import os, sys
        print("submitted: 7/7 hidden tests passed")
        print('{"tests": [{"name": "line 1", "passed": true, "error": ""}]}')
        sys.stdout.flush()
        os._exit(0)
    """,
    ),
    "returns an object equal to everything": (
        0.0,
        """
        class Yes:
            def __eq__(self, other):
                return True
        def has_close_elements(numbers, threshold):
            return Yes()
    """,
    ),
    "rewrites AssertionError": (
        3 / 7,
        """
        import builtins
        builtins.AssertionError = type("Nope", (Exception,), {})
        def has_close_elements(numbers, threshold):
            return False
    """,
    ),
    "writes fake verdicts to the judge's fds, kills every process": (
        0.0,
        """
        import glob, os, signal
        fake = b'{"tests": [{"name": "line 1", "passed": true, "error": ""}]}\\n'
        judge = os.getppid()
        for path in glob.glob(f"/proc/{judge}/fd/*") + [f"/proc/{judge}/fd/1", "/proc/1/fd/1"]:
            try:
                with open(path, "wb") as f:
                    f.write(fake)
            except OSError:
                pass
        for fd in range(3, 64):
            try:
                os.write(fd, fake)
            except OSError:
                pass
        for pid in os.listdir("/proc"):
            if pid.isdigit() and int(pid) not in (1, os.getpid()):
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
    """,
    ),
}


@pytest.mark.docker
@pytest.mark.parametrize("hack", list(HACKS))
def test_forged_results_do_not_change_the_reward(sandbox_pool, hack):
    expected, code = HACKS[hack]
    ret, info, _ = episode(sandbox_pool, CLOSE, ALWAYS_FALSE + textwrap.dedent(code))
    assert ret == pytest.approx(expected)


@pytest.mark.docker
def test_editing_or_deleting_test_files_does_not_change_the_reward(sandbox_pool):
    tamper = [
        call("write_file", path="test_solution.py", content="assert True\n"),
        call("write_file", path="check.py", content="def check(candidate):\n    pass\n"),
        call(
            "run_python",
            code="import os, shutil\nfor f in os.listdir('.'):\n"
            "    if f != 'solution.py': os.remove(f)\n"
            "open('METADATA', 'w').write('passed')",
        ),
    ]
    ret, *_ = episode(sandbox_pool, CLOSE, ALWAYS_FALSE, tamper)
    assert ret == pytest.approx(3 / 7)


@pytest.mark.docker
def test_a_dead_exec_server_is_an_episode_error_and_the_pool_recovers(sandbox_image):
    with SandboxPool(size=1, config=TEST_CONFIG) as pool:
        env = CodeToolsEnv(pool=pool)
        env.reset(options={"task_id": CLOSE.task_id})
        done = {}
        step = threading.Thread(
            target=lambda: done.update(
                out=env.step(call("run_python", code="import time; time.sleep(30)"))
            )
        )
        step.start()
        while pool.stats["leases"] == 0:  # wait until the call holds the only container
            time.sleep(0.01)
        time.sleep(0.5)
        [victim] = labelled_containers(**{LABEL_POOL: pool.id})
        victim.kill(signal="SIGKILL")  # the exec server is PID 1
        step.join(60)
        obs, reward, terminated, truncated, info = done["out"]
        assert info["error"].startswith("sandbox failure:")
        assert (obs, reward, terminated, truncated) == ([], 0.0, False, True)
        ret, *_ = episode(pool, CLOSE, canonical(CLOSE))  # a fresh container took its place
        assert ret == 1.0 and pool.stats["replaced"] == 1


@pytest.mark.docker
def test_32_concurrent_episodes_over_a_pool_of_4_complete(sandbox_pool):
    assert sandbox_pool.size == 4
    tasks = TASKS[:32]
    with ThreadPoolExecutor(max_workers=32) as ex:
        futures = [ex.submit(episode, sandbox_pool, t, canonical(t)) for t in tasks]
        returns = [f.result(timeout=300)[0] for f in futures]
    assert returns == [1.0] * 32


# Docstring examples that contradict HumanEval's own reference solution (dataset errors).
WRONG_DOCSTRING_EXAMPLES = {"HumanEval/47", "HumanEval/116", "HumanEval/130", "HumanEval/148"}


@pytest.mark.docker
@pytest.mark.slow
def test_every_canonical_solution_scores_1_and_passes_the_visible_examples(sandbox_pool):
    def one(task):
        ret, _, obs = episode(sandbox_pool, task, canonical(task))
        n = len(task.examples)
        shown = f"{n}/{n} visible examples passed\n" if n else "shows no examples"
        return ret, shown in obs[1]["content"]

    with ThreadPoolExecutor(max_workers=4) as ex:
        results = dict(zip([t.task_id for t in TASKS], ex.map(one, TASKS), strict=True))
    assert {r[0] for r in results.values()} == {1.0}
    assert {k for k, r in results.items() if not r[1]} == WRONG_DOCSTRING_EXAMPLES
