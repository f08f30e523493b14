"""What a run's judgment log says, and its export to preferences (DESIGN §10).

Reads the replayed log of ``ptgym.judgments``; writes nothing but the export file.

- **Agreement.** Cohen's kappa (Cohen, 1960) between two annotators over the pairs both decided
  (skips left out), labels in the pair's canonical orientation (first id wins / second wins /
  tie); position bias is the share of decided, non-tie judgments won by the left side.
- **Export.** One ``ptgym.prefs.Preference`` per active judgment (``ptgym prefs export``).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ptgym.config import opt
from ptgym.judgments import JUDGMENTS_FILE, Judgment, read_log, split_prompt
from ptgym.runindex import RunIndex

# --- agreement ---------------------------------------------------------------------------------


def canonical_label(j: Judgment) -> str:
    """The choice relative to the pair's key: ``first`` / ``second`` (id order) or ``tie``."""
    if j.choice == "tie":
        return "tie"
    first = j.pair.split("|")[0]
    return "first" if j.winner == first else "second"


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's kappa of two raters' labels on the same items: (p_o - p_e) / (1 - p_e).

    p_o is the observed agreement, p_e the agreement expected from each rater's label frequencies.
    NaN when undefined (no items, or both raters always gave one and the same label).
    """
    assert len(a) == len(b), "kappa needs one label per item from each rater"
    n = len(a)
    if n == 0:
        return float("nan")
    p_o = sum(x == y for x, y in zip(a, b, strict=True)) / n
    ca, cb = Counter(a), Counter(b)
    p_e = sum(ca[k] * cb[k] for k in ca) / (n * n)
    if p_e == 1:
        return float("nan")
    return (p_o - p_e) / (1 - p_e)


def agreement(judgments: list[Judgment]) -> dict[tuple[str, str], tuple[int, float]]:
    """``{(annotator1, annotator2): (pairs both decided, kappa)}`` for every two annotators."""
    decided: dict[str, dict[str, str]] = {}
    for j in judgments:
        if j.choice != "skip":
            decided.setdefault(j.annotator, {})[j.pair] = canonical_label(j)
    out = {}
    for x, y in itertools.combinations(sorted(decided), 2):
        common = sorted(decided[x].keys() & decided[y].keys())
        labels_x = [decided[x][p] for p in common]
        labels_y = [decided[y][p] for p in common]
        out[(x, y)] = (len(common), cohen_kappa(labels_x, labels_y))
    return out


def left_wins(judgments: list[Judgment]) -> tuple[int, int]:
    """``(won by the left side, decided)`` over judgments with a winner (no ties, no skips)."""
    decided = [j for j in judgments if j.choice in ("left", "right")]
    return sum(j.choice == "left" for j in decided), len(decided)


# --- export ------------------------------------------------------------------------------------


def _messages_by_id(run_dir: Path, ids: set[str]) -> dict[str, list[dict[str, Any]]]:
    index = RunIndex(run_dir, cache_size=1)
    found, missing = {}, []
    for i in sorted(ids):
        try:
            found[i] = index.trajectory(i).messages
        except KeyError:
            missing.append(i)
    if missing:
        raise ValueError(
            f"{len(missing)} judged trajectories are not in {run_dir}/trajectories "
            f"(e.g. {missing[0]}): was the run resumed past them? Export the judgments "
            "of another run directory, or re-rank"
        )
    return found


def preferences(
    run_dir: str | Path,
    *,
    include_ties: bool = False,
    annotators: list[str] | None = None,
) -> Iterator[Any]:
    """One ``ptgym.prefs.Preference`` per active judgment (skips never; ties only if asked)."""
    from ptgym.prefs import Preference

    run_dir = Path(run_dir)
    judgments = [
        j
        for j in read_log(run_dir).judgments
        if j.choice != "skip"
        and (include_ties or j.choice != "tie")
        and (annotators is None or j.annotator in annotators)
    ]
    messages = _messages_by_id(run_dir, {i for j in judgments for i in (j.left, j.right)})
    for j in judgments:
        chosen, rejected = (j.winner, j.loser) if j.choice != "tie" else (j.left, j.right)
        prompt, chosen_msgs = split_prompt(messages[chosen])
        _, rejected_msgs = split_prompt(messages[rejected])
        yield Preference(
            prompt=prompt,
            chosen=chosen_msgs,
            rejected=rejected_msgs,
            label="tie" if j.choice == "tie" else "chosen",
            annotator=j.annotator,
            time=j.time,
            shown_first="chosen" if j.left == chosen else "rejected",
            run=str(run_dir),
            chosen_id=chosen,
            rejected_id=rejected,
            task_id=j.task_id or None,
        )


def export(
    run_dir: str | Path,
    out: str | Path,
    *,
    include_ties: bool = False,
    annotators: list[str] | None = None,
) -> int:
    """Write the run's judgments as a preference JSONL (``ptgym.prefs``); returns the rows."""
    from ptgym.prefs import write_preferences

    prefs = list(preferences(run_dir, include_ties=include_ties, annotators=annotators))
    return write_preferences(out, prefs)


def summary(run_dir: str | Path) -> list[str]:
    """Lines describing the log: judgments per annotator, agreement, position bias."""
    state = read_log(run_dir)
    lines = []
    for name in state.annotators():
        mine = state.by(name)
        counts = Counter(j.choice for j in mine)
        won, decided = left_wins(mine)
        share = f"{won / decided:.0%}" if decided else "-"
        lines.append(
            f"{name}: {len(mine)} judged ({counts['left'] + counts['right']} decided, "
            f"{counts['tie']} ties, {counts['skip']} skips); left side won {share} of {decided}"
        )
    for (x, y), (n, kappa) in agreement(state.judgments).items():
        shown = "n/a" if kappa != kappa else f"{kappa:.2f}"
        lines.append(f"agreement {x} vs {y}: Cohen's kappa {shown} on {n} pairs both decided")
    won, decided = left_wins(state.judgments)
    if decided:
        lines.append(f"position bias: the left side won {won / decided:.0%} of {decided}")
    if state.bad_lines:
        lines.append(f"skipped {state.bad_lines} unreadable line(s) in {JUDGMENTS_FILE}")
    return lines


@dataclass
class ExportCommand:
    """``ptgym prefs export RUN key=value...``"""

    out: str = opt("prefs.jsonl", "where to write the preference JSONL (TRL columns + provenance)")
    ties: bool = opt(False, "also write ties (label 'tie'; readers leave them out by default)")
    annotator: str | None = opt(None, "only these annotators' judgments (comma-separated)")


def run_export_command(run_dir: str | Path, cfg: ExportCommand) -> int:
    """Export, then print what was written and the agreement summary; returns the rows."""
    run_dir = Path(run_dir)
    if not read_log(run_dir).judgments:
        raise FileNotFoundError(
            f"no judgments in {run_dir / JUDGMENTS_FILE}: rank pairs first with "
            f"`ptgym tui rank {run_dir}`"
        )
    names = [a for a in cfg.annotator.split(",") if a] if cfg.annotator else None
    rows = export(run_dir, cfg.out, include_ties=cfg.ties, annotators=names)
    print(f"wrote {rows} preferences to {cfg.out}")
    for line in summary(run_dir):
        print(f"  {line}")
    return rows
