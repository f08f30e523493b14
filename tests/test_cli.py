"""Specification of the ``ptgym`` command (DESIGN §9), run as the installed console script:
useful help at every level, the env listing, and config mistakes that exit 2 with one clear line.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from ptgym import config as C

ENV_PRESETS = Path(C.__file__).parent / "conf" / "env"


def ptgym(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ptgym", *args], capture_output=True, text=True, timeout=120)


def test_top_level_help_lists_every_command_with_examples():
    result = ptgym("--help")
    assert result.returncode == 0
    for command in ("train", "rollout", "eval", "envs", "sandbox", "models", "serve"):
        assert re.search(rf"^    {command} +\w", result.stdout, re.M), command
    assert "examples:\n  ptgym train env=math" in result.stdout


def test_no_command_prints_the_help_and_exits_2():
    result = ptgym()
    assert result.returncode == 2
    assert result.stdout.startswith("usage: ptgym [-h] COMMAND ...")


@pytest.mark.parametrize(
    ("command", "schema"),
    [("train", C.TrainCommand), ("rollout", C.RolloutCommand), ("eval", C.EvalCommand)],
)
def test_command_help_lists_every_config_key_with_its_default_and_help(command, schema):
    result = ptgym(command, "--help")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    for key in C._keys(schema):
        line = next((ln for ln in lines if ln.startswith(f"  {key}=")), None)
        assert line is not None, f"{key} missing from `ptgym {command} --help`"
        assert len(line.split(None, 1)) == 2, f"{key} has no help text"
    presets = sorted(path.stem for path in ENV_PRESETS.glob("*.yaml"))
    assert {"math", "digits", "code-tools"} <= set(presets)
    assert f"env=  {', '.join(presets)}" in result.stdout


def test_train_help_shows_defaults_groups_and_short_keys():
    out = ptgym("train", "--help").stdout
    assert re.search(
        r"^  trainer\.steps=20 +optimizer steps \(one rollout batch each\)$", out, re.M
    )
    assert f"algo=  {', '.join(C.group_choices('algo', C.TrainCommand))}" in out
    assert C.group_choices("algo", C.TrainCommand) == ["dr-grpo", "grpo", "ppo"]
    assert "short keys: tasks -> rollout.tasks, group -> rollout.group, k -> rollout.group" in out


def test_rollout_help_has_no_training_keys():
    out = ptgym("rollout", "--help").stdout
    assert "trainer." not in out and "algo=" not in out
    assert "steps -> trainer.steps" not in out


def test_envs_list_shows_name_id_source_and_description():
    result = ptgym("envs", "list")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "id", "source", "description"]
    assert re.search(r"^math +ptgym/Math-v0 +ptgym +Verifiable math", result.stdout, re.M)
    assert re.search(r"^digits +ptgym/Digits-v0 +ptgym +Toy task", result.stdout, re.M)
    assert re.search(r"^code-tools +ptgym/CodeTools-v0 +ptgym +HumanEval", result.stdout, re.M)


def test_envs_without_an_action_shows_usage():
    result = ptgym("envs")
    assert result.returncode == 2
    assert "the following arguments are required: ACTION" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["train", "trainer.stepz=3"],
            "ptgym train: error: unknown 'trainer.stepz=3'. Did you mean 'trainer.steps'? valid keys: ",
        ),
        (
            ["rollout", "env=maths"],
            "ptgym rollout: error: unknown env 'maths'. Did you mean 'math'",
        ),
        (
            ["eval", "model.dtype=fp16"],
            "ptgym eval: error: unknown 'model.dtype=fp16'. choices: auto, float32, bfloat16",
        ),
        (["train", "steps"], "ptgym train: error: cannot read 'steps': overrides are key=value"),
    ],
)
def test_a_bad_override_exits_2_with_one_line_on_stderr(args, message):
    result = ptgym(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(message)
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.fixture
def no_model_loads(monkeypatch):
    """Config mistakes must stop before any weights load: loading one fails the test."""
    import ptgym.agents.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(models, "load_model", refuse)


@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["train", "model=nonexistent"], "model=nonexistent"),
        (["rollout", "model=nonexistent"], "model=nonexistent"),
        (["train", "model=/no/such/folder"], "model=/no/such/folder"),
        (["eval", "model=./no/such/folder"], "model=./no/such/folder"),
        (["train", "model=tiny", "sampling.temperature=-1"], "sampling.temperature"),
        (["eval", "model=tiny", "sampling.temperature=-1"], "sampling.temperature"),
        (["train", "model=tiny", "log.tensorboard=true"], "log.tensorboard=true"),
        (["train", "model=tiny", "log.wandb=true"], "log.wandb=true"),
        (["train", "model=tiny", "out=/proc/x"], "out=/proc/x"),
        (["train", "lora.enabled=true", "model.adapter=/no/such/adapter"], "model.adapter="),
        (["eval", "model.adapter=/no/such/adapter"], "model.adapter=/no/such/adapter"),
        (["rollout", "model=tiny", "out=/proc/x"], "out=/proc/x"),
        (["eval", "model=tiny", "out=/proc/x"], "out=/proc/x"),
    ],
)
def test_config_mistakes_exit_2_with_one_line_naming_the_key_before_a_model_loads(
    args, key, capsys, monkeypatch, no_model_loads
):
    from ptgym.cli import main

    # The mirrors' packages are optional: hide them so the test holds where they are installed.
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ptgym {args[0]}: error: ") and err.count("\n") == 1, err
    assert key in err and "Traceback" not in err
