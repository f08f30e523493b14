"""Trajectories -> training rows, token in, token out (DESIGN §3).

A row is one token sequence the trainer runs a forward pass over. Turn k of a trajectory continues
the row of turn k-1 when its prompt ids start with that row's ids (previous prompt + previous
completion); the tokens in between are the env's observation, kept in the row with mask 0. A turn
whose prompt breaks the prefix (a template that strips earlier ``<think>`` blocks) starts a new row.
Nothing is re-tokenised: every id in a row is an id the sampler produced or saw.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ptgym.types import Trajectory


@dataclass
class Row:
    """One training sequence; all arrays have the row's length T."""

    traj_index: int  # which trajectory (in the list given to build_rows) it comes from
    input_ids: np.ndarray  # (T,) int32
    mask: np.ndarray  # (T,) float32: 1 on sampled tokens, 0 on prompt / observation tokens
    old_logprobs: np.ndarray  # (T,) float32: the sampler's logprob on sampled tokens, else 0
    turn_index: np.ndarray  # (T,) int32: the turn that sampled the token, -1 elsewhere

    def __len__(self) -> int:
        return len(self.input_ids)


def build_rows(trajectories: list[Trajectory]) -> list[Row]:
    rows: list[Row] = []
    for ti, traj in enumerate(trajectories):
        ids: list[np.ndarray] = []
        mask: list[np.ndarray] = []
        logps: list[np.ndarray] = []
        turns: list[np.ndarray] = []
        length = 0
        for k, turn in enumerate(traj.turns):
            prompt = turn.prompt_ids
            extends = length > 0 and len(prompt) >= length and _starts_with(prompt, ids, length)
            if length > 0 and not extends:
                rows.append(_row(ti, ids, mask, logps, turns))
                ids, mask, logps, turns, length = [], [], [], [], 0
            new = prompt[length:]  # the observation delta (or the whole first prompt)
            n = len(turn.completion_ids)
            ids += [new, turn.completion_ids]
            mask += [np.zeros(len(new), np.float32), np.ones(n, np.float32)]
            logps += [np.zeros(len(new), np.float32), turn.completion_logprobs]
            turns += [np.full(len(new), -1, np.int32), np.full(n, k, np.int32)]
            length += len(new) + n
        if length:
            rows.append(_row(ti, ids, mask, logps, turns))
    return rows


def _starts_with(prompt: np.ndarray, pieces: list[np.ndarray], length: int) -> bool:
    return bool(np.array_equal(prompt[:length], np.concatenate(pieces)))


def _row(ti: int, ids: list, mask: list, logps: list, turns: list) -> Row:
    return Row(
        ti, np.concatenate(ids), np.concatenate(mask), np.concatenate(logps), np.concatenate(turns)
    )


def collate(rows: list[Row], pad_id: int) -> dict[str, np.ndarray]:
    """Right-pad rows into ``(B, T)`` arrays; padding has mask 0 and attention 0."""
    T = max(len(r) for r in rows)
    B = len(rows)
    out = {
        "input_ids": np.full((B, T), pad_id, np.int64),
        "attention_mask": np.zeros((B, T), np.int64),
        "mask": np.zeros((B, T), np.float32),
        "old_logprobs": np.zeros((B, T), np.float32),
        "turn_index": np.full((B, T), -1, np.int64),
        "traj_index": np.array([r.traj_index for r in rows], np.int64),
    }
    for i, r in enumerate(rows):
        n = len(r)
        out["input_ids"][i, :n] = r.input_ids
        out["attention_mask"][i, :n] = 1
        out["mask"][i, :n] = r.mask
        out["old_logprobs"][i, :n] = r.old_logprobs
        out["turn_index"][i, :n] = r.turn_index
    return out
