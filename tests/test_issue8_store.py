"""Issue 8, reading and exporting a run's trajectories: a torn or damaged tail is reported once
with its file and byte offset (#7); the prompt/completion export for TRL's trainers (#11)."""

from __future__ import annotations

import json
import logging
import os

from ptgym.store import TrajectoryStore
from ptgym.types import Trajectory
from tests.test_store import trajectory
from tests.tiny import tiny_tokenizer


def torn_messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "torn tail" in r.getMessage()]


def test_reading_a_store_cut_by_500_bytes_warns_once_with_file_and_offset(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.store")
    store = TrajectoryStore(tmp_path)
    store.extend([trajectory(i) for i in range(112)])
    store.close()
    path = tmp_path / "trajectories" / "rollouts.msgpack"
    size = path.stat().st_size
    os.truncate(path, size - 500)
    (torn,) = TrajectoryStore(tmp_path).torn_tails().values()

    assert len(list(TrajectoryStore(tmp_path))) == 111
    assert torn_messages(caplog) == [
        f"{path}: torn tail at byte {torn.offset}: {size - 500 - torn.offset} bytes "
        "(incomplete record); read the 111 records before it (a crash cut the last write, or a "
        "writer is still writing it)"
    ]
    TrajectoryStore(tmp_path).export_jsonl(tmp_path / "out.jsonl")  # a second read: no repeat
    assert len(torn_messages(caplog)) == 1


def test_a_damaged_last_record_is_reported_too(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.store")
    TrajectoryStore(tmp_path).extend([trajectory(0), trajectory(1)])
    path = tmp_path / "trajectories" / "rollouts.msgpack"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one flipped byte inside the last record's payload
    path.write_bytes(bytes(data))
    assert [t.task_id for t in TrajectoryStore(tmp_path)] == ["task-0"]
    (message,) = torn_messages(caplog)
    assert message.startswith(f"{path}: torn tail at byte ")
    assert "(checksum mismatch in last record); read the 1 records before it" in message


def test_an_intact_store_reads_without_a_warning(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ptgym.store")
    TrajectoryStore(tmp_path).extend([trajectory(0)])
    assert len(list(TrajectoryStore(tmp_path))) == 1
    assert caplog.records == []


# --- #11: prompt/completion export for TRL -----------------------------------------------------


def test_export_jsonl_prompt_completion_splits_at_the_first_assistant_turn(tmp_path):
    written = [trajectory(i) for i in range(3)]
    failed = Trajectory(env_id="e", task_id="t", messages=[{"role": "user", "content": "hi"}])
    failed.error = "sandbox died"  # no assistant turn at all: everything is prompt
    TrajectoryStore(tmp_path).extend([*written, failed])
    out = tmp_path / "pc.jsonl"
    assert TrajectoryStore(tmp_path).export_jsonl(out, fmt="prompt-completion") == 4
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert list(rows[0])[:3] == ["prompt", "completion", "id"]
    for row, t in zip(rows, written, strict=False):
        assert row["prompt"] == t.messages[:1] and [m["role"] for m in row["prompt"]] == ["user"]
        assert row["completion"] == t.messages[1:]
        assert [m["role"] for m in row["completion"]] == ["assistant", "tool"] * 2
        assert (row["id"], row["reward"], row["task_id"]) == (t.id, t.reward, t.task_id)
        assert "messages" not in row
    assert (rows[3]["prompt"], rows[3]["completion"], rows[3]["error"]) == (
        failed.messages,
        [],
        "sandbox died",
    )


def test_prompt_completion_export_loads_in_datasets_and_trl(tmp_path):
    import datasets
    from trl.data_utils import apply_chat_template, is_conversational

    written = [trajectory(i) for i in range(3)]
    TrajectoryStore(tmp_path).extend(written)
    out = tmp_path / "pc.jsonl"
    TrajectoryStore(tmp_path).export_jsonl(out, fmt="prompt-completion")
    ds = datasets.load_dataset("json", data_files=str(out), split="train")
    assert len(ds) == 3 and {"prompt", "completion", "reward"} <= set(ds.column_names)
    row = ds[1]
    assert is_conversational(row)
    assert [m["content"] for m in row["completion"]] == ["step 0", "2", "step 1", "2"]
    tokenizer = tiny_tokenizer()
    text = apply_chat_template(
        {"prompt": row["prompt"], "completion": row["completion"]}, tokenizer
    )
    assert text["prompt"].endswith("<|im_start|>assistant\n")
    assert "Task 1: what is 1 + 1?" in text["prompt"] and "step 0" not in text["prompt"]
    assert text["completion"].startswith("step 0")

    in_memory = TrajectoryStore(tmp_path).to_dataset(fmt="prompt-completion")
    assert in_memory.column_names[:2] == ["prompt", "completion"]
    assert in_memory[1]["completion"][0]["content"] == "step 0"
