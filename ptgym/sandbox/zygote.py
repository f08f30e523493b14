"""The fork server: a pre-started, pre-imported Python that forks once per Python call.

Runs inside a sandbox container as ``python3 -I -c <this file>``, started by the exec server
(``server.py``) when the container starts and again after every reset, so each lease gets one
that no earlier episode touched. Stdlib only.

Starting a Python interpreter is most of what a short ``run_python`` costs (~20-40 ms); a fork of
an interpreter that already started and imported the usual modules costs ~1 ms. The exec server
sends a request (code, argv, env, file-size limit) and the three stdio fds of the call over a
Unix socket (``SCM_RIGHTS``); this process forks; the child becomes the call's process (new
session, the fds on 0/1/2, cwd /work, the env, ``sys.argv``, a fresh ``__main__``, a reseeded
``random``) and runs the code as ``python3 -`` or ``python3 -c`` would; this process reports the
child's pid, then its exit code, then reaps it. It never runs agent code itself, and it is
non-dumpable, so same-uid agent code can neither ptrace it nor open its ``/proc/<pid>/fd`` or
``/mem``. Agent code can kill or stop it (same uid): the exec server notices and starts another
one, and the reset after the lease replaces it anyway.

Protocol on the socket (fd 0 at start): request = 4-byte big-endian length + ``marshal`` dict
``{"code", "filename", "argv", "env", "fsize", "path0"}``, with 3 fds attached to its first byte;
replies are 5 bytes: ``b"p"`` + pid (started), ``b"x"`` + exit code (as ``Popen.returncode``).
"""

# The imports marked F401 are not used here: they are pre-imported for the agent's code (the
# modules HumanEval-style solutions and tests use), so that a fork finds them loaded.
import array
import ast  # noqa: F401
import bisect  # noqa: F401
import collections  # noqa: F401
import contextlib
import ctypes
import functools  # noqa: F401
import heapq  # noqa: F401
import itertools  # noqa: F401
import json  # noqa: F401
import marshal
import math  # noqa: F401
import os
import random
import re  # noqa: F401
import resource
import socket
import string  # noqa: F401
import struct
import sys
import threading
import traceback  # noqa: F401
import types
import typing  # noqa: F401

HEADER = struct.Struct(">I")
REPLY = struct.Struct(">ci")
PR_SET_DUMPABLE = 4
FDS = 3


def recv_request(sock):
    """The next request and its fds, or (None, []) when the exec server went away."""
    fds = array.array("i")
    data, ancdata, _, _ = sock.recvmsg(1 << 16, socket.CMSG_SPACE(FDS * fds.itemsize))
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    if not data:
        return None, list(fds)
    while len(data) < HEADER.size:
        data += sock.recv(HEADER.size - len(data))
    size = HEADER.unpack_from(data)[0]
    while len(data) < HEADER.size + size:
        chunk = sock.recv(HEADER.size + size - len(data))
        if not chunk:
            return None, list(fds)
        data += chunk
    return marshal.loads(data[HEADER.size :]), list(fds)


def serve():
    """Fork per request; returns only in a child, with its request and fds."""
    libc = ctypes.CDLL(None)
    with contextlib.suppress(OSError, AttributeError):
        libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    sock = socket.socket(fileno=os.dup(0))
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    sock.sendall(REPLY.pack(b"r", os.getpid()))  # ready
    while True:
        req, fds = recv_request(sock)
        if req is None or len(fds) != FDS:
            sys.exit(0)
        pid = os.fork()
        if pid == 0:
            sock.close()
            return req, fds
        for fd in fds:
            os.close(fd)
        sock.sendall(REPLY.pack(b"p", pid))
        # Report the exit code before reaping: agent code may stop this process at any moment,
        # and a child reaped here but never reported would be lost to the exec server, which
        # otherwise waits for it as an orphan once it has killed a silent fork server.
        ended = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
        sock.sendall(REPLY.pack(b"x", exit_code(ended)))
        os.waitpid(pid, 0)


def exit_code(info):
    """A ``waitid`` result as ``Popen.returncode`` has it (negative: killed by that signal)."""
    return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status


def become_the_call(req, fds):
    """In the child: set up the process the exec server would have started."""
    os.setsid()
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    os.closerange(FDS, 1 << 16)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)  # as an exec'd process would be
    with contextlib.suppress(OSError), open("/proc/self/oom_score_adj", "w") as f:
        f.write("1000")  # the OOM killer's first choice, never the servers
    if req["fsize"]:
        resource.setrlimit(resource.RLIMIT_FSIZE, (req["fsize"], req["fsize"]))
    os.chdir("/work")
    os.environ.clear()
    os.environ.update(req["env"])
    sys.argv = list(req["argv"])
    if req["path0"] is not None:
        sys.path.insert(0, req["path0"])
    sys.dont_write_bytecode = True
    # Unbuffered text streams on the new fds (PYTHONUNBUFFERED, as the exec server sets).
    sys.stdin = open(0, encoding="utf-8", errors="surrogateescape", closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.stdout.reconfigure(write_through=True)
    sys.stderr.reconfigure(write_through=True)
    random.seed()  # a fresh interpreter seeds from os.urandom; a fork would repeat the parent's
    main = types.ModuleType("__main__")
    main.__builtins__ = __builtins__
    sys.modules["__main__"] = main
    return main


def run(req, main):
    """Run the code as the interpreter would; the process's exit status."""
    try:
        exec(compile(req["code"], req["filename"], "exec"), main.__dict__)
        status = 0
    except SystemExit as e:
        status = exit_status(e.code)
    except BaseException as e:
        tb = e.__traceback__.tb_next if e.__traceback__ is not None else None  # not run's frame
        with contextlib.suppress(BaseException):
            sys.excepthook(type(e), e.with_traceback(tb), tb)  # prints it, as python3 would
        status = 1
    # The interpreter's own exit, without finalising the fork server's modules.
    with contextlib.suppress(BaseException):
        threading._shutdown()  # non-daemon threads, as at a normal exit
    import atexit

    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return status


def exit_status(code):
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    with contextlib.suppress(BaseException):
        print(code, file=sys.stderr)
    return 1


if __name__ == "__main__":
    request, fds = serve()
    main = become_the_call(request, fds)
    os._exit(run(request, main))
