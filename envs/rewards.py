"""Learned rewards for ``ptgym/Chat-v0``: a reward model, a generative judge, or an ensemble.

A reward *spec* names the sources (parsed once, by ``parse_spec``):

- ``rm:PATH``: a sequence-classification reward model (``AutoModelForSequenceClassification``
  with one output) and its tokenizer, as ``ptgym rm`` saves it;
- ``judge:MODEL`` (local ``hf`` backend), ``judge:MODEL@http://HOST:PORT/v1`` (any
  OpenAI-compatible server, e.g. ``ptgym serve``; MODEL also names the tokenizer) or
  ``judge:MODEL@vllm``: a generative judge (``ptgym.envs.judge``);
- ``mean(SPEC, SPEC, ...)`` / ``min(SPEC, SPEC, ...)``: an ensemble, each source normalised
  first. ``min`` is the conservative choice against reward hacking: a reply must please every
  model (Coste et al., 2024, "Reward Model Ensembles Help Mitigate Overoptimization").

Three things break RLHF silently when a reward model is called the obvious way, and each is
handled here:

1. The score is read at the **last attended token** of each row, found from the attention mask,
   with position ids counted from the mask too, so left and right padding give the same number.
   transformers' own pooling finds "the rightmost token that is not ``pad_token_id``", which is
   wrong whenever pad == eos and the text ends in eos; without a mask that case is refused.
2. The conversation is **re-rendered as text with the RM's own tokenizer and chat template**.
   The policy's token ids are never fed to the RM: a different vocabulary or template makes them
   meaningless to it (TRL issues #2778 and #937; OpenRLHF re-tokenises for the same reason).
3. Scores are **normalised per source** with a running mean and std (Welford), so an ensemble
   mixes like with like and a KL coefficient means the same thing for any RM.

Concurrency: envs step in the collector's thread pool; each ``Reward`` has one worker thread that
owns the models and the normalisers. Requests that arrive together are scored as one batch.
A source that fails raises ``ScoreError`` in the caller: the env turns it into ``info["error"]``
and the trainer drops the episode. Nothing here ever returns a made-up score.
"""

from __future__ import annotations

import json
import math
import queue
import re
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

Messages = list[dict[str, Any]]


class ScoreError(RuntimeError):
    """A reward source could not score a conversation (model failure, no verdict, ...)."""


class Source(Protocol):
    """One reward source: raw scores for a batch of conversations (each ending with the reply).

    An item it cannot score is a ``ScoreError`` in the returned list; an exception means the
    whole batch failed."""

    name: str

    def score(self, conversations: Sequence[Messages]) -> list[float | ScoreError]: ...


# --- the reward model -------------------------------------------------------------------------


def last_token_scores(
    model: Any, input_ids: Any, attention_mask: Any = None, *, eos_token_id: int | None = None
) -> Any:
    """Scores ``(B,)`` of a sequence-classification model read at each row's last attended token.

    Left or right padding give the same scores: positions are counted from the mask. Without an
    ``attention_mask`` the mask is ``input_ids != pad_token_id``, refused when pad == eos (an eos
    in the text would be taken for padding).
    """
    import torch

    pad = model.config.pad_token_id
    if attention_mask is None:
        if pad is None or pad == eos_token_id:
            raise ValueError(
                f"no attention_mask and pad_token_id ({pad}) == eos_token_id ({eos_token_id}): "
                "padding cannot be told from a real end of text; pass attention_mask"
            )
        attention_mask = (input_ids != pad).long()
    attention_mask = attention_mask.to(input_ids.device)
    if bool((attention_mask.sum(-1) == 0).any()):
        raise ValueError("a row of the batch has no attended token")
    base = getattr(model, model.base_model_prefix)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)
    hidden = base(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
    ).last_hidden_state  # (B, T, H)
    T = input_ids.shape[1]
    last = (attention_mask * torch.arange(T, device=input_ids.device)).argmax(-1)  # (B,)
    rows = torch.arange(input_ids.shape[0], device=input_ids.device)
    return model.score(hidden[rows, last]).squeeze(-1).float()  # (B,)


class RewardModel:
    """A sequence-classification RM that scores conversations rendered with its own template.

    ``path``: a folder ``AutoModelForSequenceClassification.from_pretrained`` loads, holding the
    tokenizer too (or a ``ptgym rm`` output folder holding it as ``model/``). The rendering follows
    ``ptgym_rm.json`` when present: ``prompt+response+eos`` (an RM trained on string records) joins
    the message contents and appends eos; otherwise the RM's chat template renders the
    conversation. ``max_length``: longer renders keep their last tokens (the reply) and lose the
    start of the prompt. ``batch_size``: rows per forward pass.
    """

    def __init__(
        self,
        path: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_length: int = 4096,
        batch_size: int = 16,
        name: str = "rm",
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ptgym.agents.models import _resolve_device, _resolve_dtype

        path = _rm_folder(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as exc:
            raise ValueError(f"cannot load a reward model tokenizer from {path!r}: {exc}") from exc
        self.plain = _render_mode(path) == "prompt+response+eos"
        if not self.tokenizer.chat_template and not self.plain:
            raise ValueError(
                f"the reward model tokenizer at {path} has no chat template; ptgym renders each "
                "conversation with the RM's own template: save one with the RM "
                "(tokenizer.chat_template = ...; tokenizer.save_pretrained(PATH))"
            )
        device = _resolve_device(device)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            path, dtype=_resolve_dtype(dtype, device)
        ).to(device)
        self.model.eval()
        if self.model.config.num_labels != 1:
            raise ValueError(
                f"the model at {path} has num_labels={self.model.config.num_labels}; a reward "
                "model has exactly one output (num_labels=1)"
            )
        if not isinstance(getattr(self.model, "score", None), torch.nn.Module):
            raise ValueError(
                f"{type(self.model).__name__} at {path} has no `score` head; ptgym reads the "
                "score at the last attended token itself and needs the Llama/Qwen/Mistral-style "
                "`score` linear head"
            )
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = self.tokenizer.eos_token_id
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.pad_id
        self.path, self.name = path, name
        self.max_length, self.batch_size = max_length, batch_size

    def render(self, conversation: Messages, *, template: bool = True) -> list[int]:
        """The RM's ids for a conversation: its own chat template, or plain text if not
        ``template`` (``ptgym doctor rm`` compares the two)."""
        messages = [{"role": m["role"], "content": m.get("content") or ""} for m in conversation]
        if self.plain:  # trained on standard (string) records: prompt + response + eos
            text = "".join(m["content"] for m in messages) + (self.tokenizer.eos_token or "")
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        elif template:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            text = "\n\n".join(m["content"] for m in messages)
            ids = self.tokenizer(text)["input_ids"]
        return list(ids[-self.max_length :])

    def score_ids(
        self, rows: Sequence[Sequence[int]], *, padding_side: str = "right"
    ) -> list[float]:
        """Scores of token-id rows, ``batch_size`` rows per forward pass."""
        import torch

        out: list[float] = []
        device = self.model.device
        for start in range(0, len(rows), self.batch_size):
            chunk = [list(r) for r in rows[start : start + self.batch_size]]
            T = max(len(r) for r in chunk)
            ids = torch.full((len(chunk), T), self.pad_id, dtype=torch.long)
            mask = torch.zeros((len(chunk), T), dtype=torch.long)
            for i, r in enumerate(chunk):
                span = slice(T - len(r), T) if padding_side == "left" else slice(0, len(r))
                ids[i, span] = torch.tensor(r)
                mask[i, span] = 1
            with torch.inference_mode():
                scores = last_token_scores(self.model, ids.to(device), mask.to(device))
            out.extend(scores.cpu().tolist())
        return out

    def score(self, conversations: Sequence[Messages]) -> list[float | ScoreError]:
        scores = self.score_ids([self.render(c) for c in conversations])
        return [s if math.isfinite(s) else ScoreError(f"{self.name} gave {s}") for s in scores]


def _rm_folder(path: str) -> str:
    """``PATH`` itself, or ``PATH/model`` when PATH is a ``ptgym rm`` output folder."""
    p = Path(path)
    if not (p / "config.json").is_file() and (p / "model" / "config.json").is_file():
        return str(p / "model")
    if not (p / "config.json").is_file():
        raise FileNotFoundError(
            f"no reward model at {path}: expected a folder with config.json (the `model` folder "
            "that `ptgym rm ... out=DIR` writes, or DIR itself)"
        )
    return path


def _render_mode(path: str) -> str:
    """How ``ptgym rm`` rendered text in training (its ``ptgym_rm.json``); chat template if
    the file is absent."""
    info = Path(path) / "ptgym_rm.json"
    if info.is_file():
        return str(json.loads(info.read_text()).get("render", "chat_template"))
    return "chat_template"


# --- normalisation and the combined reward ----------------------------------------------------


@dataclass
class RunningNorm:
    """Running mean and (population) std of one source, Welford's update.

    ``normalize(xs)`` first adds ``xs`` to the statistics, then returns
    ``clip((x - mean) / (std + eps))``; the first score of a source is therefore 0.
    """

    clip: float = 5.0
    eps: float = 1e-6
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def update(self, x: float) -> None:
        self.count += 1
        delta = x - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (x - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / self.count) if self.count else 0.0

    def normalize(self, xs: Sequence[float]) -> list[float]:
        for x in xs:
            self.update(x)
        std = self.std
        return [max(-self.clip, min(self.clip, (x - self.mean) / (std + self.eps))) for x in xs]


@dataclass
class Scored:
    """The reward of one conversation and each source's raw score (``{name: score}``)."""

    reward: float
    raw: dict[str, float]


@dataclass
class _Request:
    conversation: Messages
    future: Future = field(default_factory=Future)


class Reward:
    """Sources combined by ``combine`` (``"mean"`` or ``"min"``; one source: itself), each
    normalised by its own ``RunningNorm`` when ``normalize``. ``score`` is safe to call from many
    threads: one worker thread scores whatever requests are waiting as one batch (at most
    ``max_batch``, gathering for up to ``wait_s`` after the first)."""

    def __init__(
        self,
        sources: Sequence[Source],
        *,
        combine: str = "mean",
        normalize: bool = True,
        max_batch: int = 64,
        wait_s: float = 0.005,
    ):
        if combine not in ("mean", "min"):
            raise ValueError(f"combine must be 'mean' or 'min', got {combine!r}")
        if not sources:
            raise ValueError("a reward needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"reward sources need distinct names, got {names}")
        self.sources, self.combine, self.normalize = list(sources), combine, normalize
        self.norms = {s.name: RunningNorm() for s in sources}
        self.max_batch, self.wait_s = max_batch, wait_s
        self._queue: queue.Queue[_Request] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def score(self, conversation: Messages) -> Scored:
        """Blocks until scored; raises ``ScoreError`` if any source failed on it."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="ptgym-reward", daemon=True)
                self._thread.start()
        request = _Request(conversation)
        self._queue.put(request)
        return request.future.result()

    def score_batch(self, conversations: Sequence[Messages]) -> list[Scored | ScoreError]:
        """Score a batch in the calling thread: the worker's job, or a tool's that does not also
        call ``score`` (the normalisers have one owner at a time)."""
        raw: dict[str, list[float | ScoreError]] = {}
        for source in self.sources:
            try:
                raw[source.name] = source.score(conversations)
            except Exception as exc:  # the whole batch failed in this source
                error = ScoreError(f"{type(exc).__name__}: {exc}")
                raw[source.name] = [error] * len(conversations)
        ok = {
            i: j for j, i in enumerate(i for i in range(len(conversations)) if not _failed(raw, i))
        }
        values = {n: [float(raw[n][i]) for i in ok] for n in raw}  # type: ignore[arg-type]
        if self.normalize:
            values = {n: self.norms[n].normalize(v) for n, v in values.items()}
        out: list[Scored | ScoreError] = []
        for i in range(len(conversations)):
            errors = [f"{n}: {raw[n][i]}" for n in raw if isinstance(raw[n][i], ScoreError)]
            if errors:
                out.append(ScoreError("; ".join(errors)))
                continue
            parts = [values[s.name][ok[i]] for s in self.sources]
            reward = min(parts) if self.combine == "min" else sum(parts) / len(parts)
            out.append(Scored(reward, {n: float(raw[n][i]) for n in raw}))  # type: ignore[arg-type]
        return out

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get(timeout=self.wait_s))
                except queue.Empty:
                    break
            try:
                results = self.score_batch([r.conversation for r in batch])
            except Exception as exc:  # a bug here must not leave callers waiting forever
                results = [ScoreError(f"{type(exc).__name__}: {exc}")] * len(batch)
            for request, result in zip(batch, results, strict=True):
                if isinstance(result, ScoreError):
                    request.future.set_exception(result)
                else:
                    request.future.set_result(result)


def _failed(raw: dict[str, list[float | ScoreError]], i: int) -> bool:
    return any(isinstance(scores[i], ScoreError) for scores in raw.values())


# --- specs ------------------------------------------------------------------------------------

_ENSEMBLE = re.compile(r"^(mean|min)\((.*)\)$", re.S)


def split_spec(spec: str) -> tuple[str, list[str]]:
    """``("mean"|"min", [source specs])`` for an ensemble, ``("mean", [spec])`` for one source.
    Source specs are checked for their kind (``rm:`` or ``judge:``) here, before any loading."""
    spec = spec.strip()
    match = _ENSEMBLE.match(spec)
    combine, parts = (match.group(1), _split_top(match.group(2))) if match else ("mean", [spec])
    for part in parts:
        kind, sep, target = part.partition(":")
        if kind not in ("rm", "judge") or not sep or not target:
            raise ValueError(
                f"reward source {part!r} is not one of rm:PATH, judge:MODEL, "
                "judge:MODEL@http://HOST:PORT/v1, judge:MODEL@vllm, mean(...), min(...)"
            )
    return combine, parts


def _split_top(inner: str) -> list[str]:
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(inner):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(inner[start:i].strip())
            start = i + 1
    parts.append(inner[start:].strip())
    return [p for p in parts if p]


def make_source(spec: str, name: str, *, device: str = "auto", **judge_kwargs: Any) -> Source:
    kind, _, target = spec.partition(":")
    if kind == "rm":
        return RewardModel(target, device=device, name=name)
    from .judge import Judge

    model, _, where = target.partition("@")
    return Judge(model, backend=where or "hf", device=device, name=name, **judge_kwargs)


def build_reward(
    spec: str, *, normalize: bool = True, device: str = "auto", **judge_kwargs: Any
) -> Reward:
    """A ``Reward`` from a spec string. Source names are their kinds (``rm``, ``judge``),
    numbered when a kind repeats (``rm.0``, ``rm.1``): they key ``info["score/NAME"]``."""
    combine, parts = split_spec(spec)
    kinds = [p.partition(":")[0] for p in parts]
    names = [k if kinds.count(k) == 1 else f"{k}.{kinds[:i].count(k)}" for i, k in enumerate(kinds)]
    sources = [
        make_source(p, n, device=device, **judge_kwargs) for p, n in zip(parts, names, strict=True)
    ]
    return Reward(sources, combine=combine, normalize=normalize)


_SHARED: dict[tuple, Reward] = {}
_SHARED_LOCK = threading.Lock()


def shared_reward(spec: str, **kwargs: Any) -> Reward:
    """One ``Reward`` per (spec, options) per process: every env instance of a run shares its
    models, its batching thread and its normalisers (a run makes one env per episode slot)."""
    key = (spec, tuple(sorted((k, repr(v)) for k, v in kwargs.items())))
    with _SHARED_LOCK:
        if key not in _SHARED:
            _SHARED[key] = build_reward(spec, **kwargs)
        return _SHARED[key]
