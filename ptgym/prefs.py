"""Pairwise preference records in TRL's columns (DESIGN §8), with provenance.

One record per judged pair: ``prompt``, ``chosen``, ``rejected`` exactly as TRL's preference
datasets spell them (conversational: message lists; standard: strings), an optional ``margin``, and
the provenance a later reader needs to trust or audit the label (who judged, when, which side was
shown first, and the run and trajectory ids of both responses).

Reading accepts every TRL preference layout, so a dataset a user already has works as is:

- explicit prompt: ``{"prompt", "chosen", "rejected"}``;
- implicit prompt: ``{"chosen", "rejected"}`` where both hold the whole conversation (or text) and
  the prompt is their shared prefix. For strings the cut is moved back to the last whitespace of the
  shared prefix, so "The answer is yes" / "The answer is yep" split at "The answer is" and not
  inside the word (TRL's ``extract_prompt`` only steps back over one space);
- conversational records whose ``chosen``/``rejected`` repeat the prompt messages while a
  ``prompt`` column also holds it (HuggingFaceH4/ultrafeedback_binarized does this): the shared
  leading messages become the prompt.

Labels (``Preference.label``; on disk the key is ``verdict``, because TRL reads a ``label``
column as unpaired KTO data and refuses a record that has it beside ``chosen``/``rejected``):
``"chosen"`` is a real preference; ``"tie"`` and ``"skip"`` are stored (a judge or a human
said so, and that is data) but left out of training by default; ``"unranked"`` marks pairs made by
``ptgym prefs pairs`` that nobody has judged yet (``chosen``/``rejected`` then mean "first"/"second").

Imports neither torch nor textual: the TUI's ranking screen writes these files.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

LABELS = ("chosen", "tie", "skip", "unranked")
TRAINABLE = ("chosen",)
_PROVENANCE = (
    "margin",
    "annotator",
    "time",
    "shown_first",
    "run",
    "chosen_id",
    "rejected_id",
    "task_id",
)

Messages = list[dict]


@dataclass
class Preference:
    prompt: Messages | str  # conversational (message list) or standard (string)
    chosen: Messages | str  # preferred response (assistant message list, or string)
    rejected: Messages | str
    label: str = "chosen"  # "chosen" (a real preference) | "tie" | "skip" | "unranked"
    margin: float | None = None
    annotator: str | None = None  # human login, or "judge:<model>"
    time: float | None = None  # unix seconds
    shown_first: str | None = None  # "chosen" | "rejected": which response was shown left/first
    run: str | None = None  # run directory the responses came from
    chosen_id: str | None = None  # trajectory ids
    rejected_id: str | None = None
    task_id: str | None = None

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"preference label {self.label!r} is not one of {LABELS}")
        if self.shown_first not in (None, "chosen", "rejected"):
            raise ValueError(f"shown_first {self.shown_first!r}: use 'chosen' or 'rejected'")
        kinds = {isinstance(x, str) for x in (self.prompt, self.chosen, self.rejected)}
        if len(kinds) != 1:
            raise ValueError(
                "preference mixes strings and message lists: prompt, chosen and rejected must all "
                "be strings (standard) or all be message lists (conversational)"
            )

    @property
    def conversational(self) -> bool:
        return not isinstance(self.prompt, str)

    def to_dict(self) -> dict[str, Any]:
        """TRL's columns plus provenance; optional keys that are None are left out."""
        d = {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}
        d["verdict"] = self.label
        for key in _PROVENANCE:
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preference:
        """Read any TRL preference layout (see the module docstring); extra columns are ignored."""
        missing = [k for k in ("chosen", "rejected") if k not in d]
        if missing:
            raise ValueError(
                f"preference record lacks {missing}: need 'chosen' and 'rejected' "
                f"(and optionally 'prompt'); got keys {sorted(d)}"
            )
        chosen, rejected, prompt = d["chosen"], d["rejected"], d.get("prompt")
        if isinstance(chosen, list) and isinstance(rejected, list):
            chosen = _check_messages(chosen, "chosen")
            rejected = _check_messages(rejected, "rejected")
            if prompt is None or _carries_prompt(chosen, rejected):
                prompt, chosen, rejected = _split_messages(chosen, rejected)
            elif isinstance(prompt, str):
                prompt = [{"role": "user", "content": prompt}]
            else:
                prompt = _check_messages(prompt, "prompt")
        elif isinstance(chosen, str) and isinstance(rejected, str) and prompt is None:
            prompt, chosen, rejected = _split_text(chosen, rejected)
        known = {f.name for f in fields(cls)} - {"prompt", "chosen", "rejected", "label"}
        extra = {k: d[k] for k in known if d.get(k) is not None}
        label = d.get("verdict", d.get("label"))
        if isinstance(label, str):  # a bool "label" is TRL's unpaired (KTO) layout: not ours
            extra["label"] = label
        if "margin" in extra:
            extra["margin"] = float(extra["margin"])
        return cls(prompt=prompt, chosen=chosen, rejected=rejected, **extra)


def _check_messages(messages: Any, name: str) -> Messages:
    """Validate, and drop the None-valued keys Arrow adds when a Dataset unifies message structs
    (``content`` stays: None is a real value for an assistant message that only calls tools)."""
    if not all(isinstance(m, dict) and "role" in m for m in messages):
        raise ValueError(f"preference '{name}' must be a list of {{'role', 'content'}} messages")
    return [{k: v for k, v in m.items() if v is not None or k == "content"} for m in messages]


def _carries_prompt(chosen: Messages, rejected: Messages) -> bool:
    """Both conversations start with a non-assistant message: the prompt is inside them."""
    return bool(chosen and rejected) and all(
        c[0].get("role") != "assistant" for c in (chosen, rejected)
    )


def _split_messages(chosen: Messages, rejected: Messages) -> tuple[Messages, Messages, Messages]:
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    if n == 0:
        raise ValueError("implicit-prompt preference: chosen and rejected share no leading message")
    if n == len(chosen) or n == len(rejected):
        raise ValueError(
            "implicit-prompt preference: chosen or rejected has no response after the prompt"
        )
    return chosen[:n], chosen[n:], rejected[n:]


def _split_text(chosen: str, rejected: str) -> tuple[str, str, str]:
    n = len(os.path.commonprefix([chosen, rejected]))
    cut = max(chosen.rfind(" ", 0, n + 1), chosen.rfind("\n", 0, n + 1))
    n = cut if cut > 0 else n
    if n == 0:
        raise ValueError("implicit-prompt preference: chosen and rejected share no prompt prefix")
    return chosen[:n], chosen[n:], rejected[n:]


def write_preferences(
    path: str | Path, prefs: Iterable[Preference], *, append: bool = False
) -> int:
    """Write JSONL and fsync. A fresh file is written atomically (temp, fsync, rename); with
    ``append=True`` records go onto the end of the file (the TUI saves each judgment at once)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(p.to_dict(), ensure_ascii=False) + "\n" for p in prefs]
    target = path if append else path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(target, "a" if append else "w", encoding="utf-8") as f:
        f.writelines(lines)
        f.flush()
        os.fsync(f.fileno())
    if not append:
        os.replace(target, path)
    return len(lines)


def _rows(source: Any) -> Iterable[tuple[str, dict]]:
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.exists():
            raise FileNotFoundError(f"preference file {path} does not exist")
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    yield f"{path}:{i}", json.loads(line)
                except json.JSONDecodeError as e:
                    if not line.endswith("\n"):  # a torn last line: not yet written
                        return
                    raise ValueError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    else:  # a datasets.Dataset or any iterable of dicts / Preference records
        for i, row in enumerate(source):
            yield f"row {i}", row


def read_preferences(
    source: Any, *, include_ties: bool = False, labels: Iterable[str] | None = None
) -> list[Preference]:
    """Records from a JSONL path, a ``datasets.Dataset`` or an iterable of dicts.

    By default only real preferences (label ``"chosen"``; TRL datasets have no label, which means
    that); ``include_ties=True`` adds ties; ``labels=`` names exactly which labels to keep.
    """
    keep = (
        set(labels) if labels is not None else set(TRAINABLE) | ({"tie"} if include_ties else set())
    )
    unknown = keep - set(LABELS)
    if unknown:
        raise ValueError(f"unknown preference labels {sorted(unknown)}: use some of {LABELS}")
    out = []
    for where, row in _rows(source):
        if isinstance(row, Preference):
            pref = row
        else:
            try:
                pref = Preference.from_dict(dict(row))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        if pref.label in keep:
            out.append(pref)
    return out


def to_dataset(prefs: Iterable[Preference]) -> Any:
    """A ``datasets.Dataset`` with TRL's columns (plus the provenance any record has)."""
    import datasets

    rows = [p.to_dict() for p in prefs]
    names = ["prompt", "chosen", "rejected", "verdict", *_PROVENANCE]
    keys = [k for k in names if any(k in r for r in rows)]
    return datasets.Dataset.from_dict({k: [r.get(k) for r in rows] for k in keys})


def replace_label(pref: Preference, label: str, **provenance: Any) -> Preference:
    """A copy with a new label (and provenance), e.g. when a judge ranks an unranked pair."""
    return Preference(**{**asdict(pref), "label": label, **provenance})


def pairs_from_run(
    run_dir: str | Path, *, per_group: int | None = 1, seed: int = 0
) -> list[Preference]:
    """Unranked pairs from a rollout run's groups (``ptgym rollout env=... group=2``).

    The pairs are the rank screen's (``ptgym.judgments.make_pairs``: two responses to the same
    prompt, errored and identical responses left out, a seeded order), at most ``per_group`` per
    group (None = all). ``chosen``/``rejected`` only mean first/second until a judge or a human
    labels the pair (``label="unranked"``)."""
    from ptgym.judgments import load_candidates, make_pairs, split_prompt
    from ptgym.runindex import RunIndex

    index = RunIndex(run_dir, cache_size=16)
    out = []
    for pair in make_pairs(load_candidates(index), seed=seed, per_group=per_group):
        a, b = (index.trajectory(c.row) for c in (pair.a, pair.b))
        (prompt, first), (prompt_b, second) = split_prompt(a.messages), split_prompt(b.messages)
        if prompt != prompt_b or first == second:
            continue
        out.append(
            Preference(
                prompt=prompt,
                chosen=first,
                rejected=second,
                label="unranked",
                run=str(run_dir),
                chosen_id=a.id,
                rejected_id=b.id,
                task_id=a.task_id or None,
            )
        )
    return out


def read_training_pairs(source: Any, *, include_ties: bool = False) -> list[Preference]:
    """``read_preferences`` for a trainer: refuses a source with nothing to train on, and says
    why when its pairs are still unranked."""
    prefs = read_preferences(source, include_ties=include_ties)
    if not prefs:
        everything = read_preferences(source, labels=LABELS)
        unranked = sum(p.label == "unranked" for p in everything)
        hint = (
            f"; {unranked} are unranked: label them with `ptgym prefs judge` or `ptgym tui rank`"
            if unranked
            else ""
        )
        raise ValueError(f"{source} holds no trainable preferences (verdict 'chosen'){hint}")
    return prefs
