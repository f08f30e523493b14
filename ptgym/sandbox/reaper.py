"""Labels on every sandbox container, and the reaper that removes orphans.

Every container carries ``ptgym.sandbox=1`` plus the host name, pid and pid start time of the
process that owns it. A container is an orphan when its owner on this host is gone: the pid is
not alive, or it is alive but started at another time (the pid was reused). Pools reap orphans
when they start and remove their own containers at exit (atexit, SIGTERM/SIGHUP, Ctrl-C); a
host process killed with SIGKILL leaves orphans that the next pool, or ``ptgym sandbox prune``,
removes.
"""

from __future__ import annotations

import os
import socket
import threading
from typing import Any

import docker

LABEL = "ptgym.sandbox"
LABEL_HOST = "ptgym.owner_host"
LABEL_PID = "ptgym.owner_pid"
LABEL_START = "ptgym.owner_start"
LABEL_POOL = "ptgym.pool"


def process_start(pid: int) -> str:
    """The start time of ``pid`` in clock ticks since boot (field 22 of /proc/PID/stat), or ''."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # fields after "(comm)" start at field 3


def owner_labels(pool_id: str) -> dict[str, str]:
    pid = os.getpid()
    return {
        LABEL: "1",
        LABEL_HOST: socket.gethostname(),
        LABEL_PID: str(pid),
        LABEL_START: process_start(pid),
        LABEL_POOL: pool_id,
    }


def is_orphan(labels: dict[str, str]) -> bool:
    """Whether the owner of a container with these labels is gone (only judged on its host)."""
    if labels.get(LABEL_HOST) != socket.gethostname():
        return False
    try:
        pid = int(labels.get(LABEL_PID, ""))
    except ValueError:
        return True
    start = process_start(pid)
    return not start or start != labels.get(LABEL_START)


def _containers(client: docker.DockerClient, **filters: str) -> list[Any]:
    """Labelled containers; one removed between the listing and its inspection is skipped (else
    the SDK raises NotFound, e.g. while another pool removes its own)."""
    labels = [LABEL] + [f"{k}={v}" for k, v in filters.items()]
    return client.containers.list(all=True, filters={"label": labels}, ignore_removed=True)


def remove(containers: list[Any]) -> int:
    """Force-remove containers in parallel; returns how many were removed.

    Plain threads, not an executor: this also runs in atexit, after concurrent.futures has
    stopped accepting work.
    """
    removed: list[Any] = []

    def one(c: Any) -> None:
        try:
            c.remove(force=True)
            removed.append(c)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as e:  # "removal already in progress" counts as done
            if "already in progress" in str(e):
                removed.append(c)

    threads = [threading.Thread(target=one, args=(c,), daemon=True) for c in containers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return len(removed)


def reap_orphans(client: docker.DockerClient | None = None) -> int:
    """Remove sandbox containers whose owner process on this host is gone."""
    own = client is None
    client = client or docker.from_env()
    try:
        return remove([c for c in _containers(client) if is_orphan(c.labels)])
    finally:
        if own:
            client.close()


def list_sandboxes() -> list[dict[str, Any]]:
    """One row per sandbox container (for ``ptgym sandbox ps``)."""
    client = docker.from_env()
    try:
        return [
            {
                "id": c.short_id,
                "name": c.name,
                "status": c.status,
                "image": (c.image.tags or [c.image.short_id])[0],
                "owner": f"{c.labels.get(LABEL_HOST, '?')}:{c.labels.get(LABEL_PID, '?')}",
                "pool": c.labels.get(LABEL_POOL, ""),
                "orphan": is_orphan(c.labels),
                "created": c.attrs.get("Created", ""),
            }
            for c in _containers(client)
        ]
    finally:
        client.close()


def prune(all_containers: bool = False) -> int:
    """Remove orphaned and stopped sandbox containers (``all_containers``: every one)."""
    client = docker.from_env()
    try:
        doomed = [
            c
            for c in _containers(client)
            if all_containers or c.status != "running" or is_orphan(c.labels)
        ]
        return remove(doomed)
    finally:
        client.close()
