"""Episodes cannot damage, spy on or launder each other (issue 14), tried as an attacker would:
through ``run_python`` and ``CodeTools-v0``. After every attack the pool must still hand out a
container on which the canonical solution of the next task scores 1.0."""

from __future__ import annotations

import json
import textwrap
import threading
import time

import pytest

from ptgym.envs import humaneval_grader
from ptgym.envs.code_tools import CodeToolsEnv
from ptgym.envs.humaneval_tasks import grade, load_tasks
from ptgym.sandbox import SandboxPool
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


# ---- 1. IPC and scratch residue between episodes ---------------------------------------------

# ctypes access to SysV IPC and POSIX queues, as agent code would write it.
IPC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
IPC_CREAT, O_CREAT, O_RDWR, O_RDONLY = 0o1000, 0o100, 2, 0
def err(result):
    return ctypes.get_errno() if result == -1 else "ok"
"""

LEAVE_IPC_BEHIND = (
    IPC
    + """
print("496 MiB segment:", err(libc.shmget(0x5EED, 496 << 20, IPC_CREAT | 0o666)))
sid = libc.shmget(0x5EEE, 24 << 20, IPC_CREAT | 0o666)
ctypes.memset(libc.shmat(sid, None, 0), 1, 24 << 20)       # 24 MiB the next episode would pay
print("sem:", err(libc.semget(0x5EEF, 4, IPC_CREAT | 0o666)))
qid = libc.msgget(0x5EF0, IPC_CREAT | 0o666)
msg = ctypes.create_string_buffer(b"\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00secret", 14)
print("msg:", err(libc.msgsnd(qid, msg, 6, 0)))
mq = libc.mq_open(b"/leak", O_CREAT | O_RDWR, 0o666, None)
print("mq:", err(libc.mq_send(mq, b"secret", 6, 0)))
open("/dev/shm/leak", "w").write("secret")
try:
    open("/tmp/leak", "w")
except OSError as e:
    print("tmp:", e.errno)
"""
)

PROBE_IPC = (
    IPC
    + """
print(err(libc.shmget(0x5EEE, 0, 0)), err(libc.semget(0x5EEF, 0, 0)),
      err(libc.msgget(0x5EF0, 0)), err(libc.mq_open(b"/leak", O_RDONLY)),
      os.listdir("/dev/shm"), os.listdir("/dev/mqueue"),
      open("/proc/sysvipc/shm").read().count("\\n"))
"""
)
ENOENT, EINVAL, EROFS = 2, 22, 30


@pytest.mark.docker
def test_ipc_objects_and_scratch_files_do_not_survive_into_the_next_episode(sandbox_image):
    with SandboxPool(size=1, config=TEST_CONFIG) as pool:
        with pool.lease() as sb:
            first = sb.id
            r = py(sb, LEAVE_IPC_BEHIND)
            assert r.stdout == (
                f"496 MiB segment: {EINVAL}\nsem: ok\nmsg: ok\nmq: ok\ntmp: {EROFS}\n"
            ), r.stderr
            # The health check sees all of it while it is there.
            left = sb.residue()
            assert {"/dev/shm/leak", "/dev/mqueue/leak"} <= set(left)
            assert {x.split()[1] for x in left if x.startswith("sysv")} == {"shm", "sem", "msg"}
        with pool.lease() as sb:  # the same container, reset between the two episodes
            assert sb.id == first and sb.residue() == []
            r = py(sb, PROBE_IPC)
            assert r.stdout == f"{ENOENT} {ENOENT} {ENOENT} {ENOENT} [] [] 1\n", r.stderr
            # The 24 MiB are free again: 200 MiB fit in the 256 MiB container.
            assert py(sb, "b = bytearray(200 << 20); print('fits')").stdout == "fits\n"
        assert pool.stats["residue"] == 0
        next_task_scores_1(pool)


@pytest.mark.docker
def test_the_health_check_replaces_a_container_that_holds_residue(sandbox_image):
    with SandboxPool(size=1, config=TEST_CONFIG) as pool:
        with pool.lease() as sb:
            dirty = sb.container
        # Something the reset did not catch (planted from outside, while the container is idle).
        plant = IPC + "libc.shmget(0x77, 4096, IPC_CREAT | 0o600); open('/dev/shm/x', 'w')"
        assert dirty.exec_run(["python3", "-c", plant]).exit_code == 0
        with pool.lease(timeout=60) as sb:
            assert sb.id != dirty.id and sb.residue() == []
        assert pool.stats["failed_health"] == 1
        next_task_scores_1(pool)


# The solution the attacker submitted: it wraps its entry point to post every argument
# tuple of the hidden tests to a POSIX message queue, for a later episode to read.
LEAKING_SOLUTION = (
    IPC
    + """
def has_close_elements(numbers, threshold):
    mq = libc.mq_open(b"/hidden", O_CREAT | O_RDWR, 0o666, None)
    data = repr((numbers, threshold)).encode()[:8000]
    libc.mq_send(mq, data, len(data), 0)
    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])
"""
)
READ_LEAK = (
    IPC
    + """
mq = libc.mq_open(b"/hidden", O_RDONLY | 0o4000, 0, None)   # O_NONBLOCK
print("open:", err(mq), os.listdir("/dev/mqueue"))
"""
)


@pytest.mark.docker
def test_hidden_tests_run_in_a_fresh_container_that_is_destroyed_after(sandbox_image):
    with SandboxPool(size=2, config=TEST_CONFIG) as pool:
        with pool.lease() as sb:
            agent = sb.id  # a container that has run agent code
        with pool.lease(fresh=True) as sb:
            grading = sb.id
            assert grading != agent and sb.uses == 1  # never leased before
        deadline = time.monotonic() + 30
        while grading in {c.id for c in pool.client.containers.list(all=True, ignore_removed=True)}:
            assert time.monotonic() < deadline, "the grading container was not removed"
            time.sleep(0.2)
        seen = set()
        for _ in range(4):
            with pool.lease(timeout=60) as sb:
                seen.add(sb.id)
        assert grading not in seen
        next_task_scores_1(pool)


@pytest.mark.docker
def test_hidden_test_arguments_posted_to_a_message_queue_do_not_reach_the_next_episode(
    sandbox_image,
):
    with SandboxPool(size=1, config=TEST_CONFIG) as pool:
        env = CodeToolsEnv(pool=pool)
        env.reset(options={"task_id": TASKS[0].task_id})
        env.step(call("write_file", path="solution.py", content=LEAKING_SOLUTION))
        *_, info = env.step(call("submit"))
        assert (info["passed"], info["total"]) == (7, 7)  # the wrapper ran during grading
        env.reset(options={"task_id": TASKS[1].task_id})
        obs, *_, info = env.step(call("run_python", code=READ_LEAK))
        assert "error" not in info
        assert obs[0]["content"] == f"exit code: 0\nstdout:\nopen: {ENOENT} []\n"
        next_task_scores_1(pool)


# ---- 2. failures the agent causes are observations, not info["error"] -----------------------


def run(env, code: str) -> tuple[str, dict]:
    """One run_python call; its observation text and info (which must carry no error)."""
    obs, reward, terminated, truncated, info = env.step(call("run_python", code=code))
    assert "error" not in info and not truncated, info.get("error")
    return obs[0]["content"], info


def finish_with_canonical(env, task) -> None:
    """The episode goes on and is scored: the canonical solution still earns 1.0."""
    env.step(call("write_file", path="solution.py", content=canonical(task)))
    _, reward, terminated, _, info = env.step(call("submit"))
    assert (reward, terminated, "error" in info) == (1.0, True, False)


@pytest.mark.docker
def test_a_file_name_that_is_not_utf8_round_trips_as_bytes(sandbox_pool):
    env = CodeToolsEnv(pool=sandbox_pool)
    env.reset(options={"task_id": TASKS[2].task_id})
    text, _ = run(env, "open(b'\\xff', 'w').write('x'); open(b'ok\\xe9.txt', 'w').close()")
    assert text == "exit code: 0"
    assert set(env.files) == {"solution.py", "\udcff", "ok\udce9.txt"}
    text, _ = run(env, "import os; print(sorted(os.listdir(b'.')), open(b'\\xff').read())")
    assert text == "exit code: 0\nstdout:\n[b'ok\\xe9.txt', b'solution.py', b'\\xff'] x\n"
    obs, *_ = env.step(call("read_file", path="missing"))
    assert obs[0]["content"].endswith("files: ok\\xe9.txt, solution.py, \\xff")
    obs[0]["content"].encode("utf-8")  # no lone surrogates reach the tokenizer
    finish_with_canonical(env, TASKS[2])


ENOSPC, EFBIG = 28, 27
INODE_FLOOD = """
import os
n = 0
try:
    for n in range(300_000):
        open(f"f{n}", "w").close()
except OSError as e:
    print(n, e.errno)
"""


@pytest.mark.docker
def test_an_inode_flood_is_stopped_where_it_is_written_and_is_the_agents_observation(
    sandbox_pool,
):
    env = CodeToolsEnv(pool=sandbox_pool)
    env.reset(options={"task_id": TASKS[3].task_id})
    text, _ = run(env, INODE_FLOOD)
    created, errno = map(int, text.split("stdout:\n")[1].split("\n")[0].split())
    assert errno == ENOSPC and created < TEST_CONFIG.work_inodes
    assert f"{created + 1 - 256} files not kept" in text  # solution.py + created, 256 kept
    assert len(env.files) == 256 and "solution.py" not in env.files  # f0.. sort first
    obs, *_ = env.step(call("write_file", path="solution.py", content=canonical(TASKS[3])))
    assert obs[0]["content"] == "error: the workspace already holds 256 files, the most"
    run(env, "import glob, os\nfor f in glob.glob('f*'): os.remove(f)")
    assert env.files == {}
    finish_with_canonical(env, TASKS[3])


@pytest.mark.docker
def test_file_and_workspace_size_limits_are_the_agents_observation(sandbox_pool):
    env = CodeToolsEnv(pool=sandbox_pool)
    env.reset(options={"task_id": TASKS[4].task_id})
    one_big = "f = open('big', 'wb')\ntry:\n    f.write(b'x' * (20 << 20))\nexcept OSError as e:\n"
    text, _ = run(env, one_big + "    print('big', e.errno)")
    assert f"stdout:\nbig {EFBIG}\n" in text  # max_file_size (16m) per file
    assert text.endswith("1 files not kept: big]")  # over MAX_FILE_BYTES (1 MiB): not carried
    many = (
        "n = 0\ntry:\n    for n in range(10):\n        open(f'p{n}', 'wb').write(b'x' * (15 << 20))\n"
        "except OSError as e:\n    print(n, e.errno)"
    )
    text, _ = run(env, many)
    assert f"stdout:\n4 {ENOSPC}\n" in text  # work_size (64m) in all
    assert text.endswith("5 files not kept: p0, p1, p2, p3, p4]")
    assert set(env.files) == {"solution.py"}
    obs, *_ = env.step(call("write_file", path="w.txt", content="x" * (2 << 20)))
    assert obs[0]["content"] == f"error: {2 << 20} bytes is over the limit of {1 << 20} per file"
    finish_with_canonical(env, TASKS[4])


# ---- 5. every tool result is capped -----------------------------------------------------------


@pytest.mark.docker
def test_read_file_of_a_large_file_is_capped_with_a_note(sandbox_pool):
    env = CodeToolsEnv(pool=sandbox_pool)
    env.reset(options={"task_id": TASKS[5].task_id})
    run(env, "open('half.txt', 'w').write('y' * 900_000); open('8mb', 'w').write('z' * (8 << 20))")
    assert set(env.files) == {"solution.py", "half.txt"}  # 8 MB is over the per-file limit
    obs, *_ = env.step(call("read_file", path="half.txt") + call("read_file", path="8mb"))
    limit = env.max_result_chars
    assert (
        obs[0]["content"] == "y" * limit + f"\n[... truncated: {900_000 - limit} more characters]"
    )
    assert obs[1]["content"].startswith("error: 8mb does not exist")
    long_call = "<tool_call>{" + "x" * 100_000 + "</tool_call>"
    obs, *_ = env.step(long_call)
    assert len(obs[0]["content"]) < limit + 100
    finish_with_canonical(env, TASKS[5])


# ---- 7. smaller: unreadable files, OOM reports, PID 1 -----------------------------------------


@pytest.mark.docker
def test_a_mode_000_file_or_directory_does_not_replace_the_output(sandbox_pool):
    env = CodeToolsEnv(pool=sandbox_pool)
    env.reset(options={"task_id": TASKS[6].task_id})
    code = (
        "import os\nopen('secret', 'w').write('s'); os.chmod('secret', 0)\n"
        "os.mkdir('d'); open('d/f', 'w').write('f'); os.chmod('d', 0)\nprint('done')"
    )
    text, _ = run(env, code)
    assert text == "exit code: 0\nstdout:\ndone\n"
    assert (env.files["secret"], env.files["d/f"]) == (b"s", b"f")
    finish_with_canonical(env, TASKS[6])


@pytest.mark.docker
def test_out_of_memory_kills_are_always_reported(sandbox_pool):
    bombs = [
        "chunks = []\nwhile True:\n    chunks.append(b'x' * (16 << 20))",
        "b = bytearray(1 << 30)",
        "import subprocess, sys\nsubprocess.run([sys.executable, '-c', 'b = bytearray(1 << 30)'])",
    ]
    with sandbox_pool.lease() as sb:
        for bomb in bombs * 3:
            r = sb.run_python(bomb, timeout=30.0)
            assert (r.oom, r.timed_out) == (True, False), (bomb, r)
        assert sb.run_python("print('alive')").stdout == "alive\n"
    next_task_scores_1(sandbox_pool)


# ---- 3. fair leases ---------------------------------------------------------------------------


@pytest.mark.docker
def test_leases_are_served_first_come_first_served(sandbox_image):
    """16 threads looping lease + `true` over a pool of 2: before, one thread could take 142
    leases while another got 1 (whoever woke first won); now every thread gets its turn."""
    counts = [0] * 16
    with SandboxPool(size=2, config=TEST_CONFIG) as pool:
        stop = time.monotonic() + 6.0

        def loop(i: int) -> None:
            while time.monotonic() < stop:
                with pool.lease() as sb:
                    assert sb.exec(["true"]).exit_code == 0
                counts[i] += 1

        threads = [threading.Thread(target=loop, args=(i,)) for i in range(len(counts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert min(counts) >= 3 and min(counts) >= 0.7 * max(counts), counts
        next_task_scores_1(pool)


# ---- 6. the fork server: a forked call behaves as a fresh `python3 -` -------------------------


@pytest.mark.docker
def test_a_forked_python_call_behaves_like_a_fresh_interpreter(sandbox_pool):
    with sandbox_pool.lease() as sb:
        sb.write_file("helper.py", "VALUE = 41\n")
        r = py(sb, "import helper, sys; print(helper.VALUE + 1, sys.argv, __name__)")
        assert r.stdout == "42 ['-'] __main__\n"
        r = py(sb, "x = 1\n1 / 0")
        assert (r.exit_code, r.stderr) == (
            1,
            'Traceback (most recent call last):\n  File "<stdin>", line 2, in <module>\n'
            "ZeroDivisionError: division by zero\n",
        )
        assert py(sb, "import sys; sys.exit(3)").exit_code == 3
        r = py(sb, "import sys\nsys.excepthook = lambda t, e, tb: print('hooked', t.__name__)\n1/0")
        assert (r.exit_code, r.stdout, r.stderr) == (1, "hooked ZeroDivisionError\n", "")
        r = py(sb, "import sys; sys.exit('bye')")
        assert (r.exit_code, r.stderr) == (1, "bye\n")
        r = py(sb, "def f(:\n  pass")
        assert r.exit_code == 1 and r.stderr.endswith("SyntaxError: invalid syntax\n")
        r = py(
            sb,
            """
            import atexit, threading, time
            atexit.register(lambda: print("atexit ran"))
            threading.Thread(target=lambda: (time.sleep(0.2), print("thread done"))).start()
            """,
        )
        assert r.stdout == "thread done\natexit ran\n"
        draws = {py(sb, "import random; print(random.random())").stdout for _ in range(3)}
        assert len(draws) == 3  # reseeded per call, not the fork server's state
        r = sb.exec(
            ["python3", "-c", "import sys; print(sys.stdin.read()[::-1], sys.argv)", "a"],
            stdin=b"olleh",
        )
        assert r.stdout == "hello ['-c', 'a']\n"
        # The fork server's modules are copies: what one call changes, the next does not see.
        py(sb, "import json; json.dumps = None")
        assert py(sb, "import json; print(json.dumps([1]))").stdout == "[1]\n"
    next_task_scores_1(sandbox_pool)


@pytest.mark.docker
def test_a_call_that_stops_the_fork_server_and_exits_at_once_keeps_its_exit_code(sandbox_pool):
    """The race CI once hit: the fork server, woken by the agent's SIGSTOP, reaps the call that
    just exited and only then stops, before it reports. Pinned to the call's CPU at idle
    priority it runs only after the call is gone, so the race happens nearly every time (8 of 10
    with the old reap-then-report order, the exit code lost as -9 after a 5 s wait); the fork
    server now reports the exit code before it reaps."""
    code = """
        import os, signal
        parent = os.getppid()
        os.sched_setaffinity(0, {0})
        os.sched_setaffinity(parent, {0})
        os.sched_setscheduler(parent, os.SCHED_IDLE, os.sched_param(0))
        os.kill(parent, signal.SIGSTOP)
        print("stopped", flush=True)
        os._exit(3)
        """
    with sandbox_pool.lease() as sb:
        for _ in range(4):
            r = py(sb, code)
            assert (r.exit_code, r.stdout, r.stderr) == (3, "stopped\n", "")
        assert py(sb, "print('next')").stdout == "next\n"


@pytest.mark.docker
def test_the_agent_cannot_reach_into_kill_or_stall_the_fork_server(sandbox_pool):
    with sandbox_pool.lease() as sb:
        r = py(
            sb,
            """
            import os
            parent = os.getppid()
            for path in (f"/proc/{parent}/fd", f"/proc/{parent}/environ", f"/proc/{parent}/mem"):
                try:
                    os.listdir(path) if path.endswith("fd") else open(path, "rb").read(1)
                    print("read", path)
                except OSError as e:
                    print(e.errno, end=" ")
            """,
        )
        assert r.stdout == "13 13 13 "  # EACCES: the fork server is not dumpable
        r = py(sb, "import os, signal; os.kill(os.getppid(), signal.SIGSTOP); print('stopped')")
        assert (r.exit_code, r.stdout) == (0, "stopped\n")
        assert py(sb, "print('next')").stdout == "next\n"
        r = py(sb, "import os, signal; os.kill(os.getppid(), signal.SIGKILL); print('killed')")
        assert (r.exit_code, r.stdout) == (0, "killed\n")
        assert py(sb, "print('next')").stdout == "next\n"
        first = py(sb, "import os; print(os.getppid())").stdout
        assert sb.reset() == []  # what the pool does between leases: a new fork server
        assert py(sb, "import os; print(os.getppid())").stdout not in ("", first)
    next_task_scores_1(sandbox_pool)
