"""A generative judge (LLM-as-a-judge) on any generation backend: pointwise and pairwise.

Pointwise (a reward for ``ptgym/Chat-v0``): the judge reads the conversation and grades the last
reply on a rubric of ordered choices (default: poor < fair < good < excellent), mapped evenly onto
[0, 1]. It is asked to write its reasoning first and the verdict last (``Verdict: good``), as in
Zheng et al., 2023, "Judging LLM-as-a-Judge": a verdict written before the reasoning cannot use
it. A reply without a verdict among the choices is a ``ScoreError``, never a guessed score.

Pairwise (``ptgym prefs judge``): the judge sees both replies as A and B and answers
``Verdict: A``, ``B`` or ``tie``. It is asked twice, with the replies in both orders; a judge
that changes its pick when the order flips is showing position bias, not a preference, and the
pair is scored a tie (``pairwise_label``).

Backends (``agents/``): ``hf`` loads MODEL locally; ``http(s)://...`` talks to an
OpenAI-compatible server (``ptgym serve``, vLLM) with MODEL's tokenizer loaded locally (prompts
travel as token ids); ``vllm`` runs an in-process vLLM engine. Decoding is greedy by default.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ptgym.config import opt
from ptgym.prefs import Preference

from .rewards import Messages, ScoreError

DEFAULT_RUBRIC = ("poor", "fair", "good", "excellent")

POINTWISE = """You are grading an AI assistant's reply to a user.

{conversation}

Grade the assistant's final reply for helpfulness, correctness and clarity, on this scale from
worst to best: {choices}.
First explain your reasoning in a few sentences. Then write your grade on the last line, exactly
as "Verdict: <grade>"."""

PAIRWISE = """You are comparing two AI assistant replies to the same conversation.

{conversation}

[Reply A]
{a}

[Reply B]
{b}

Which reply is more helpful, correct and clear? First explain your reasoning in a few sentences.
Then write your decision on the last line, exactly as "Verdict: A", "Verdict: B" or
"Verdict: tie"."""

_VERDICT = re.compile(r"verdict\s*[:=]\s*[\*\"'\[]*\s*([A-Za-z]+)", re.IGNORECASE)


def transcript(conversation: Messages) -> str:
    """The conversation as plain text for a judge prompt: ``[role]`` headers, content below."""
    return "\n\n".join(f"[{m['role']}]\n{m.get('content') or ''}" for m in conversation)


def parse_verdict(text: str, choices: Sequence[str]) -> str | None:
    """The last ``Verdict: X`` in ``text`` whose X is one of ``choices`` (case-insensitive), or
    None."""
    lowered = {c.lower(): c for c in choices}
    for word in reversed(_VERDICT.findall(text)):
        if word.lower() in lowered:
            return lowered[word.lower()]
    return None


def rubric_value(choice: str, rubric: Sequence[str]) -> float:
    """The choice's place on the rubric mapped evenly onto [0, 1] (worst 0, best 1)."""
    return rubric.index(choice) / (len(rubric) - 1)


def pairwise_label(first: str, second: str) -> str:
    """The winner of x vs y from two verdicts: ``first`` with x shown as A, ``second`` with y
    shown as A. Returns ``"x"``, ``"y"`` or ``"tie"``: only a pick that survives the swap
    counts."""
    pick1 = {"A": "x", "B": "y"}.get(first, "tie")
    pick2 = {"A": "y", "B": "x"}.get(second, "tie")
    return pick1 if pick1 == pick2 else "tie"


def make_generator(
    model: str, backend: str, *, device: str = "auto", chat_template: str | None = None
) -> tuple[Any, Any]:
    """``(backend, tokenizer)`` for a judge model on ``backend`` (``hf``, a URL, ``vllm``)."""
    from ptgym.agents.models import load_model, load_tokenizer

    if backend == "hf":
        from ptgym.agents.hf import HFBackend

        lm, tokenizer = load_model(model, device=device, chat_template=chat_template)
        return HFBackend(lm, tokenizer), tokenizer
    tokenizer = load_tokenizer(model, chat_template=chat_template)
    if backend.startswith(("http://", "https://")):
        from ptgym.agents.openai_backend import OpenAIBackend

        return OpenAIBackend(backend, tokenizer, model=model), tokenizer
    if backend == "vllm":
        from ptgym.agents.vllm_backend import VLLMBackend

        return VLLMBackend(model, tokenizer), tokenizer
    raise ValueError(
        f"judge backend {backend!r}: use judge:MODEL (hf), judge:MODEL@http://HOST:PORT/v1 "
        "or judge:MODEL@vllm"
    )


class Judge:
    """A judge model on a generation backend; ``score`` is its pointwise reward source.

    ``rubric``: ordered choices, worst first (at least two). ``max_new_tokens`` bounds the
    reasoning plus the verdict. ``temperature``: 0 = greedy.
    """

    def __init__(
        self,
        model: str,
        *,
        backend: str = "hf",
        device: str = "auto",
        rubric: Sequence[str] = DEFAULT_RUBRIC,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        name: str = "judge",
        chat_template: str | None = None,
    ):
        if len(rubric) < 2 or len({c.lower() for c in rubric}) != len(rubric):
            raise ValueError(f"a judge rubric needs at least two distinct choices, got {rubric}")
        if any(not re.fullmatch(r"[A-Za-z]+", c) for c in rubric):
            raise ValueError(f"rubric choices must be single words (letters only), got {rubric}")
        from ptgym.agents.backend import SamplingParams
        from ptgym.agents.chat import ChatRenderer

        self.model, self.name, self.rubric = model, name, tuple(rubric)
        self.backend, tokenizer = make_generator(
            model, backend, device=device, chat_template=chat_template
        )
        self.renderer = ChatRenderer(tokenizer)
        self.params = SamplingParams(max_new_tokens=max_new_tokens, temperature=temperature)

    @property
    def annotator(self) -> str:
        return f"judge:{self.model}"

    def ask(self, prompts: Sequence[str]) -> list[str]:
        """The judge's replies to user messages, one ``generate`` call for all."""
        ids = [self.renderer.initial([{"role": "user", "content": p}]) for p in prompts]
        return [c.text for c in self.backend.generate(ids, self.params, seeds=[0] * len(ids))]

    def score(self, conversations: Sequence[Messages]) -> list[float | ScoreError]:
        choices = ", ".join(self.rubric)
        prompts = [
            POINTWISE.format(conversation=transcript(c), choices=choices) for c in conversations
        ]
        out: list[float | ScoreError] = []
        for text in self.ask(prompts):
            verdict = parse_verdict(text, self.rubric)
            if verdict is None:
                out.append(
                    ScoreError(f"{self.name} gave no verdict among {choices}: {text[-80:]!r}")
                )
            else:
                out.append(rubric_value(verdict, self.rubric))
        return out

    def compare(
        self, pairs: Sequence[tuple[Messages, str, str]]
    ) -> list[tuple[str | None, str, str]]:
        """For each ``(conversation, x, y)``: ``(winner, reply_xy, reply_yx)`` where winner is
        ``"x"``, ``"y"``, ``"tie"`` or None (no verdict in one of the two orders)."""
        prompts = []
        for conversation, x, y in pairs:
            shown = transcript(conversation)
            prompts.append(PAIRWISE.format(conversation=shown, a=x, b=y))
            prompts.append(PAIRWISE.format(conversation=shown, a=y, b=x))
        replies = self.ask(prompts)
        out = []
        for i in range(len(pairs)):
            xy, yx = replies[2 * i], replies[2 * i + 1]
            v1, v2 = parse_verdict(xy, ("A", "B", "tie")), parse_verdict(yx, ("A", "B", "tie"))
            winner = None if v1 is None or v2 is None else pairwise_label(v1, v2)
            out.append((winner, xy, yx))
        return out


# --- ptgym prefs judge ------------------------------------------------------------------------


@dataclass
class JudgeCommand:
    judge: str = opt("", "the judge: MODEL (local hf), MODEL@http://HOST:PORT/v1 or MODEL@vllm")
    out: str | None = opt(None, "output JSONL (default: PAIRS.judged.jsonl beside the input)")
    all: bool = opt(False, "judge every record, not only the unranked ones")
    batch: int = opt(8, "pairs per generate call (each pair is asked in both orders)", minimum=1)
    max_new_tokens: int = opt(256, "tokens for the judge's reasoning and verdict", minimum=1)
    temperature: float = opt(0.0, "judge sampling temperature (0 = greedy)")
    device: str = opt("auto", "where a local judge runs", choices=("auto", "cpu", "cuda"))


def _conversation(prompt: Messages | str) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _reply(response: Messages | str) -> str:
    return response if isinstance(response, str) else str(response[-1].get("content") or "")


def judge_pairs(pairs_path: str, cfg: JudgeCommand, *, log: Any = print) -> dict[str, int]:
    """Label the pairs of ``pairs_path`` with a judge, both orders per pair, into ``cfg.out``.

    Records are appended (fsynced) after each batch, so a crash keeps every judged pair. A pair
    whose verdict is missing in either order is left out and counted, never guessed. Returns
    counts: ``chosen`` (a winner), ``tie``, ``no_verdict``.
    """
    from ptgym.prefs import LABELS, read_preferences, replace_label, write_preferences

    if not cfg.judge:
        raise ValueError("ptgym prefs judge needs judge=MODEL (or MODEL@http://HOST:PORT/v1)")
    labels = LABELS if cfg.all else ("unranked",)
    pairs = read_preferences(pairs_path, labels=labels)
    if not pairs:
        raise ValueError(
            f"no {'records' if cfg.all else 'unranked pairs'} in {pairs_path}"
            + ("" if cfg.all else "; all=true judges records that already have a label")
        )
    out = Path(cfg.out or Path(pairs_path).with_suffix(".judged.jsonl"))
    if out.exists():
        raise FileExistsError(f"{out} exists: choose another out= or remove it")
    model, _, where = cfg.judge.partition("@")
    judge = Judge(
        model,
        backend=where or "hf",
        device=cfg.device,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
    )
    counts = {"chosen": 0, "tie": 0, "no_verdict": 0}
    for start in range(0, len(pairs), cfg.batch):
        chunk = pairs[start : start + cfg.batch]
        asked = [(_conversation(p.prompt), _reply(p.chosen), _reply(p.rejected)) for p in chunk]
        judged = []
        for pref, (winner, _, _) in zip(chunk, judge.compare(asked), strict=True):
            if winner is None:
                counts["no_verdict"] += 1
                continue
            meta = {"annotator": judge.annotator, "time": time.time(), "shown_first": None}
            if winner == "y":  # the second reply won: swap the sides and their ids
                pref = Preference(
                    **{
                        **asdict(pref),
                        "chosen": pref.rejected,
                        "rejected": pref.chosen,
                        "chosen_id": pref.rejected_id,
                        "rejected_id": pref.chosen_id,
                    }
                )
            label = "tie" if winner == "tie" else "chosen"
            counts[label] += 1
            judged.append(replace_label(pref, label, **meta))
        write_preferences(out, judged, append=True)
        log(f"judged {min(start + cfg.batch, len(pairs))}/{len(pairs)} pairs")
    out.touch()
    log(
        f"wrote {counts['chosen']} preferences and {counts['tie']} ties to {out} "
        f"({counts['no_verdict']} pairs without a verdict left out)"
    )
    return counts
