"""Env runners: where an env's ``reset`` and ``step`` run, for the rollout collector.

The collector (``rollout.py``) owns every episode: it renders, tokenises, generates and records,
all on its own thread. A runner only calls envs and hands back plain values: ``reset`` gives
``(obs, info)``, ``step`` gives ``(obs, reward, terminated, truncated, info)``, or an
``EnvResult`` whose ``error`` is the exception as text. No env call ever touches a trajectory, the
renderer or the tokenizer, so nothing is shared between threads or processes but those values.

Two runners keep this contract: ``LocalRunner`` (a thread pool in this process) and
``ptgym.ray_collector.RayRunner`` (Ray actors, possibly on other machines). Env *slots* are
numbered: slot ``i`` is the env of the batch's episode ``i``, made on first use and reused by
later calls (an env holding a sandbox pool or a dataset is built once).
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import gymnasium

from ptgym.types import Action


@dataclass
class EnvResult:
    """What one env call gave back; plain values only, so it pickles across processes.

    ``infra`` marks a failure of the machinery rather than of the env (a Ray actor died and took
    the env's state with it): the collector may retry an episode that sampled nothing yet.
    """

    value: tuple | None  # reset: (obs, info); step: (obs, reward, terminated, truncated, info)
    seconds: float = 0.0  # time inside the env call, measured where it ran
    error: str | None = None  # "ExceptionType: message"
    traceback: str | None = None
    infra: bool = False


def call_env(env: gymnasium.Env, method: str, *args: Any, **kwargs: Any) -> EnvResult:
    """``env.<method>(*args, **kwargs)`` as an ``EnvResult``; an exception becomes its text."""
    t0 = time.perf_counter()
    try:
        value = getattr(env, method)(*args, **kwargs)
    except Exception as exc:
        return EnvResult(
            None,
            time.perf_counter() - t0,
            f"{type(exc).__name__}: {exc}",
            traceback.format_exc(limit=-5),  # the innermost frames: where it was raised
        )
    return EnvResult(tuple(value), time.perf_counter() - t0)


class EnvRunner(Protocol):
    """Runs env calls somewhere and hands back ``EnvResult``s through opaque, hashable handles."""

    def reset(self, slot: int, seed: int, options: dict[str, Any] | None) -> Any:
        """Start ``reset(seed=seed, options=options)`` on slot ``slot``'s env; returns a handle."""

    def step(self, slot: int, action: Action) -> Any:
        """Start ``step(action)`` on slot ``slot``'s env; returns a handle."""

    def wait(self, handles: list[Any], timeout: float | None, *, first: bool = False) -> set[Any]:
        """The handles whose call has finished, after waiting until all of them have (or one, with
        ``first``) or ``timeout`` seconds have passed (``None``: no limit, ``0``: just look)."""

    def result(self, handle: Any) -> EnvResult:
        """The result of a finished call (never raises for an env's or a worker's failure)."""

    def close(self) -> None:
        """Close every env and release the workers."""


class LocalRunner:
    """Env calls in a thread pool of this process; envs are made here by ``env_factory``."""

    def __init__(self, env_factory: Callable[[], gymnasium.Env], workers: int = 8):
        self.env_factory = env_factory
        self._envs: list[gymnasium.Env] = []
        self._failed: set[int] = set()  # slots whose env raised: replaced at their next reset
        self._pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptgym-env")

    def _env(self, slot: int) -> gymnasium.Env:
        while len(self._envs) <= slot:
            self._envs.append(self.env_factory())
        return self._envs[slot]

    def _call(
        self, slot: int, env: gymnasium.Env, method: str, *args: Any, **kwargs: Any
    ) -> EnvResult:
        result = call_env(env, method, *args, **kwargs)
        if result.error is not None:
            self._failed.add(slot)
        return result

    def reset(self, slot: int, seed: int, options: dict[str, Any] | None) -> cf.Future:
        if slot in self._failed:  # an env that raised may be half-reset: never reuse it
            self._failed.discard(slot)
            old, self._envs[slot] = self._envs[slot], self.env_factory()
            with contextlib.suppress(Exception):
                old.close()
        env = self._env(slot)  # envs are made on the caller's thread only
        return self._pool.submit(self._call, slot, env, "reset", seed=seed, options=options)

    def step(self, slot: int, action: Action) -> cf.Future:
        return self._pool.submit(self._call, slot, self._env(slot), "step", action)

    def wait(
        self, handles: Iterable[cf.Future], timeout: float | None, *, first: bool = False
    ) -> set[cf.Future]:
        when = cf.FIRST_COMPLETED if first else cf.ALL_COMPLETED
        return cf.wait(list(handles), timeout=timeout, return_when=when).done

    def result(self, handle: cf.Future) -> EnvResult:
        return handle.result()  # call_env catches the env's exceptions

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        for env in self._envs:
            env.close()
        self._envs = []
