"""Hidden-test grader: runs inside a sandbox as ``python3 -I -c <this file>``; stdlib only.

It grades a function-completion task (HumanEval style: ``check(candidate)`` full of asserts) so
that the code under test cannot forge the verdict:

- Two processes. This one (the *judge*) runs the trusted task code: the prompt's helpers, the
  test module and each assert. The candidate solution runs in a separate *worker* process and is
  reached only through ``candidate(*args)``, a proxy that sends the arguments to the worker and
  gets the return value back as ``marshal`` data — plain ints, floats, strings, tuples, lists,
  dicts, sets, None. An object with a rigged ``__eq__``, a monkeypatched ``assert``, ``os._exit(0)``
  or a printed "all tests passed" never reaches the judge.
- The judge is made non-dumpable, so the worker (same uid) can neither ptrace it nor open
  ``/proc/<judge>/fd`` or ``/proc/<judge>/mem``; the verdict goes to the judge's own stdout,
  which the worker does not hold, as one JSON line tagged with a nonce chosen by the host.

Per-assert results (the split rule): every top-level statement of ``check``'s body runs in
order in one namespace; each top-level ``assert``, and each top-level compound statement
(``for``/``while``/``if``/``with``/``try``) that contains an ``assert``, is one test if it names
the candidate (``candidate`` or the entry point); the other statements are setup. An assert that
never calls the candidate (HumanEval's ``assert True, "This prints if this assert fails"``: 48 of
them in 36 tasks) is not a test, else a solution that does not even load would earn credit. A
check with no such statement is a single test: the whole ``check``. The solution is loaded before
the first test; when it does not load, every test fails with the reason.

Input (stdin, JSON): ``prompt``, ``solution``, ``test``, ``entry_point``, ``nonce``,
``call_timeout`` (seconds per candidate call), ``budget`` (seconds for everything).
Output: ``<nonce> {"tests": [{"name", "passed", "error"}], "worker_ok": bool}``.
"""

import ast
import contextlib
import ctypes
import json
import marshal
import os
import select
import struct
import subprocess
import sys
import time

HEADER = struct.Struct(">I")
MAX_MESSAGE = 16 << 20
PR_SET_DUMPABLE = 4

# The worker: reads the program (prompt + solution) as one frame, defines the entry point, then
# answers marshal-framed calls. Its protocol fds are moved off 0/1 first so that the solution's
# print() and input() see /dev/null instead of the channel.
WORKER = r"""
import marshal, os, struct, sys
H = struct.Struct(">I")
inp, out = os.dup(0), os.dup(1)
null = os.open(os.devnull, os.O_RDWR)
os.dup2(null, 0); os.dup2(null, 1)
def recv():
    head = os.read(inp, 4)
    while 0 < len(head) < 4:
        head += os.read(inp, 4 - len(head))
    if len(head) < 4:
        sys.exit(0)
    n = H.unpack(head)[0]; buf = b""
    while len(buf) < n:
        chunk = os.read(inp, n - len(buf))
        if not chunk:
            sys.exit(0)
        buf += chunk
    return buf
def send(obj):
    try:
        data = marshal.dumps(obj)
    except ValueError as e:
        data = marshal.dumps(("err", "return value cannot be checked: " + str(e)))
    os.write(out, H.pack(len(data)) + data)
program, entry = marshal.loads(recv())
ns = {"__name__": "solution"}
try:
    exec(compile(program, "solution.py", "exec"), ns)
    fn = ns[entry]
except BaseException as e:
    send(("err", "%s: %s" % (type(e).__name__, e))); sys.exit(0)
send(("ready", None))
while True:
    args, kwargs = marshal.loads(recv())
    try:
        send(("ok", fn(*args, **kwargs)))
    except BaseException as e:
        send(("err", "%s: %s" % (type(e).__name__, e)))
"""


class CandidateFailed(Exception):
    """The candidate raised, hung, died or returned something that is not plain data."""


class Worker:
    """The candidate's process, restarted after it hangs or dies."""

    def __init__(self, program, entry, call_timeout):
        self.program, self.entry, self.call_timeout = program, entry, call_timeout
        self.proc = None
        self.load_error = ""  # set once the solution failed to load: later tests fail fast

    def start(self):
        if self.load_error:
            raise CandidateFailed(self.load_error)
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-c", WORKER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.send((self.program, self.entry))
        try:
            self.receive()  # ("ready", None), or the load error
        except CandidateFailed as e:
            self.stop()
            self.load_error = f"the solution did not load: {e}"
            raise CandidateFailed(self.load_error) from e

    def send(self, obj):
        data = marshal.dumps(obj)
        try:
            os.write(self.proc.stdin.fileno(), HEADER.pack(len(data)) + data)
        except OSError as e:
            self.stop()
            raise CandidateFailed("the solution process died") from e

    def read(self, n, deadline):
        buf = b""
        fd = self.proc.stdout.fileno()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                self.stop()
                raise CandidateFailed(f"timed out after {self.call_timeout}s")
            chunk = os.read(fd, n - len(buf))
            if not chunk:
                self.stop()
                raise CandidateFailed("the solution process exited")
            buf += chunk
        return buf

    def receive(self):
        deadline = time.monotonic() + self.call_timeout
        (size,) = HEADER.unpack(self.read(HEADER.size, deadline))
        if size > MAX_MESSAGE:
            self.stop()
            raise CandidateFailed(f"return value of {size} bytes is too large")
        try:
            status, value = marshal.loads(self.read(size, deadline))
        except (ValueError, EOFError, TypeError) as e:
            self.stop()
            raise CandidateFailed("malformed reply from the solution process") from e
        if status == "err":
            raise CandidateFailed(str(value))
        return value

    def __call__(self, *args, **kwargs):
        if self.proc is None:
            self.start()
        try:
            self.send((args, kwargs))
        except ValueError as e:  # arguments marshal cannot carry: a grader limitation
            raise CandidateFailed(f"cannot pass arguments to the solution: {e}") from e
        return self.receive()

    def stop(self):
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, 9)
            self.proc.wait()
            self.proc = None


def units(test_source, entry_point):
    """[(name, code object, is_test)] following the split rule in the module doc."""
    tree = ast.parse(test_source)
    check = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check")
    callee = {"candidate", entry_point}
    out, tests = [], 0
    for stmt in check.body:
        nodes = list(ast.walk(stmt))
        is_test = any(isinstance(n, ast.Assert) for n in nodes) and any(
            isinstance(n, ast.Name) and n.id in callee for n in nodes
        )
        tests += is_test
        code = compile(ast.Module(body=[stmt], type_ignores=[]), "<test>", "exec")
        out.append((f"line {stmt.lineno - check.lineno}", code, is_test))
    if not tests:
        whole = compile("check(candidate)", "<test>", "exec")
        out = [("check", whole, True)]
    return out


def judge(spec):
    """Load the solution in a worker, run every unit of ``check``; the per-test results."""
    deadline = time.monotonic() + float(spec["budget"])
    worker = Worker(
        spec["prompt"] + "\n" + spec["solution"], spec["entry_point"], float(spec["call_timeout"])
    )
    scope = {"__name__": "hidden_tests"}
    exec(compile(spec["prompt"], "<prompt>", "exec"), scope)
    exec(compile(spec["test"], "<test>", "exec"), scope)
    # check() may also call the function by name (HumanEval/33): that is the candidate too.
    scope["candidate"] = scope[spec["entry_point"]] = worker
    with contextlib.suppress(CandidateFailed):
        worker.start()  # load first: a solution that does not load fails every test
    results = []
    for name, code, is_test in units(spec["test"], spec["entry_point"]):
        error = ""
        if worker.load_error:
            error = worker.load_error[:300]
        elif time.monotonic() > deadline:
            error = "time budget exhausted"
        else:
            try:
                exec(code, scope)
            except AssertionError:
                error = "assertion failed"
            except CandidateFailed as e:
                error = str(e)[:300]
            except Exception as e:
                error = f"{type(e).__name__}: {e}"[:300]
        if is_test:
            results.append({"name": name, "passed": not error, "error": error})
    worker.stop()
    return results


def main():
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    spec = json.loads(sys.stdin.read())
    print(spec["nonce"], json.dumps({"tests": judge(spec)}), flush=True)


if __name__ == "__main__":
    main()
