"""No labelled container outlives its owner: clean exit, Ctrl-C, SIGTERM, or a SIGKILLed host
process whose orphans the reaper (next pool start, ``ptgym sandbox prune``) removes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from ptgym.sandbox import SandboxPool, list_sandboxes, prune, reap_orphans
from ptgym.sandbox.reaper import LABEL_PID, LABEL_POOL, is_orphan, owner_labels
from tests.sandbox_fixtures import (  # noqa: F401 (fixtures)
    TEST_CONFIG,
    fixture_sandbox_image,
    labelled_containers,
)

pytestmark = pytest.mark.docker

# A host process that starts a pool of 2, prints its pool id, then ends as told by argv[1].
OWNER = """
import os, signal, sys, time
from ptgym.sandbox import SandboxPool
pool = SandboxPool(size=2)
print(pool.id, flush=True)
how = sys.argv[1]
if how == "sigint":
    os.kill(os.getpid(), signal.SIGINT)   # Ctrl-C: KeyboardInterrupt, then atexit
elif how in ("sigterm", "sigkill"):
    os.kill(os.getpid(), getattr(signal, how.upper()))
time.sleep(1)
"""


def run_owner(how: str) -> tuple[str, int]:
    done = subprocess.run(
        [sys.executable, "-c", OWNER, how], capture_output=True, text=True, timeout=120
    )
    pool_id = done.stdout.split()[0]
    return pool_id, done.returncode


@pytest.mark.parametrize(
    ("how", "returncode"),
    [("exit", 0), ("sigint", -signal.SIGINT), ("sigterm", -signal.SIGTERM)],
)
def test_owner_exit_removes_its_containers(sandbox_image, how, returncode):
    pool_id, code = run_owner(how)
    assert code == returncode
    assert labelled_containers(**{LABEL_POOL: pool_id}) == []


def test_orphans_of_a_killed_owner_are_reaped(sandbox_image):
    pool_id, code = run_owner("sigkill")
    assert code == -signal.SIGKILL
    orphans = labelled_containers(**{LABEL_POOL: pool_id})
    assert len(orphans) == 2 and all(is_orphan(c.labels) for c in orphans)
    rows = [r for r in list_sandboxes() if r["pool"] == pool_id]
    assert [r["orphan"] for r in rows] == [True, True]
    assert reap_orphans() == 2
    assert labelled_containers(**{LABEL_POOL: pool_id}) == []


def test_a_new_pool_reaps_orphans_and_spares_live_owners(sandbox_image):
    pool_id, _ = run_owner("sigkill")
    with SandboxPool(size=1, config=TEST_CONFIG) as pool:
        assert labelled_containers(**{LABEL_POOL: pool_id}) == []
        mine = labelled_containers(**{LABEL_POOL: pool.id})
        assert len(mine) == 1 and not is_orphan(mine[0].labels)
        assert prune() == 0  # running and owned by this live process: kept
        assert labelled_containers(**{LABEL_POOL: pool.id}) != []
    assert labelled_containers(**{LABEL_PID: str(os.getpid()), LABEL_POOL: pool.id}) == []


def test_a_reused_pid_does_not_adopt_orphans():
    labels = owner_labels("p")
    assert not is_orphan(labels)
    assert is_orphan({**labels, "ptgym.owner_start": "1"})  # same pid, another start time
    assert not is_orphan({**labels, "ptgym.owner_host": "another-host"})  # not ours to judge
