"""Issue 8 #9: the env-author guide's example runs as written and passes Gymnasium's checker; the
action space admits any reply; the README says what a new user needs (tiny model, mirrors)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
from gymnasium.utils.env_checker import check_env

import ptgym
from ptgym import TextEnv
from ptgym.config import TrainCommand, compose
from ptgym.types import Action

ROOT = Path(__file__).resolve().parent.parent
GUIDE = (ROOT / "docs" / "custom-envs.md").read_text()
README = (ROOT / "README.md").read_text()


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, re.S)


def run_checked(code: str, namespace: dict) -> int:
    """Run ``code`` line by line; a line ending in ``# <Python literal>`` must produce that value
    (an expression's value, or an assignment's first target). Returns how many were checked."""
    checked = 0
    for line in code.splitlines():
        source, _, comment = line.partition("  # ")
        try:
            expected = ast.literal_eval(comment)
        except (ValueError, SyntaxError):
            exec(line, namespace)
            continue
        node = ast.parse(source).body[0]
        if isinstance(node, ast.Assign):
            exec(source, namespace)
            first = node.targets[0]
            target = first.elts[0] if isinstance(first, ast.Tuple) else first
            value = eval(ast.unparse(target), namespace)
        else:
            value = eval(source, namespace)
        assert value == expected, f"{source!r} gave {value!r}, the guide says {expected!r}"
        checked += 1
    return checked


@pytest.fixture
def my_envs(tmp_path, monkeypatch):
    """The guide's ``my_envs.py``, written out and importable, as a reader would save it."""
    (module,) = [b for b in python_blocks(GUIDE) if b.startswith("# my_envs.py\n")]
    (tmp_path / "my_envs.py").write_text(module)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_envs", raising=False)
    return module


def test_the_guides_example_env_runs_as_written_and_passes_check_env(my_envs):
    assert "render_mode: str | None = None" in my_envs
    assert "super().__init__(render_mode=render_mode)" in my_envs
    assert '"task_id": self.word' in my_envs
    usage = next(
        b for b in python_blocks(GUIDE) if b.startswith("import gymnasium\nimport my_envs")
    )
    assert run_checked(usage, {}) == 3  # every result the guide shows is what the code returns

    check_env(ptgym.make("count-vowels").unwrapped)
    check_env(ptgym.make("count-vowels", attempts=3, words=("queue",)).unwrapped)
    env = ptgym.make("count-vowels", render_mode="ansi")
    env.reset(seed=1)
    assert env.render().startswith("[user] How many vowels are in '")


def test_the_guides_env_declares_its_turn_limit(my_envs):
    from ptgym.build import turn_limit

    assert turn_limit(ptgym.make("my_envs:count-vowels", attempts=3)) == 3


def test_the_guide_says_what_task_id_is_for():
    assert 'info["task_id"]' in GUIDE and "Trajectory.task_id" in GUIDE


@pytest.mark.parametrize(
    "reply", ["\\boxed{42}", "x = 3; print(x)", "<tool_call>{}</tool_call>", "é ∑ 😀", ""]
)
def test_the_action_space_admits_any_text(reply):
    space = TextEnv().action_space
    assert space.contains(reply)
    assert space.contains(Action(reply, [], []))
    assert not space.contains(42) and not space.contains("x" * (space.max_length + 1))


def test_an_action_sample_is_short_printable_text():
    space = TextEnv().action_space
    space.seed(0)
    samples = [space.sample() for _ in range(50)]
    assert all(space.contains(s) and len(s) <= 64 for s in samples)
    assert any(not s.isalnum() for s in samples if s)  # symbols too, not just alphanumerics


def test_readme_names_the_tiny_model_the_mirrors_and_that_tiny_trains_without_lora():
    assert "ptgym models pull tiny" in README
    assert "log.tensorboard=true" in README and "log.wandb=true" in README
    assert "trains it without LoRA (`lora.enabled=false`" in README
    assert compose(TrainCommand, ["model=tiny"]).lora.enabled is False  # what the README says
    assert compose(TrainCommand, []).lora.enabled is True
