"""``ptgym/CodeTools-v0``: solve a HumanEval problem with Python tools in a Docker sandbox.

## Description

Each episode is one of the 164 HumanEval problems (Chen et al., 2021). The agent works in a
workspace that starts with ``solution.py`` holding the prompt (signature + docstring), calls
tools to write, run and check code, and calls ``submit()`` when done. The hidden tests (the
problem's ``check``) then run on a copy of ``solution.py`` in a fresh sandbox (a container no
agent code ran in, destroyed afterwards: ``SandboxPool.lease(fresh=True)``); they are
sent to the grader on stdin and never exist where the agent's code could reach them, and the
verdict comes from a judge process the solution cannot touch (``ptgym.envs.humaneval_grader``).

Tools (OpenAI function schemas in ``info["tools"]``), called in the Hermes format
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>`` or in its XML form with raw values
(``<function=write_file><parameter=content>...``, see ``ptgym.agents.toolcalls``: code needs no
JSON escaping), several per reply allowed:

- ``run_python(code)``: run code in the workspace (cwd ``/work``, timeout ``timeout_s``);
  returns exit code, stdout and stderr (each capped, see ``SandboxConfig.max_output``).
- ``write_file(path, content)`` / ``read_file(path)``: a file in the workspace.
- ``run_tests()``: run ``solution.py`` against the examples shown in the prompt.
- ``submit()``: grade ``solution.py`` on the hidden tests and end the episode.

Workspace and sandbox: the workspace lives on the host between calls. A call that runs code
leases a sandbox from the pool, restores the workspace into its empty ``/work``, runs, copies
``/work`` back and returns the sandbox (which is then wiped). So an episode never holds a
container while the model is generating, any number of episodes share a pool of any size
without deadlock, and no process outlives its call.

Limits, each breach an observation that counts against the agent (never ``info["error"]``, which
is only for failures that are not the agent's doing): inside a call, ``SandboxConfig``'s
``work_size``, ``work_inodes`` and ``max_file_size`` (the agent's code gets ENOSPC or EFBIG); the
workspace carried between calls keeps at most ``MAX_WORKSPACE_FILES`` files of at most
``MAX_FILE_BYTES`` each and ``MAX_WORKSPACE_BYTES`` in all (the result names what was not kept);
``write_file`` refuses what would break them. File names need not be UTF-8 (they are kept as
``os.fsdecode`` gives them and shown with ``\\xff`` escapes). Every tool result is cut to
``max_result_chars`` with a note saying how much was cut.

A reply's last fenced ```` ```python ```` block outside its tool calls is written to
``solution.py`` before the reply's calls run, so a reply can carry the program as a block and call
``run_tests`` or ``submit`` on it (small models write code as blocks far more reliably than as a
JSON-escaped argument; the system prompt says so). A reply without a tool call gets a reminder of
the protocol, which says whether its block was saved. Malformed calls get the parser's error
message.

## Action space

``Text``: the assistant's reply, as a ``str`` or a ``ptgym.Action`` (its ``.text`` is used).

## Observation space

``Messages``: ``reset`` gives ``[system, user(task)]``; each step gives one ``role="tool"``
message per call (``name`` and ``tool_call_id`` set) or one ``role="user"`` reminder.

## Rewards

On ``submit``: the fraction of hidden tests passed. Tests are HumanEval's asserts, one per
top-level assert of ``check`` that calls the solution (rule in ``ptgym.envs.humaneval_grader``);
164 problems, 1133 tests; all 164 canonical solutions score 1.0, and a solution that does not
load scores 0. Every step also adds ``-tool_call_penalty`` per tool call.
An episode that ends without ``submit`` earns only the penalties.

## Episode end

``terminated`` on ``submit``. ``truncated`` after ``max_turns`` replies or ``time_limit_s``
seconds since ``reset``, and when the sandbox fails: then ``info["error"]`` says why and the
reward is 0.0, a failure of the infrastructure, not a score (the trainer drops it).

## Arguments

- ``tasks``: the task set. ``"humaneval"`` (default): the 164 HumanEval problems, the benchmark.
  ``"practice"``: small functions written for the warm start (``ptgym.envs.practice_tasks``, not
  HumanEval), so that demonstrations (``ptgym envs demos code-tools``) never train on the
  benchmark; same prompts, tools and grader.
- ``pool``: a ``SandboxPool`` to use; None shares one per process, made on first use with
  ``pool_size`` containers and ``sandbox`` (a ``SandboxConfig`` or a dict of its fields).
- ``max_turns``: replies per episode. ``time_limit_s``: wall-clock budget per episode.
- ``tool_call_penalty``: subtracted per tool call. ``timeout_s``: per ``run_python``/``run_tests``.
- ``call_timeout_s`` / ``grade_budget_s``: per candidate call and total, in hidden grading.
- ``max_result_chars``: the longest tool result (the rest is cut, with a note).
- ``few_shot``: add ``FEW_SHOT`` to the system prompt, one worked episode (write_file, then
  submit) on a toy task that is not in HumanEval: the warm start for small models, which
  rarely write a valid call from the tool list alone (SmolLM2's template ignores ``tools=``).

``reset(options=...)``: ``{"task_id": "HumanEval/7"}`` or ``{"index": i}`` (``num_tasks``: 164, or
the number of practice tasks);
otherwise the task is drawn from ``np_random``, so a seed fixes it. ``info``: ``tools``,
``task_id``, ``entry_point``; after each step ``turn``, ``tool_calls``, ``valid_turns`` (replies so
far with at least one call and no malformed one), ``valid_turn_frac``, ``saved_blocks``
(replies whose fenced python block was saved as solution.py, with or without calls) and
``submitted``; after ``submit`` ``tests`` (per test ``name``/``passed``/``error``), ``passed`` (how
many), ``total`` and ``correct`` (every hidden test passed: what pass@k and ``reward/pass_rate``
count).

## Version history

- v0: initial version. The system prompt now also shows the XML call form with raw values
  (December 2026; the JSON form is unchanged). A reply's python block is now saved also when
  the reply calls tools (before the calls run; before, only replies without a call were), and
  the system prompt says so (December 2026). ``info["correct"]`` added on submit: pass@k had
  read the count ``passed`` as a verdict, so a submission passing any hidden test counted as
  solved (December 2026).
"""

from __future__ import annotations

import json
import posixpath
import re
import threading
import time
from dataclasses import asdict
from typing import Any

from ptgym.agents.toolcalls import (
    format_errors,
    format_tool_result,
    parse_tool_calls,
    raw_tool_call_text,
)
from ptgym.env import TextEnv, action_text
from ptgym.envs.humaneval_tasks import VISIBLE_RUNNER, Task, grade, load_tasks
from ptgym.envs.practice_tasks import load_practice_tasks
from ptgym.sandbox import ExecResult, SandboxConfig, SandboxError, SandboxPool
from ptgym.types import Action, ToolCall

SOLUTION = "solution.py"
TASK_SETS = {"humaneval": load_tasks, "practice": load_practice_tasks}
# The workspace carried between calls (the files the host keeps): what a call leaves beyond these
# is not kept, and the tool result says so. Inside a call, SandboxConfig's work_size, work_inodes
# and max_file_size limit what the agent's code can write at all (ENOSPC / EFBIG).
MAX_WORKSPACE_BYTES = 8 << 20
MAX_WORKSPACE_FILES = 256
MAX_FILE_BYTES = 1 << 20


def _fn(name: str, description: str, **params: str) -> dict[str, Any]:
    props = {k: {"type": "string", "description": v} for k, v in params.items()}
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {"type": "object", "properties": props, "required": list(params)},
        },
    }


TOOLS = [
    _fn(
        "run_python",
        "Run Python code in the workspace (cwd /work) and return its exit code, "
        "stdout and stderr. Files persist between calls; processes do not.",
        code="Python source to run",
    ),
    _fn(
        "write_file",
        "Create or overwrite a file in the workspace.",
        path="path relative to the workspace, e.g. solution.py",
        content="the whole file",
    ),
    _fn("read_file", "Read a file from the workspace.", path="path relative to the workspace"),
    _fn("run_tests", "Run solution.py against the examples shown in the task."),
    _fn("submit", "Grade solution.py on the hidden tests. Ends the task."),
]
SYSTEM_PROMPT = """You solve Python programming tasks in a sandbox with these tools:
{tools}
Call a tool by writing <tool_call>{{"name": "<tool>", "arguments": {{...}}}}</tool_call>, or, to \
pass code or a file's content without escaping it:
{raw_example}
A ```python block in your reply is saved as solution.py before the reply's tool calls run.
Results come back as tool messages. Put the complete implementation in solution.py (write_file, or \
a python block), check it with run_tests or run_python, then call submit. Only submit ends the task."""
_RAW_EXAMPLE = raw_tool_call_text(
    "write_file", path="solution.py", content="the whole file, as it is"
)
TASK_PROMPT = """Implement `{entry}` so that it does what its docstring says. solution.py \
currently holds:
```python
{prompt}```"""
REMINDER = (
    'No tool call found. Call a tool with <tool_call>{"name": "submit", "arguments": {}}'
    "</tool_call> (tools: run_python, write_file, read_file, run_tests, submit)."
)


def tool_call_text(name: str, **arguments: Any) -> str:
    """The Hermes-format call of tool ``name`` (what ``FEW_SHOT`` and the demonstrations write)."""
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


_EXAMPLE_CODE = 'def double(x):\n    """Return 2 * x."""\n    return 2 * x\n'
FEW_SHOT = "\n\nExample (a toy task, not yours):\nuser: Implement `double` ...\nassistant: " + (
    tool_call_text("write_file", path=SOLUTION, content=_EXAMPLE_CODE)
    + f"\ntool: wrote {len(_EXAMPLE_CODE.encode())} bytes to {SOLUTION}\nassistant: "
    + tool_call_text("submit")
)
_PY_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_CALL_SPAN = re.compile(r"<tool_call>.*?(?:</tool_call>|\Z)", re.DOTALL)


def python_block(text: str) -> str | None:
    """The reply's last fenced python block outside its tool calls (one inside a call's code or
    content belongs to that call), or None."""
    blocks = _PY_BLOCK.findall(_CALL_SPAN.sub("", text))
    return blocks[-1] if blocks else None


_SHARED: dict[str, SandboxPool] = {}
_SHARED_LOCK = threading.Lock()


def shared_pool(size: int, config: SandboxConfig) -> SandboxPool:
    """One pool per (size, config) per process, started on first use."""
    key = json.dumps([size, asdict(config)], sort_keys=True)
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = SandboxPool(size=size, config=config)
        return _SHARED[key]


def workspace_path(path: Any) -> str:
    """A workspace-relative path, or ValueError for one that leaves the workspace."""
    if not isinstance(path, str) or not path.strip():
        raise ValueError("path must be a non-empty string")
    rel = path.strip().removeprefix("/work/")
    norm = posixpath.normpath(rel)
    if rel.startswith("/") or norm == ".." or norm.startswith("../") or norm == ".":
        raise ValueError(f"{path!r} is outside the workspace (/work); use a relative path")
    return norm


def shown(name: str) -> str:
    """A file name for an observation: bytes that are not UTF-8 as escapes (``\\xff``)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def cap(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with a note saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... truncated: {len(text) - limit} more characters]"


def format_exec(r: ExecResult, timeout: float) -> str:
    head = f"exit code: {r.exit_code}"
    if r.timed_out:
        head += f" (timed out after {timeout:g}s; the process was killed)"
    elif r.oom:
        head += " (out of memory; the process was killed)"
    parts = [head]
    if r.stdout:
        parts.append("stdout:\n" + r.stdout)
    if r.stderr:
        parts.append("stderr:\n" + r.stderr)
    return "\n".join(parts)


class CodeToolsEnv(TextEnv):
    """HumanEval with tools in a Docker sandbox; see the module docstring for the full spec."""

    @classmethod
    def prepare(cls, progress: Any = print) -> None:
        """Build the sandbox image if it is missing (run once by ptgym's commands)."""
        from ptgym.sandbox import ensure_image

        ensure_image(progress=progress)

    def __init__(
        self,
        tasks: str = "humaneval",
        pool: SandboxPool | None = None,
        max_turns: int = 10,
        tool_call_penalty: float = 0.0,
        timeout_s: float = 10.0,
        time_limit_s: float = 600.0,
        call_timeout_s: float = 3.0,
        grade_budget_s: float = 30.0,
        pool_size: int = 4,
        sandbox: SandboxConfig | dict[str, Any] | None = None,
        max_result_chars: int = 16384,
        few_shot: bool = False,
        render_mode: str | None = None,
    ):
        super().__init__(render_mode=render_mode)
        if tasks not in TASK_SETS:
            raise ValueError(
                f"unknown tasks={tasks!r} for CodeToolsEnv; choose one of {', '.join(TASK_SETS)}"
            )
        self.task_set = tasks
        self.tasks = TASK_SETS[tasks]()
        self._pool = pool
        self.pool_size = pool_size
        self.sandbox_config = (
            SandboxConfig(**sandbox) if isinstance(sandbox, dict) else (sandbox or SandboxConfig())
        )
        self.max_turns = max_turns
        self.tool_call_penalty = tool_call_penalty
        self.timeout_s = timeout_s
        self.time_limit_s = time_limit_s
        self.call_timeout_s = call_timeout_s
        self.grade_budget_s = grade_budget_s
        self.max_result_chars = max_result_chars
        self.few_shot = few_shot
        self.task: Task | None = None
        self.files: dict[str, bytes] = {}
        self.turn = self.tool_calls = self.valid_turns = self.saved_blocks = 0
        self._started = 0.0
        self._done = True

    @property
    def num_tasks(self) -> int:
        return len(self.tasks)

    @property
    def pool(self) -> SandboxPool:
        if self._pool is None:
            self._pool = shared_pool(self.pool_size, self.sandbox_config)
        return self._pool

    def _pick(self, options: dict[str, Any] | None) -> Task:
        options = options or {}
        if "task_id" in options:
            by_id = {t.task_id: t for t in self.tasks}
            if options["task_id"] not in by_id:
                first, last = self.tasks[0].task_id, self.tasks[-1].task_id
                raise ValueError(
                    f"unknown task_id {options['task_id']!r} in the {self.task_set} tasks; "
                    f"use {first}..{last}"
                )
            return by_id[options["task_id"]]
        if "index" in options:
            return self.tasks[int(options["index"]) % len(self.tasks)]
        return self.tasks[int(self.np_random.integers(len(self.tasks)))]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        super().reset(seed=seed)
        self.task = self._pick(options)
        self.files = {SOLUTION: self.task.prompt.encode()}
        self.turn = self.tool_calls = self.valid_turns = self.saved_blocks = 0
        self._started = time.monotonic()
        self._done = False
        tools = "\n".join(
            f"- {t['function']['name']}: {t['function']['description']}" for t in TOOLS
        )
        obs = [
            {
                "role": "system",
                "content": SYSTEM_PROMPT.format(tools=tools, raw_example=_RAW_EXAMPLE)
                + (FEW_SHOT if self.few_shot else ""),
            },
            {
                "role": "user",
                "content": TASK_PROMPT.format(entry=self.task.entry_point, prompt=self.task.prompt),
            },
        ]
        self.messages = [dict(m) for m in obs]
        info = {"tools": TOOLS, "task_id": self.task.task_id, "entry_point": self.task.entry_point}
        return obs, info

    def step(
        self, action: str | Action
    ) -> tuple[list[dict[str, Any]], float, bool, bool, dict[str, Any]]:
        if self.task is None or self._done:
            raise RuntimeError("CodeToolsEnv.step called before reset() or after the episode ended")
        text = action_text(action)
        self.turn += 1
        parsed = parse_tool_calls(text, TOOLS)
        self.messages.append(
            {
                "role": "assistant",
                "content": text,
                "tool_calls": [c.to_dict() for c in parsed.calls],
            }
        )
        info: dict[str, Any] = {"task_id": self.task.task_id}
        obs: list[dict[str, Any]] = []
        reward, terminated = 0.0, False
        block = python_block(text)
        if block is not None:
            self.files[SOLUTION] = block.encode()
            self.saved_blocks += 1
        try:
            if parsed.errors:
                obs.append(format_errors([cap(e, self.max_result_chars) for e in parsed.errors]))
            if not parsed.calls and not parsed.errors:
                saved = f"Your last ```python block was saved as {SOLUTION}. " if block else ""
                obs.append({"role": "user", "content": saved + REMINDER})
            for call in parsed.calls:
                self.tool_calls += 1
                reward -= self.tool_call_penalty
                if call.name == "submit":
                    g = grade(
                        self.pool,
                        self.task,
                        self._solution(),
                        self.call_timeout_s,
                        self.grade_budget_s,
                    )
                    reward += g.fraction
                    terminated = True
                    info.update(
                        tests=g.tests,
                        passed=g.passed,
                        total=len(g.tests),
                        correct=0 < g.passed == len(g.tests),
                    )
                    if g.note:
                        info["grade_note"] = g.note
                    obs.append(
                        format_tool_result(
                            call, f"submitted: {g.passed}/{len(g.tests)} hidden tests passed"
                        )
                    )
                    break
                obs.append(format_tool_result(call, cap(self._tool(call), self.max_result_chars)))
        except SandboxError as e:
            info["error"] = f"sandbox failure: {e}"
            obs, reward, terminated = [], 0.0, False
        out_of_time = time.monotonic() - self._started > self.time_limit_s
        truncated = not terminated and (
            "error" in info or self.turn >= self.max_turns or out_of_time
        )
        self._done = terminated or truncated
        self.messages.extend(dict(m) for m in obs)
        self.valid_turns += bool(parsed.calls) and not parsed.errors
        info.update(
            turn=self.turn,
            tool_calls=self.tool_calls,
            valid_turns=self.valid_turns,
            valid_turn_frac=self.valid_turns / self.turn,
            saved_blocks=self.saved_blocks,
            submitted=terminated,
        )
        return obs, reward, terminated, truncated, info

    def _solution(self) -> str:
        return self.files.get(SOLUTION, b"").decode("utf-8", errors="replace")

    def _tool(self, call: ToolCall) -> str:
        """Run one non-submit tool; agent mistakes come back as text, SandboxError propagates."""
        args = call.arguments
        try:
            if call.name == "write_file":
                path = workspace_path(args.get("path"))
                content = str(args.get("content", "")).encode()
                error = self._over_limits(path, content)
                if error:
                    return error
                self.files[path] = content
                return f"wrote {len(content)} bytes to {shown(path)}"
            if call.name == "read_file":
                path = workspace_path(args.get("path"))
                if path not in self.files:
                    names = ", ".join(shown(n) for n in sorted(self.files))
                    return f"error: {shown(path)} does not exist; files: {names}"
                return self.files[path].decode("utf-8", errors="replace")
            if call.name == "run_python":
                return format_exec(
                    self._run(["python3", "-"], str(args.get("code", ""))), self.timeout_s
                )
            if call.name == "run_tests":
                if not self.task.examples:
                    return "this task shows no examples to run; test with run_python"
                spec = json.dumps({"examples": self.task.examples})
                return format_exec(
                    self._run(["python3", "-c", VISIBLE_RUNNER], spec), self.timeout_s
                )
        except ValueError as e:  # includes SandboxUserError
            return f"error: {e}"
        return f"error: unknown tool {call.name!r}"

    def _over_limits(self, path: str, content: bytes) -> str:
        """Why writing ``content`` to ``path`` would break the workspace limits, or ''."""
        if len(content) > MAX_FILE_BYTES:
            return f"error: {len(content)} bytes is over the limit of {MAX_FILE_BYTES} per file"
        others = {k: v for k, v in self.files.items() if k != path}
        if len(others) + 1 > MAX_WORKSPACE_FILES:
            return f"error: the workspace already holds {MAX_WORKSPACE_FILES} files, the most"
        if sum(map(len, others.values())) + len(content) > MAX_WORKSPACE_BYTES:
            return f"error: the workspace would exceed {MAX_WORKSPACE_BYTES} bytes"
        return ""

    def _run(self, argv: list[str], stdin: str) -> ExecResult:
        """Run in a leased sandbox holding the workspace, then keep what it left in /work (within
        the workspace limits; what is over them is not kept, and the result says so)."""
        with self.pool.lease() as sb:
            sb.restore(self.files)
            result = sb.exec(argv, stdin=stdin.encode(), timeout=self.timeout_s)
            snap = sb.snapshot(MAX_WORKSPACE_BYTES, MAX_WORKSPACE_FILES, MAX_FILE_BYTES)
        self.files = snap.files
        if snap.skipped_count:
            names = ", ".join(shown(n) for n in snap.skipped)
            more = snap.skipped_count - len(snap.skipped)
            sep = "\n" if result.stderr and not result.stderr.endswith("\n") else ""
            result.stderr += sep + (
                f"[workspace limits ({MAX_WORKSPACE_FILES} files, {MAX_FILE_BYTES} bytes per "
                f"file, {MAX_WORKSPACE_BYTES} in all): {snap.skipped_count} files not kept: "
                f"{names}{f' and {more} more' if more > 0 else ''}]"
            )
        return result
