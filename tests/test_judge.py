"""The generative judge: verdict parsing and the position-bias rule by hand, then real episodes and
``ptgym prefs judge`` through the offline ``ptgym serve`` backend with tiny judges."""

from __future__ import annotations

import random

import pytest
import torch

from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.agents.models import load_model
from ptgym.agents.serve import OpenAIServer
from ptgym.cli import main
from ptgym.envs.chat import ChatEnv
from ptgym.envs.judge import (
    DEFAULT_RUBRIC,
    PAIRWISE,
    POINTWISE,
    pairwise_label,
    parse_verdict,
    rubric_value,
    transcript,
)
from ptgym.prefs import Preference, read_preferences, write_preferences

# The trained judge's one answer: a grade for pointwise prompts, "A" for pairwise ones (the last
# verdict among the asked choices counts), i.e. a judge with total position bias.
JUDGE_REPLY = "Verdict: good\nVerdict: A"


def sft_replies(prompts: list[list[int]], replies, *, steps: int, lr: float = 1e-2, seed=0):
    """Fine-tune the tiny model (full weights) to answer the rendered ``prompts`` with
    ``replies()`` (a function giving one reply's token ids, EOS included). Only the reply
    positions pass through the vocabulary projection, which keeps a step cheap."""
    random.seed(seed)
    torch.manual_seed(seed)
    model, tok = load_model("tiny", device="cpu", dtype="float32")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        rows = [(p, replies()) for p in random.choices(prompts, k=16)]
        T = max(len(p) + len(r) for p, r in rows)
        ids = torch.full((len(rows), T), tok.pad_token_id)
        attn = torch.zeros((len(rows), T), dtype=torch.long)
        for i, (p, r) in enumerate(rows):
            ids[i, : len(p) + len(r)] = torch.tensor(p + r)
            attn[i, : len(p) + len(r)] = 1
        hidden = model.model(input_ids=ids, attention_mask=attn).last_hidden_state  # (B, T, H)
        h = torch.cat(
            [hidden[i, len(p) - 1 : len(p) + len(r) - 1] for i, (p, r) in enumerate(rows)]
        )
        y = torch.cat([ids[i, len(p) : len(p) + len(r)] for i, (p, r) in enumerate(rows)])
        loss = torch.nn.functional.cross_entropy(model.lm_head(h), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, tok


def test_verdicts_are_read_from_the_last_verdict_line():
    assert parse_verdict("It is clear.\nVerdict: good", DEFAULT_RUBRIC) == "good"
    assert parse_verdict(
        "Verdict: poor ... on reflection, Verdict: **Excellent**", DEFAULT_RUBRIC
    ) == ("excellent")
    assert parse_verdict("Verdict: splendid", DEFAULT_RUBRIC) is None
    assert parse_verdict("good", DEFAULT_RUBRIC) is None  # a grade without the verdict line
    assert [rubric_value(c, DEFAULT_RUBRIC) for c in DEFAULT_RUBRIC] == pytest.approx(
        [0.0, 1 / 3, 2 / 3, 1.0]
    )


def test_only_a_pick_that_survives_swapping_the_order_counts():
    # first: x shown as A; second: y shown as A
    assert pairwise_label("A", "B") == "x"  # x both times
    assert pairwise_label("B", "A") == "y"  # y both times
    assert pairwise_label("A", "A") == "tie"  # always the first shown: position bias
    assert pairwise_label("B", "B") == "tie"
    assert pairwise_label("A", "tie") == "tie"


@pytest.fixture(scope="module")
def served_judges(tmp_path_factory):
    """Two judges behind ``ptgym serve``: the untrained tiny model (never writes a verdict) and
    a tiny model fine-tuned to answer every judge prompt with ``JUDGE_REPLY``."""
    _, tok = load_model("tiny", device="cpu")
    renderer = ChatRenderer(tok)
    words = ["Hi", "Hello", "Blue.", "Red.", "Green.", "A colour.", "Sure!", "No idea."]
    rng = random.Random(0)
    texts = []
    for question in ["Say hi.", "Name a colour.", "Help me.", "What is 2+2?"]:
        asked = [{"role": "user", "content": question}]
        for _ in range(4):
            reply, other = rng.sample(words, 2)
            shown = transcript([*asked, {"role": "assistant", "content": reply}])
            texts.append(POINTWISE.format(conversation=shown, choices=", ".join(DEFAULT_RUBRIC)))
            texts.append(PAIRWISE.format(conversation=transcript(asked), a=reply, b=other))
    prompts = [renderer.initial([{"role": "user", "content": t}]) for t in texts]
    reply = tok(JUDGE_REPLY, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    trained, _ = sft_replies(prompts, lambda: reply, steps=40)
    folder = tmp_path_factory.mktemp("judge") / "judge"
    trained.save_pretrained(folder)
    tok.save_pretrained(folder)
    untrained, _ = load_model("tiny", device="cpu")
    servers = {
        "trained": OpenAIServer(HFBackend(trained, tok), str(folder), port=0).start(),
        "untrained": OpenAIServer(HFBackend(untrained, tok), "tiny", port=0).start(),
    }
    yield {
        "trained": f"{folder}@{servers['trained'].url}",
        "untrained": f"tiny@{servers['untrained'].url}",
    }
    for server in servers.values():
        server.close()


def judge_env(spec: str) -> ChatEnv:
    return ChatEnv(reward=f"judge:{spec}", normalize=False, judge={"max_new_tokens": 16})


@pytest.mark.slow
def test_a_judge_episode_through_ptgym_serve_is_scored_on_the_rubric(served_judges):
    env = judge_env(served_judges["trained"])
    env.reset(options={"index": 0})
    _, reward, terminated, _, info = env.step("Here is a helpful answer.")
    assert "error" not in info, info
    assert terminated and reward == pytest.approx(2 / 3)  # "good" on poor < fair < good < excellent
    assert info["score/judge"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_a_judge_that_gives_no_verdict_is_an_error_not_a_score(served_judges):
    env = judge_env(served_judges["untrained"])
    env.reset(options={"index": 0})
    _, reward, terminated, _, info = env.step("Here is a helpful answer.")
    assert terminated and reward == 0.0
    assert "no verdict" in info["error"] and "score/judge" not in info


@pytest.mark.slow
def test_prefs_judge_scores_a_position_biased_judge_as_ties(tmp_path, served_judges):
    prompt = [{"role": "user", "content": "Name a colour."}]
    pairs = [
        Preference(
            prompt,
            [{"role": "assistant", "content": a}],
            [{"role": "assistant", "content": b}],
            label="unranked",
            chosen_id=f"x{i}",
            rejected_id=f"y{i}",
        )
        for i, (a, b) in enumerate([("Blue.", "Red."), ("Green.", "A colour.")])
    ]
    write_preferences(tmp_path / "pairs.jsonl", pairs)
    out = tmp_path / "judged.jsonl"
    args = ["prefs", "judge", str(tmp_path / "pairs.jsonl"), f"judge={served_judges['trained']}"]
    assert main([*args, f"out={out}", "max_new_tokens=16", "device=cpu"]) == 0
    judged = read_preferences(out, labels=["tie", "chosen"])
    assert [p.label for p in judged] == ["tie", "tie"]  # it always picked A: a flip each time
    folder = served_judges["trained"].partition("@")[0]
    assert all(p.annotator == f"judge:{folder}" and p.time for p in judged)
    assert [p.chosen_id for p in judged] == ["x0", "x1"]
    assert main([*args, f"out={out}"]) == 2  # never overwrites a judged file
