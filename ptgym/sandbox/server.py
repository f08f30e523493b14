"""The exec server: runs inside a sandbox container as PID 1
(``python3 -I -c <this file> <processes.py> <zygote.py>``: the sources of its sibling modules
come on the command line, loaded with ``sibling``; ``processes.py`` starts and reaps the calls,
``zygote.py`` is the fork server that Python calls are forked from).

Stdlib plus ``msgpack`` (a Debian package in the image) only. It reads requests from stdin and
writes replies to stdout, each a 4-byte big-endian length followed by a msgpack map, one request
at a time. Requests (``op``):

- ``ping``: health check; replies with the server's pid and uid.
- ``exec``: run ``argv`` in ``/work`` with a timeout and an output cap (see ``run``).
- ``write`` / ``read``: a file under ``/work``; a path that resolves outside it is refused.
- ``restore`` / ``snapshot``: write many files / read back every file under ``/work`` (for
  callers that keep a workspace on the host between calls).
- ``reset``: kill every process, empty ``/work``, ``/dev/shm``, ``/tmp`` and ``/dev/mqueue``,
  remove every SysV shared-memory segment, semaphore set and message queue (between episodes);
  replies with what is still left (``residue``), which must be nothing.
- ``check``: the health check: ``residue`` without touching anything.

Nothing an episode leaves behind may reach the next: files, processes, IPC objects. The
container has a private IPC namespace (Docker ``ipc_mode="private"``), so every IPC object of
the namespace belongs to this sandbox and can be listed (``/proc/sysvipc``, ``/dev/mqueue``)
and removed by this uid (the creator uid of an object never changes, so ``IPC_RMID`` is allowed
even after the agent gave it away with ``IPC_SET``).

Why PID 1 matters: ``kill(-1, SIGKILL)`` from PID 1 kills every other process of the container
in one atomic sweep (the kernel holds the task list lock, so a fork bomb cannot outrun it), and
the kernel ignores signals to PID 1 that it has no handler for, so sandboxed code cannot kill the
server. The server is also made non-dumpable, so same-uid code cannot ptrace it or open its
``/proc/1/fd`` (its protocol channel) or ``/proc/1/mem``.
"""

import contextlib
import ctypes
import os
import selectors
import shutil
import signal
import struct
import sys
import time
import types

import msgpack


def sibling(name, index):
    """A module of this package whose source the host passed as ``sys.argv[index]`` (the image
    carries no ptgym code)."""
    module = types.ModuleType(name)
    exec(compile(sys.argv[index], f"{name}.py", "exec"), module.__dict__)
    sys.modules[name] = module
    return module


processes = sibling("processes", 1)

WORK = "/work"
# Writable places besides /work (with ipc_mode=private): wiped by reset, checked for residue.
SCRATCH = ("/dev/shm", "/tmp", "/dev/mqueue")
SYSVIPC = {"shm": "shmctl", "sem": "semctl", "msg": "msgctl"}  # /proc/sysvipc/<kind> -> remover
IPC_RMID = 0
HEADER = struct.Struct(">I")
MAX_FRAME = 64 << 20
CHUNK = 1 << 16
DRAIN_S = 2.0  # how long to keep reading pipes after the process ended (a stuck writer)
PR_SET_DUMPABLE = 4
OOM_SETTLE_S = 0.5  # how long a SIGKILLed call waits for the cgroup's oom_kill counter
# oom_kill counters of the container's memory cgroup: cgroup v2, then v1 (kernel >= 4.13).
OOM_FILES = (
    ("/sys/fs/cgroup/memory.events", "oom_kill"),
    ("/sys/fs/cgroup/memory/memory.oom_control", "oom_kill"),
)


class UserError(Exception):
    """A request the sandboxed agent got wrong (bad path, missing file): not a server fault."""


def read_exact(fd, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def oom_kills():
    for path, key in OOM_FILES:
        try:
            with open(path) as f:
                for line in f:
                    name, _, value = line.partition(" ")
                    if name == key:
                        return int(value)
        except OSError:
            continue
    return None


def run(req):
    """Run ``argv``; kill its process group at the timeout; keep at most ``max_output`` bytes of
    each stream (the rest is read and counted, so the child never blocks on a full pipe).
    Plain Python calls are forked from the fork server (``zygote.py``), the rest exec'd."""
    argv = [str(a) for a in req["argv"]]
    timeout = float(req.get("timeout", 10.0))
    cap = int(req.get("max_output", 1 << 16))
    stdin = req.get("stdin") or b""
    env = dict(processes.CHILD_ENV, **(req.get("env") or {}))
    oom_before = oom_kills()
    start = time.monotonic()
    try:
        child = processes.Child(argv, stdin, env, int(req.get("max_file_size") or 0))
    except OSError as e:
        return {
            "ok": True,
            "exit_code": 127,
            "stdout": b"",
            "stderr": str(e).encode(),
            "stdout_bytes": 0,
            "stderr_bytes": len(str(e)),
            "timed_out": False,
            "oom": False,
            "duration": 0.0,
        }
    out = {child.stdout_fd: bytearray(), child.stderr_fd: bytearray()}
    seen = dict.fromkeys(out, 0)
    sel = selectors.DefaultSelector()
    for fd in out:
        os.set_blocking(fd, False)
        sel.register(fd, selectors.EVENT_READ)
    for fd in child.exit_fds:
        sel.register(fd, selectors.EVENT_READ)
    pending = memoryview(stdin)
    stdin_fd = child.stdin_fd
    if stdin_fd >= 0:
        os.set_blocking(stdin_fd, False)
        sel.register(stdin_fd, selectors.EVENT_WRITE)
    deadline = start + timeout
    timed_out = exited = False
    drain_until = None  # once the process is gone: read what is left in the pipes, briefly
    open_pipes = set(out)
    while open_pipes or not exited:
        now = time.monotonic()
        if not exited and now >= deadline:
            timed_out = True
            processes.kill_group(child.pid)
            drain_until = now + DRAIN_S
        if drain_until is not None and now >= drain_until:
            break
        for key, _ in sel.select(max((drain_until or deadline) - now, 0)):
            fd = key.fd
            if fd not in out and fd != stdin_fd:  # one of child.exit_fds
                sel.unregister(fd)
                if exited:
                    continue
                if not child.ended(fd):
                    for new in child.exit_fds - set(sel.get_map()):
                        sel.register(new, selectors.EVENT_READ)
                    continue
                # The main process is gone: kill what it left behind so the pipes reach EOF.
                exited = True
                processes.sweep()
                drain_until = drain_until or time.monotonic() + DRAIN_S
            elif fd == stdin_fd:
                try:
                    pending = pending[os.write(fd, pending[:CHUNK]) :]
                except BrokenPipeError:
                    pending = pending[:0]
                if not pending:
                    sel.unregister(fd)
                    os.close(fd)
                    child.stdin_fd = stdin_fd = -1
            else:
                chunk = os.read(fd, CHUNK)
                if not chunk:
                    sel.unregister(fd)
                    open_pipes.discard(fd)
                    continue
                seen[fd] += len(chunk)
                room = cap - len(out[fd])
                if room > 0:
                    out[fd] += chunk[:room]
    sel.close()
    while not exited and child.exit_fds:  # timed out: the process was killed; learn its status
        exited = child.ended(next(iter(child.exit_fds)))
    code = child.code if child.code is not None else -signal.SIGKILL
    duration = time.monotonic() - start
    child.close()
    processes.sweep()
    if processes.zygote_pid() is None:
        processes.restart_zygote()  # a new fork server warms up while the host thinks
    oom_after = oom_kills()
    # The OOM killer sends SIGKILL before it bumps the counter: a SIGKILL we did not send
    # (no timeout) may be read here a moment too early, so give the counter time to catch up.
    wait_until = time.monotonic() + OOM_SETTLE_S
    while (
        code == -signal.SIGKILL
        and not timed_out
        and oom_before is not None
        and oom_after == oom_before
        and time.monotonic() < wait_until
    ):
        time.sleep(0.005)
        oom_after = oom_kills()
    fds = list(out)  # (stdout, stderr) in registration order
    return {
        "ok": True,
        "exit_code": code,
        "stdout": bytes(out[fds[0]]),
        "stderr": bytes(out[fds[1]]),
        "stdout_bytes": seen[fds[0]],
        "stderr_bytes": seen[fds[1]],
        "timed_out": timed_out,
        "oom": oom_before is not None and oom_after is not None and oom_after > oom_before,
        "duration": duration,
    }


def resolve(path):
    if not isinstance(path, str) or not path or "\0" in path:
        raise UserError("a path must be a non-empty string")
    full = os.path.realpath(os.path.join(WORK, path))
    if full != WORK and not full.startswith(WORK + "/"):
        raise UserError(f"{path!r} is outside {WORK}: only files under {WORK} can be used")
    return full


def write(req):
    full = resolve(req["path"])
    if full == WORK or os.path.isdir(full):
        raise UserError(f"{req['path']!r} is a directory")
    os.makedirs(os.path.dirname(full), exist_ok=True)
    fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        write_all(fd, req["data"])
    finally:
        os.close(fd)
    return {"ok": True, "size": len(req["data"])}


def read(req):
    full = resolve(req["path"])
    if not os.path.isfile(full):
        raise UserError(f"{req['path']!r} does not exist or is not a file")
    limit = int(req.get("max_bytes", 1 << 20))
    with open(full, "rb") as f:
        data = f.read(limit + 1)
    return {
        "ok": True,
        "data": data[:limit],
        "truncated": len(data) > limit,
        "size": os.path.getsize(full),
    }


def restore(req):
    """Write many files at once (a workspace kept by the host between calls). Names may be bytes
    (msgpack bin): file names need not be UTF-8."""
    for path, data in req["files"].items():
        write({"path": os.fsdecode(path), "data": data})
    return {"ok": True}


def readable(path, mode):
    """Give the owner (us: agent and server share the uid) read access, and for a directory
    search access, so that a chmod 000 cannot hide a file from the copy-back."""
    with contextlib.suppress(OSError):
        os.chmod(path, os.stat(path, follow_symlinks=False).st_mode & 0o7777 | mode)


def snapshot(req):
    """Every regular file under /work (symlinks skipped) with its name as bytes, within
    ``max_bytes`` in total, ``max_files`` files and ``max_file_bytes`` each; ``skipped``: the
    first names left out, ``skipped_count``: how many."""
    budget = int(req.get("max_bytes", 8 << 20))
    max_files = int(req.get("max_files", 1 << 30))
    max_file = int(req.get("max_file_bytes", budget))
    files, skipped, n_skipped = {}, [], 0
    for root, dirs, names in os.walk(WORK.encode()):
        dirs.sort()
        for d in dirs:
            full = os.path.join(root, d)
            if not os.path.islink(full):
                readable(full, 0o700)
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, WORK.encode())
            if os.path.islink(full) or not os.path.isfile(full):
                continue
            size = os.path.getsize(full)
            if size > min(budget, max_file) or len(files) >= max_files:
                n_skipped += 1
                if len(skipped) < 20:
                    skipped.append(rel)
                continue
            readable(full, 0o400)
            with open(full, "rb") as f:
                files[rel] = f.read(size)
            budget -= len(files[rel])
    return {"ok": True, "files": files, "skipped": skipped, "skipped_count": n_skipped}


def empty_dir(top):
    """Remove everything below ``top`` (not ``top`` itself); directories are made removable."""
    if not os.path.isdir(top):
        return
    for root, dirs, _ in os.walk(top):
        for d in dirs:
            p = os.path.join(root, d)
            if not os.path.islink(p):
                with contextlib.suppress(OSError):
                    os.chmod(p, 0o700)
    entries = []
    with contextlib.suppress(OSError):
        entries = list(os.scandir(top))
    for entry in entries:
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)


def sysv_ids(kind):
    """Ids of the SysV IPC objects of one kind in this IPC namespace."""
    try:
        with open(f"/proc/sysvipc/{kind}") as f:
            rows = f.read().splitlines()[1:]
    except OSError:
        return []
    return [int(row.split()[1]) for row in rows if row.strip()]


def remove_sysv():
    libc = ctypes.CDLL(None, use_errno=True)
    for kind, fn in SYSVIPC.items():
        for ipc_id in sysv_ids(kind):
            if kind == "sem":
                libc.semctl(ipc_id, 0, IPC_RMID)
            else:
                getattr(libc, fn)(ipc_id, IPC_RMID, None)


def residue():
    """What an episode left behind: the reason a container must not be handed out."""
    found = [f"process {pid}" for pid in processes.other_pids() if pid != processes.zygote_pid()]
    for top in (WORK, *SCRATCH):
        with contextlib.suppress(OSError):
            found += [os.path.join(top, name) for name in sorted(os.listdir(top))]
    for kind in SYSVIPC:
        found += [f"sysv {kind} {ipc_id}" for ipc_id in sysv_ids(kind)]
    return found


def reset(_req):
    processes.kill_all()
    for top in (WORK, *SCRATCH):
        empty_dir(top)
    remove_sysv()
    processes.restart_zygote()  # each lease gets a fork server no earlier episode could touch
    return {"ok": True, "residue": residue()}


def check(_req):
    return {"ok": True, "residue": residue()}


def ping(_req):
    return {"ok": True, "pid": os.getpid(), "uid": os.getuid()}


OPS = {
    "ping": ping,
    "exec": run,
    "write": write,
    "read": read,
    "restore": restore,
    "snapshot": snapshot,
    "reset": reset,
    "check": check,
}


def handle(req):
    op = OPS.get(req.get("op") if isinstance(req, dict) else None)
    if op is None:
        return {"ok": False, "error": f"unknown request {req!r:.100}"}
    try:
        return op(req)
    except UserError as e:
        return {"ok": False, "user_error": True, "error": str(e)}
    except OSError as e:
        return {"ok": False, "user_error": True, "error": f"{type(e).__name__}: {e}"}
    except Exception as e:  # a server bug: the host marks the sandbox broken and replaces it
        return {"ok": False, "error": f"exec server failed: {type(e).__name__}: {e}"}


def main():
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    processes.Zygote.source = sys.argv[2] if len(sys.argv) > 2 else ""
    inp, out = os.dup(0), os.dup(1)  # private copies; fds 0/1 now point at /dev/null
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    processes.restart_zygote()
    while True:
        head = read_exact(inp, HEADER.size)
        if head is None:
            return
        (size,) = HEADER.unpack(head)
        if size > MAX_FRAME:
            sys.exit(f"frame of {size} bytes exceeds {MAX_FRAME}")
        body = read_exact(inp, size)
        if body is None:
            return
        reply = msgpack.packb(handle(msgpack.unpackb(body, raw=False)), use_bin_type=True)
        write_all(out, HEADER.pack(len(reply)) + reply)


if __name__ == "__main__":
    main()
