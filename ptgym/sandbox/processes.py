"""Processes of the exec server (``server.py``): the fork server's client, one call's child,
and killing and reaping what calls leave behind. Runs inside the container, loaded by the exec
server from the source the host passes on its command line; stdlib only.

Why PID 1 matters: ``kill(-1, SIGKILL)`` from PID 1 kills every other process of the container
in one atomic sweep (the kernel holds the task list lock, so a fork bomb cannot outrun it).
"""

import array
import contextlib
import marshal
import os
import resource
import select
import signal
import socket
import struct
import subprocess
import time

WORK = "/work"
HEADER = struct.Struct(">I")
ZYGOTE_START_S = 10.0  # how long the fork server may take to start or to answer
ZYGOTE_REPLY = struct.Struct(">ci")
CHILD_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin",
    "HOME": WORK,
    "TMPDIR": WORK,
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "PYTHONUNBUFFERED": "1",
}


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
        """The exit code of the call's process once it is re-parented to this server (allow a
        loaded machine 5 s: a process never re-parented is reported as killed)."""
        deadline = time.monotonic() + 5.0
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


def kill_group(pid):
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    signal_all()  # also the fork server: sweep() drops it


def other_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
