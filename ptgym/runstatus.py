"""Is a run live, finished or crashed? ``RUN/heartbeat.json``, written by ``ptgym train``.

The trainer writes ``{"pid", "host", "started", "last_beat", "step", "steps", "state"}`` (state
``running`` | ``finished`` | ``failed``) atomically at start, after each step, every few seconds
from a timer thread (a long step still beats) and at the end. A reader calls ``run_status``: a
``running`` heartbeat whose process is gone (same host) or whose last beat is older than
``stale_after`` seconds (another host, or a hung process) is a crash. A run without a heartbeat
(``ptgym rollout``, ``ptgym eval``) is ``unknown``. Imports neither torch nor textual.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptgym.store import atomic_write_bytes

HEARTBEAT_FILE = "heartbeat.json"
BEAT_SECONDS = 5.0
STALE_AFTER = 60.0


class Heartbeat:
    """Writes ``RUN/heartbeat.json``; ``with Heartbeat(run, steps=N):`` marks failure on an exception.

    The step counter has one owner, the training loop (``beat``); the timer thread only re-writes
    the last state with a fresh ``last_beat``, under the lock that also guards the write.
    """

    def __init__(
        self, run_dir: str | Path, *, steps: int, step: int = 0, every: float = BEAT_SECONDS
    ):
        self.path = Path(run_dir) / HEARTBEAT_FILE
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._state: dict[str, Any] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "last_beat": 0.0,
            "step": int(step),
            "steps": int(steps),
            "state": "running",
        }
        self._write()
        self._thread = threading.Thread(target=self._timer, args=(every,), daemon=True)
        self._thread.start()

    def _write(self, **changes: Any) -> None:
        with self._lock:
            self._state.update(changes, last_beat=time.time())
            atomic_write_bytes(self.path, json.dumps(self._state).encode())

    def _timer(self, every: float) -> None:
        while not self._stop.wait(every):
            self._write()

    def beat(self, step: int) -> None:
        self._write(step=int(step))

    def finish(self, state: str = "finished") -> None:
        self._stop.set()
        self._thread.join()
        self._write(state=state)

    def __enter__(self) -> Heartbeat:
        return self

    def __exit__(self, exc_type: Any, *_: object) -> None:
        self.finish("failed" if exc_type is not None else "finished")


@dataclass(frozen=True)
class RunStatus:
    """What a reader concludes: ``state`` is live | finished | failed | crashed | unknown."""

    state: str
    step: int | None = None
    steps: int | None = None
    pid: int | None = None
    host: str | None = None
    last_beat: float | None = None
    reason: str = ""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def read_heartbeat(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / HEARTBEAT_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None  # written atomically, so only a foreign file gets here


def run_status(
    run_dir: str | Path, *, now: float | None = None, stale_after: float = STALE_AFTER
) -> RunStatus:
    hb = read_heartbeat(run_dir)
    if hb is None:
        return RunStatus("unknown", reason="no heartbeat.json (not written by ptgym train)")
    now = time.time() if now is None else now
    base = {
        "step": hb.get("step"),
        "steps": hb.get("steps"),
        "pid": hb.get("pid"),
        "host": hb.get("host"),
        "last_beat": hb.get("last_beat"),
    }
    state = hb.get("state")
    if state in ("finished", "failed"):
        return RunStatus(state, **base)
    age = now - float(hb.get("last_beat") or 0.0)
    if hb.get("host") == socket.gethostname() and not _pid_alive(int(hb.get("pid", 0))):
        return RunStatus("crashed", **base, reason=f"process {hb.get('pid')} is gone")
    if age > stale_after:
        return RunStatus("crashed", **base, reason=f"no heartbeat for {age:.0f} s")
    return RunStatus("live", **base)
