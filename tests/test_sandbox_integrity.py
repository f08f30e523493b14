"""Episodes cannot damage, spy on or launder each other (issue 14), tried as an attacker would:
through ``run_python`` and ``CodeTools-v0``. After every attack the pool must still hand out a
container on which the canonical solution of the next task scores 1.0."""

from __future__ import annotations

import json
import textwrap

import pytest

from ptgym.envs import humaneval_grader
from ptgym.envs.humaneval_tasks import grade, load_tasks
from tests.sandbox_fixtures import (  # noqa: F401 (fixtures)
    TEST_CONFIG,
    fixture_sandbox_image,
    fixture_sandbox_pool,
)

TASKS = load_tasks()
NOT_LOADING = "import sys\nsys.exit(0)\n"


def call(name: str, **arguments: str) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


def canonical(task) -> str:
    return task.prompt + task.canonical_solution


def next_task_scores_1(pool, index: int = 1) -> None:
    """The pool still grades the canonical solution of another task as 1.0."""
    task = TASKS[index]
    g = grade(pool, task, canonical(task))
    assert (g.fraction, g.note) == (1.0, "")


def py(sb, code: str, **kw):
    return sb.run_python(textwrap.dedent(code), **kw)


# ---- 4. free credit (no Docker: the judge runs here, on HumanEval's own trusted test code) ----


def test_asserts_that_never_call_the_candidate_are_not_tests():
    kept = {
        t.task_id: sum(is_test for *_, is_test in humaneval_grader.units(t.test, t.entry_point))
        for t in TASKS
    }
    assert sum(kept.values()) == 1181 - 48  # HumanEval's `assert True, "This prints if ..."`
    assert min(kept.values()) >= 1
    humaneval_83 = humaneval_grader.units(TASKS[83].test, "starts_one_ends")
    assert [is_test for *_, is_test in humaneval_83] == [False] + [True] * 5 + [False]


def test_a_solution_that_does_not_load_scores_0_on_all_164_tasks():
    for task in TASKS:
        spec = {
            "prompt": task.prompt,
            "solution": NOT_LOADING,
            "test": task.test,
            "entry_point": task.entry_point,
            "call_timeout": 5.0,
            "budget": 30.0,
        }
        results = humaneval_grader.judge(spec)
        assert results and not any(r["passed"] for r in results), task.task_id
        assert results[0]["error"].startswith("the solution did not load"), task.task_id


@pytest.mark.docker
def test_a_solution_that_does_not_load_scores_0_in_the_sandbox(sandbox_pool):
    for index in (0, 83, 84, 105, 115):  # 83..115 earned 0.286 from `assert True` before
        g = grade(sandbox_pool, TASKS[index], TASKS[index].prompt + NOT_LOADING)
        assert (g.passed, g.note) == (0, ""), TASKS[index].task_id
        assert g.tests[0]["error"].startswith("the solution did not load: SystemExit")
    next_task_scores_1(sandbox_pool)
