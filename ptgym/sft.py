"""``ptgym sft``: supervised fine-tuning on conversations, the loss on the model's tokens only.

Reads TRL's conversational SFT layouts (a ``messages`` list, or ``prompt`` + ``completion``
message lists) from JSONL, ptgym's ``export_jsonl`` output (the same ``messages`` plus ``reward``
and ``error``), or a run directory directly. ``min_reward=`` keeps only rows whose reward reaches
it: distilling a run's best rollouts (rejection sampling / expert iteration). Rows with an
``error`` are skipped.

The mask covers what the model writes in each assistant turn, its content and end-of-turn token
(``ptgym.prefdata.encode_messages``); system, user and tool text and the template's role headers
carry no loss. The loss is ``ptgym.losses.sft_loss`` (token mean). ``packing=true`` concatenates
whole rows into sequences of at most ``trainer.max_length`` tokens (first-fit decreasing, no row
split): fewer pad tokens, but a packed row attends to the rows before it in its sequence (TRL's
best-fit packing keeps rows apart with position resets, which needs a varlen attention kernel);
leave it off when that matters.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from ptgym.fit import fit_policy, held_out_metrics, refuse_adapter, split, start_output
from ptgym.losses import sft_loss
from ptgym.prefconfig import SFTCommand
from ptgym.prefdata import Encoded, encode_messages, pad, renderer_for, truncate


def read_conversations(source: str, *, min_reward: float | None = None) -> list[tuple[list, int]]:
    """``(messages, train_from)`` rows: train on assistant messages at index >= train_from."""
    path = Path(source)
    if path.is_dir():
        from ptgym.store import TrajectoryStore

        rows = [
            {"messages": t.messages, "reward": t.reward, "error": t.error}
            for t in TrajectoryStore(path)
        ]
    elif path.is_file():
        rows = []
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    else:
        raise FileNotFoundError(
            f"SFT data {source} does not exist: pass a JSONL file or a run directory"
        )
    out = []
    for i, row in enumerate(rows):
        if row.get("error"):
            continue
        if min_reward is not None:
            if "reward" not in row:
                raise ValueError(
                    f"{source} row {i} has no 'reward': min_reward needs ptgym's export"
                )
            if row["reward"] < min_reward:
                continue
        if "messages" in row:
            out.append((row["messages"], 0))
        elif isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
            out.append((row["prompt"] + row["completion"], len(row["prompt"])))
        else:
            raise ValueError(
                f"{source} row {i}: need 'messages' or 'prompt'+'completion' message lists; "
                f"got keys {sorted(row)}"
            )
    return out


def pack(rows: list[Encoded], max_length: int) -> list[Encoded]:
    """Whole rows into sequences of at most ``max_length`` tokens, first-fit decreasing."""
    bins: list[Encoded] = []
    for row in sorted(rows, key=lambda r: len(r.ids), reverse=True):
        for b in bins:
            if len(b.ids) + len(row.ids) <= max_length:
                b.ids.extend(row.ids)
                b.mask.extend(row.mask)
                break
        else:
            bins.append(Encoded(list(row.ids), list(row.mask)))
    return bins


def sft_batch_loss(policy: Any, rows: list[Encoded]) -> tuple[Tensor, dict]:
    ids, attn, mask = (t.to(policy.device) for t in pad(rows, policy.tokenizer.pad_token_id))
    first = int(mask.float().argmax(-1).min())
    logprobs = policy(ids, attn, first=first).logprobs  # (B, T)
    return sft_loss(logprobs, mask.to(logprobs.dtype))


def train_sft(cfg: SFTCommand, *, log: Any = print) -> dict[str, float]:
    from ptgym.policy import build_policy

    if not cfg.data:
        raise FileNotFoundError("ptgym sft needs data=PATH: a messages JSONL or a run directory")
    refuse_adapter(cfg.model, "sft")
    conversations = read_conversations(cfg.data, min_reward=cfg.min_reward)
    out = start_output(cfg, "runs/sft")
    policy = build_policy(cfg.model, cfg.lora, value_head=False, need_reference=False)
    renderer = renderer_for(policy.tokenizer, cfg.model.chat_template)
    if renderer is None:
        raise ValueError(f"model {cfg.model.name} has no chat template: pass model.chat_template")
    rows = [
        truncate(encode_messages(renderer, m, train_from=k), cfg.trainer.max_length)
        for m, k in conversations
    ]
    rows = [r for r in rows if any(r.mask)]
    train_rows, held_out = split(rows, cfg.trainer.eval_fraction, cfg.trainer.seed)
    if cfg.packing:
        train_rows = pack(train_rows, cfg.trainer.max_length)

    def chunk_stats(chunk: list[Encoded]) -> tuple[dict, int]:
        _, stats = sft_batch_loss(policy, chunk)
        return {"nll": stats["nll"]}, int(stats["tokens"])

    def evaluate() -> dict[str, float]:
        return held_out_metrics(policy, held_out, cfg.trainer.micro_batch, chunk_stats)

    log(f"sft on {cfg.model.name}: {len(train_rows)} train rows, {len(held_out)} held out")
    return fit_policy(
        policy,
        train_rows,
        cfg,
        loss_fn=lambda batch: sft_batch_loss(policy, batch),
        evaluate=evaluate,
        out=out,
        log=log,
    )
