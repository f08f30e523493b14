"""A pool of pre-started sandbox containers, leased one episode at a time (DESIGN §7).

    pool = SandboxPool(size=4)
    with pool.lease() as sb:          # a healthy container with an empty /work
        sb.write_file("a.py", "print(1)")
        sb.exec(["python3", "a.py"])  # one msgpack round trip, no docker exec
    pool.close()

Life cycle of a container: started (in parallel, at pool start) -> idle -> health-checked at
hand-out (the server answers and nothing is left: no process, file, IPC object) -> leased -> on
return, reset (processes killed; /work, /dev/shm, /tmp, POSIX queues and SysV IPC emptied) and
verified clean, then idle again. It is replaced by a fresh one, started in the background, after
``max_uses`` leases, on any anomaly (a call that raised ``SandboxError``, a reset that left
residue) or when the health check fails.

Callers are served first come, first served: a container that becomes idle (or a free slot) is
handed to the oldest waiter, so no caller starves while others loop on lease.

``lease(fresh=True)`` (hidden-test grading) hands out a container that has never been leased,
starting one when none is idle, and destroys it afterwards: hidden tests run where no agent code
ran before, and no agent code ever runs where hidden tests ran. Ordinary leases prefer used
containers, so that the fresh ones are there for grading. Pools reap orphans of crashed processes
when they start and remove their own containers at exit.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import threading
import time
import uuid
import weakref
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import docker

from ptgym.sandbox.container import (
    Sandbox,
    SandboxConfig,
    SandboxError,
    SandboxUserError,
    start_sandbox,
)
from ptgym.sandbox.reaper import LABEL_POOL, reap_orphans, remove

_POOLS: weakref.WeakSet[SandboxPool] = weakref.WeakSet()


class _Waiter:
    """A caller waiting in ``acquire``: ``_dispatch`` fills in a container or grants a slot."""

    __slots__ = ("fresh", "sandbox", "slot")

    def __init__(self, fresh: bool):
        self.fresh = fresh
        self.sandbox: Sandbox | None = None
        self.slot = False


class SandboxPool:
    """Thread-safe pool of ``size`` sandboxes; ``lease()`` blocks until one is free."""

    def __init__(self, size: int = 4, config: SandboxConfig | None = None):
        if size < 1:
            raise ValueError(f"a sandbox pool needs size >= 1, got {size}")
        self.size = size
        self.config = config or SandboxConfig()
        self.id = uuid.uuid4().hex[:12]
        try:
            self.client = docker.from_env(max_pool_size=max(10, 2 * size))
            reap_orphans(self.client)
        except docker.errors.DockerException as e:
            raise SandboxError(f"the Docker Engine is not reachable: {e}") from e
        self.stats = {
            "started": 0,
            "replaced": 0,
            "failed_health": 0,
            "leases": 0,
            "residue": 0,  # resets that left something behind (the container was replaced)
            "retired": 0,  # containers destroyed after a fresh lease (hidden-test grading)
        }
        self._idle: deque[Sandbox] = deque()
        self._waiters: deque[_Waiter] = deque()  # first come, first served
        self._all: set[Sandbox] = set()
        self._count = 0  # containers owned: idle + leased + starting
        self._cond = threading.Condition()
        self._closed = False
        self._background: list[threading.Thread] = []
        _install_exit_hooks()
        _POOLS.add(self)
        self._count = size
        with ThreadPoolExecutor(max_workers=min(size, 8)) as ex:
            futures = [ex.submit(self._start) for _ in range(size)]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if errors:
            self.close()
            raise errors[0]

    def _start(self, idle: bool = True) -> Sandbox:
        """Start one container and make it idle (or hand it to the caller); on failure give its
        slot back."""
        try:
            sb = start_sandbox(self.client, self.config, self.id)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._dispatch()
            raise
        with self._cond:
            if self._closed:
                self._count -= 1
                sb.remove()
                raise SandboxError("the pool was closed")
            self.stats["started"] += 1
            self._all.add(sb)
            if idle:
                self._idle.append(sb)
                self._dispatch()
        return sb

    def _start_in_background(self) -> None:
        def run() -> None:
            with contextlib.suppress(SandboxError):
                self._start()

        self._spawn(run)

    def _spawn(self, fn: Any, *args: Any) -> None:
        """A background thread that ``close`` waits for (starts and removals in flight)."""
        t = threading.Thread(target=fn, args=args, name="ptgym-sandbox", daemon=True)
        with self._cond:
            self._background = [b for b in self._background if b.is_alive()] + [t]
        t.start()

    def _discard(self, sb: Sandbox, replace: bool) -> None:
        """Remove a container; ``replace`` starts a fresh one in its slot."""
        with self._cond:
            self._all.discard(sb)
            if not replace or self._closed:
                self._count -= 1
                self._dispatch()
            else:
                self.stats["retired" if sb.retire and not sb.broken else "replaced"] += 1
        self._spawn(_quiet_remove, sb)
        if replace and not self._closed:
            self._start_in_background()

    def _take_idle(self, fresh: bool) -> Sandbox:
        """Pop the idle container that suits the lease (caller holds the lock, _idle not empty)."""
        for i, sb in enumerate(self._idle):
            if (sb.uses == 0) == fresh:
                del self._idle[i]
                return sb
        return self._idle.popleft()

    def _dispatch(self) -> None:
        """Serve waiters first come, first served (caller holds the lock): each gets an idle
        container, or a free slot to start one in, in the order it started waiting."""
        while self._waiters and (self._idle or self._count < self.size):
            w = self._waiters.popleft()
            if self._idle:
                w.sandbox = self._take_idle(w.fresh)
            else:
                self._count += 1
                w.slot = True
        self._cond.notify_all()

    def _wait_turn(self, fresh: bool, deadline: float | None, retry: bool) -> Sandbox | None:
        """Queue up and wait for a container (returned) or a slot to start one in (None)."""
        w = _Waiter(fresh)
        with self._cond:
            if retry:  # a health check failed: keep the place it had in the queue
                self._waiters.appendleft(w)
            else:
                self._waiters.append(w)
            self._dispatch()
            while w.sandbox is None and not w.slot:
                left = None if deadline is None else deadline - time.monotonic()
                if self._closed or (left is not None and left <= 0):
                    self._waiters.remove(w)
                    if self._closed:
                        raise SandboxError("the sandbox pool is closed")
                    raise SandboxError("no sandbox became free within the timeout")
                self._cond.wait(left)
            sb = w.sandbox
            if sb is not None and fresh and sb.uses:  # its slot goes to a fresh one, here
                self._all.discard(sb)
                self._spawn(_quiet_remove, sb)
                sb = None
        return sb

    def acquire(self, timeout: float | None = None, fresh: bool = False) -> Sandbox:
        """A healthy sandbox with an empty /work; raises SandboxError after ``timeout`` seconds.
        Callers are served in the order they asked. ``fresh``: one that has never been leased
        (see the module doc)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = False
        while True:
            sb = self._wait_turn(fresh, deadline, retry)
            if sb is None:
                sb = self._start(idle=False)
            if sb.residue() == []:
                with self._cond:
                    sb.uses += 1
                    sb.retire = fresh
                    self.stats["leases"] += 1
                return sb
            with self._cond:
                self.stats["failed_health"] += 1
            self._discard(sb, replace=True)
            retry = True

    def release(self, sb: Sandbox) -> None:
        """Give a sandbox back: reset and verify it for the next episode, or replace it."""
        if not sb.broken and not sb.retire and sb.uses < self.config.max_uses:
            try:
                if sb.reset():
                    with self._cond:
                        self.stats["residue"] += 1
                    sb.broken = True
            except (SandboxError, SandboxUserError):
                sb.broken = True
            if not sb.broken:
                with self._cond:
                    if not self._closed:
                        self._idle.append(sb)
                        self._dispatch()
                        return
        self._discard(sb, replace=True)

    @contextlib.contextmanager
    def lease(self, timeout: float | None = None, fresh: bool = False) -> Iterator[Sandbox]:
        """``with pool.lease() as sb:`` — acquire, and release even when the body raises."""
        sb = self.acquire(timeout, fresh=fresh)
        try:
            yield sb
        except SandboxError:
            sb.broken = True
            raise
        finally:
            self.release(sb)

    def close(self) -> None:
        """Remove every container of this pool (idempotent; also runs at interpreter exit)."""
        with self._cond:
            self._closed = True
            doomed = list(self._all)
            self._all.clear()
            self._idle.clear()
            self._cond.notify_all()
            background = list(self._background)
        for sb in doomed:
            sb.channel.close()
        for t in background:  # a start in flight removes its own container once it sees _closed
            t.join(timeout=60)
        with contextlib.suppress(docker.errors.DockerException):
            # By label, to catch containers still starting in a background thread.
            found = self.client.containers.list(
                all=True, filters={"label": f"{LABEL_POOL}={self.id}"}, ignore_removed=True
            )
            remove(found + [sb.container for sb in doomed if sb.container not in found])
        _POOLS.discard(self)

    def __enter__(self) -> SandboxPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quiet_remove(sb: Sandbox) -> None:
    with contextlib.suppress(docker.errors.DockerException):
        sb.remove()


def close_all_pools() -> None:
    for pool in list(_POOLS):
        pool.close()


_hooks_installed = False


def _install_exit_hooks() -> None:
    """Close pools at interpreter exit (normal exit, Ctrl-C) and on SIGTERM/SIGHUP.

    A signal handler is only installed where the signal still has its default action (we never
    override an application's own handler) and only from the main thread (Python's rule).
    """
    global _hooks_installed
    if _hooks_installed:
        return
    _hooks_installed = True
    atexit.register(close_all_pools)
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            signal.signal(sig, _close_and_die)


def _close_and_die(signum: int, _frame: object) -> None:
    close_all_pools()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
