"""RLHF in miniature (InstructGPT's pipeline, Ouyang et al., 2022, on a tiny model in minutes):
a reward model learns a synthetic preference from pairs with ``ptgym rm``, then ``ptgym train
env=chat reward=rm:...`` raises both that RM's score and the property it stands for.

The property: the reply ends with the word "blue". A random model never writes it, so the policy
first gets a *format* warm start: a few SFT steps teaching "answer with two colour words" (eight
colours, uniformly), which says nothing about which word should come last. That policy ends with
"blue" one time in eight. The reward model sees only preference pairs (a reply ending with "blue"
preferred to one ending with another colour) and must find the rule itself; RL must then find it
again through the RM's scores.

The RM has its own chat template, unlike the policy's ChatML: plain ``role: content`` lines that
end at the reply's last word. The scorer must re-render every conversation with it (scoring the
policy's ids would read ``<|im_end|>``), and it puts the property on the RM's last token, which
the 2-layer model learns in one short epoch (ChatML's trailing ``<|im_end|>\n`` made the RM's
held-out accuracy vary between 0.58 and 1.0 from run to run).
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from ptgym.agents.chat import ChatRenderer
from ptgym.agents.models import load_model
from ptgym.cli import main
from ptgym.envs.chat import ChatEnv
from ptgym.metrics import read_metrics
from ptgym.prefs import Preference, write_preferences
from ptgym.store import TrajectoryStore
from tests.test_judge import sft_replies
from tests.tiny import tiny_tokenizer

RM_TEMPLATE = (
    "{% for m in messages %}{% if not loop.first %}\n{% endif %}"
    "{{ m['role'] }}: {{ m['content'] }}{% endfor %}"
)
COLOURS = ["red", "green", "blue", "gold", "gray", "black", "white", "brown"]
TARGET = "blue"


def ends_with_target(text: str) -> bool:
    words = text.split()
    return bool(words) and words[-1].strip(".!,") == TARGET


def synthetic_pairs(n: int, seed: int = 1) -> list[Preference]:
    rng = random.Random(seed)
    prompts = ChatEnv().prompts
    others = [c for c in COLOURS if c != TARGET]
    return [
        Preference(
            prompt=rng.choice(prompts),
            chosen=[{"role": "assistant", "content": f"{rng.choice(COLOURS)} {TARGET}"}],
            rejected=[
                {"role": "assistant", "content": f"{rng.choice(COLOURS)} {rng.choice(others)}"}
            ],
        )
        for _ in range(n)
    ]


def format_warm_start(folder) -> str:
    tok = tiny_tokenizer()
    renderer = ChatRenderer(tok)
    prompts = [renderer.initial(p) for p in ChatEnv().prompts]

    def two_colours() -> list[int]:
        text = " ".join(random.choices(COLOURS, k=2))
        return tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]

    model, tok = sft_replies(prompts, two_colours, steps=40)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.mark.slow
def test_rlhf_in_miniature_raises_the_rm_score_and_the_property(tmp_path):
    policy = format_warm_start(tmp_path / "warm")

    base, tok = load_model("tiny", device="cpu")
    tok.chat_template = RM_TEMPLATE
    base.save_pretrained(tmp_path / "rm-base")
    tok.save_pretrained(tmp_path / "rm-base")
    write_preferences(tmp_path / "prefs.jsonl", synthetic_pairs(256))
    rm_args = [f"data={tmp_path / 'prefs.jsonl'}", f"model={tmp_path / 'rm-base'}"]
    rm_args += ["model.device=cpu", "lora.enabled=false", "trainer.lr=3e-3", "trainer.batch=16"]
    rm_args += ["trainer.eval_every=0"]
    assert main(["rm", *rm_args, f"out={tmp_path / 'rm'}"]) == 0
    held_out = read_metrics(tmp_path / "rm")[-1]["eval/accuracy"]
    assert held_out >= 0.95, f"the RM reached only {held_out:.2f} held-out pairwise accuracy"

    train = [
        "env=chat",
        f"reward=rm:{tmp_path / 'rm'}",
        f"model={policy}",
        "model.device=cpu",
        "lora.enabled=false",
        "algo.beta=0",
        "tasks=16",
        "group=8",
        "sampling.max_new_tokens=6",
        "sampling.temperature=1.0",
        "trainer.lr=3e-3",
        "trainer.micro_batch=128",
        "steps=10",
        "trainer.save_every=1000",
        f"out={tmp_path / 'run'}",
    ]
    assert main(["train", *train]) == 0

    by_step: dict[int, list] = {}
    for t in TrajectoryStore(tmp_path / "run"):
        assert t.error is None, t.error
        by_step.setdefault(t.policy_version, []).append(t)
    versions = sorted(by_step)
    assert versions == list(range(10))

    def score(vs: list[int]) -> float:
        return float(np.mean([t.metrics["score/rm"] for v in vs for t in by_step[v]]))

    def rate(vs: list[int]) -> float:
        return float(
            np.mean([ends_with_target(t.messages[-1]["content"]) for v in vs for t in by_step[v]])
        )

    before, after = [0], versions[-2:]  # the warm-started policy's rollout vs the last two
    curve = " ".join(f"{rate([v]):.2f}" for v in versions)
    assert rate(before) < 0.3, f"the warm start should end with {TARGET!r} ~1/8 of the time"
    assert rate(after) >= rate(before) + 0.4, f"property rate per step: {curve}"
    assert score(after) > score(before) + 2.0, (score(before), score(after))
