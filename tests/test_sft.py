"""``ptgym sft``: the loss mask is the model's tokens exactly; the loss falls on the tiny model;
ptgym's own export feeds it, filtered by reward."""

from __future__ import annotations

import json

import pytest

from ptgym.agents.chat import ChatRenderer
from ptgym.config import compose
from ptgym.prefconfig import SFTCommand
from ptgym.prefdata import encode_messages
from ptgym.sft import pack, read_conversations, train_sft
from tests.tiny import tiny_tokenizer

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Sum 2 and 3"},
    {"role": "assistant", "content": "It is 5"},
]


def ids(text: str) -> list[int]:
    return tiny_tokenizer()(text, add_special_tokens=False)["input_ids"]


def test_mask_covers_assistant_content_and_end_of_turn_only():
    tok = tiny_tokenizer()
    row = encode_messages(ChatRenderer(tok), CONV)
    text = tok.apply_chat_template(CONV, tokenize=False)
    assert row.ids == ids(text)  # the same ids as tokenising the whole render
    trained = [i for i, m in zip(row.ids, row.mask, strict=True) if m]
    assert trained == ids("Hello there<|im_end|>") + ids("It is 5<|im_end|>")
    # the trained spans sit right after each "<|im_start|>assistant\n" header
    first = row.mask.index(1)
    header = ids("<|im_start|>assistant\n")
    assert row.ids[first - len(header) : first] == header


def test_train_from_masks_only_the_completion():
    row = encode_messages(ChatRenderer(tiny_tokenizer()), CONV, train_from=3)
    assert [i for i, m in zip(row.ids, row.mask, strict=True) if m] == ids("It is 5<|im_end|>")


def test_pack_keeps_whole_rows_within_the_limit():
    from ptgym.prefdata import Encoded

    rows = [Encoded([1] * n, [1] * n) for n in (5, 4, 3, 2)]
    bins = pack(rows, 7)
    assert sorted(len(b.ids) for b in bins) == [7, 7]
    assert sum(sum(b.mask) for b in bins) == 14


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reads_trl_layouts_and_ptgym_export_with_reward_filter(tmp_path):
    export = tmp_path / "export.jsonl"
    _write(
        export,
        [
            {"messages": CONV[1:3], "reward": 1.0, "error": None},
            {"messages": CONV[1:3], "reward": 0.0, "error": None},
            {"messages": CONV[1:3], "reward": 1.0, "error": "timeout"},
        ],
    )
    assert len(read_conversations(str(export))) == 2
    assert read_conversations(str(export), min_reward=0.5) == [(CONV[1:3], 0)]
    trl = tmp_path / "trl.jsonl"
    _write(trl, [{"prompt": CONV[:2], "completion": CONV[2:3]}])
    assert read_conversations(str(trl)) == [(CONV[:3], 2)]
    with pytest.raises(ValueError, match="min_reward needs ptgym's export"):
        read_conversations(str(trl), min_reward=0.5)
    _write(trl, [{"text": "x"}])
    with pytest.raises(ValueError, match="need 'messages'"):
        read_conversations(str(trl))


def test_loss_decreases_on_the_tiny_model(tmp_path):
    from ptgym.metrics import read_metrics

    data = tmp_path / "sft.jsonl"
    _write(data, [{"messages": CONV} for _ in range(8)])
    cfg = compose(
        SFTCommand,
        [f"data={data}", "model=tiny", f"out={tmp_path / 'out'}", "trainer.epochs=12"]
        + ["trainer.batch=4", "trainer.eval_fraction=0", "packing=true", "trainer.max_length=256"],
    )
    train_sft(cfg, log=lambda _: None)
    losses = [r["loss/loss"] for r in read_metrics(tmp_path / "out")]
    assert losses[-1] < 0.5 * losses[0], losses
    assert (tmp_path / "out" / "model" / "model.safetensors").is_file()


def test_reads_a_run_directory_with_the_reward_filter(tmp_path):
    from ptgym.store import TrajectoryStore
    from ptgym.types import Trajectory

    store = TrajectoryStore(tmp_path / "run")
    for reward, error in [(1.0, None), (0.0, None), (1.0, "env crashed")]:
        store.append(Trajectory(env_id="t", messages=CONV[1:3], reward=reward, error=error))
    store.close()
    assert read_conversations(str(tmp_path / "run"), min_reward=1.0) == [(CONV[1:3], 0)]
    assert len(read_conversations(str(tmp_path / "run"))) == 2
    # ptgym's own exports, both conversational layouts, read as written
    store.export_jsonl(tmp_path / "m.jsonl")
    store.export_jsonl(tmp_path / "pc.jsonl", fmt="prompt-completion")
    assert read_conversations(str(tmp_path / "m.jsonl"), min_reward=1.0) == [(CONV[1:3], 0)]
    assert read_conversations(str(tmp_path / "pc.jsonl"), min_reward=1.0) == [(CONV[1:3], 1)]
    with pytest.raises(FileNotFoundError, match="nope does not exist"):
        read_conversations(str(tmp_path / "nope"))
