"""Env names over Gymnasium's registry (DESIGN §2).

Gymnasium's registry is the one place an env's spec lives (entry point, constructor kwargs,
``max_episode_steps``): ``ptgym.register`` writes there, and ``gymnasium.make("ptgym/Math-v0")``
reads there. ptgym adds names only: a short alias per id (``math`` -> ``ptgym/Math-v0``), where
the registration came from, and a one-line description for ``ptgym envs list``.

An env is named, in ``ptgym.make`` and in ``env=`` on the command line, by
- a short name or an id registered in this process (built-ins, entry points, ``ptgym.register``);
- ``module:NAME``: ``module`` is imported first (it may call ``ptgym.register``), then NAME is
  looked up, as ``gymnasium.make("module:Env-v0")`` does;
- ``module:Class``: an env class, used under the id its module registered it with, else under its
  ``env_id`` attribute, else as ``module/Class-v0`` (dots in the module become ``-``);
- an entry point in the group ``ptgym.envs`` of an installed package: its name is the short name,
  its value the env class, whose optional class attributes ``env_id`` and ``max_episode_steps``
  set the id and the TimeLimit.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import os
import sys
import threading
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import gymnasium
from gymnasium.envs.registration import EnvSpec, load_env_creator

ENTRY_POINT_GROUP = "ptgym.envs"
WAYS = (
    "An env registered in code is reached as env=MODULE:NAME (MODULE is imported first; it calls "
    "ptgym.register), an env class as env=MODULE:CLASS, an installed package's env through an "
    f"entry point in the group '{ENTRY_POINT_GROUP}' (`ptgym envs new NAME` writes one)."
)


class UnknownEnvError(KeyError):
    """An env name or id that no registration knows."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


@dataclass(frozen=True)
class EnvInfo:
    """An env as ptgym shows it: Gymnasium's spec plus ptgym's names for it."""

    spec: EnvSpec
    short_name: str | None = None
    source: str = "gymnasium"
    description: str = ""

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def entry_point(self) -> Any:
        return self.spec.entry_point

    @property
    def max_episode_steps(self) -> int | None:
        return self.spec.max_episode_steps

    def load(self) -> Any:
        """The env class (or creator function) of the spec; imports its module."""
        ep = self.spec.entry_point
        return ep if callable(ep) else load_env_creator(ep)


@dataclass(frozen=True)
class _Names:
    short_name: str | None
    source: str
    description: str


_NAMES: dict[str, _Names] = {}  # env id -> ptgym's names for it (the spec is Gymnasium's)
_ALIASES: dict[str, str] = {}  # short name -> env id
_entry_point_errors: list[str] | None = None  # None until the entry points were loaded
_entry_point_lock = threading.Lock()


def register(
    id: str,
    entry_point: str | type,
    *,
    short_name: str | None = None,
    description: str = "",
    source: str = "user",
    max_episode_steps: int | None = None,
    **kwargs: Any,
) -> EnvInfo:
    """Register an env with Gymnasium under ``id`` (``namespace/Name-vN``), and a short name.

    ``entry_point`` is an env class or ``"module:Class"``; ``kwargs`` go to its constructor.
    Registering an id again replaces it, so re-running a notebook cell works.
    """
    if "-v" not in id:
        raise ValueError(f"env id {id!r} has no version: use the form 'namespace/Name-v0'")
    if isinstance(entry_point, type):
        description = description or _first_doc_line(entry_point)
        entry_point = _import_path(entry_point) or entry_point
    if id in gymnasium.registry:  # replace quietly: Gymnasium would warn on every re-run
        del gymnasium.registry[id]
    gymnasium.register(
        id=id, entry_point=entry_point, max_episode_steps=max_episode_steps, kwargs=kwargs
    )
    _NAMES[id] = _Names(short_name, source, description)
    if short_name:
        _ALIASES[short_name] = id
    return _info(id)


def _import_path(cls: type) -> str | None:
    """``"module:Class"`` when that string loads ``cls`` back (not for local or nested classes),
    so the spec stays a plain string as Gymnasium's own specs are."""
    module = sys.modules.get(cls.__module__)
    if getattr(module, cls.__qualname__, None) is cls:
        return f"{cls.__module__}:{cls.__qualname__}"
    return None


def _first_doc_line(obj: Any) -> str:
    doc = (getattr(obj, "__doc__", None) or "").strip()
    return doc.splitlines()[0] if doc else ""


def _info(env_id: str) -> EnvInfo:
    spec = gymnasium.registry[env_id]
    names = _NAMES.get(env_id)
    if names is not None:
        return EnvInfo(spec, names.short_name, names.source, names.description)
    return EnvInfo(spec, description=_first_doc_line(_loaded_creator(spec)))


def _loaded_creator(spec: EnvSpec) -> Any:
    """The spec's creator if its module is already imported, else None (listing imports nothing)."""
    ep = spec.entry_point
    if callable(ep):
        return ep
    if not isinstance(ep, str) or ep.partition(":")[0] not in sys.modules:
        return None
    try:
        return load_env_creator(ep)
    except Exception:  # a broken spec must not break listing
        return None


def load_entry_points() -> list[str]:
    """Register the envs of installed packages (group ``ptgym.envs``) once; returns load errors."""
    global _entry_point_errors
    with _entry_point_lock:  # env workers (threads, Ray actors) resolve names concurrently
        if _entry_point_errors is None:
            _entry_point_errors = _register_entry_points()
        return list(_entry_point_errors)


def _register_entry_points() -> list[str]:
    errors: list[str] = []
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else "?"
        try:
            cls = ep.load()
        except Exception as exc:
            errors.append(f"entry point {ep.name!r} from {dist}: {type(exc).__name__}: {exc}")
            continue
        register(
            getattr(cls, "env_id", None) or f"{dist}/{ep.name}-v0",
            cls,
            short_name=ep.name,
            source=f"entry point ({dist})",
            max_episode_steps=getattr(cls, "max_episode_steps", None),
        )
    return errors


def resolve(name: str) -> EnvInfo:
    """The env a name means: short name, id, ``module:NAME`` or ``module:Class``; unknown names
    get a 'did you mean' and the ways an env can be named."""
    load_entry_points()
    if ":" in name:
        return _resolve_in_module(name)
    env_id = _ALIASES.get(name, name)
    if env_id in gymnasium.registry:
        return _info(env_id)
    raise UnknownEnvError(_unknown(name, name))


def _resolve_in_module(name: str) -> EnvInfo:
    module_name, _, attr = name.partition(":")
    module = import_module(module_name, name)
    env_id = _ALIASES.get(attr, attr)
    if env_id in gymnasium.registry:
        return _info(env_id)
    obj: Any = module
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if isinstance(obj, type) and issubclass(obj, gymnasium.Env):
        return _class_env(obj, module_name)
    raise UnknownEnvError(
        _unknown(
            name,
            attr,
            f"module {module_name!r} was imported but registers no env {attr!r} and has no env "
            f"class {attr!r}.",
        )
    )


def import_module(module_name: str, name: str | None = None) -> ModuleType:
    """Import a module that registers envs (``env=module:...``, ``ptgym envs list MODULE``).

    Like uvicorn's ``app:main``, the working directory is searched too: Python puts the ``ptgym``
    script's own folder on the path, not the folder the user runs it from.
    """
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        own = exc.name is not None and (module_name + ".").startswith(exc.name + ".")
        if own and os.getcwd() not in sys.path:
            sys.path.append(os.getcwd())
            return import_module(module_name, name)
        what = f"env {name!r}" if name else f"module {module_name!r}"
        raise UnknownEnvError(
            f"{what}: cannot import module {module_name!r} ({exc}); run from the folder "
            "that holds it or add that folder to PYTHONPATH"
        ) from None


def _class_env(cls: type, module_name: str) -> EnvInfo:
    """An env class named directly: the id its module (or anyone) registered it under, else a
    new registration under its ``env_id`` attribute or ``module/Class-v0``."""
    path = _import_path(cls)
    for spec in gymnasium.registry.values():
        if spec.entry_point is cls or (path is not None and spec.entry_point == path):
            return _info(spec.id)
    namespace = module_name.replace(".", "-")  # Gymnasium's namespaces hold no dots
    return register(
        getattr(cls, "env_id", None) or f"{namespace}/{cls.__name__}-v0",
        cls,
        source=f"class ({module_name})",
        max_episode_steps=getattr(cls, "max_episode_steps", None),
    )


def _unknown(name: str, looked_up: str, why: str = "") -> str:
    known = sorted({n for i in specs() for n in (i.short_name, i.id) if n})
    close = difflib.get_close_matches(looked_up, known, n=3, cutoff=0.5)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    why = f" {why}" if why else ""
    return (
        f"unknown env {name!r}.{why}{hint} Known envs: {', '.join(known)}. "
        f"`ptgym envs list` shows them all. {WAYS}"
    )


def make(name: str, **kwargs: Any) -> gymnasium.Env:
    """``gymnasium.make`` by any name ``resolve`` knows, e.g. ``ptgym.make("math", max_attempts=3)``."""
    return gymnasium.make(resolve(name).id, **kwargs)


def specs() -> list[EnvInfo]:
    """Every env ptgym can list: those registered through ptgym (built-ins, entry points, code)
    and text envs registered with ``gymnasium.register`` directly. Built-ins first."""
    load_entry_points()
    out = [_info(i) for i in _NAMES if i in gymnasium.registry]
    for env_id, spec in gymnasium.registry.items():
        if env_id not in _NAMES and _is_text_env(_loaded_creator(spec)):
            out.append(_info(env_id))
    return sorted(out, key=lambda s: (s.source != "ptgym", s.id))


def _is_text_env(creator: Any) -> bool:
    from ptgym.env import TextEnv

    return isinstance(creator, type) and issubclass(creator, TextEnv)


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
        (
            "ptgym/Chat-v0",
            "ptgym.envs.chat:ChatEnv",
            "chat",
            "Single-turn chat scored by a reward model, a judge, or an ensemble",
            16,
        ),
        (
            "ptgym/MathTools-v0",
            "ptgym.envs.math_tools:MathToolsEnv",
            "math-tools",
            "Arithmetic too hard to do in one's head, with a python tool in Docker sandboxes",
            8,
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
