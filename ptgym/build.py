"""Turn configs into the running parts: env factory, generation backend, collector.

Shared by ``train``, ``rollout`` and ``eval`` so the three commands build the same thing.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
from typing import Any

import gymnasium

from ptgym.config import ConfigError, EnvConfig, RolloutConfig, SamplingConfig
from ptgym.registry import resolve
from ptgym.rollout import Budget, Collector

log = logging.getLogger(__name__)
TURN_LIMIT_ATTRS = ("max_turns", "max_attempts")  # what envs declare as replies per episode
NO_TURN_LIMIT = sys.maxsize
_WARNED: set[tuple[str, int]] = set()  # (env id, rollout.max_turns) already warned about


def env_factory(env: EnvConfig, *, split: str = "train") -> tuple[str, EnvMaker]:
    """The env's id and a function that makes one instance (an ``EnvMaker``).

    ``split`` is passed to envs whose constructor takes it (held-out tasks for eval). Constructor
    arguments are checked here, so a typo in ``env.kwargs`` fails before the model loads. An env
    class may define ``prepare(progress)``, a classmethod run here once per command (CodeTools
    builds its Docker image there if it is missing).
    """
    spec = resolve(env.name)
    cls = spec.load()
    if hasattr(cls, "prepare"):  # one-time setup before any instance, e.g. a Docker image
        cls.prepare(progress=print)
    kwargs = dict(env.kwargs)
    params = _constructor_params(cls)
    if params is not None:
        if "split" in params and "split" not in kwargs:
            kwargs["split"] = split
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ConfigError(
                f"env {spec.id} has no argument {', '.join(repr(u) for u in unknown)} "
                f"(from env.kwargs); its arguments: {', '.join(sorted(params)) or 'none'}"
            )

    try:  # made once here so a bad argument value fails before the model loads
        first = gymnasium.make(spec.id, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"env {spec.id} cannot be made with env.kwargs={kwargs}: {exc}") from exc
    return spec.id, EnvMaker(spec.id, kwargs, first)


class EnvMaker:
    """Makes instances of one env with fixed kwargs; hands out the checked first instance first,
    and knows the env's own turn limit (read off that instance)."""

    def __init__(self, env_id: str, kwargs: dict[str, Any], first: gymnasium.Env):
        self.env_id, self.kwargs = env_id, kwargs
        self.turn_limit = turn_limit(first)
        self._spare = [first]

    def __call__(self) -> gymnasium.Env:
        return self._spare.pop() if self._spare else gymnasium.make(self.env_id, **self.kwargs)


def turn_limit(env: gymnasium.Env) -> int | None:
    """The env's own limit on assistant turns, or None if it declares none: the smallest of the
    ``max_turns`` or ``max_attempts`` it declares and its spec's ``max_episode_steps`` (the
    TimeLimit Gymnasium wraps it in)."""
    limits = [getattr(env.unwrapped, name, None) for name in TURN_LIMIT_ATTRS]
    limits.append(env.spec.max_episode_steps if env.spec is not None else None)
    found = [n for n in limits if isinstance(n, int) and not isinstance(n, bool) and n > 0]
    return min(found) if found else None


def max_turns(configured: int | None, env_limit: int | None, env_id: str) -> int:
    """The collector's turn budget: ``rollout.max_turns`` when set, else the env's own limit
    (no turn limit when the env declares none: it ends episodes itself, or max_tokens does).

    A configured budget below the env's own limit cuts episodes the env would continue; that is
    logged once per env and value, since it turns a multi-turn env silently into a shorter one.
    """
    if configured is None:
        return env_limit if env_limit is not None else NO_TURN_LIMIT
    if env_limit is not None and configured < env_limit and (env_id, configured) not in _WARNED:
        _WARNED.add((env_id, configured))
        log.warning(
            "rollout.max_turns=%d is below %s's own limit of %d turns: longer episodes are cut "
            "off as truncated; leave rollout.max_turns unset to use the env's limit",
            configured,
            env_id,
            env_limit,
        )
    return configured


def _constructor_params(cls: Any) -> set[str] | None:
    sig = inspect.signature(cls.__init__ if isinstance(cls, type) else cls)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None  # takes **kwargs: cannot check here
    return {n for n in sig.parameters if n != "self"}


def resolve_sampler(rollout: RolloutConfig, device: str) -> RolloutConfig:
    """``rollout`` with ``sampler=auto`` made concrete for a training run on ``device``: the
    bf16 copy on a CPU whose matmuls run bf16 natively (it decodes faster there, and the update
    corrects the small mismatch), else the exact sampler. Other backends bring their own
    weights: exact."""
    if rollout.sampler != "auto":
        return rollout
    from ptgym.agents.models import _resolve_device
    from ptgym.agents.quantized import native_bf16

    on_cpu = _resolve_device(device) == "cpu"
    fast = rollout.backend == "hf" and on_cpu and native_bf16("cpu")
    return dataclasses.replace(rollout, sampler="bf16" if fast else "exact")


def make_backend(rollout: RolloutConfig, model: Any, tokenizer: Any, model_name: str) -> Any:
    if rollout.sampler == "auto":
        raise ValueError("rollout.sampler=auto must be resolved first (build.resolve_sampler)")
    if rollout.backend == "hf" and rollout.sampler != "exact":
        from ptgym.agents.quantized import CopyBackend

        return CopyBackend(
            model, tokenizer, sampler=rollout.sampler, max_batch_size=rollout.batch_size
        )
    if rollout.backend == "hf":
        from ptgym.agents.hf import HFBackend

        return HFBackend(model, tokenizer, max_batch_size=rollout.batch_size)
    if rollout.sampler != "exact":
        raise ConfigError(
            f"rollout.sampler={rollout.sampler} needs rollout.backend=hf "
            f"(got {rollout.backend}); other backends bring their own weights"
        )
    if rollout.backend == "openai":
        from ptgym.agents.openai_backend import OpenAIBackend

        if not rollout.base_url:
            raise ConfigError("rollout.backend=openai needs rollout.base_url=http://HOST:PORT/v1")
        return OpenAIBackend(rollout.base_url, tokenizer, model=model_name)
    from ptgym.agents.vllm_backend import VLLMBackend

    return VLLMBackend(model_name, tokenizer, policy_model=model)


def make_collector(
    backend: Any,
    tokenizer: Any,
    env: EnvConfig,
    sampling: SamplingConfig,
    rollout: RolloutConfig,
    *,
    model_name: str,
    split: str = "train",
) -> Collector:
    from ptgym.agents.backend import SamplingParams
    from ptgym.agents.chat import ChatRenderer

    env_id, factory = env_factory(env, split=split)
    turns = max_turns(rollout.max_turns, factory.turn_limit, env_id)
    params = SamplingParams(
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
    )
    budget = Budget(turns, rollout.max_tokens, rollout.episode_timeout_s)
    runner = None  # the collector's own thread pool
    if rollout.collector == "ray":
        from ptgym.ray_collector import ray_runner

        runner = ray_runner(rollout, env, split=split)
    return Collector(
        backend,
        ChatRenderer(tokenizer),
        factory,
        params,
        budget,
        env_id=env_id,
        model_name=model_name,
        env_workers=rollout.env_workers,
        batch_size=rollout.batch_size,
        seed=rollout.seed,
        runner=runner,
    )


def task_seeds(rollout: RolloutConfig, batch: int) -> list[int]:
    """Seeds of batch ``batch``: consecutive, so no two batches of a run share a task seed."""
    start = rollout.seed + batch * rollout.tasks
    return list(range(start, start + rollout.tasks))
