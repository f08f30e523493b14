"""Issue 8, the user's side of custom envs: an env registered in code reaches the command line as
``env=module:NAME`` or ``env=module:Class`` (#1), and an env's own turn limit is the collector's
default (#2).

The user's module is a real file in ``tmp_path``, found through the working directory (as a user
runs ``ptgym`` next to their module) or ``PYTHONPATH``.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest

from ptgym.build import make_collector, turn_limit
from ptgym.cli import main
from ptgym.config import RolloutCommand, compose
from ptgym.registry import register
from ptgym.store import TrajectoryStore
from tests.envs_for_tests import EchoEnv, ScriptedBackend, ThreeTurnEnv
from tests.tiny import tiny_tokenizer

GUESS_MODULE = '''
from typing import Any

import ptgym
from ptgym.env import action_text


class GuessEnv(ptgym.TextEnv):
    """Guess a number from 0 to 9."""

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.number = int(self.np_random.integers(10))
        self.messages = [{"role": "user", "content": "Guess my number (0-9)."}]
        return list(self.messages), {"task_id": f"guess-{self.number}"}

    def step(self, action):
        right = action_text(action).strip() == str(self.number)
        return [], float(right), True, False, {}


class UnregisteredEnv(GuessEnv):
    """The same game, registered by nobody."""


ptgym.register("mine/Guess-v0", GuessEnv, short_name="guess")
'''


def ptgym(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ptgym", *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=cwd,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "guessmod.py").write_text(GUESS_MODULE)
    return tmp_path


@pytest.mark.slow
def test_rollout_with_module_colon_short_name_from_the_users_folder(user_dir):
    out = user_dir / "run"
    args = ["rollout", "env=guessmod:guess", "model=tiny", "tasks=2", "group=2"]
    result = ptgym(*args, "sampling.max_new_tokens=4", f"out={out}", cwd=user_dir)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"4 trajectories -> {out}/trajectories")
    trajs = list(TrajectoryStore(out))
    assert len(trajs) == 4 and {t.env_id for t in trajs} == {"mine/Guess-v0"}
    assert {t.task_id for t in trajs} <= {f"guess-{n}" for n in range(10)}
    assert all(t.error is None and len(t.turns) == 1 for t in trajs)


def test_envs_list_imports_modules_from_pythonpath_and_shows_their_envs(user_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = ptgym("envs", "list", "guessmod", cwd=elsewhere, env={"PYTHONPATH": str(user_dir)})
    assert result.returncode == 0, result.stderr
    assert "guess       mine/Guess-v0       user    Guess a number from 0 to 9." in result.stdout


def test_unknown_short_name_from_the_cli_names_the_ways_that_work(user_dir):
    result = ptgym("rollout", "env=guess", "model=tiny", cwd=user_dir)
    assert result.returncode == 2
    assert result.stderr.startswith("ptgym rollout: error: unknown env 'guess'.")
    assert "env=MODULE:NAME (MODULE is imported first; it calls ptgym.register)" in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.slow
def test_train_with_module_colon_class_in_process(user_dir, monkeypatch):
    monkeypatch.chdir(user_dir)  # the working directory is searched, as from the console script
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(user_dir))])
    out = user_dir / "train"
    args = ["env=guessmod:UnregisteredEnv", "model=tiny", "tasks=2", "group=2", "steps=1"]
    assert main(["train", *args, "sampling.max_new_tokens=4", f"out={out}"]) == 0
    trajs = list(TrajectoryStore(out))
    assert len(trajs) == 4 and {t.env_id for t in trajs} == {"guessmod/UnregisteredEnv-v0"}


# --- #2: the env's own turn limit is the default ----------------------------------------------


def collect(env_name: str, *overrides: str) -> list:
    cfg = compose(RolloutCommand, [f"env={env_name}", "sampling.max_new_tokens=8", *overrides])
    tokenizer = tiny_tokenizer()
    backend = ScriptedBackend(tokenizer, ["one", "two", "three", "four"])
    collector = make_collector(
        backend, tokenizer, cfg.env, cfg.sampling, cfg.rollout, model_name="scripted"
    )
    try:
        return collector.collect([0, 1], 2)
    finally:
        collector.close()


register("tests/ThreeTurns-v0", ThreeTurnEnv)  # declares max_turns = 3
register("tests/EchoLimit-v0", EchoEnv, max_episode_steps=3)  # never ends; the spec limits it


def test_rollout_max_turns_defaults_to_unset():
    assert compose(RolloutCommand, []).rollout.max_turns is None


def test_a_three_turn_env_runs_its_three_turns_by_default(caplog):
    trajs = collect("tests/ThreeTurns-v0")
    assert [len(t.turns) for t in trajs] == [3, 3, 3, 3]
    assert all(t.terminated and not t.truncated and t.reward == 1.0 for t in trajs)
    assert "rollout.max_turns" not in caplog.text


def test_the_specs_max_episode_steps_is_the_default_limit():
    trajs = collect("tests/EchoLimit-v0")
    assert [len(t.turns) for t in trajs] == [3, 3, 3, 3]
    assert all(t.truncated and not t.terminated for t in trajs)  # Gymnasium's TimeLimit


def test_turn_limit_is_the_smallest_the_env_declares():
    assert turn_limit(gymnasium.make("tests/ThreeTurns-v0")) == 3
    assert turn_limit(gymnasium.make("tests/EchoLimit-v0")) == 3
    assert turn_limit(gymnasium.make("ptgym/Math-v0", max_attempts=2)) == 2  # spec says 16
    assert turn_limit(EchoEnv()) is None


def test_a_collector_limit_below_the_envs_is_warned_about_once(caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.build")
    first = collect("tests/ThreeTurns-v0", "rollout.max_turns=2")
    collect("tests/ThreeTurns-v0", "rollout.max_turns=2")  # a second collector, same limit
    assert [len(t.turns) for t in first] == [2, 2, 2, 2] and all(t.truncated for t in first)
    warnings = [r.getMessage() for r in caplog.records if "rollout.max_turns" in r.getMessage()]
    assert warnings == [
        "rollout.max_turns=2 is below tests/ThreeTurns-v0's own limit of 3 turns: longer "
        "episodes are cut off as truncated; leave rollout.max_turns unset to use the env's limit"
    ]


def test_a_collector_limit_at_or_above_the_envs_is_not_warned_about(caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.build")
    trajs = collect("tests/ThreeTurns-v0", "rollout.max_turns=5")
    assert [len(t.turns) for t in trajs] == [3, 3, 3, 3]
    assert "rollout.max_turns" not in caplog.text
