"""Preference records: every TRL layout read as is, ties/skips kept but out of training, JSONL and
Dataset round trips."""

from __future__ import annotations

import json

import datasets
import pytest

from ptgym.prefs import (
    Preference,
    read_preferences,
    read_training_pairs,
    to_dataset,
    write_preferences,
)

USER = {"role": "user", "content": "Name a colour."}
SYS = {"role": "system", "content": "Be brief."}
A = {"role": "assistant", "content": "Blue."}
B = {"role": "assistant", "content": "Seven."}


def test_explicit_conversational():
    p = Preference.from_dict({"prompt": [USER], "chosen": [A], "rejected": [B]})
    assert (p.prompt, p.chosen, p.rejected, p.label) == ([USER], [A], [B], "chosen")
    assert p.conversational


def test_implicit_conversational_prompt_is_the_shared_prefix():
    p = Preference.from_dict({"chosen": [SYS, USER, A], "rejected": [SYS, USER, B]})
    assert (p.prompt, p.chosen, p.rejected) == ([SYS, USER], [A], [B])


def test_prompt_column_beside_full_conversations():
    # HuggingFaceH4/ultrafeedback_binarized: prompt is a string, chosen/rejected repeat it
    row = {"prompt": USER["content"], "chosen": [USER, A], "rejected": [USER, B]}
    p = Preference.from_dict(row)
    assert (p.prompt, p.chosen, p.rejected) == ([USER], [A], [B])


def test_string_prompt_with_assistant_only_lists_becomes_a_user_message():
    p = Preference.from_dict({"prompt": "Name a colour.", "chosen": [A], "rejected": [B]})
    assert p.prompt == [USER]


def test_explicit_standard():
    p = Preference.from_dict({"prompt": "Sky is", "chosen": " blue", "rejected": " seven"})
    assert (p.prompt, p.chosen, p.rejected) == ("Sky is", " blue", " seven")
    assert not p.conversational


def test_implicit_standard_cuts_at_a_word_boundary():
    p = Preference.from_dict({"chosen": "The answer is yes", "rejected": "The answer is yep"})
    assert (p.prompt, p.chosen, p.rejected) == ("The answer is", " yes", " yep")
    p = Preference.from_dict({"chosen": "Q: A", "rejected": "Q: AB"})
    assert (p.prompt, p.chosen, p.rejected) == ("Q:", " A", " AB")


def test_bad_records_name_the_problem():
    with pytest.raises(ValueError, match="lacks \\['rejected'\\]"):
        Preference.from_dict({"prompt": "x", "chosen": "y"})
    with pytest.raises(ValueError, match="share no leading message"):
        Preference.from_dict({"chosen": [USER, A], "rejected": [SYS, B]})
    with pytest.raises(ValueError, match="mixes strings and message lists"):
        Preference(prompt="x", chosen=[A], rejected=[B])
    with pytest.raises(ValueError, match="label 'maybe'"):
        Preference(prompt="x", chosen="a", rejected="b", label="maybe")


def _prefs() -> list[Preference]:
    return [
        Preference([USER], [A], [B], annotator="ana", time=1.5, shown_first="rejected", margin=2.0),
        Preference([USER], [A], [B], label="tie", annotator="judge:tiny"),
        Preference([USER], [B], [A], label="skip", run="runs/x", chosen_id="t1", rejected_id="t2"),
        Preference([SYS, USER], [B], [A], label="unranked", task_id="k"),
    ]


def test_jsonl_round_trip_and_labels(tmp_path):
    path = tmp_path / "prefs.jsonl"
    assert write_preferences(path, _prefs()) == 4
    assert read_preferences(path, labels=("chosen", "tie", "skip", "unranked")) == _prefs()
    assert read_preferences(path) == _prefs()[:1]  # ties, skips, unranked: not for training
    assert read_preferences(path, include_ties=True) == _prefs()[:2]
    first = json.loads(path.read_text().splitlines()[0])
    assert first == {
        "prompt": [USER],
        "chosen": [A],
        "rejected": [B],
        "verdict": "chosen",
        "margin": 2.0,
        "annotator": "ana",
        "time": 1.5,
        "shown_first": "rejected",
    }
    assert not list(tmp_path.glob(".prefs.jsonl.tmp*"))


def test_append_keeps_earlier_records_and_a_torn_tail_is_not_yet_written(tmp_path):
    path = tmp_path / "prefs.jsonl"
    write_preferences(path, _prefs()[:1])
    write_preferences(path, _prefs()[1:2], append=True)
    with open(path, "a") as f:
        f.write('{"prompt": [{"role": "us')  # a crash mid-write
    assert read_preferences(path, include_ties=True) == _prefs()[:2]


def test_a_corrupt_line_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"chosen": "a b", "rejected": "a c"}\nnot json\n')
    with pytest.raises(ValueError, match="p.jsonl:2: not a JSON line"):
        read_preferences(path)
    with pytest.raises(FileNotFoundError, match="nope.jsonl does not exist"):
        read_preferences(tmp_path / "nope.jsonl")


def test_trl_datasets_read_as_is():
    explicit = datasets.Dataset.from_dict(
        {"prompt": [[USER], [SYS, USER]], "chosen": [[A], [B]], "rejected": [[B], [A]]}
    )
    implicit = datasets.Dataset.from_dict(
        {"chosen": [[USER, A], [SYS, USER, B]], "rejected": [[USER, B], [SYS, USER, A]]}
    )
    standard = datasets.Dataset.from_dict({"chosen": ["Sky is blue"], "rejected": ["Sky is red"]})
    want = [Preference([USER], [A], [B]), Preference([SYS, USER], [B], [A])]
    assert read_preferences(explicit) == want
    assert read_preferences(implicit) == want
    assert read_preferences(standard) == [Preference("Sky is", " blue", " red")]


def test_to_dataset_round_trip_with_tool_messages():
    # Arrow unifies message structs (adds tool_calls=None to every message); reading drops them
    call = {"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}
    prefs = [*_prefs()[:2], Preference([USER], [call, A], [B], chosen_id="c")]
    ds = to_dataset(prefs)
    assert {"prompt", "chosen", "rejected", "verdict", "margin", "annotator"} <= set(
        ds.column_names
    )
    assert read_preferences(ds, include_ties=True) == prefs


def test_prefs_pairs_from_a_rollout_run(tmp_path):
    from ptgym.cli import main

    run = tmp_path / "run"
    args = ["env=math", "model=tiny", "tasks=3", "group=2", "sampling.max_new_tokens=8"]
    assert main(["rollout", *args, f"out={run}"]) == 0
    assert main(["prefs", "pairs", str(run), f"out={tmp_path / 'pairs.jsonl'}"]) == 0
    pairs = read_preferences(tmp_path / "pairs.jsonl", labels=["unranked"])
    assert len(pairs) == 3 and read_preferences(tmp_path / "pairs.jsonl") == []
    for p in pairs:
        assert p.prompt[-1]["role"] == "user" and p.chosen[0]["role"] == "assistant"
        assert p.run == str(run) and p.chosen_id != p.rejected_id and p.task_id
    assert len({p.task_id for p in pairs}) == 3  # one pair per prompt
    with pytest.raises(ValueError, match="3 are unranked: label them with `ptgym prefs judge`"):
        read_training_pairs(tmp_path / "pairs.jsonl")
    assert main(["prefs", "pairs", str(run), "per_grup=1"]) == 2  # "did you mean per_group"


def test_export_passes_trls_own_format_checks():
    data_utils = pytest.importorskip(
        "trl.data_utils", reason="trl is a test extra: pip install -e '.[test-trl]'"
    )
    from tests.tiny import tiny_tokenizer

    tok = tiny_tokenizer()
    ds = to_dataset(_prefs()[:2])
    for example in ds:
        assert data_utils.is_conversational(example)
        text = data_utils.maybe_apply_chat_template(example, tok)
        rendered = tok.apply_chat_template([USER], tokenize=False, add_generation_prompt=True)
        assert text["prompt"] == rendered
        assert text["chosen"] == "Blue.<|im_end|>\n"
    # TRL's own prompt extraction on an implicit-prompt record agrees with ours
    implicit = {"chosen": [SYS, USER, A], "rejected": [SYS, USER, B]}
    extracted = data_utils.maybe_extract_prompt(implicit)
    ours = Preference.from_dict(implicit)
    assert (extracted["prompt"], extracted["chosen"], extracted["rejected"]) == (
        ours.prompt,
        ours.chosen,
        ours.rejected,
    )
    standard = {"chosen": "Sky is blue", "rejected": "Sky is red"}
    extracted = data_utils.maybe_extract_prompt(standard)
    ours = Preference.from_dict(standard)
    assert (extracted["prompt"], extracted["chosen"]) == (ours.prompt, ours.chosen)
