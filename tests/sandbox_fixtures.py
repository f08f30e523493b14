"""Shared fixtures for the Docker sandbox tests: one image build, one pool per session.

Import the fixture functions into a test module to make ``sandbox_image`` and ``sandbox_pool``
available (``from tests.sandbox_fixtures import fixture_sandbox_pool  # noqa: F401``);
they need a running Docker Engine and build ``ptgym-sandbox`` once when it is missing (about a
minute with debootstrap).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import docker
import pytest

from ptgym.sandbox import SandboxConfig, SandboxPool, ensure_image
from ptgym.sandbox.reaper import LABEL, LABEL_PID

POOL_SIZE = 4
# Tight limits keep the bombs quick on a 2-core CI machine.
TEST_CONFIG = SandboxConfig(memory="256m", pids=64, timeout_s=10.0, max_output=4096)


def labelled_containers(**labels: str) -> list:
    """Sandbox containers (any state) carrying all ``labels``."""
    client = docker.from_env()
    try:
        wanted = [LABEL] + [f"{k}={v}" for k, v in labels.items()]
        return client.containers.list(all=True, filters={"label": wanted}, ignore_removed=True)
    finally:
        client.close()


@pytest.fixture(scope="session", name="sandbox_image")
def fixture_sandbox_image() -> str:
    try:
        docker.from_env().ping()
    except docker.errors.DockerException as e:
        pytest.skip(f"no Docker Engine: {e}")
    return ensure_image(progress=print)


_SESSION_POOL: list[SandboxPool] = []


@pytest.fixture(scope="session", name="sandbox_pool")
def fixture_sandbox_pool(sandbox_image: str) -> Iterator[SandboxPool]:
    """The session's pool of 4; at teardown no container of this process may remain.

    Each test module that imports this fixture gets its own session-scoped copy of it (pytest
    keys fixtures by the module that holds them), so the pool itself is cached here: one pool
    for the whole session, closed by whichever copy is torn down first.
    """
    if not _SESSION_POOL:
        _SESSION_POOL.append(SandboxPool(size=POOL_SIZE, config=TEST_CONFIG))
    yield _SESSION_POOL[0]
    _SESSION_POOL[0].close()
    left = labelled_containers(**{LABEL_PID: str(os.getpid())})
    assert not left, f"containers left behind: {[(c.short_id, c.status, c.labels) for c in left]}"
