"""``ptgym envs new NAME``: write a pip-installable package holding a custom env (DESIGN §2).

The package registers its env through the entry-point group ``ptgym.envs``, so after
``pip install -e ptgym-env-NAME`` it shows up in ``ptgym envs list`` and ``ptgym train env=NAME``
works, with no change to ptgym. The files come from ``ptgym/templates/env_package/*.tmpl``
(``string.Template``: ``${name}`` placeholders, which Python code rarely contains).
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

TEMPLATE_DIR = Path(__file__).parent / "templates" / "env_package"
NAME_RULE = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")


class ScaffoldError(ValueError):
    """A name or target folder that ``new_env_package`` refuses; the message says why."""


def placeholders(name: str) -> dict[str, str]:
    """The names derived from the env's short name, e.g. ``word-reverse`` gives
    package ``ptgym_env_word_reverse``, class ``WordReverseEnv``, id ``word-reverse/WordReverse-v0``.
    """
    camel = "".join(p[:1].upper() + p[1:] for p in re.split(r"[-_]+", name) if p)
    return {
        "name": name,
        "dist": f"ptgym-env-{name}",
        "package": "ptgym_env_" + re.sub(r"-+", "_", name).lower(),
        "camel": camel,
        "cls": camel if camel.endswith("Env") else f"{camel}Env",
        "env_id": f"{name}/{camel}-v0",
    }


def new_env_package(name: str, parent: Path) -> Path:
    """Write ``parent/ptgym-env-<name>/`` (pyproject, package, tests, README); return its path.

    Refuses a name that is not letters, digits, '-' and '_' starting with a letter, a name that
    an env already has, and a folder that already exists (nothing is overwritten).
    """
    if not NAME_RULE.fullmatch(name):
        raise ScaffoldError(
            f"invalid env name {name!r}: use letters, digits, '-' and '_', starting with a letter "
            "(e.g. word-reverse)"
        )
    from ptgym.registry import UnknownEnvError, resolve

    try:
        taken = resolve(name)
    except UnknownEnvError:
        taken = None
    if taken is not None:
        raise ScaffoldError(
            f"an env named {name!r} already exists ({taken.id}, from {taken.source}); "
            "choose another name"
        )
    values = placeholders(name)
    root = Path(parent) / values["dist"]
    if root.exists():
        raise ScaffoldError(f"{root} already exists; remove it or pass another --dir")
    targets = {
        "pyproject.toml.tmpl": "pyproject.toml",
        "README.md.tmpl": "README.md",
        "package/__init__.py.tmpl": f"{values['package']}/__init__.py",
        "package/env.py.tmpl": f"{values['package']}/env.py",
        "tests/test_env.py.tmpl": "tests/test_env.py",
    }
    for template, target in targets.items():
        text = Template((TEMPLATE_DIR / template).read_text()).substitute(values)
        path = root / target
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root
