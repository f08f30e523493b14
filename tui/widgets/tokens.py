"""The token view: every token of a trajectory, coloured by the sampler's logprob or by the
advantage the trainer gave its turn; env/observation tokens grey (they are masked out of the loss).

Token text comes from the run's tokenizer, read with the ``tokenizers`` library straight from
``tokenizer.json`` (``transformers.AutoTokenizer`` imports torch, and ``tui/`` must not). The model
is the one ``RUN/config.yaml`` names: a ptgym short name (cached under ``~/.cache/ptgym``), a local
folder, or a Hugging Face id already in the local cache (nothing is downloaded). When none loads,
tokens show as their ids.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from rich.style import Style
from rich.text import Text
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.reactive import reactive
from textual.widgets import Static

from ptgym.types import Trajectory

OBSERVATION_STYLE = "grey50 italic"


@dataclass(frozen=True)
class TokenCell:
    id: int
    trained: bool  # sampled by the policy (in the loss); False: prompt/env/observation tokens
    turn: int  # 0-based
    logprob: float | None = None
    advantage: float | None = None


def token_cells(traj: Trajectory, advantages: list[float] | None = None) -> list[TokenCell]:
    """The trajectory's tokens in order: each turn's new prompt tokens, then its completion.

    A turn whose prompt extends the previous prompt + completion contributes only the extension
    (the env's reply and the template's bridge); a turn that does not (a template that rewrote
    history) contributes its whole prompt, as ``ptgym.samples`` starts a new row there.
    """
    cells: list[TokenCell] = []
    prev: np.ndarray | None = None
    for k, turn in enumerate(traj.turns):
        prompt = turn.prompt_ids
        if (
            prev is not None
            and len(prompt) >= len(prev)
            and np.array_equal(prompt[: len(prev)], prev)
        ):
            new = prompt[len(prev) :]
        else:
            new = prompt
        cells.extend(TokenCell(int(i), False, k) for i in new)
        adv = advantages[k] if advantages is not None and k < len(advantages) else None
        for i, lp in zip(turn.completion_ids, turn.completion_logprobs, strict=False):
            cells.append(TokenCell(int(i), True, k, float(lp), adv))
        prev = np.concatenate([prompt, turn.completion_ids])
    return cells


class TokenDecoder:
    """Token id -> text with the run's tokenizer, or ``⟨id⟩`` when there is none."""

    def __init__(self, tokenizer: Any = None, source: str = ""):
        self.tokenizer = tokenizer
        self.source = source  # what was loaded, or why nothing was
        self._cache: dict[int, str] = {}

    @classmethod
    def for_run(cls, run_dir: str | Path) -> TokenDecoder:
        try:
            config = yaml.safe_load((Path(run_dir) / "config.yaml").read_text()) or {}
            name = str((config.get("model") or {}).get("name") or "")
        except (OSError, yaml.YAMLError) as exc:
            return cls(None, f"no tokenizer: cannot read config.yaml ({exc})")
        if not name:
            return cls(None, "no tokenizer: config.yaml names no model")
        path = tokenizer_file(name)
        if path is None:
            return cls(None, f"no tokenizer for {name} on this machine: showing token ids")
        from tokenizers import Tokenizer

        try:
            return cls(Tokenizer.from_file(str(path)), f"tokenizer of {name}")
        except Exception as exc:  # a damaged or unsupported tokenizer.json: fall back to ids
            return cls(None, f"tokenizer of {name} did not load ({exc}): showing token ids")

    def text(self, token_id: int) -> str:
        if self.tokenizer is None:
            return f"⟨{token_id}⟩"
        text = self._cache.get(token_id)
        if text is None:
            text = self.tokenizer.decode([token_id], skip_special_tokens=False)
            self._cache[token_id] = text
        return text


def tokenizer_file(name: str) -> Path | None:
    """``tokenizer.json`` of a model name, found offline, or None."""
    from ptgym.agents.models import KNOWN_MODELS, cache_dir

    if name in KNOWN_MODELS:
        folder = cache_dir() / name
    elif Path(name).is_dir():
        folder = Path(name)
    else:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(name, "tokenizer.json")
        except Exception:  # not a valid repo id
            return None
        return Path(found) if isinstance(found, str) else None
    path = folder / "tokenizer.json"
    return path if path.is_file() else None


def logprob_colour(logprob: float) -> str:
    """Background from red (p=0) through yellow (p=0.5) to green (p=1)."""
    p = min(max(math.exp(logprob), 0.0), 1.0)
    if p < 0.5:
        r, g = 200, int(40 + 320 * p)
    else:
        r, g = int(200 - 320 * (p - 0.5)), 200
    return f"rgb({r},{g},40)"


def advantage_colour(advantage: float, scale: float) -> str:
    """Green for positive, red for negative advantages, stronger with |advantage| / scale."""
    x = min(abs(advantage) / scale, 1.0) if scale > 0 else 0.0
    level = int(60 + 150 * x)
    return f"rgb(40,{level},40)" if advantage >= 0 else f"rgb({level},40,40)"


def shown(text: str) -> str:
    """Make whitespace visible: newlines as ↵ (then a real line break), tabs as →."""
    return text.replace("\t", "→").replace("\n", "↵\n")


class TokenText(Static):
    """The tokens; hovering one moves the view's cursor to it (each token carries its index)."""

    def on_mouse_move(self, event: Any) -> None:
        token = (event.style.meta or {}).get("token") if event.style else None
        if token is not None and isinstance(self.parent, VerticalScroll):
            view = self.parent.parent
            if isinstance(view, TokenView) and view.cursor != token:
                view.hovering = True
                view.cursor = token
                view.hovering = False


class TokenView(Vertical):
    """Tokens of one trajectory with a cursor; the line below describes the token under it."""

    BINDINGS = [
        Binding("left", "move(-1)", "Prev token", show=False),
        Binding("right", "move(1)", "Next token", show=False),
        Binding("home", "jump(0)", "First", show=False),
        Binding("end", "jump(-1)", "Last", show=False),
        Binding("n", "next_trained(1)", "Next turn"),
        Binding("N", "next_trained(-1)", "Prev turn", show=False),
        Binding("m", "toggle_mode", "Logprob/advantage"),
    ]
    DEFAULT_CSS = """
    TokenView { height: 1fr; }
    TokenView #tokens-scroll { height: 1fr; border: round $primary; padding: 0 1; }
    TokenView #token-info { height: auto; min-height: 2; padding: 0 1; background: $panel; }
    """
    can_focus = True
    cursor = reactive(0)
    mode = reactive("logprob")  # or "advantage"

    def __init__(self, decoder: TokenDecoder | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self.decoder = decoder or TokenDecoder()
        self.cells: list[TokenCell] = []
        self._texts: list[str] = []
        self._spans: list[tuple[int, int]] = []
        self._base = Text()
        self._scale = 1.0
        self.hovering = False  # the mouse moved the cursor: do not scroll under it

    def compose(self) -> Any:
        with VerticalScroll(id="tokens-scroll"):
            yield TokenText(id="token-text")
        yield Static(id="token-info")

    def show(self, traj: Trajectory, advantages: list[float] | None = None) -> None:
        self.cells = token_cells(traj, advantages)
        self._texts = [shown(self.decoder.text(c.id)) for c in self.cells]
        advs = [abs(c.advantage) for c in self.cells if c.advantage is not None]
        self._scale = max(advs) if advs else 1.0
        self._build()
        self.cursor = next((i for i, c in enumerate(self.cells) if c.trained), 0)
        self._paint()

    def _build(self) -> None:
        """The coloured text of every token; the cursor is laid over a copy of it."""
        text = Text()
        self._spans = []
        turn = -1
        for i, (cell, piece) in enumerate(zip(self.cells, self._texts, strict=True)):
            if cell.turn != turn:
                turn = cell.turn
                text.append(f"{'' if turn == 0 else chr(10)}── turn {turn + 1} ──\n", "bold")
            start = len(text)
            text.append(piece, Style.parse(self._style(cell)) + Style.from_meta({"token": i}))
            self._spans.append((start, len(text)))
        self._base = text

    def _style(self, cell: TokenCell) -> str:
        if not cell.trained:
            return OBSERVATION_STYLE
        if self.mode == "advantage":
            if cell.advantage is None:
                return "grey70"
            return f"white on {advantage_colour(cell.advantage, self._scale)}"
        return f"black on {logprob_colour(cell.logprob or 0.0)}"

    def _paint(self) -> None:
        if not self.is_mounted:
            return
        text = self._base.copy()
        if self.cells:
            start, end = self._spans[self.cursor]
            text.stylize("reverse bold underline", start, max(end, start + 1))
        self.query_one("#token-text", Static).update(text)
        self.query_one("#token-info", Static).update(self.describe(self.cursor))
        if not self.hovering:
            self.call_after_refresh(self._follow)

    def _follow(self) -> None:
        """Keep the cursor on screen. Its line is estimated by wrapping each text line at the
        view's width by characters (the Static wraps at words: within a line or two)."""
        if not self.cells:
            return
        scroll = self.query_one("#tokens-scroll", VerticalScroll)
        width = max(scroll.scrollable_content_region.width, 1)
        plain, offset = self._base.plain, self._spans[self.cursor][0]
        y = 0
        for line in plain[:offset].split("\n")[:-1]:
            y += max(1, -(-len(line) // width))
        y += (offset - (plain.rfind("\n", 0, offset) + 1)) // width
        top, height = scroll.scroll_offset.y, scroll.scrollable_content_region.height
        if not top <= y < top + height:
            scroll.scroll_to(y=max(y - height // 2, 0), animate=False)

    def describe(self, i: int) -> Text:
        if not self.cells:
            return Text("no tokens")
        c = self.cells[i]
        line = Text(f"token {i + 1}/{len(self.cells)} · turn {c.turn + 1} · id {c.id} · ")
        line.append(repr(self.decoder.text(c.id)), "bold")
        if c.trained:
            assert c.logprob is not None
            line.append(f" · logprob {c.logprob:.3f} (p {math.exp(c.logprob):.2f})")
            if c.advantage is not None:
                line.append(f" · advantage {c.advantage:+.3f}")
            line.append(" · sampled (trained)")
        else:
            line.append(" · prompt/env/observation: not trained", OBSERVATION_STYLE)
        line.append(f"\ncolour: {self.mode} (m toggles) · {self.decoder.source}", "dim")
        return line

    def watch_cursor(self) -> None:
        self._paint()

    def watch_mode(self) -> None:
        if self.cells:
            self._build()
            self._paint()

    def action_move(self, step: int) -> None:
        if self.cells:
            self.cursor = min(max(self.cursor + step, 0), len(self.cells) - 1)

    def action_jump(self, where: int) -> None:
        if self.cells:
            self.cursor = where % len(self.cells)

    def action_next_trained(self, step: int) -> None:
        i = self.cursor + step
        while 0 <= i < len(self.cells):
            if self.cells[i].trained and self.cells[i].turn != self.cells[self.cursor].turn:
                self.cursor = i
                return
            i += step

    def action_toggle_mode(self) -> None:
        self.mode = "advantage" if self.mode == "logprob" else "logprob"
