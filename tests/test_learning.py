"""Learning tests: the tiny model, trained by ``ptgym.trainer.train``, rises from chance to solved.

Task: Digits-v0 with ``op="copy"``: the prompt is a single digit (a bare chat template renders the
message text only) and the reward is 1 iff the reply's first character is that digit. A random
model almost never answers with a digit at all (49,152 tokens), so it first gets a *format* warm
start: a few SFT steps on random digits, which teach "answer with one digit" and nothing about
which one. That policy is at chance (0.1); reinforcement learning alone must find the right digit
for each of the 10 prompts.

Why this task and not (a + b) mod 10: the 2-layer, 64-wide random model did learn single prompts in
a few steps, but over many prompts GRPO first learns the answer that is most often right (the
marginal mode), entropy collapses, and the run stalls near 0.3 (measured with operands=3, several
learning rates, with and without LoRA). Copying the last prompt token has a uniform marginal and is
within the tiny model's reach, so the test measures the trainer, not the model's capacity.
Sampling is seeded per episode (ptgym.rollout.turn_seed), so a run is reproducible.
"""

from __future__ import annotations

import random

import pytest
import torch

from ptgym import losses as L
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.models import load_model
from ptgym.config import LoraConfig, TrainCommand, compose
from ptgym.envs.digits import DigitsEnv
from ptgym.metrics import read_metrics
from ptgym.policy import Policy
from ptgym.trainer import train

BARE_TEMPLATE = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
PROMPT = "{a}"
OPERANDS = 10


def format_warm_start(out_dir, steps: int = 40, lr: float = 1e-2) -> str:
    """SFT the tiny model to answer every prompt with a uniformly random digit; save it."""
    random.seed(0)
    torch.manual_seed(0)
    model, tok = load_model("tiny", device="cpu")
    tok.chat_template = BARE_TEMPLATE
    policy = Policy(
        model, tok, lora=LoraConfig(enabled=False), value_head=False, need_reference=False
    )
    renderer = ChatRenderer(tok)
    env = DigitsEnv(op="copy", prompt=PROMPT, operands=OPERANDS)
    prompts = [
        renderer.initial(env.reset(options={"index": i})[0], None) for i in range(env.num_tasks)
    ]
    digits = [tok.convert_tokens_to_ids(str(d)) for d in range(10)]
    opt = torch.optim.AdamW(policy.trainable_parameters(), lr=lr)
    for _ in range(steps):
        rows = [
            p + [random.choice(digits), tok.eos_token_id] for p in random.choices(prompts, k=32)
        ]
        T = max(map(len, rows))
        ids = torch.tensor([r + [tok.pad_token_id] * (T - len(r)) for r in rows])
        attn = torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in rows])
        mask = torch.zeros(len(rows), T)
        for i, r in enumerate(rows):
            mask[i, len(r) - 2 : len(r)] = 1.0  # the digit and the EOS
        out = policy(ids, attn, first=int(mask.any(0).nonzero()[0]))
        loss, _ = L.sft_loss(out.logprobs, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return str(out_dir)


@pytest.fixture(scope="module")
def warm_model(tmp_path_factory):
    return format_warm_start(tmp_path_factory.mktemp("warm"))


def _run(tmp_path, warm_model, *extra: str) -> list[dict]:
    cfg = compose(
        TrainCommand,
        [
            "env=digits",
            f"model={warm_model}",
            "lora.enabled=false",
            "model.device=cpu",
            "env.kwargs={op: copy, operands: " + str(OPERANDS) + ", prompt: '" + PROMPT + "'}",
            "sampling.max_new_tokens=2",
            "tasks=16",
            "group=16",
            "trainer.micro_batch=128",
            "trainer.save_every=1000",
            f"out={tmp_path / 'run'}",
            *extra,
        ],
    )
    cfg.model.chat_template = BARE_TEMPLATE
    train(cfg, log=lambda *_: None)
    return read_metrics(tmp_path / "run")


def _smoothed(metrics: list[dict], key: str = "reward/mean", window: int = 3) -> list[float]:
    r = [m[key] for m in metrics]
    return [sum(r[i : i + window]) / window for i in range(len(r) - window + 1)]


@pytest.mark.slow
def test_grpo_learns_digits_from_chance(tmp_path, warm_model):
    metrics = _run(tmp_path, warm_model, "algo=grpo", "trainer.lr=3e-3", "trainer.steps=80")
    first = metrics[0]["reward/mean"]
    assert first < 0.3, f"the warm-started policy should be near chance (0.1), got {first}"
    best = max(_smoothed(metrics))
    assert best >= 0.9, f"GRPO reached only {best:.2f} (3-step mean); curve: " + " ".join(
        f"{m['reward/mean']:.2f}" for m in metrics
    )


@pytest.mark.slow
def test_ppo_learns_digits(tmp_path, warm_model):
    metrics = _run(
        tmp_path, warm_model, "algo=ppo", "algo.beta=0.0", "trainer.lr=3e-3", "trainer.steps=80"
    )
    assert metrics[0]["reward/mean"] < 0.3
    best = max(_smoothed(metrics))
    assert best >= 0.6, f"PPO reached only {best:.2f} (3-step mean); curve: " + " ".join(
        f"{m['reward/mean']:.2f}" for m in metrics
    )


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ["int8", "bf16"])
def test_grpo_learns_digits_with_a_fast_sampler_and_its_correction(tmp_path, warm_model, sampler):
    """Issue 12: sampling from a cheaper copy (not the trainer's forward) with truncated
    importance weights (algo.correction=auto -> token) learns as the exact sampler does."""
    metrics = _run(
        tmp_path, warm_model, "algo=grpo", "trainer.lr=3e-3", "trainer.steps=80",
        f"rollout.sampler={sampler}",
    )  # fmt: skip
    assert all(m["rollout/sampler_kl"] > 0 for m in metrics if "rollout/sampler_kl" in m)
    assert any("rollout/sampler_kl" in m for m in metrics)
    assert metrics[0]["reward/mean"] < 0.3
    best = max(_smoothed(metrics))
    assert best >= 0.9, f"GRPO with {sampler} reached only {best:.2f}; curve: " + " ".join(
        f"{m['reward/mean']:.2f}" for m in metrics
    )
