"""Environment registry: versioned ids, short names, entry points (DESIGN §2).

Every env is registered with Gymnasium too, so ``gymnasium.make("ptgym/Math-v0")`` works. Third
party packages add envs through the entry-point group ``ptgym.envs``; each entry point's name is
the short name and its value the env class (``"mypkg.env:MyEnv"``), whose optional class
attributes ``env_id`` and ``max_episode_steps`` set the id and the TimeLimit.
"""

from __future__ import annotations

import difflib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

import gymnasium

ENTRY_POINT_GROUP = "ptgym.envs"


class UnknownEnvError(KeyError):
    """An env name or id that no registration knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass
class EnvSpec:
    id: str
    entry_point: str
    short_name: str | None = None
    description: str = ""
    source: str = "ptgym"
    max_episode_steps: int | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


_SPECS: dict[str, EnvSpec] = {}
_SHORT: dict[str, str] = {}
_entry_points_loaded = False


def register(
    id: str,
    entry_point: str | type,
    *,
    short_name: str | None = None,
    description: str = "",
    source: str = "user",
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> EnvSpec:
    """Register an env under ``id`` (``namespace/Name-vN``) and an optional short name.

    ``entry_point`` is an env class or ``"module:Class"``. Registering an id again replaces it
    (Gymnasium warns), so reloading a notebook cell works.
    """
    if isinstance(entry_point, type):
        entry_point = f"{entry_point.__module__}:{entry_point.__qualname__}"
        description = description or _first_doc_line(entry_point)
    if "-v" not in id:
        raise ValueError(f"env id {id!r} has no version: use the form 'namespace/Name-v0'")
    spec = EnvSpec(id, entry_point, short_name, description, source, max_episode_steps, kwargs)
    _SPECS[id] = spec
    if short_name:
        _SHORT[short_name] = id
    if id in gymnasium.registry:
        del gymnasium.registry[id]
    gymnasium.register(
        id=id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs
    )
    return spec


def _first_doc_line(entry_point: str) -> str:
    try:
        cls = _load(entry_point)
    except Exception:  # a broken third-party env must not break listing
        return ""
    return (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""


def _load(entry_point: str) -> Any:
    module, _, attr = entry_point.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def load_entry_points() -> list[str]:
    """Register the envs of installed packages (group ``ptgym.envs``); returns load errors."""
    global _entry_points_loaded
    errors: list[str] = []
    if _entry_points_loaded:
        return errors
    _entry_points_loaded = True
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        try:
            cls = ep.load()
        except Exception as exc:
            errors.append(f"entry point {ep.name!r} from {dist}: {type(exc).__name__}: {exc}")
            continue
        env_id = getattr(cls, "env_id", None) or f"{dist}/{ep.name}-v0"
        register(
            env_id,
            cls,
            short_name=ep.name,
            source=f"entry point ({dist})",
            max_episode_steps=getattr(cls, "max_episode_steps", None),
        )
    return errors


def resolve(name: str) -> EnvSpec:
    """The spec for a short name or a full id; unknown names get a 'did you mean'."""
    load_entry_points()
    if name in _SHORT:
        return _SPECS[_SHORT[name]]
    if name in _SPECS:
        return _SPECS[name]
    known = sorted(set(_SHORT) | set(_SPECS))
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownEnvError(
        f"unknown env {name!r}.{hint} Known envs: {', '.join(known)}. "
        "`ptgym envs list` shows them all; register your own with ptgym.register(...)."
    )


def make(name: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make`` by short name or id, e.g. ``ptgym.make("math", max_attempts=3)``."""
    spec = resolve(name)
    return gymnasium.make(spec.id, **kwargs)


def specs() -> list[EnvSpec]:
    load_entry_points()
    return sorted(_SPECS.values(), key=lambda s: (s.source != "ptgym", s.id))


def _register_builtins() -> None:
    builtin = [
        (
            "ptgym/Math-v0",
            "ptgym.envs.math:MathEnv",
            "math",
            "Verifiable math: reasoning-gym problems, answers checked with math-verify",
            16,
        ),
        (
            "ptgym/Digits-v0",
            "ptgym.envs.digits:DigitsEnv",
            "digits",
            "Toy task for learning tests: (a + b) mod 10 as one digit",
            16,
        ),
        (
            "ptgym/CodeTools-v0",
            "ptgym.envs.code_tools:CodeToolsEnv",
            "code-tools",
            "HumanEval with tools (run_python, files, tests) in Docker sandboxes",
            32,
        ),
    ]
    for env_id, entry_point, short, desc, steps in builtin:
        register(
            env_id,
            entry_point,
            short_name=short,
            description=desc,
            source="ptgym",
            max_episode_steps=steps,
        )


_register_builtins()
