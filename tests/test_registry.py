"""Specification of the env registry (DESIGN §2): Gymnasium's registry holds every spec and ptgym
adds short names; versioned ids, custom envs in code, ``module:NAME`` and ``module:Class``, and
"did you mean" for unknown names. Entry points of installed packages are covered end to end in
test_scaffold.py; ``env=module:NAME`` on the command line in test_issue8_envs.py.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import pytest

import ptgym
from ptgym import TextEnv
from ptgym.build import env_factory
from ptgym.config import EnvConfig
from ptgym.envs.digits import DigitsEnv
from ptgym.envs.math import MathEnv
from ptgym.registry import UnknownEnvError, resolve, specs


class EchoEnv(TextEnv):
    """Echo: reward 1 for repeating the prompt."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.messages = [{"role": "user", "content": "say hi"}]
        return list(self.messages), {}

    def step(self, action: str):
        return [], float(action == "say hi"), True, False, {}


@pytest.mark.parametrize(
    ("name", "env_id", "cls"),
    [("math", "ptgym/Math-v0", MathEnv), ("digits", "ptgym/Digits-v0", DigitsEnv)],
)
def test_builtins_resolve_by_short_name_and_by_id(name, env_id, cls):
    assert resolve(name) == resolve(env_id)
    spec = resolve(name)
    assert (spec.id, spec.short_name, spec.source) == (env_id, name, "ptgym")
    assert spec.spec is gymnasium.spec(env_id)  # Gymnasium's own spec object, not a copy
    assert isinstance(ptgym.make(name).unwrapped, cls)


def test_code_tools_is_registered_without_importing_docker():
    spec = resolve("code-tools")
    assert (spec.id, spec.entry_point) == (
        "ptgym/CodeTools-v0",
        "ptgym.envs.code_tools:CodeToolsEnv",
    )


def test_gymnasium_make_by_id_after_import_ptgym():
    env = gymnasium.make("ptgym/Math-v0")
    assert isinstance(env.unwrapped, MathEnv)
    assert env.spec.max_episode_steps == 16  # the TimeLimit of the registration
    obs, info = env.reset(seed=0)
    assert obs[-1]["role"] == "user" and "answer" in info


def test_make_passes_constructor_arguments():
    env = ptgym.make("math", max_attempts=3)
    assert env.spec.kwargs == {"max_attempts": 3}


def test_register_a_custom_class_then_make_it_by_short_name_or_id():
    spec = ptgym.register("test/Echo-v0", EchoEnv, short_name="echo", max_episode_steps=1)
    assert spec.spec is gymnasium.spec("test/Echo-v0")
    assert (spec.id, spec.entry_point, spec.max_episode_steps, spec.spec.kwargs) == (
        "test/Echo-v0",
        f"{__name__}:EchoEnv",
        1,
        {},
    )
    assert (spec.short_name, spec.source, spec.description) == (
        "echo",
        "user",
        "Echo: reward 1 for repeating the prompt.",
    )
    env = ptgym.make("echo")
    env.reset(seed=0)
    assert env.step("say hi")[1:4] == (1.0, True, True)  # terminated, and the 1-step TimeLimit
    assert isinstance(gymnasium.make("test/Echo-v0").unwrapped, EchoEnv)
    assert spec in specs() and specs()[-1].source != "ptgym"  # built-ins are listed first


def test_registering_an_id_again_replaces_it():
    ptgym.register("test/Again-v0", EchoEnv, description="first")
    ptgym.register("test/Again-v0", f"{__name__}:EchoEnv", description="second")
    assert resolve("test/Again-v0").description == "second"
    assert gymnasium.make("test/Again-v0").spec.entry_point == f"{__name__}:EchoEnv"


def test_an_id_without_a_version_is_refused():
    with pytest.raises(ValueError, match="env id 'test/Echo' has no version: use the form"):
        ptgym.register("test/Echo", EchoEnv)


def test_unknown_name_says_did_you_mean_and_lists_known_envs():
    with pytest.raises(UnknownEnvError) as err:
        ptgym.make("maths")
    message = str(err.value)
    assert message.startswith("unknown env 'maths'. Did you mean 'math'")
    assert "Known envs: " in message and "ptgym/Digits-v0" in message
    assert "`ptgym envs list` shows them all." in message
    assert "env=MODULE:NAME (MODULE is imported first; it calls ptgym.register)" in message
    assert "an env class as env=MODULE:CLASS" in message
    assert "entry point in the group 'ptgym.envs'" in message
    assert "\n" not in message


def test_unknown_name_without_a_close_match_has_no_guess():
    with pytest.raises(UnknownEnvError) as err:
        resolve("zzzzzz")
    assert "Did you mean" not in str(err.value)
    assert str(err.value).startswith("unknown env 'zzzzzz'. Known envs: ")


def test_gymnasium_registry_is_the_only_source_of_specs():
    ptgym.register("test/Gone-v0", EchoEnv, short_name="gone")
    assert resolve("gone").id == "test/Gone-v0"
    del gymnasium.registry["test/Gone-v0"]  # whatever Gymnasium no longer knows, ptgym does not
    with pytest.raises(UnknownEnvError, match="unknown env 'gone'"):
        resolve("gone")
    assert all(s.id != "test/Gone-v0" for s in specs())


def test_a_text_env_registered_with_gymnasium_directly_is_made_and_listed():
    gymnasium.register("test/Plain-v0", entry_point=EchoEnv, max_episode_steps=2)
    info = resolve("test/Plain-v0")
    assert (info.short_name, info.source, info.max_episode_steps) == (None, "gymnasium", 2)
    assert info.description == "Echo: reward 1 for repeating the prompt."
    assert info in specs()
    assert isinstance(ptgym.make("test/Plain-v0").unwrapped, EchoEnv)


def test_a_class_defined_in_a_function_is_registered_as_a_class_and_built():
    class LocalEnv(EchoEnv):
        """Local: not importable by a 'module:Class' path."""

    info = ptgym.register("test/Local-v0", LocalEnv, short_name="local")
    assert info.entry_point is LocalEnv and info.load() is LocalEnv
    env_id, make = env_factory(EnvConfig(name="local"))
    assert env_id == "test/Local-v0" and isinstance(make().unwrapped, LocalEnv)


def test_module_colon_name_imports_the_module_first(tmp_path, monkeypatch):
    (tmp_path / "reg_colon_mod.py").write_text(
        "import ptgym\n"
        "class ColonEnv(ptgym.TextEnv):\n"
        "    pass\n"
        "ptgym.register('test/Colon-v0', ColonEnv, short_name='colon')\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownEnvError):
        resolve("colon")  # nothing imported the module yet
    assert resolve("reg_colon_mod:colon").id == "test/Colon-v0"
    assert resolve("reg_colon_mod:test/Colon-v0").id == "test/Colon-v0"
    assert type(ptgym.make("reg_colon_mod:colon").unwrapped).__name__ == "ColonEnv"


def test_module_colon_class_uses_the_class_registration():
    assert resolve("ptgym.envs.digits:DigitsEnv").id == "ptgym/Digits-v0"


def test_module_colon_class_of_an_unregistered_class_gets_a_module_id(tmp_path, monkeypatch):
    (tmp_path / "reg_class_mod.py").write_text(
        "import ptgym\n"
        "class ShoutEnv(ptgym.TextEnv):\n"
        "    '''Shout: the same task, louder.'''\n"
        "    max_episode_steps = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    info = resolve("reg_class_mod:ShoutEnv")
    assert (info.id, info.max_episode_steps, info.description) == (
        "reg_class_mod/ShoutEnv-v0",
        3,
        "Shout: the same task, louder.",
    )
    assert resolve("reg_class_mod:ShoutEnv") == info  # the second time, its registration
    assert gymnasium.make("reg_class_mod/ShoutEnv-v0").spec.max_episode_steps == 3


def test_a_class_in_a_dotted_module_gets_a_valid_gymnasium_id(tmp_path, monkeypatch):
    (tmp_path / "regdotpkg").mkdir()
    (tmp_path / "regdotpkg" / "__init__.py").write_text("")
    (tmp_path / "regdotpkg" / "inner.py").write_text(
        "import ptgym\n\n\nclass QuietEnv(ptgym.TextEnv):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert resolve("regdotpkg.inner:QuietEnv").id == "regdotpkg-inner/QuietEnv-v0"


def test_module_colon_name_errors_name_the_module_and_the_fix(tmp_path, monkeypatch):
    with pytest.raises(UnknownEnvError) as err:
        resolve("no_such_module_xyz:guess")
    assert str(err.value) == (
        "env 'no_such_module_xyz:guess': cannot import module 'no_such_module_xyz' "
        "(No module named 'no_such_module_xyz'); run from the folder that holds it or add that "
        "folder to PYTHONPATH"
    )
    (tmp_path / "reg_empty_mod.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(UnknownEnvError) as err:
        resolve("reg_empty_mod:maths")
    assert str(err.value).startswith(
        "unknown env 'reg_empty_mod:maths'. module 'reg_empty_mod' was imported but registers no "
        "env 'maths' and has no env class 'maths'. Did you mean 'math'"  # (or 'math-tools')
    )
