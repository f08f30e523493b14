"""``rollout.collector=ray``: env ``reset``/``step`` in Ray actors, spread over a cluster.

Generation stays where the policy is (this process, or a ``ptgym serve``/vLLM endpoint); only env
calls move. ``RayRunner`` keeps ``runners.py``'s contract, so the collector above it, and every
trajectory it writes, is the same as with the local thread pool: same seeds, same token ids,
rewards and task ids.

Placement: ``actors`` env-worker actors, each asking for ``num_cpus`` (fractional: Ray's default
of one CPU per actor deadlocks a small cluster) plus any custom ``resources``; a share of
``docker`` (``rollout.ray_docker``) pins sandbox-hosting actors to the nodes started with
``ray start --resources='{"docker": 1}'``. Actors that cannot be placed, or whose env module does
not import on their node, stop the command with a ``ConfigError`` instead of leaving it waiting.
Episode slot ``i`` lives on actor ``i % actors``; an actor runs up to ``threads`` env calls at once
(a threaded actor) and makes its envs itself, from the registry of its own process
(``RegistryEnv``), so an env installed by entry point on that node works there. A CodeTools
actor's envs share that process's ``SandboxPool``.

Faults: an actor that dies is restarted by Ray (``max_restarts``) and comes back without envs.
A call that was in flight, or that reaches a slot whose env went with the old process, returns an
``EnvResult`` with ``infra=True``; the collector retries the episode once if nothing was sampled
yet (the retried ``reset`` waits for the restarted actor), otherwise ends it with ``error`` set
(dropped by the trainer, never scored 0). An env's own
exception is turned into text inside the actor (``runners.call_env``), so nothing unpicklable
crosses the boundary.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import gymnasium
import ray
from ray.exceptions import RayError, RayTaskError

from ptgym.config import ConfigError, EnvConfig, RolloutConfig
from ptgym.runners import EnvResult, call_env
from ptgym.types import Action

NAMESPACE = "ptgym"  # the Ray namespace of ptgym's env actors


class RegistryEnv:
    """Makes env instances from an ``EnvConfig`` in whatever process calls it: the registry there
    (built-ins, entry points, ``module:NAME``) resolves the name. Pickles as the config alone."""

    def __init__(self, env: EnvConfig, split: str = "train"):
        self.env, self.split = env, split
        self._make: Callable[[], gymnasium.Env] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"env": self.env, "split": self.split, "_make": None}

    def __call__(self) -> gymnasium.Env:
        if self._make is None:
            from ptgym.build import env_factory  # build imports rollout; keep this lazy

            _, self._make = env_factory(self.env, split=self.split)
        return self._make()


class EnvWorker:
    """One env-worker actor: envs by slot, made on first ``reset``; plain values out."""

    def __init__(self, make_env: Callable[[], gymnasium.Env]):
        self.make_env = make_env
        self.envs: dict[int, gymnasium.Env] = {}
        # Env calls run on up to ``threads`` threads; making envs (the registry's first lookup,
        # an env's prepare()) is not safe to run twice at once, so it runs one at a time.
        self._making = threading.Lock()

    def reset(self, slot: int, seed: int, options: dict[str, Any] | None) -> EnvResult:
        if slot not in self.envs:
            try:
                with self._making:
                    self.envs[slot] = self.make_env()
            except Exception as exc:  # a bad env on this node fails its episodes, not the actor
                trace = traceback.format_exc(limit=5)
                return EnvResult(None, 0.0, f"{type(exc).__name__}: {exc}", trace)
        return _plain(call_env(self.envs[slot], "reset", seed=seed, options=options))

    def step(self, slot: int, action: Action) -> EnvResult:
        env = self.envs.get(slot)
        if env is None:
            return EnvResult(
                None,
                error=f"EnvLost: the env of slot {slot} was lost (its Ray actor restarted)",
                infra=True,
            )
        return _plain(call_env(env, "step", action))

    def where(self) -> dict[str, Any]:
        return {
            "node": ray.get_runtime_context().get_node_id(),
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "envs": len(self.envs),
            "sandboxes": _own_sandboxes(),
        }

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs = {}
        ray.actor.exit_actor()  # a clean exit runs atexit: sandbox pools remove their containers


def _own_sandboxes() -> int:
    """Sandbox containers this process owns (0 where it never started a sandbox pool)."""
    if "ptgym.sandbox.pool" not in sys.modules:
        return 0
    import docker

    from ptgym.sandbox.reaper import LABEL, LABEL_PID

    client = docker.from_env()
    try:
        wanted = {"label": [LABEL, f"{LABEL_PID}={os.getpid()}"], "status": "running"}
        return len(client.containers.list(filters=wanted, sparse=True))
    finally:
        client.close()


def _plain(result: EnvResult) -> EnvResult:
    """``result``, or an error result when its values would not pickle across the boundary."""
    try:
        ray.cloudpickle.dumps(result.value)  # what Ray will do with it after we return
    except Exception as exc:
        return EnvResult(
            None, result.seconds, f"the env returned values that do not pickle: {exc}", None
        )
    return result


class RayRunner:
    """Env calls on Ray actors (see the module docstring). Connects to ``address`` (None: the
    cluster in ``RAY_ADDRESS``, else a local Ray started here and stopped by ``close``)."""

    def __init__(
        self,
        make_env: Callable[[], gymnasium.Env],
        *,
        actors: int = 2,
        num_cpus: float = 0.25,
        resources: dict[str, float] | None = None,
        threads: int = 8,
        max_restarts: int = 3,
        address: str | None = None,
        ready_timeout_s: float = 120.0,
    ):
        self._own_ray = not ray.is_initialized()
        if self._own_ray:
            if address or os.environ.get("RAY_ADDRESS"):
                ray.init(address=address)  # an existing cluster
            else:
                ray.init(include_dashboard=False)  # a local Ray for this process
        options: dict[str, Any] = {
            "num_cpus": num_cpus,
            "max_restarts": max_restarts,
            "max_task_retries": 0,  # a lost call surfaces: the collector decides what it means
            "max_concurrency": threads,
            "scheduling_strategy": "SPREAD",
        }
        if resources:
            options["resources"] = dict(resources)
        worker = ray.remote(EnvWorker)
        run = uuid.uuid4().hex[:8]  # named, so `ptgym ray-status` can find them
        self.actors = [
            worker.options(**options, name=f"env-{run}-{i}", namespace=NAMESPACE).remote(make_env)
            for i in range(actors)
        ]
        self.num_cpus, self.resources = num_cpus, dict(resources or {})
        try:  # an actor the cluster cannot place would leave its episodes waiting forever
            self.places = ray.get([a.where.remote() for a in self.actors], timeout=ready_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self._kill()
            need = {"CPU": num_cpus, **self.resources}
            raise ConfigError(
                f"the Ray cluster could not place {actors} env actors needing {need} each within "
                f"{ready_timeout_s:g} s: lower rollout.ray_actors, rollout.ray_num_cpus or "
                "rollout.ray_docker, or add nodes (`ray status` shows what is free)"
            ) from None
        except RayError as exc:  # e.g. the env's module cannot be imported on that node
            self._kill()
            lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
            raise ConfigError(
                f"the env actors failed to start ({lines[-1] if lines else type(exc).__name__}); "
                "the env must be importable on every Ray node: install its package there"
            ) from None
        self._slots: dict[ray.ObjectRef, int] = {}  # calls in flight -> their slot
        self._lost: set[int] = set()  # slots whose last call was lost with its actor

    def reset(self, slot: int, seed: int, options: dict[str, Any] | None) -> ray.ObjectRef:
        method = self.actors[slot % len(self.actors)].reset
        if slot in self._lost:  # a retry: Ray resubmits it until the restarted actor is up
            self._lost.discard(slot)  # (bounded: once restarts run out, the actor is dead)
            method = method.options(max_task_retries=-1)
        ref = method.remote(slot, seed, options)
        self._slots[ref] = slot
        return ref

    def step(self, slot: int, action: Action) -> ray.ObjectRef:
        ref = self.actors[slot % len(self.actors)].step.remote(slot, action)
        self._slots[ref] = slot
        return ref

    def wait(
        self, handles: Iterable[ray.ObjectRef], timeout: float | None, *, first: bool = False
    ) -> set[ray.ObjectRef]:
        refs = list(handles)
        ready, _ = ray.wait(refs, num_returns=1 if first else len(refs), timeout=timeout)
        return set(ready)

    def result(self, handle: ray.ObjectRef) -> EnvResult:
        slot = self._slots.pop(handle)
        try:
            return ray.get(handle)
        except RayTaskError as exc:  # raised by our actor code itself, not by an env
            cause = exc.cause or exc
            return EnvResult(None, error=f"{type(cause).__name__}: {cause}")
        except RayError as exc:  # the actor died or its result was lost: the machinery failed
            self._lost.add(slot)
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            return EnvResult(None, error=f"{type(exc).__name__}: {first_line}", infra=True)

    def describe(self) -> str:
        """One start-up line: the cluster's nodes and where the env actors landed."""
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        cpus = sum(n.get("Resources", {}).get("CPU", 0) for n in nodes)
        per_host = Counter(p["host"] for p in self.places)
        spread = ", ".join(f"{host}: {n}" for host, n in sorted(per_host.items()))
        extra = f" + {self.resources}" if self.resources else ""
        return (
            f"ray: {len(nodes)} node(s), {cpus:g} CPUs; {len(self.actors)} env actors "
            f"({self.num_cpus:g} CPU{extra} each) on {spread}"
        )

    def _kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)
        self.actors = []

    def close(self) -> None:
        """Close every env (sandbox pools remove their containers), end the actors, and stop
        Ray if this runner started it."""
        if not self.actors:
            return
        closing = [a.close.remote() for a in self.actors]
        ray.wait(closing, num_returns=len(closing), timeout=60)  # each ends as its actor exits
        self._kill()
        if self._own_ray:
            ray.shutdown()


def ray_runner(rollout: RolloutConfig, env: EnvConfig, *, split: str = "train") -> RayRunner:
    """The ``RayRunner`` that ``rollout.collector=ray`` and its ``rollout.ray_*`` keys ask for."""
    return RayRunner(
        RegistryEnv(env, split),
        actors=rollout.ray_actors,
        num_cpus=rollout.ray_num_cpus,
        resources={"docker": rollout.ray_docker} if rollout.ray_docker else None,
        threads=rollout.env_workers,
        max_restarts=rollout.ray_max_restarts,
        address=rollout.ray_address,
    )


def cluster_status(address: str | None = None) -> list[str]:
    """``ptgym ray-status``: the cluster's alive nodes and, per node, ptgym's env actors, their
    envs and their running sandboxes. Connects to ``address`` (default: ``RAY_ADDRESS``, else the
    cluster ``ray start`` began on this machine); never starts one."""
    own = not ray.is_initialized()
    if own:
        ray.init(address=address or "auto", log_to_driver=False)
    try:
        named = ray.util.list_named_actors(all_namespaces=True)
        handles = [
            ray.get_actor(a["name"], namespace=NAMESPACE)
            for a in named
            if a["namespace"] == NAMESPACE
        ]
        places: list[dict[str, Any]] = []
        for ref in [h.where.remote() for h in handles]:
            try:
                places.append(ray.get(ref, timeout=10))
            except RayError:
                continue  # ended or restarting since the listing
        lines = []
        for node in (n for n in ray.nodes() if n.get("Alive")):
            res = node.get("Resources", {})
            mine = [p for p in places if p["node"] == node["NodeID"]]
            docker = f", docker {res['docker']:g}" if "docker" in res else ""
            lines.append(
                f"{node.get('NodeManagerHostname', '?')} ({node.get('NodeManagerAddress', '?')}): "
                f"{res.get('CPU', 0):g} CPUs{docker}; {len(mine)} env actors, "
                f"{sum(p['envs'] for p in mine)} envs, {sum(p['sandboxes'] for p in mine)} sandboxes"
            )
        free = ray.available_resources()
        lines.append(
            f"{len(lines)} node(s); free: {free.get('CPU', 0):g} CPUs"
            + (f", docker {free['docker']:g}" if "docker" in free else "")
        )
        return lines
    finally:
        if own:
            ray.shutdown()
