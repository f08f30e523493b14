"""The exec server: runs inside a sandbox container as PID 1 (``python3 -I -c <this file>``).

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

import array
import contextlib
import ctypes
import marshal
import os
import resource
import select
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time

import msgpack

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
ZYGOTE_START_S = 10.0  # how long the fork server may take to start or to answer
ZYGOTE_REPLY = struct.Struct(">ci")
OOM_SETTLE_S = 0.5  # how long a SIGKILLed call waits for the cgroup's oom_kill counter
CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK,
    "TMPDIR": WORK,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}
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


def signal_all():
    # Escapees that called setsid() are not in the group; PID 1 reaches them with kill(-1).
    if os.getpid() == 1:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)


def kill_all():
    """SIGKILL every process but this one, then reap them all (they are our children now)."""
    signal_all()
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.001)


def limit_child(max_file_size):
    """Runs in the child before exec: make it the OOM killer's first choice (never the server)
    and cap the size of any file it writes (EFBIG, or SIGXFSZ for programs that keep it)."""
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write("1000")
    except OSError:
        pass
    if max_file_size:
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_size, max_file_size))


class Zygote:
    """The fork server (``zygote.py``), this server's child: started at container start and after
    every reset, replaced whenever it is gone, stopped or killed along with the rest."""

    source = ""  # zygote.py's text, from the container's command line (main)

    def __init__(self):
        ours, theirs = socket.socketpair()
        self.proc = subprocess.Popen(
            ["python3", "-I", "-c", self.source],
            stdin=theirs,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=WORK,
            env=CHILD_ENV,
            start_new_session=True,
        )
        theirs.close()
        self.sock, self.pid, self.ready = ours, self.proc.pid, False

    def usable(self):
        """Alive, not stopped, and has said it is ready (waits for that, once)."""
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        if state not in ("R", "S", "D"):
            return False
        if not self.ready:
            self.ready = self.reply(ZYGOTE_START_S) == (b"r", self.pid)
        return self.ready

    def reply(self, timeout):
        """The next 5-byte reply, or None (gone, or silent for ``timeout`` seconds)."""
        data = b""
        deadline = time.monotonic() + timeout
        while len(data) < ZYGOTE_REPLY.size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.sock], [], [], left)[0]:
                return None
            chunk = self.sock.recv(ZYGOTE_REPLY.size - len(data))
            if not chunk:
                return None
            data += chunk
        return ZYGOTE_REPLY.unpack(data)

    def close(self):
        self.sock.close()
        with contextlib.suppress(OSError):
            os.kill(self.pid, signal.SIGKILL)


ZYGOTE = []  # the current fork server, if any


def zygote():
    """A usable fork server, started when there is none (None if it cannot start)."""
    if ZYGOTE and not ZYGOTE[0].usable():
        ZYGOTE.pop().close()
    if not ZYGOTE and Zygote.source:
        with contextlib.suppress(OSError):
            ZYGOTE.append(Zygote())
        if ZYGOTE and not ZYGOTE[0].usable():
            ZYGOTE.pop().close()
    return ZYGOTE[0] if ZYGOTE else None


def restart_zygote():
    """Replace the fork server (if any) with a new one, without waiting for it to be ready."""
    while ZYGOTE:
        ZYGOTE.pop().close()
    if Zygote.source:
        with contextlib.suppress(OSError):
            ZYGOTE.append(Zygote())


def reap():
    """Reap every ended child (orphans are re-parented to PID 1); never blocks."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def sweep():
    """After a call, kill what it left behind. ``kill(-1)`` is atomic (a fork bomb cannot outrun
    it) but takes the fork server with it, so it is sent only when something else is alive."""
    reap()
    spare = zygote_pid()
    if any(pid != spare for pid in other_pids()):
        kill_all()
        while ZYGOTE:
            ZYGOTE.pop().close()


def zygote_pid():
    return ZYGOTE[0].pid if ZYGOTE else None


def python_call(argv, stdin):
    """How ``argv`` runs in the fork server, or None when it is not a plain Python call:
    ``python3 -`` (code on stdin), ``python3 [-I] -c CODE [ARGS]``."""
    if argv == ["python3", "-"]:
        return {"code": stdin, "filename": "<stdin>", "argv": ["-"], "path0": ""}, b""
    isolated = argv[1:2] == ["-I"]
    rest = argv[2:] if isolated else argv[1:]
    if argv[:1] == ["python3"] and len(rest) >= 2 and rest[0] == "-c":
        path0 = None if isolated else ""
        return {
            "code": rest[1],
            "filename": "<string>",
            "argv": ["-c", *rest[2:]],
            "path0": path0,
        }, stdin
    return None


class Child:
    """One call's process and our ends of its pipes, started by the fork server or by Popen.
    ``exit_fds``: fds that become readable when it ends; ``ended(fd)`` says whether it has."""

    def __init__(self, argv, stdin, env, fsize):
        self.code = None
        self.zygote = self.proc = None
        plan = python_call(argv, stdin)
        z = zygote() if plan else None
        if z is not None:
            with contextlib.suppress(OSError):
                self._fork(z, dict(plan[0], env=env, fsize=fsize), plan[1])
                self.zygote = z
                return
            ZYGOTE.clear()
            z.close()
        self.proc = subprocess.Popen(
            argv,
            cwd=WORK,
            env=env,
            start_new_session=True,
            preexec_fn=lambda: limit_child(fsize),
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.pid = self.proc.pid
        # Plain fds, as from the fork server (the file objects are closed at once).
        self.stdin_fd, self.stdout_fd, self.stderr_fd = (
            -1 if f is None else os.dup(f.fileno())
            for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr)
        )
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if f is not None:
                f.close()
        self.pidfd = os.pidfd_open(self.pid)
        self.exit_fds = {self.pidfd}

    def _fork(self, z, request, stdin):
        pipes = [os.pipe(), os.pipe()]
        theirs_in, ours_in = os.pipe() if stdin else (os.open(os.devnull, os.O_RDONLY), -1)
        theirs = [theirs_in, pipes[0][1], pipes[1][1]]
        try:
            body = marshal.dumps(request)
            frame = HEADER.pack(len(body)) + body
            sent = z.sock.sendmsg(
                [frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", theirs))]
            )
            z.sock.sendall(frame[sent:])
        finally:
            for fd in theirs:
                os.close(fd)
        self.stdin_fd, self.stdout_fd, self.stderr_fd = ours_in, pipes[0][0], pipes[1][0]
        started = z.reply(ZYGOTE_START_S)
        if started is None or started[0] != b"p":
            for fd in (ours_in, pipes[0][0], pipes[1][0]):
                if fd >= 0:
                    os.close(fd)
            raise OSError("the fork server did not start the call")
        self.pid = started[1]
        try:
            self.pidfd = os.pidfd_open(self.pid)
        except OSError:  # already ended and reaped by the fork server: its reply says how
            self.pidfd = None
        self.exit_fds = {z.sock.fileno()} | ({self.pidfd} if self.pidfd is not None else set())

    def ended(self, fd):
        """Called when ``fd`` of ``exit_fds`` is readable: whether the process has ended."""
        if self.proc is not None:
            self.code = self.proc.wait()
            return True
        if self.zygote is not None:
            # Its reply comes at once when the process ends; a fork server that is gone, or
            # stopped by the agent, is killed, and the process (now our child) reaped here.
            reply = self.zygote.reply(1.0 if fd == self.zygote.sock.fileno() else 0.5)
            if reply is not None and reply[0] == b"x":
                self.code = reply[1]
                return True
            if ZYGOTE and ZYGOTE[0] is self.zygote:
                ZYGOTE.clear()
            self.zygote.close()
            self.zygote = None
            if self.pidfd is not None and fd != self.pidfd:
                self.exit_fds = {self.pidfd}
                return False
        self.code = self._reap_orphan()
        return True

    def _reap_orphan(self):
        """The exit code of the call's process once it is re-parented to this server."""
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                pid = 0  # not (yet) re-parented
            if pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(0.001)
        return -signal.SIGKILL

    def close(self):
        for fd in (self.stdin_fd, self.stdout_fd, self.stderr_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        if self.pidfd is not None:
            os.close(self.pidfd)


def run(req):
    """Run ``argv``; kill its process group at the timeout; keep at most ``max_output`` bytes of
    each stream (the rest is read and counted, so the child never blocks on a full pipe).
    Plain Python calls are forked from the fork server (``zygote.py``), the rest exec'd."""
    argv = [str(a) for a in req["argv"]]
    timeout = float(req.get("timeout", 10.0))
    cap = int(req.get("max_output", 1 << 16))
    stdin = req.get("stdin") or b""
    env = dict(CHILD_ENV, **(req.get("env") or {}))
    oom_before = oom_kills()
    start = time.monotonic()
    try:
        child = Child(argv, stdin, env, int(req.get("max_file_size") or 0))
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
            kill_group(child.pid)
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
                sweep()
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
    sweep()
    if zygote_pid() is None:
        restart_zygote()  # a new fork server warms up while the host thinks
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


def kill_group(pid):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    signal_all()  # also the fork server: sweep() drops it


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


def other_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]


def residue():
    """What an episode left behind: the reason a container must not be handed out."""
    found = [f"process {pid}" for pid in other_pids() if pid != zygote_pid()]
    for top in (WORK, *SCRATCH):
        with contextlib.suppress(OSError):
            found += [os.path.join(top, name) for name in sorted(os.listdir(top))]
    for kind in SYSVIPC:
        found += [f"sysv {kind} {ipc_id}" for ipc_id in sysv_ids(kind)]
    return found


def reset(_req):
    kill_all()
    for top in (WORK, *SCRATCH):
        empty_dir(top)
    remove_sysv()
    restart_zygote()  # each lease gets a fork server no earlier episode could touch
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
    Zygote.source = sys.argv[1] if len(sys.argv) > 1 else ""
    inp, out = os.dup(0), os.dup(1)  # private copies; fds 0/1 now point at /dev/null
    null = os.open(os.devnull, os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    restart_zygote()
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
