"""Specification of the env registry (DESIGN §2): versioned ids, short names, Gymnasium
registration, custom envs in code, and "did you mean" for unknown names. Entry points of installed
packages are covered end to end in test_scaffold.py.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import pytest

import ptgym
from ptgym import TextEnv
from ptgym.envs.digits import DigitsEnv
from ptgym.envs.math import MathEnv
from ptgym.registry import EnvSpec, UnknownEnvError, resolve, specs


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
    assert resolve(name) is resolve(env_id)
    spec = resolve(name)
    assert (spec.id, spec.short_name, spec.source) == (env_id, name, "ptgym")
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
    assert spec == EnvSpec(
        "test/Echo-v0",
        f"{__name__}:EchoEnv",
        "echo",
        "Echo: reward 1 for repeating the prompt.",
        "user",
        1,
        {},
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
    assert "`ptgym envs list` shows them all; register your own with ptgym.register(...)" in message


def test_unknown_name_without_a_close_match_has_no_guess():
    with pytest.raises(UnknownEnvError) as err:
        resolve("zzzzzz")
    assert "Did you mean" not in str(err.value)
    assert str(err.value).startswith("unknown env 'zzzzzz'. Known envs: ")
