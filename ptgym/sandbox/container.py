"""One sandbox: a long-lived container running the exec server, and the host's handle on it.

A tool call is one msgpack request over the container's attached stdin/stdout (``protocol.py``):
no ``docker exec`` and no ``docker run`` per call. The container is created with the security
defaults of ``SandboxConfig`` (DESIGN §7); the exec server's source is passed to ``python3 -c``,
so the image carries no server code.
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker

from ptgym.sandbox.image import IMAGE, SANDBOX_UID
from ptgym.sandbox.protocol import Channel, ChannelError
from ptgym.sandbox.reaper import owner_labels

SERVER_SOURCE = Path(__file__).with_name("server.py").read_text()
PROCESSES_SOURCE = Path(__file__).with_name("processes.py").read_text()
ZYGOTE_SOURCE = Path(__file__).with_name("zygote.py").read_text()
WORK = "/work"
REPLY_GRACE_S = 10.0  # slack over a call's own timeout before the host gives up on the server


@dataclass
class SandboxConfig:
    """How sandbox containers are started and how each call is limited."""

    image: str = IMAGE  # Docker image (`ptgym sandbox build` makes it)
    memory: str = "512m"  # memory limit; memory+swap is set to the same value (no swap)
    pids: int = 64  # most processes/threads alive at once in a container (stops fork bombs)
    cpus: float = 1.0  # CPU quota, in cores
    work_size: str = "64m"  # size of the tmpfs mounted at /work
    work_inodes: int = 4096  # most files + directories in /work (an inode flood gets ENOSPC)
    max_file_size: str = "16m"  # largest file a call may write (RLIMIT_FSIZE: EFBIG beyond)
    shm_size: str = "32m"  # size of /dev/shm, and the cap on all SysV shared memory together
    timeout_s: float = 10.0  # default wall-clock limit of one call; the process group is killed
    max_output: int = 16384  # bytes kept of each of stdout and stderr per call
    max_uses: int = 100  # leases before a container is replaced by a fresh one
    network: bool = False  # false: network_mode=none (no egress at all)
    read_only: bool = True  # read-only root filesystem
    user: str = f"{SANDBOX_UID}:{SANDBOX_UID}"  # uid:gid the server and all code run as
    start_timeout_s: float = 60.0  # how long a new container may take to answer its first ping

    def create_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``client.containers.create`` (the security defaults)."""
        uid, _, gid = self.user.partition(":")
        shm = parse_size(self.shm_size)
        return {
            "user": self.user,
            "working_dir": WORK,
            "stdin_open": True,
            "tty": False,
            "network_mode": "bridge" if self.network else "none",
            "mem_limit": self.memory,
            "memswap_limit": self.memory,
            "pids_limit": self.pids,
            "nano_cpus": int(self.cpus * 1e9),
            "read_only": self.read_only,
            "tmpfs": {
                WORK: f"rw,nosuid,nodev,size={self.work_size},nr_inodes={self.work_inodes},"
                f"mode=0700,uid={uid},gid={gid or uid}",
            },
            # A private IPC namespace: SysV objects and POSIX queues are this container's own,
            # listable and removable between episodes (server.py `reset`); their sizes are capped
            # so that IPC memory, which no OOM kill can free, cannot starve the next call.
            "ipc_mode": "private",
            "shm_size": shm,
            "sysctls": {
                "kernel.shmmax": str(shm),
                "kernel.shmall": str(shm // 4096),  # pages, all segments together
                "kernel.shmmni": "64",
                "kernel.msgmni": "16",  # message queues (16 KiB each by default)
                "kernel.sem": "64 1024 32 32",  # per set, total, ops per call, sets
                "fs.mqueue.queues_max": "16",
            },
            "cap_drop": ["ALL"],
            "security_opt": ["no-new-privileges"],
            # The attached stdout carries the protocol; keep only a little of it (and the
            # server's stderr, for crash tracebacks) in the log.
            "log_config": docker.types.LogConfig(
                type="json-file", config={"max-size": "1m", "max-file": "1"}
            ),
        }


def parse_size(size: str) -> int:
    """Bytes in a Docker size string: ``"32m"`` -> 33554432."""
    units = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    text = size.strip().lower()
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "")
    try:
        return int(float(number) * units[unit])
    except ValueError:
        raise ValueError(f"bad size {size!r}: use a number with k, m or g, e.g. '32m'") from None


class SandboxError(RuntimeError):
    """Infrastructure failure (the server died, Docker failed): the episode's ``info["error"]``."""


class SandboxUserError(ValueError):
    """A request the agent got wrong (a path outside /work, a missing file): show it the message."""


@dataclass
class ExecResult:
    """What one command did. ``exit_code`` < 0 means killed by that signal (-9: SIGKILL)."""

    exit_code: int
    stdout: str
    stderr: str
    timed_out: bool = False
    oom: bool = False
    duration_s: float = 0.0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out


@dataclass
class Snapshot:
    """The files of /work (``files``) and the first names left out for the limits (``skipped``)
    of ``skipped_count`` in all."""

    files: dict[str, bytes]
    skipped: list[str]
    skipped_count: int


def _text(data: bytes, total: int) -> str:
    """Decode (invalid UTF-8 becomes U+FFFD) and mark how much was cut off."""
    text = data.decode("utf-8", errors="replace")
    if total > len(data):
        text += f"\n[... output truncated: {total - len(data)} more bytes]"
    return text


class Sandbox:
    """A started container and its exec-server channel. Obtain one from ``SandboxPool``."""

    def __init__(self, container: Any, channel: Channel, config: SandboxConfig):
        self.container = container
        self.channel = channel
        self.config = config
        self.uses = 0
        self.broken = False  # set on any anomaly; the pool then replaces the container
        self.retire = False  # destroy on release (it ran hidden tests)
        self._lock = threading.Lock()

    @property
    def id(self) -> str:
        return self.container.id

    def request(self, req: dict[str, Any], timeout: float) -> dict[str, Any]:
        """One raw request; a protocol failure marks the sandbox broken and raises SandboxError."""
        if self.broken:
            raise SandboxError(f"sandbox {self.container.short_id} is broken")
        with self._lock:
            try:
                reply = self.channel.request(req, timeout)
            except ChannelError as e:
                self.broken = True
                raise SandboxError(f"sandbox {self.container.short_id}: {e}") from e
            except BaseException:  # e.g. Ctrl-C mid-call: a reply may still be in flight
                self.broken = True
                raise
        if not reply.get("ok"):
            if reply.get("user_error"):
                raise SandboxUserError(reply.get("error", "request refused"))
            self.broken = True
            raise SandboxError(f"sandbox {self.container.short_id}: {reply.get('error')}")
        return reply

    def ping(self, timeout: float = 5.0) -> bool:
        """Health check: whether the server answers within ``timeout`` (never raises)."""
        try:
            self.request({"op": "ping"}, timeout)
            return True
        except (SandboxError, SandboxUserError):
            return False

    def exec(
        self,
        argv: list[str],
        timeout: float | None = None,
        stdin: bytes | None = None,
        env: dict[str, str] | None = None,
        max_output: int | None = None,
    ) -> ExecResult:
        """Run ``argv`` in /work; at ``timeout`` seconds its whole process group is killed."""
        timeout = self.config.timeout_s if timeout is None else timeout
        max_output = self.config.max_output if max_output is None else max_output
        r = self.request(
            {
                "op": "exec",
                "argv": list(argv),
                "timeout": timeout,
                "stdin": stdin or b"",
                "max_output": max_output,
                "max_file_size": parse_size(self.config.max_file_size),
                "env": env or {},
            },
            timeout + REPLY_GRACE_S,
        )
        return ExecResult(
            exit_code=r["exit_code"],
            stdout=_text(r["stdout"], r["stdout_bytes"]),
            stderr=_text(r["stderr"], r["stderr_bytes"]),
            timed_out=r["timed_out"],
            oom=r["oom"],
            duration_s=r["duration"],
            truncated=r["stdout_bytes"] > len(r["stdout"]) or r["stderr_bytes"] > len(r["stderr"]),
        )

    def run_python(self, code: str, timeout: float | None = None) -> ExecResult:
        """Run Python source (sent on stdin, so any length works) in /work."""
        return self.exec(["python3", "-"], timeout=timeout, stdin=code.encode())

    def write_file(self, path: str, content: str | bytes) -> int:
        """Write a file under /work (parents created); returns its size in bytes."""
        data = content.encode() if isinstance(content, str) else content
        return self.request({"op": "write", "path": path, "data": data}, 30.0)["size"]

    def read_file(self, path: str, max_bytes: int = 1 << 20) -> bytes:
        """The first ``max_bytes`` of a file under /work."""
        return self.request({"op": "read", "path": path, "max_bytes": max_bytes}, 30.0)["data"]

    def restore(self, files: dict[str, bytes]) -> None:
        """Write many files under /work in one round trip. Names that are not UTF-8 are given as
        ``os.fsdecode`` gives them (surrogate escapes) and travel as bytes."""
        self.request(
            {"op": "restore", "files": {os.fsencode(k): v for k, v in files.items()}}, 30.0
        )

    def snapshot(
        self, max_bytes: int = 8 << 20, max_files: int = 1 << 30, max_file_bytes: int | None = None
    ) -> Snapshot:
        """Every regular file under /work within the limits (names as ``os.fsdecode`` gives them:
        a name that is not UTF-8 round-trips through ``restore``), and what was left out."""
        r = self.request(
            {
                "op": "snapshot",
                "max_bytes": max_bytes,
                "max_files": max_files,
                "max_file_bytes": max_bytes if max_file_bytes is None else max_file_bytes,
            },
            30.0,
        )
        return Snapshot(
            files={os.fsdecode(k): v for k, v in r["files"].items()},
            skipped=[os.fsdecode(k) for k in r["skipped"]],
            skipped_count=r["skipped_count"],
        )

    def reset(self) -> list[str]:
        """Kill every process, empty /work and the IPC namespace: the state a new episode starts
        from. Returns what is still left (nothing, or the container must not be used again)."""
        return self.request({"op": "reset"}, 30.0)["residue"]

    def residue(self, timeout: float = 5.0) -> list[str] | None:
        """The health check: what an episode left behind ([] when clean), None when the server
        does not answer within ``timeout`` (never raises)."""
        try:
            return self.request({"op": "check"}, timeout)["residue"]
        except (SandboxError, SandboxUserError):
            return None

    def describe_exit(self) -> str:
        """Why the container stopped, for error messages (e.g. 'exited 137, OOMKilled')."""
        try:
            self.container.reload()
        except docker.errors.DockerException:
            return "container gone"
        state = self.container.attrs.get("State", {})
        oom = ", OOMKilled" if state.get("OOMKilled") else ""
        return f"{state.get('Status', '?')} (exit {state.get('ExitCode', '?')}{oom})"

    def remove(self) -> None:
        self.channel.close()
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:
            if "already in progress" not in str(e):
                raise


def start_sandbox(client: docker.DockerClient, config: SandboxConfig, pool_id: str) -> Sandbox:
    """Create and start one labelled container, attach to its server and wait for a ping."""
    try:
        container = client.containers.create(
            config.image,
            command=["python3", "-I", "-c", SERVER_SOURCE, PROCESSES_SOURCE, ZYGOTE_SOURCE],
            labels=owner_labels(pool_id),
            **config.create_kwargs(),
        )
    except docker.errors.ImageNotFound as e:
        raise SandboxError(f"image {config.image!r} is missing: run `ptgym sandbox build`") from e
    except docker.errors.DockerException as e:
        raise SandboxError(f"could not create a sandbox container: {e}") from e
    try:
        sock = client.api.attach_socket(container.id, params={"stdin": 1, "stdout": 1, "stream": 1})
        container.start()
        sandbox = Sandbox(container, Channel(getattr(sock, "_sock", sock)), config)
        sandbox.request({"op": "ping"}, config.start_timeout_s)
        return sandbox
    except (docker.errors.DockerException, SandboxError, OSError) as e:
        with contextlib.suppress(docker.errors.DockerException):
            container.remove(force=True)
        raise SandboxError(f"sandbox container failed to start: {e}") from e
