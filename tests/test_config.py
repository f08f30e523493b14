"""Specification of typed configs and ``key=value`` overrides (DESIGN §9): presets compose,
aliases expand, and every mistake stops with a message that names the key and the valid choices.
"""

from __future__ import annotations

import pytest

from ptgym import config as C
from ptgym.registry import UnknownEnvError


def error(args: list[str], schema: type = C.TrainCommand) -> str:
    with pytest.raises(C.ConfigError) as err:
        C.compose(schema, args)
    return str(err.value)


def test_defaults_without_overrides():
    cfg = C.compose(C.TrainCommand, [])
    assert (cfg.env.name, cfg.model.name, cfg.algo.name, cfg.algo.credit) == (
        "math",
        "smollm2-135m",
        "grpo",
        "trajectory",
    )
    assert (cfg.trainer.steps, cfg.rollout.group, cfg.lora.r) == (20, 4, 16)


def test_group_presets_compose_and_dotted_keys_override_them():
    cfg = C.compose(
        C.TrainCommand,
        ["env=math-multiturn", "algo=ppo", "model=tiny", "lora.r=8", "sampling.max_new_tokens=64"],
    )
    assert (cfg.env.name, cfg.env.kwargs["max_attempts"], cfg.rollout.max_turns) == ("math", 3, 3)
    assert cfg.env.kwargs["generators"] == ["chain_sum", "basic_arithmetic"]
    assert (cfg.algo.name, cfg.algo.credit, cfg.algo.beta, cfg.algo.epochs) == (
        "ppo",
        "gae",
        0.02,
        2,
    )
    assert (cfg.model.name, cfg.lora.enabled, cfg.trainer.lr) == ("tiny", False, 0.001)
    assert (cfg.lora.r, cfg.sampling.max_new_tokens) == (8, 64)


def test_a_preset_given_after_a_dotted_key_does_not_undo_it():
    cfg = C.compose(C.TrainCommand, ["sampling.max_new_tokens=7", "env=digits"])
    assert cfg.sampling.max_new_tokens == 7


@pytest.mark.parametrize(
    "args", [["env=math", "model=tiny", "algo=dr-grpo"], ["algo=dr-grpo", "model=tiny", "env=math"]]
)
def test_presets_merge_in_a_fixed_order_whatever_order_they_are_typed(args):
    """env, then model, then algo: the tiny model's full-fine-tuning lr beats the math preset's
    LoRA lr, and the env's tuned algo keys survive an algo preset that does not set them."""
    cfg = C.compose(C.TrainCommand, args)
    assert (cfg.trainer.lr, cfg.lora.enabled) == (0.001, False)
    assert (cfg.rollout.tasks, cfg.rollout.group, cfg.algo.dynamic_sampling) == (8, 8, True)
    assert cfg.algo.scale_std is False  # dr-grpo's own key
    assert C.compose(C.TrainCommand, ["env=math"]).trainer.lr == 3e-4


def test_aliases_expand_to_their_keys():
    cfg = C.compose(C.TrainCommand, ["steps=7", "k=3", "tasks=2", "seed=5", "credit=turn"])
    assert (cfg.trainer.steps, cfg.rollout.group, cfg.rollout.tasks, cfg.rollout.seed) == (
        7,
        3,
        2,
        5,
    )
    assert cfg.algo.credit == "turn"


def test_env_and_model_accept_names_beyond_the_presets():
    cfg = C.compose(C.TrainCommand, ["env=ptgym/Digits-v0", "model=HuggingFaceTB/SmolLM2-360M"])
    assert (cfg.env.name, cfg.model.name) == ("ptgym/Digits-v0", "HuggingFaceTB/SmolLM2-360M")


def test_a_preset_keeps_only_the_sections_of_the_command():
    # model=tiny also sets lora and trainer, which rollout and eval do not have.
    for schema in (C.RolloutCommand, C.EvalCommand):
        assert C.compose(schema, ["model=tiny"]).model.name == "tiny"
    cfg = C.compose(C.TrainCommand, ["model=tiny"])
    assert (cfg.lora.enabled, cfg.trainer.lr) == (False, 0.001)


def test_eval_defaults_to_the_test_split():
    assert C.compose(C.EvalCommand, []).split == "test"
    assert C.compose(C.RolloutCommand, []).split == "train"


def test_unknown_key_in_a_section_names_it_lists_its_siblings_and_guesses():
    message = error(["trainer.stepz=3"])
    assert message.startswith(
        "unknown 'trainer.stepz=3'. Did you mean 'trainer.steps'? valid keys: "
    )
    assert "trainer.lr, trainer.weight_decay" in message
    assert "lora." not in message


def test_unknown_top_level_key_lists_sections_and_aliases():
    assert error(["bogus=1"]) == (
        "unknown 'bogus=1'. valid keys: algo, credit, env, group, k, log, lora, model, out, "
        "resume, rollout, sampling, seed, split, steps, tasks, trainer"
    )


def test_a_section_of_another_command_is_unknown_there():
    message = error(["trainer.steps=3"], C.RolloutCommand)
    assert message.startswith("unknown 'trainer.steps=3'. valid keys: env, group, k, model, out")
    assert "steps" not in message.partition("valid keys: ")[2].split(", ")  # no alias into trainer


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        (
            "trainer.steps=abc",
            "bad value for 'trainer.steps': 'abc' (Value 'abc' of type 'str' "
            "could not be converted to Integer)",
        ),
        (
            "lora.enabled=maybe",
            "bad value for 'lora.enabled': 'maybe' (Value 'maybe' is not a valid bool (type str))",
        ),
        (
            "trainer=3",
            "bad value for 'trainer': '3' (Merge error: int is not a subclass of "
            "TrainerConfig. value: 3)",
        ),
    ],
)
def test_a_value_of_the_wrong_type_names_the_key_and_the_problem(arg, expected):
    assert error([arg]) == expected


def test_unknown_group_choice_lists_the_choices():
    assert error(["algo=sac"]) == "unknown 'algo=sac'. algo choices: dr-grpo, grpo, ppo"
    assert (
        error(["algo=pp"])
        == "unknown 'algo=pp'. Did you mean 'ppo'? algo choices: dr-grpo, grpo, ppo"
    )


@pytest.mark.parametrize(
    ("arg", "choices"),
    [
        ("algo.name=sac", "choices: grpo, ppo"),
        ("algo.aggregation=sum", "choices: token-mean, seq-mean-token-mean, constant"),
        ("model.dtype=fp16", "choices: auto, float32, bfloat16"),
        ("rollout.backend=tgi", "choices: hf, openai, vllm"),
        ("trainer.schedule=cosin", "Did you mean 'cosine'? choices: constant, linear, cosine"),
    ],
)
def test_a_value_outside_its_choices_lists_them(arg, choices):
    assert error([arg]) == f"unknown {arg!r}. {choices}"


def test_unknown_env_says_did_you_mean():
    with pytest.raises(UnknownEnvError, match="unknown env 'maths'. Did you mean 'math'"):
        C.compose(C.TrainCommand, ["env=maths"])


def test_gae_needs_ppo_and_ppo_needs_gae():
    expected = (
        "algo.credit=gae does not go with algo.name=grpo: gae needs a critic (algo=ppo); "
        "grpo uses credit=trajectory or credit=turn"
    )
    assert error(["algo.credit=gae"]) == expected
    assert error(["algo=ppo", "credit=turn"]).startswith(
        "algo.credit=turn does not go with algo.name=ppo"
    )


def test_an_argument_that_is_not_key_value_shows_the_form():
    assert error(["steps"]) == (
        "cannot read 'steps': overrides are key=value, e.g. env=math trainer.steps=20"
    )
    assert error(["=3"]).startswith("cannot read '=3'")


POSITIVE = [k for k, f in C.field_specs(C.TrainCommand) if f.metadata.get("minimum") == 1]


def test_sizes_that_must_be_positive_are_declared_on_their_fields():
    assert {"rollout.tasks", "rollout.group", "lora.r", "algo.epochs"} <= set(POSITIVE)


@pytest.mark.parametrize("key", POSITIVE)
def test_sizes_must_be_positive(key):
    assert error([f"{key}=0"]) == f"{key} must be at least 1, got 0"


def test_resolved_config_round_trips_through_yaml(tmp_path):
    cfg = C.compose(C.TrainCommand, ["algo=ppo", "steps=3", "env=math-multiturn"])
    path = tmp_path / "config.yaml"
    path.write_text(C.to_yaml(cfg))
    assert C.load_yaml(C.TrainCommand, path) == cfg


def test_every_config_field_has_help_in_its_metadata():
    for schema in (C.TrainCommand, C.EvalCommand, C.RolloutCommand):
        missing = [k for k, f in C.field_specs(schema) if not f.metadata.get("help")]
        assert missing == []


def test_help_survives_ruff_format():
    """Help sits in field metadata, so reformatting the source cannot lose it (issue 8 #14)."""
    from ptgym.cli import describe

    lines = "\n".join(describe(C.TrainCommand))
    assert "model.adapter=None" in lines and "a PEFT LoRA folder" in lines
    assert "lora.target_modules=" in lines and "modules that get adapters" in lines
    assert "[grpo | ppo]" in lines


def test_train_lists_only_the_rl_algorithms_and_refuses_the_preference_ones():
    assert C.group_choices("algo", C.TrainCommand) == ["dr-grpo", "grpo", "ppo"]
    assert error(["algo=dpo"]).startswith("unknown 'algo=dpo'.")


def test_a_group_the_command_lacks_is_refused():
    with pytest.raises(C.ConfigError, match="algo= does not apply to this command"):
        C.compose(C.EvalCommand, ["algo=ppo"])
