"""Typed configs and Hydra-style ``key=value`` overrides (DESIGN §9).

``ptgym train env=code-tools algo=ppo model=tiny trainer.steps=50 lora.r=8`` composes:
1. the command's dataclass defaults,
2. the config-group presets chosen by ``env=``, ``model=`` and ``algo=`` (YAML files in
   ``ptgym/conf/<group>/<choice>.yaml``, each a partial config),
3. every other ``dotted.key=value`` override, merged by OmegaConf into the typed structure.
An unknown key, a bad value or an unknown choice stops with a ``ConfigError`` naming the key, the
valid keys or choices, and the closest match.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

CONF_DIR = Path(__file__).parent / "conf"


class ConfigError(ValueError):
    """A config the user wrote wrong; the message says what to change."""


def opt(
    default: Any, help: str, *, choices: tuple[str, ...] | None = None, minimum: int | None = None
) -> Any:
    """A config field with its one-line help and, where they apply, its choices and minimum.

    The help lives in the field's metadata (not in a comment) so ``--help`` and validation read
    one source that formatters cannot break.
    """
    metadata: dict[str, Any] = {"help": help}
    if choices is not None:
        metadata["choices"] = choices
    if minimum is not None:
        metadata["minimum"] = minimum
    return field(default=default, metadata=metadata)


@dataclass
class ModelConfig:
    name: str = opt(
        "smollm2-135m", "short name (smollm2-135m, tiny), a local folder or a HF model id"
    )
    dtype: str = opt(
        "auto", "auto = bf16 on GPU, fp32 on CPU", choices=("auto", "float32", "bfloat16")
    )
    device: str = opt(
        "auto", "where the model runs (auto = cuda when present)", choices=("auto", "cpu", "cuda")
    )
    chat_template: str | None = opt(None, "a Jinja chat template replacing the tokenizer's")
    gradient_checkpointing: bool = opt(False, "trade compute for memory on long trajectories")
    adapter: str | None = opt(
        None, "a PEFT LoRA folder to apply, e.g. RUN/checkpoints/step-000020/adapter"
    )


@dataclass
class LoraConfig:
    enabled: bool = opt(True, "train LoRA adapters (PEFT); false = full fine-tuning")
    r: int = opt(16, "adapter rank", minimum=1)
    alpha: int = opt(32, "scaling numerator (scale = alpha / r)")
    dropout: float = opt(0.0, "dropout on the adapter input")
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"],
        metadata={"help": "modules that get adapters"},
    )


@dataclass
class EnvConfig:
    name: str = opt("math", "short name or id from `ptgym envs list`")
    kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "passed to the env constructor"}
    )


@dataclass
class SamplingConfig:
    max_new_tokens: int = opt(128, "per turn", minimum=1)
    temperature: float = opt(1.0, "0 = greedy", minimum=0)
    top_p: float = opt(1.0, "nucleus sampling")
    top_k: int = opt(0, "0 = off", minimum=0)


@dataclass
class RolloutConfig:
    tasks: int = opt(4, "distinct tasks (prompts) per batch", minimum=1)
    group: int = opt(4, "rollouts per task: the GRPO group size (k for eval)", minimum=1)
    max_turns: int | None = opt(
        None,
        "assistant turns per episode before truncation (default: the env's own limit)",
        minimum=1,
    )
    max_tokens: int = opt(1024, "sampled tokens per trajectory before truncation", minimum=1)
    episode_timeout_s: float = opt(600.0, "wall time per episode before truncation")
    env_workers: int = opt(8, "threads stepping synchronous envs (in each actor with ray)")
    collector: str = opt(
        "local",
        "where env reset/step run: local threads, or Ray actors (pip install 'ptgym[ray]')",
        choices=("local", "ray"),
    )
    ray_actors: int = opt(2, "with collector=ray: env-worker actors", minimum=1)
    ray_num_cpus: float = opt(0.25, "with collector=ray: CPUs each env actor reserves", minimum=0)
    ray_docker: float = opt(
        0.0,
        "with collector=ray: the share of a Docker node's 'docker' resource each env actor takes "
        "(0 = none; 0.25: at most 4 sandbox actors on a node started with --resources "
        "'{\"docker\": 1}')",
        minimum=0,
    )
    ray_max_restarts: int = opt(3, "with collector=ray: restarts of a dead env actor", minimum=0)
    ray_address: str | None = opt(
        None, "with collector=ray: the cluster (default: RAY_ADDRESS, else a local Ray)"
    )
    batch_size: int = opt(32, "prompts per generation call")
    seed: int = opt(0, "seeds the tasks: task i of batch b uses seed + b * tasks + i")
    backend: str = opt("hf", "generation backend", choices=("hf", "openai", "vllm"))
    sampler: str = opt(
        "exact",
        "hf backend's weights: exact = the trainer's own fp32 forward; bf16 = a bfloat16 copy, "
        "int8 = a dynamically quantized copy, rebuilt each step (faster on a CPU; corrected by "
        "algo.correction); auto = bf16 for training on a CPU with native bf16, else exact",
        choices=("exact", "auto", "bf16", "int8"),
    )
    base_url: str | None = opt(None, "for backend=openai: the server's /v1 URL")


@dataclass
class AlgoConfig:
    name: str = opt("grpo", "the RL algorithm", choices=("grpo", "ppo"))
    credit: str = opt(
        "trajectory",
        "credit assignment (gae needs algo=ppo)",
        choices=("trajectory", "turn", "gae"),
    )
    baseline: str = opt(
        "group", "group = mean of the group, rloo = leave-one-out", choices=("group", "rloo")
    )
    scale_std: bool = opt(True, "divide group advantages by the group std (false = Dr. GRPO)")
    aggregation: str = opt(
        "token-mean",
        "loss aggregation (constant = Dr. GRPO)",
        choices=("token-mean", "seq-mean-token-mean", "constant"),
    )
    clip_low: float = opt(0.2, "ratio clip below 1 - clip_low")
    clip_high: float = opt(0.28, "ratio clip above 1 + clip_high (DAPO clip-higher)")
    beta: float = opt(0.0, "KL coefficient to the reference policy (0 = no reference pass)")
    dynamic_sampling: bool = opt(False, "drop groups whose rewards all agree (DAPO)")
    epochs: int = opt(1, "optimisation passes over each batch", minimum=1)
    gamma: float = opt(1.0, "discount over turns (turn credit) or tokens (gae)")
    lam: float = opt(0.95, "GAE lambda")
    vf_coef: float = opt(0.5, "value-loss weight (PPO)")
    value_clip: float = opt(0.2, "value clipping range (PPO)")
    correction: str = opt(
        "auto",
        "sampler/trainer mismatch correction: truncated importance weights per token or per "
        "sequence; auto = off for the exact hf sampler, token for any other",
        choices=("auto", "off", "token", "sequence"),
    )
    correction_cap: float = opt(2.0, "truncation of the sampler importance weights (TIS cap)")


@dataclass
class TrainerConfig:
    steps: int = opt(20, "optimizer steps (one rollout batch each)")
    lr: float = opt(1e-4, "learning rate (LoRA-sized; use ~1e-6 for full fine-tuning)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    micro_batch: int = opt(
        8, "rows per forward/backward; gradients accumulate over the batch", minimum=1
    )
    grad_clip: float = opt(1.0, "max global grad norm (0 = off)")
    shared_prefix: bool = opt(
        True,
        "run a prompt shared by several rows (a GRPO group) once in the update's forward "
        "pass; off: every row from position 0 (PPO's value head and gradient checkpointing "
        "always do)",
    )
    warmup_steps: int = opt(0, "linear LR warm-up steps")
    schedule: str = opt(
        "constant", "LR schedule after warm-up", choices=("constant", "linear", "cosine")
    )
    save_every: int = opt(10, "checkpoint every N steps (and at the end)")
    keep_checkpoints: int = opt(2, "older checkpoints are deleted")
    seed: int = opt(0, "seeds torch: adapter and value-head init (sampling follows rollout.seed)")
    eval_every: int = opt(
        0, "held-out greedy pass@1 (split=test) every N steps (0 = off)", minimum=0
    )
    eval_tasks: int = opt(32, "tasks in each held-out eval (the same tasks each time)", minimum=1)


@dataclass
class LogConfig:
    tensorboard: bool = opt(False, "mirror metrics to RUN/tensorboard")
    wandb: bool = opt(False, "mirror metrics to Weights & Biases")
    wandb_project: str = opt("ptgym", "W&B project name")


@dataclass
class RolloutCommand:
    env: EnvConfig = field(default_factory=EnvConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    split: str = opt("train", "which task seeds to draw", choices=("train", "test"))
    out: str | None = opt(None, "run directory (default runs/<command>-<time>)")


@dataclass
class EvalCommand(RolloutCommand):
    split: str = opt("test", "which task seeds to draw", choices=("train", "test"))


@dataclass
class TrainCommand(RolloutCommand):
    lora: LoraConfig = field(default_factory=LoraConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    log: LogConfig = field(default_factory=LogConfig)
    resume: bool = opt(False, "continue from the last checkpoint in `out`")


GROUPS = ("env", "model", "algo")
ALIASES = {
    "tasks": "rollout.tasks",
    "group": "rollout.group",
    "k": "rollout.group",
    "steps": "trainer.steps",
    "credit": "algo.credit",
    "seed": "rollout.seed",
    "reward": "env.kwargs.reward",
}


def group_choices(group: str, schema: type | None = None) -> list[str]:
    """The presets of a config group; with ``schema``, only those whose values that command's
    fields accept (``algo=dpo`` is a preset of ``ptgym dpo``, not of ``ptgym train``)."""
    names = sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
    if schema is None:
        return names
    specs = dict(field_specs(schema))

    def fits(name: str) -> bool:
        section = OmegaConf.to_container(OmegaConf.load(CONF_DIR / group / f"{name}.yaml"))
        values = section.get(group) if isinstance(section, dict) else None
        for key, value in (values or {}).items():
            spec = specs.get(f"{group}.{key}")
            choices = spec.metadata.get("choices") if spec is not None else None
            if spec is None or (choices and value not in choices):
                return False
        return True

    return [n for n in names if fits(n)]


def parse_overrides(args: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if not sep or not key:
            raise ConfigError(
                f"cannot read {arg!r}: overrides are key=value, e.g. env=math trainer.steps=20"
            )
        pairs.append((ALIASES.get(key, key), value))
    return pairs


def compose(schema: type, args: list[str]) -> Any:
    """Build a typed config object of class ``schema`` from command-line overrides."""
    cfg = OmegaConf.structured(schema)
    pairs = parse_overrides(args)
    valid = _keys(schema)
    sections = {f.name for f in fields(schema)}
    # Presets merge in the fixed order of GROUPS, whatever the order typed: the model's preset
    # (model=tiny: full fine-tuning, its own trainer.lr) wins over an env's tuned defaults.
    grouped = sorted((p for p in pairs if p[0] in GROUPS), key=lambda p: GROUPS.index(p[0]))
    for key, value in grouped:
        if key not in valid_groups(schema):
            raise ConfigError(
                f"{key}= does not apply to this command; its config groups: "
                f"{', '.join(valid_groups(schema)) or 'none'}"
            )
        preset = _group_preset(key, value, schema)
        # A preset may also set sections this command lacks (model=tiny sets trainer.lr).
        preset = OmegaConf.masked_copy(preset, [k for k in preset if k in sections])
        cfg = _merge(cfg, preset, f"{key}={value}", valid)
    dotted = [f"{k}={v}" for k, v in pairs if k not in GROUPS]
    for item in dotted:
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), item, valid)
    obj = OmegaConf.to_object(cfg)
    _validate(obj)
    return obj


def valid_groups(schema: type) -> list[str]:
    return [g for g in GROUPS if any(f.name == g for f in fields(schema))]


def _group_preset(group: str, choice: str, schema: type) -> Any:
    path = CONF_DIR / group / f"{choice}.yaml"
    if path.exists() and (group != "algo" or choice in group_choices(group, schema)):
        return OmegaConf.load(path)
    if group == "env":
        from ptgym.registry import resolve

        resolve(choice)  # raises with "did you mean" for an unknown env
        return OmegaConf.create({"env": {"name": choice}})
    if group == "model":  # a local folder or a Hugging Face id: checked when loaded
        return OmegaConf.create({"model": {"name": choice}})
    raise ConfigError(
        _unknown(f"{group}={choice}", choice, group_choices(group, schema), f"{group} choices")
    )


def _merge(cfg: Any, other: Any, what: str, valid: list[str]) -> Any:
    try:
        return OmegaConf.merge(cfg, other)
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None) or what.partition("=")[0]
        if "not in" in str(exc) or "ConfigKeyError" in type(exc).__name__:
            section = key.rpartition(".")[0]
            if section:
                siblings = [k for k in valid if k.rpartition(".")[0] == section]
            else:  # top level: sections, plain keys and the short aliases
                aliases = {a for a, target in ALIASES.items() if target in valid}
                siblings = sorted({k.partition(".")[0] for k in valid} | aliases)
            raise ConfigError(_unknown(what, key, siblings or valid, "valid keys")) from None
        value = what.partition("=")[2]
        reason = str(exc.msg or exc).splitlines()[0]  # a merge error has no msg
        raise ConfigError(f"bad value for {key!r}: {value!r} ({reason})") from None


def _unknown(what: str, name: str, valid: list[str], label: str) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {what!r}.{hint} {label}: {', '.join(valid)}"


def _keys(schema: Any) -> list[str]:
    return [key for key, _ in field_specs(schema)]


def field_specs(schema: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, dataclass Field)`` for every leaf of a config schema, in order."""
    out = []
    for f in fields(schema):
        factory = f.default_factory if f.default_factory is not MISSING else None
        if factory is not None and is_dataclass(factory):
            out.extend(field_specs(factory, f"{prefix}{f.name}."))
        else:
            out.append((prefix + f.name, f))
    return out


def _validate(obj: Any) -> None:
    for key, f in field_specs(type(obj)):
        value = _get(obj, key)
        choices = f.metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(_unknown(f"{key}={value}", str(value), list(choices), "choices"))
        minimum = f.metadata.get("minimum")
        if minimum is not None and value is not None and value < minimum:
            raise ConfigError(f"{key} must be at least {minimum}, got {value}")
    _check_model_and_mirrors(obj)
    algo = getattr(obj, "algo", None)
    if isinstance(algo, AlgoConfig) and (algo.credit == "gae") != (algo.name == "ppo"):
        raise ConfigError(
            f"algo.credit={algo.credit} does not go with algo.name={algo.name}: "
            "gae needs a critic (algo=ppo); grpo uses credit=trajectory or credit=turn"
        )
    rollout = getattr(obj, "rollout", None)
    if isinstance(rollout, RolloutConfig) and rollout.collector == "ray" and not _installed("ray"):
        raise ConfigError(
            "rollout.collector=ray needs Ray: pip install 'ptgym[ray]' (or rollout.collector=local)"
        )


def _check_model_and_mirrors(obj: Any) -> None:
    """What would otherwise fail only after the model loaded: the model name, the adapter, the
    optional mirror packages."""
    model = getattr(obj, "model", None)
    if model is not None:
        from ptgym.agents.models import adapter_problem, model_problem

        problem = model_problem(model.name)
        if problem:
            raise ConfigError(f"model={model.name}: {problem}")
        problem = model.adapter and adapter_problem(model.adapter, model.name)
        if problem:
            raise ConfigError(f"model.adapter={model.adapter}: {problem}")
        lora = getattr(obj, "lora", None)
        if model.adapter and lora is not None and not lora.enabled:
            raise ConfigError(
                f"model.adapter={model.adapter} continues training a LoRA adapter: add "
                "lora.enabled=true (model=tiny turns LoRA off)"
            )
    log = getattr(obj, "log", None)
    for mirror in ("tensorboard", "wandb"):
        if log is not None and getattr(log, mirror) and not _installed(mirror):
            raise ConfigError(
                f"log.{mirror}=true needs the {mirror} package: pip install 'ptgym[{mirror}]' "
                f"(or drop log.{mirror}=true)"
            )


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def make_out_dir(out: str) -> Path:
    """Create the run directory ``out``; a path that cannot be created is the user's ``out=``."""
    path = Path(out)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"out={out}: cannot create the run directory ({exc.strerror or exc}); "
            "choose a writable out=DIR"
        ) from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"out={out}: the run directory is not writable; choose another out=DIR")
    return path


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not hasattr(obj, part):
            return None
        obj = getattr(obj, part)
    return obj


def to_yaml(obj: Any) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(obj))


def load_yaml(schema: type, path: str | Path) -> Any:
    """Read a resolved config written by a run (``RUN/config.yaml``) back into ``schema``."""
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), OmegaConf.load(path)))
