"""``rollout.collector=ray``: env calls in Ray actors write what the local collector writes.

A real local Ray (``ray.init(num_cpus=2)``, one session), the real tiny model and tokenizer, envs
made inside the actors from the registry (built-ins, an installed entry-point package), real
Docker for CodeTools. After each test no actor process and no sandbox container is left.
"""

# ruff: noqa: E402 (the imports after importorskip need ray)
from __future__ import annotations

import functools
import importlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import docker
import pytest

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install 'ptgym[ray]'")

from ptgym.agents.backend import SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.build import make_collector, task_seeds
from ptgym.config import ConfigError, EnvConfig, RolloutConfig, SamplingConfig
from ptgym.metrics import collect_metrics
from ptgym.ray_collector import RayRunner, RegistryEnv
from ptgym.rollout import Budget, Collector
from ptgym.sandbox.reaper import LABEL, LABEL_PID
from tests.envs_for_tests import EchoEnv, ScriptedBackend, SlowEnv
from tests.sandbox_fixtures import TEST_CONFIG, fixture_sandbox_image  # noqa: F401 (fixture)
from tests.tiny import tiny_model_and_tokenizer


@pytest.fixture(scope="session")
def local_ray():
    """One local Ray for the session; a ``docker`` resource marks this node as a sandbox host."""
    ray.init(num_cpus=2, resources={"docker": 1}, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def tiny():
    model, tokenizer = tiny_model_and_tokenizer()
    return HFBackend(model, tokenizer), tokenizer


def actor_pids(runner: RayRunner) -> list[int]:
    return [p["pid"] for p in ray.get([a.where.remote() for a in runner.actors])]


def assert_gone(handles: list, pids: list[int]) -> None:
    """The actors answer no call and their processes have exited."""
    for handle in handles:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(handle.where.remote(), timeout=30)
    deadline = time.monotonic() + 20
    while any(os.path.exists(f"/proc/{pid}") for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if os.path.exists(f"/proc/{pid}")]


def record(trajs) -> list[tuple]:
    """What parity is about: task, reward, every turn's prompt and sampled ids, how it ended."""
    return [
        (
            t.task_id,
            t.seed,
            t.group_id,
            t.reward,
            t.error,
            t.info["end"],
            [(turn.prompt_ids.tolist(), turn.completion_ids.tolist()) for turn in t.turns],
        )
        for t in trajs
    ]


@pytest.mark.parametrize("env", ["math", "digits"])
def test_ray_collector_writes_what_the_local_collector_writes(local_ray, tiny, env):
    backend, tokenizer = tiny
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0)
    results = {}
    for collector_kind in ("local", "ray"):
        rollout = RolloutConfig(
            tasks=2, group=2, max_turns=2, collector=collector_kind, ray_actors=2, env_workers=2
        )
        collector = make_collector(
            backend, tokenizer, EnvConfig(name=env), sampling, rollout, model_name="tiny"
        )
        pids = actor_pids(collector.runner) if collector_kind == "ray" else []
        handles = list(getattr(collector.runner, "actors", []))
        try:
            results[collector_kind] = [
                collector.collect(task_seeds(rollout, b), rollout.group, group_prefix=f"{b}/")
                for b in range(2)  # the second batch reuses the envs the actors made
            ]
        finally:
            collector.close()
        if collector_kind == "ray":
            assert len(set(pids)) == 2 and os.getpid() not in pids
            assert_gone(handles, pids)
    for local, remote in zip(results["local"], results["ray"], strict=True):
        assert record(local) == record(remote)
        assert all(t.error is None and t.task_id for t in remote)
    assert len({t.task_id for batch in results["ray"] for t in batch}) >= 2


class KillingBackend:
    """The real backend; its first ``generate`` call first kills ``victim`` (Ray restarts it)."""

    def __init__(self, inner: HFBackend, victim):
        self.inner, self.victim, self.tokenizer = inner, victim, inner.tokenizer

    def generate(self, prompts, params, seeds=None):
        if self.victim is not None:
            ray.kill(self.victim, no_restart=False)
            self.victim = None
        return self.inner.generate(prompts, params, seeds)


def test_killed_actor_retries_an_unsampled_episode_and_marks_a_sampled_one(local_ray, tiny):
    """Slots 1 and 3 live on actor 1. When it is killed (at the first generate call), slot 1 has
    a turn being sampled: it ends as an infrastructure error. Slot 3's slow reset was in flight:
    it is retried on the restarted actor and comes out exactly as the local collector makes it."""
    backend, tokenizer = tiny
    renderer = ChatRenderer(tokenizer)
    make_env = functools.partial(SlowEnv, {}, [], reset_delays={3: 3.0})
    sampling = SamplingParams(max_new_tokens=4, temperature=1.0)
    budget = Budget(max_turns=2)
    runner = RayRunner(make_env, actors=2, threads=2, max_restarts=2)
    handles = list(runner.actors)
    collector = Collector(
        KillingBackend(backend, runner.actors[1]), renderer, None, sampling, budget, runner=runner
    )
    try:
        trajs = collector.collect([0, 1, 2, 3], 1)
        pids = actor_pids(runner)
    finally:
        collector.close()
    assert_gone(handles, pids)
    ok0, lost, ok2, retried = trajs
    assert lost.error is not None and lost.info["infra_error"] and lost.info["end"] == "error"
    assert lost.error.split(":")[0] in ("ActorUnavailableError", "ActorDiedError", "EnvLost")
    assert len(lost.turns) == 1 and lost.truncated
    assert collector.stats.retries == 1 and collector.stats.infra_errors == 1
    m = collect_metrics(collector.stats)
    assert (m["rollout/retries"], m["rollout/infra_errors"]) == (1.0, 1.0)
    local = Collector(backend, renderer, make_env, sampling, budget, env_workers=4)
    try:
        expected = local.collect([0, 1, 2, 3], 1)
    finally:
        local.close()
    assert record([ok0, ok2, retried]) == record([expected[0], expected[2], expected[3]])
    assert retried.error is None and len(retried.turns) == 2


NAME = "ray-probe"


@pytest.fixture
def entry_point_package(tmp_path):
    """`ptgym envs new ray-probe`, installed (not editable) into this interpreter's site-packages,
    where the actors' processes find its entry point; uninstalled afterwards."""
    made = subprocess.run(
        ["ptgym", "envs", "new", NAME, "--dir", str(tmp_path)], capture_output=True, text=True
    )
    assert made.returncode == 0, made.stderr
    pip = [sys.executable, "-m", "pip"]
    root = tmp_path / f"ptgym-env-{NAME}"
    install = subprocess.run(
        [*pip, "install", "-q", "--no-deps", "--no-build-isolation", str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stderr
    importlib.invalidate_caches()
    try:
        yield importlib.import_module("ptgym_env_ray_probe.env").RayProbeEnv
    finally:
        subprocess.run([*pip, "uninstall", "-y", "-q", f"ptgym-env-{NAME}"], capture_output=True)


@pytest.mark.slow
def test_an_entry_point_env_is_made_inside_the_actors(local_ray, tiny, entry_point_package):
    backend, tokenizer = tiny
    renderer = ChatRenderer(tokenizer)
    sampling = SamplingParams(max_new_tokens=4, temperature=1.0)
    runner = RayRunner(RegistryEnv(EnvConfig(name=NAME)), actors=2, threads=2)
    handles, pids = list(runner.actors), actor_pids(runner)
    remote = Collector(backend, renderer, None, sampling, Budget(max_turns=1), runner=runner)
    try:
        trajs = remote.collect([5, 6], 2)
    finally:
        remote.close()
    assert_gone(handles, pids)
    assert [(t.error, t.info["end"]) for t in trajs] == [(None, "env")] * 4
    local = Collector(backend, renderer, entry_point_package, sampling, Budget(max_turns=1))
    try:
        assert record(trajs) == record(local.collect([5, 6], 2))
    finally:
        local.close()


def containers_of(pid: int) -> list[str]:
    """Ids of the sandbox containers (any state) the process ``pid`` owns; a sparse listing, so
    a container removed while listing is no error."""
    client = docker.from_env()
    try:
        wanted = {"label": [LABEL, f"{LABEL_PID}={pid}"]}
        return [c.id for c in client.containers.list(all=True, filters=wanted, sparse=True)]
    finally:
        client.close()


def call(name: str, **arguments: str) -> str:
    return f"<tool_call>{json.dumps({'name': name, 'arguments': arguments})}</tool_call>"


@pytest.mark.docker
def test_code_tools_runs_in_docker_sandboxes_hosted_by_an_actor(local_ray, tiny, sandbox_image):
    """One task, one episode on one actor that needs the ``docker`` resource: the tool call runs
    in a real container of the actor's own pool; every container is gone after ``close``."""
    tokenizer = tiny[1]
    backend = ScriptedBackend(tokenizer, [call("run_python", code="print(6 * 7)"), call("submit")])
    kwargs = {"pool_size": 1, "max_turns": 3, "sandbox": vars(TEST_CONFIG)}
    runner = RayRunner(
        RegistryEnv(EnvConfig(name="code-tools", kwargs=kwargs)),
        actors=1,
        resources={"docker": 1},
        threads=1,
    )
    handles, pids = list(runner.actors), actor_pids(runner)
    sampling = SamplingParams(max_new_tokens=64)
    collector = Collector(
        backend, ChatRenderer(tokenizer), None, sampling, Budget(max_turns=3), runner=runner
    )
    try:
        (t,) = collector.collect([0], 1)
        during = containers_of(pids[0])
    finally:
        collector.close()
    assert_gone(handles, pids)
    assert t.error is None and t.terminated and t.task_id.startswith("HumanEval/")
    assert len(t.turns) == 2 and "stdout:\n42" in t.turns[0].observation[0]["content"]
    assert during  # the actor's own pool (and maybe a grading sandbox being removed)
    assert containers_of(pids[0]) == []


def test_a_missing_ray_is_a_one_line_config_error():
    """Where Ray is absent, collector=ray stops at the config, before any model loads."""
    result = subprocess.run(
        [sys.executable, "-c", _NO_RAY, "rollout.collector=ray"],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent.parent,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "rollout.collector=ray needs Ray: pip install 'ptgym[ray]' (or rollout.collector=local)"
        )
    )


_NO_RAY = (
    "import sys, importlib.util\n"
    "real = importlib.util.find_spec\n"
    "importlib.util.find_spec = lambda name, *a: None if name == 'ray' else real(name, *a)\n"
    "from ptgym.cli import main\n"
    "sys.exit(main(['train', 'model=tiny', *sys.argv[1:]]))\n"
)


@pytest.mark.slow
def test_ptgym_train_with_collector_ray_stores_what_the_local_collector_stores(local_ray, tmp_path):
    """Two steps of ``ptgym train env=digits`` each way: the start-up line names the cluster and
    the actors, and the stored trajectories agree record for record."""
    from ptgym.config import TrainCommand, compose
    from ptgym.metrics import read_metrics
    from ptgym.store import TrajectoryStore
    from ptgym.trainer import train

    stored, lines = {}, []
    for kind in ("local", "ray"):
        cfg = compose(
            TrainCommand,
            [
                "env=digits",
                "model=tiny",
                "sampling.max_new_tokens=6",
                "tasks=2",
                "group=2",
                "trainer.steps=2",
                "rollout.env_workers=2",
                f"rollout.collector={kind}",
                f"out={tmp_path / kind}",
            ],
        )
        train(cfg, log=lines.append)
        stored[kind] = record(sorted(TrajectoryStore(tmp_path / kind), key=lambda t: t.group_id))
    assert stored["local"] == stored["ray"] and len(stored["ray"]) == 8
    ledger = [
        (m["rollout/retries"], m["rollout/infra_errors"]) for m in read_metrics(tmp_path / "ray")
    ]
    assert ledger == [(0.0, 0.0)] * 2  # the failure ledger reaches the metrics stream
    (startup,) = [line for line in lines if line.startswith("ray: ")]
    assert startup.startswith("ray: 1 node(s), 2 CPUs; 2 env actors (0.25 CPU each) on ")


def test_actors_the_cluster_cannot_place_are_a_config_error_not_a_hang(local_ray):
    """The session's node has docker=1; two actors wanting docker=1 each cannot both be placed."""
    with pytest.raises(ConfigError, match=r"could not place 2 env actors needing .*'docker': 1"):
        RayRunner(EchoEnv, actors=2, resources={"docker": 1}, ready_timeout_s=10)
    deadline = time.monotonic() + 30  # the killed actors give their resources back
    while ray.available_resources().get("docker") != 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ray.available_resources().get("docker") == 1


class LockedError(RuntimeError):
    """An exception that cannot be pickled (it holds a lock), as third-party errors may."""

    def __init__(self, message: str):
        super().__init__(message)
        self.lock = threading.Lock()


class UnpicklableErrorEnv(SlowEnv):
    """Seed 1's step raises ``LockedError``; seed 2's step returns an info holding a lock."""

    def __init__(self):
        super().__init__({}, [])

    def step(self, action):
        if self.seed == 1:
            raise LockedError("judge crashed")
        obs, reward, terminated, truncated, info = super().step(action)
        if self.seed == 2:
            info = {**info, "handle": threading.Lock()}
        return obs, reward, terminated, truncated, info


def test_an_env_the_actors_cannot_import_is_a_config_error(local_ray):
    """This module is not importable in the workers (pytest put it on this process's path only),
    so an env class defined here cannot be made there: one message, no actor left."""
    with pytest.raises(ConfigError, match=r"failed to start .*No module named"):
        RayRunner(UnpicklableErrorEnv, actors=1, ready_timeout_s=60)


def test_env_errors_cross_the_actor_boundary_as_plain_text(local_ray, tiny):
    """An unpicklable exception becomes the same error text as in the local collector; values
    that do not pickle fail their own episode with a message, not the batch."""
    backend, tokenizer = tiny
    renderer = ChatRenderer(tokenizer)
    sampling = SamplingParams(max_new_tokens=4, temperature=1.0)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # ship the class itself
    try:
        runner = RayRunner(UnpicklableErrorEnv, actors=1, threads=2)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])
    handles, pids = list(runner.actors), actor_pids(runner)
    remote = Collector(backend, renderer, None, sampling, Budget(max_turns=1), runner=runner)
    try:
        ok, raised, unpicklable = remote.collect([0, 1, 2], 1)
    finally:
        remote.close()
    assert_gone(handles, pids)
    assert ok.error is None and ok.info["end"] == "max_turns"
    assert raised.error == "LockedError: judge crashed" and not raised.info.get("infra_error")
    assert "LockedError" in raised.info["traceback"]
    assert unpicklable.error.startswith("the env returned values that do not pickle")
    local = Collector(backend, renderer, UnpicklableErrorEnv, sampling, Budget(max_turns=1))
    try:
        assert local.collect([0, 1, 2], 1)[1].error == raised.error
    finally:
        local.close()


def test_ray_status_lists_nodes_and_the_env_actors_on_them(local_ray):
    from ptgym.ray_collector import cluster_status

    runner = RayRunner(EchoEnv, actors=2)
    try:
        h = runner.reset(0, 0, None)
        runner.wait([h], None)
        assert runner.result(h).error is None
        node, total = cluster_status()
    finally:
        runner.close()
    assert node.endswith(": 2 CPUs, docker 1; 2 env actors, 1 envs, 0 sandboxes")
    assert total.startswith("1 node(s); free: ")
    assert ": 2 CPUs, docker 1; 0 env actors, 0 envs" in cluster_status()[0]
