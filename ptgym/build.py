"""Turn configs into the running parts: env factory, generation backend, collector.

Shared by ``train``, ``rollout`` and ``eval`` so the three commands build the same thing.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import gymnasium

from ptgym.config import ConfigError, EnvConfig, RolloutConfig, SamplingConfig
from ptgym.registry import resolve
from ptgym.rollout import Budget, Collector


def env_factory(env: EnvConfig, *, split: str = "train") -> tuple[str, Callable[[], gymnasium.Env]]:
    """The env's id and a function that makes one instance.

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
        spare = [gymnasium.make(spec.id, **kwargs)]
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"env {spec.id} cannot be made with env.kwargs={kwargs}: {exc}") from exc

    def make() -> gymnasium.Env:
        return spare.pop() if spare else gymnasium.make(spec.id, **kwargs)

    return spec.id, make


def _constructor_params(cls: Any) -> set[str] | None:
    sig = inspect.signature(cls.__init__ if isinstance(cls, type) else cls)
    if any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values()):
        return None  # takes **kwargs: cannot check here
    return {n for n in sig.parameters if n != "self"}


def make_backend(rollout: RolloutConfig, model: Any, tokenizer: Any, model_name: str) -> Any:
    if rollout.backend == "hf":
        from ptgym.agents.hf import HFBackend

        return HFBackend(model, tokenizer, max_batch_size=rollout.batch_size)
    if rollout.backend == "openai":
        from ptgym.agents.openai_backend import OpenAIBackend

        if not rollout.base_url:
            raise ConfigError("rollout.backend=openai needs rollout.base_url=http://HOST:PORT/v1")
        return OpenAIBackend(rollout.base_url, tokenizer, model=model_name)
    from ptgym.agents.vllm_backend import VLLMBackend

    return VLLMBackend(model_name, tokenizer)


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
    params = SamplingParams(
        max_new_tokens=sampling.max_new_tokens,
        temperature=sampling.temperature,
        top_p=sampling.top_p,
        top_k=sampling.top_k,
    )
    budget = Budget(rollout.max_turns, rollout.max_tokens, rollout.episode_timeout_s)
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
    )


def task_seeds(rollout: RolloutConfig, batch: int) -> list[int]:
    """Seeds of batch ``batch``: consecutive, so no two batches of a run share a task seed."""
    start = rollout.seed + batch * rollout.tasks
    return list(range(start, start + rollout.tasks))
