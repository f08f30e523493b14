"""Learned rewards (``ptgym.envs.rewards``): a real tiny reward model read at the last attended
token, normalisation and ensembles against hand-computed values, failures as errors."""

from __future__ import annotations

import math

import pytest
import torch

from ptgym.envs.rewards import (
    Reward,
    RewardModel,
    RunningNorm,
    Scored,
    ScoreError,
    last_token_scores,
    split_spec,
)
from tests.tiny import tiny_tokenizer

CONVERSATIONS = [
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
    [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Explain why the sky is blue, please, in some detail."},
        {"role": "assistant", "content": "Rayleigh scattering favours short wavelengths."},
    ],
    [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
]
# Ends in EOS (<|im_end|>, which is also SmolLM2's pad token) with no newline after it.
EOS_LAST_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "{% if not loop.last %}<|im_end|>\n{% else %}<|im_end|>{% endif %}{% endfor %}"
)


def make_rm(folder, *, template: str | None = None, seed: int = 0, nan: bool = False) -> str:
    """A tiny sequence-classification RM (random score head) saved as transformers would."""
    from transformers import AutoModelForSequenceClassification

    from ptgym.agents.models import pull_model

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(pull_model("tiny"), num_labels=1)
    if nan:
        with torch.no_grad():
            model.score.weight.fill_(float("nan"))
    tok = tiny_tokenizer()
    saved_template = tok.chat_template
    try:
        if template is not None:
            tok.chat_template = template
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    finally:
        tok.chat_template = saved_template
    return str(folder)


@pytest.fixture(scope="module")
def rm(tmp_path_factory):
    return RewardModel(make_rm(tmp_path_factory.mktemp("rm")), device="cpu")


def unpadded_last_score(rm: RewardModel, ids: list[int]) -> float:
    """The reference: one row, no padding, the score head on the last position's hidden state."""
    with torch.inference_mode():
        hidden = rm.model.model(input_ids=torch.tensor([ids])).last_hidden_state
        return float(rm.model.score(hidden[0, -1]))


def test_left_and_right_padding_give_the_unpadded_score(rm):
    rows = [rm.render(c) for c in CONVERSATIONS]
    assert len({len(r) for r in rows}) == 3  # different lengths: real padding
    alone = [unpadded_last_score(rm, r) for r in rows]
    left = rm.score_ids(rows, padding_side="left")
    right = rm.score_ids(rows, padding_side="right")
    assert left == pytest.approx(alone, abs=1e-4)
    assert right == pytest.approx(alone, abs=1e-4)
    assert max(alone) - min(alone) > 1e-2  # the scores differ, so the check has teeth


def test_a_text_ending_in_the_pad_token_is_scored_at_that_token(tmp_path):
    """pad == eos == <|im_end|> and the template ends with it: transformers' own pooling (the
    rightmost non-pad token) reads one token early; the scorer reads the real last token."""
    rm = RewardModel(make_rm(tmp_path / "rm", template=EOS_LAST_TEMPLATE), device="cpu")
    assert rm.tokenizer.pad_token_id == rm.tokenizer.eos_token_id
    rows = [rm.render(c) for c in CONVERSATIONS]
    assert all(r[-1] == rm.tokenizer.eos_token_id for r in rows)
    alone = [unpadded_last_score(rm, r) for r in rows]
    assert rm.score_ids(rows, padding_side="left") == pytest.approx(alone, abs=1e-4)
    assert rm.score_ids(rows, padding_side="right") == pytest.approx(alone, abs=1e-4)
    with torch.inference_mode():
        hf = rm.model(input_ids=torch.tensor([rows[0]])).logits[0, 0].item()
    assert abs(hf - alone[0]) > 1e-3  # the pitfall is real for this model


def test_no_attention_mask_with_pad_equal_to_eos_is_refused(rm):
    ids = torch.tensor([rm.render(CONVERSATIONS[0])])
    with pytest.raises(ValueError, match="attention_mask"):
        last_token_scores(rm.model, ids, None, eos_token_id=rm.tokenizer.eos_token_id)


def test_the_rm_renders_with_its_own_template_not_the_policys(tmp_path):
    plain = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    rm = RewardModel(make_rm(tmp_path / "rm", template=plain), device="cpu")
    conversation = CONVERSATIONS[1]
    expected = rm.tokenizer(
        "system: Be brief.\nuser: Explain why the sky is blue, please, in some detail.\n"
        "assistant: Rayleigh scattering favours short wavelengths.\n",
        add_special_tokens=False,
    )["input_ids"]
    assert rm.render(conversation) == expected


def test_a_ptgym_rm_output_folder_is_found_through_its_model_subfolder(tmp_path):
    make_rm(tmp_path / "out" / "model")
    assert RewardModel(str(tmp_path / "out"), device="cpu").path.endswith("model")
    with pytest.raises(FileNotFoundError, match="no reward model"):
        RewardModel(str(tmp_path / "nowhere"), device="cpu")


def test_a_nan_score_is_an_error_not_a_number(tmp_path):
    rm = RewardModel(make_rm(tmp_path / "rm", nan=True), device="cpu")
    (result,) = rm.score(CONVERSATIONS[:1])
    assert isinstance(result, ScoreError)


# --- normalisation and ensembles --------------------------------------------------------------


def test_running_norm_hand_computed():
    norm = RunningNorm()
    assert norm.normalize([1.0]) == [0.0]  # first score: mean 1, std 0
    assert norm.normalize([2.0]) == pytest.approx([1.0], abs=1e-5)  # mean 1.5, std 0.5
    # mean 2, population std sqrt(2/3) = 0.81650: (3 - 2) / 0.81650 = 1.22474
    assert norm.normalize([3.0]) == pytest.approx([1.22474], abs=1e-4)
    assert (norm.count, norm.mean, norm.std) == (3, 2.0, pytest.approx(math.sqrt(2 / 3)))

    batch = RunningNorm()
    assert batch.normalize([1.0, 2.0, 3.0]) == pytest.approx([-1.22474, 0.0, 1.22474], abs=1e-4)
    clipped = RunningNorm(clip=1.0)
    assert clipped.normalize([0.0, 0.0, 0.0, 10.0]) == pytest.approx([-0.57735] * 3 + [1.0], 1e-4)


class WordCount:
    """A rule-based reward source: the number of words in the reply."""

    name = "words"

    def score(self, conversations):
        return [float(len(c[-1]["content"].split())) for c in conversations]


class EndsWith:
    """A rule-based source: 1 if the reply ends with ``word``, else 0; no reply is an error."""

    def __init__(self, word: str, name: str = "ends"):
        self.word, self.name = word, name

    def score(self, conversations):
        out = []
        for c in conversations:
            text = c[-1]["content"]
            out.append(float(text.endswith(self.word)) if text else ScoreError("empty reply"))
        return out


def reply(text: str) -> list[dict]:
    return [{"role": "user", "content": "Say something."}, {"role": "assistant", "content": text}]


def test_ensemble_mean_and_min_of_normalised_sources_hand_computed():
    replies = [reply("a b c blue"), reply("a red"), reply("blue")]
    # words: 4, 2, 1 -> mean 7/3, std sqrt(14/9) = 1.24722 -> z = 1.33631, -0.26726, -1.06904
    # ends:  1, 0, 1 -> mean 2/3, std sqrt(2/9) = 0.47140 -> z = 0.70711, -1.41421, 0.70711
    words = [1.33631, -0.26726, -1.06904]
    ends = [0.70711, -1.41421, 0.70711]
    mean = Reward([WordCount(), EndsWith("blue")], combine="mean").score_batch(replies)
    low = Reward([WordCount(), EndsWith("blue")], combine="min").score_batch(replies)
    assert [s.reward for s in mean] == pytest.approx(
        [(w + e) / 2 for w, e in zip(words, ends, strict=True)], abs=1e-4
    )
    assert [s.reward for s in low] == pytest.approx(
        [min(w, e) for w, e in zip(words, ends, strict=True)], abs=1e-4
    )
    assert mean[0].raw == {"words": 4.0, "ends": 1.0}


def test_one_failing_source_fails_the_item_and_leaves_the_normaliser_alone():
    reward = Reward([WordCount(), EndsWith("blue")], combine="mean")
    out = reward.score_batch([reply("one blue"), reply("")])
    assert isinstance(out[0], Scored) and isinstance(out[1], ScoreError)
    assert "ends: empty reply" in str(out[1])
    assert reward.norms["words"].count == 1  # only the scored item entered the statistics


def test_concurrent_callers_are_batched_and_each_gets_its_own_score():
    import concurrent.futures as cf

    seen: list[int] = []

    class Recording(WordCount):
        def score(self, conversations):
            seen.append(len(conversations))
            return super().score(conversations)

    reward = Reward([Recording()], normalize=False, wait_s=0.2)
    texts = ["a", "a b", "a b c", "a b c d", "a b c d e", "a b c d e f"]
    with cf.ThreadPoolExecutor(6) as pool:
        scores = list(pool.map(lambda t: reward.score(reply(t)).reward, texts))
    assert scores == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert sum(seen) == 6 and len(seen) < 6  # some requests shared a batch
    with pytest.raises(ScoreError):
        Reward([EndsWith("x")]).score(reply(""))


def test_spec_parsing():
    assert split_spec("rm:/tmp/rm") == ("mean", ["rm:/tmp/rm"])
    assert split_spec("min(rm:a, judge:tiny@http://127.0.0.1:8000/v1)") == (
        "min",
        ["rm:a", "judge:tiny@http://127.0.0.1:8000/v1"],
    )
    assert split_spec("mean(rm:a,rm:b)") == ("mean", ["rm:a", "rm:b"])
    with pytest.raises(ValueError, match="rm:PATH"):
        split_spec("reward-model:/tmp/x")
    with pytest.raises(ValueError, match="rm:PATH"):
        split_spec("mean(rm:a, bogus)")


# --- ptgym doctor rm --------------------------------------------------------------------------


def doctor(capsys, *args: str) -> tuple[int, str]:
    from ptgym.cli import main

    code = main(["doctor", "rm", *args, "n=4", "batch=4", "device=cpu", "max_new_tokens=4"])
    return code, capsys.readouterr().out


def test_doctor_passes_padding_and_flags_a_policy_with_another_template(tmp_path, capsys):
    folder = make_rm(
        tmp_path / "rm", template="{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    )
    code, out = doctor(capsys, folder, "model=tiny")
    assert code == 0
    assert out.count("\nok    padding:") == 1
    assert "ok    tokenizer: the policy's vocabulary equals the RM's" in out
    assert "warn  chat template: the policy's differs from the RM's" in out
    assert "scores on 4 prompts (replies sampled from tiny)" in out


def test_doctor_warns_where_transformers_pooling_reads_the_wrong_token(tmp_path, capsys):
    code, out = doctor(capsys, make_rm(tmp_path / "rm", template=EOS_LAST_TEMPLATE))
    assert code == 0  # ptgym's own scores are padding-invariant
    assert "warn  transformers' own pooling differs" in out and "pad == eos" in out
    assert "(empty replies)" in out


def test_an_rm_trained_on_strings_is_rendered_as_prompt_response_eos(tmp_path):
    import json

    folder = make_rm(tmp_path / "rm")
    (tmp_path / "rm" / "ptgym_rm.json").write_text(json.dumps({"render": "prompt+response+eos"}))
    rm = RewardModel(folder, device="cpu")
    expected = rm.tokenizer("HiHello!<|im_end|>", add_special_tokens=False)["input_ids"]
    assert rm.render(CONVERSATIONS[0]) == expected
