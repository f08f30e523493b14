"""``ptgym doctor rm PATH``: checks a reward model for the bugs that only show up as bad RLHF runs.

Each check prints one line, ``ok``, ``warn`` or ``FAIL``, with what it measured:

1. **Padding.** One batch of conversations scored left-padded, right-padded and one row at a time
   (ptgym's scorer reads the last attended token, ``ptgym.envs.rewards``). Any difference is a
   FAIL. It also scores the batch the way transformers' own pooling does (the rightmost token
   that is not ``pad_token_id``) and warns where that disagrees: code that scores this RM that way
   (pad == eos and a template ending in eos) reads the wrong token.
2. **Chat template.** The same conversations rendered with the RM's chat template and as plain
   text: a large difference says the score depends on the format, so it must be rendered the way
   it was trained (ptgym uses the template).
3. **The policy** (``model=`` or ``policy=``): a different vocabulary or chat template from the RM's is flagged.
   ptgym re-renders text with the RM's tokenizer, so training works; anything that feeds the
   policy's token ids to the RM would score garbage.
4. **Score distribution** on the prompt set: replies sampled from the policy when one is
   given, else empty replies (then a wide spread means the RM scores the prompt, not the reply).
Exit status 1 when a check FAILs.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from ptgym.config import opt

REPLIES = [
    "Sure.",
    "Here is a short answer to your question, with one example.",
    "I am not sure, but I think the answer depends on a few things: the context, the goal, "
    "and what you have tried so far. Could you tell me more?",
    "No.",
]


@dataclass
class DoctorRMCommand:
    policy: str | None = opt(
        None, "the policy (also model=): flags a tokenizer or chat-template mismatch"
    )
    prompts: str | None = opt(None, "prompt set (JSONL, datasets folder); default: env=chat's")
    n: int = opt(16, "prompts in the score distribution", minimum=2)
    batch: int = opt(8, "conversations in the padding and template checks", minimum=2)
    max_new_tokens: int = opt(64, "reply length sampled from the policy", minimum=1)
    tolerance: float | None = opt(
        None,
        "largest score difference accepted between paddings, relative to max(1, |score|) "
        "(default: 1e-3 in float32, 3e-2 in bf16/fp16, whose rounding depends on the batch)",
    )
    device: str = opt("auto", "where the models run", choices=("auto", "cpu", "cuda"))


def _line(status: str, text: str, out: Any) -> None:
    out(f"{status:<5} {text}")


def _hf_pooling(rm: Any, rows: list[list[int]]) -> list[float]:
    """Scores as ``AutoModelForSequenceClassification.forward`` pools them (right padding)."""
    import torch

    T = max(map(len, rows))
    ids = torch.full((len(rows), T), rm.pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
    with torch.inference_mode():
        logits = rm.model(
            input_ids=ids.to(rm.model.device), attention_mask=mask.to(rm.model.device)
        )
    return logits.logits[:, 0].float().cpu().tolist()


def diagnose_rm(path: str, cfg: DoctorRMCommand, *, out: Any = print) -> int:
    """Run the checks (module docstring); returns the number of FAILs."""
    import torch

    from ptgym.envs.chat import load_prompts
    from ptgym.envs.rewards import RewardModel

    rm = RewardModel(path, device=cfg.device)
    prompts = load_prompts(cfg.prompts)
    out(f"reward model {rm.path}: {type(rm.model).__name__}, vocabulary {len(rm.tokenizer)}")
    conversations = [
        [*prompts[i % len(prompts)], {"role": "assistant", "content": REPLIES[i % len(REPLIES)]}]
        for i in range(cfg.batch)
    ]
    fails = 0

    tol = cfg.tolerance
    if tol is None:
        tol = 1e-3 if rm.model.dtype == torch.float32 else 3e-2
    rows = [rm.render(c) for c in conversations]
    alone = [rm.score_ids([r])[0] for r in rows]
    scale = [max(1.0, abs(a)) for a in alone]
    diffs = {
        side: max(
            abs(a - b) / c
            for a, b, c in zip(rm.score_ids(rows, padding_side=side), alone, scale, strict=True)
        )
        for side in ("left", "right")
    }
    bad = max(diffs.values()) > tol
    fails += bad
    _line(
        "FAIL" if bad else "ok",
        f"padding: max |score difference| left-padded {diffs['left']:.2e}, right-padded "
        f"{diffs['right']:.2e} vs one row at a time (relative; tolerance {tol:g})",
        out,
    )
    hf_scores = _hf_pooling(rm, rows)
    hf = max(abs(a - b) / c for a, b, c in zip(hf_scores, alone, scale, strict=True))
    pad_eq_eos = rm.pad_id == rm.tokenizer.eos_token_id
    _line(
        "warn" if hf > tol else "ok",
        f"transformers' own pooling differs by up to {hf:.2e}"
        + (
            " (pad == eos: it stops before a final eos; score with ptgym)"
            if hf > tol and pad_eq_eos
            else ""
        ),
        out,
    )

    plain = rm.score_ids([rm.render(c, template=False) for c in conversations])
    gap = statistics.fmean(abs(a - b) for a, b in zip(plain, alone, strict=True))
    spread = statistics.pstdev(alone) or 1e-9
    _line(
        "warn" if gap > spread else "ok",
        f"chat template: mean |score(template) - score(plain text)| = {gap:.3f} "
        f"(score std over the batch {spread:.3f}); ptgym renders with the template",
        out,
    )

    policy = None
    if cfg.policy:
        from ptgym.agents.models import load_model

        policy = load_model(cfg.policy, device=cfg.device)
        ptok = policy[1]
        same_vocab = ptok.get_vocab() == rm.tokenizer.get_vocab()
        _line(
            "ok" if same_vocab else "warn",
            "tokenizer: the policy's vocabulary "
            + ("equals the RM's" if same_vocab else "differs from the RM's")
            + (
                ""
                if same_vocab
                else " (fine for ptgym, which re-renders text; never feed policy ids to this RM)"
            ),
            out,
        )
        same_template = (ptok.chat_template or "") == (rm.tokenizer.chat_template or "")
        _line(
            "ok" if same_template else "warn",
            "chat template: the policy's "
            + ("equals the RM's" if same_template else "differs from the RM's")
            + (
                ""
                if same_template
                else ": the RM scores conversations in its own format, not the one the policy saw"
            ),
            out,
        )

    sample = prompts[: cfg.n]
    replies = [""] * len(sample)
    if policy is not None:
        from ptgym.agents.backend import SamplingParams
        from ptgym.agents.chat import ChatRenderer
        from ptgym.agents.hf import HFBackend

        renderer = ChatRenderer(policy[1])
        done = HFBackend(*policy).generate(
            [renderer.initial(p) for p in sample],
            SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=0.7),
            seeds=list(range(len(sample))),
        )
        replies = [c.text for c in done]
    scores = rm.score_ids(
        [
            rm.render([*p, {"role": "assistant", "content": r}])
            for p, r in zip(sample, replies, strict=True)
        ]
    )
    q = statistics.quantiles(scores, n=4)
    what = f"replies sampled from {cfg.policy}" if policy is not None else "empty replies"
    out(
        f"      scores on {len(scores)} prompts ({what}): mean {statistics.fmean(scores):.3f} "
        f"std {statistics.pstdev(scores):.3f} min {min(scores):.3f} p25 {q[0]:.3f} "
        f"median {q[1]:.3f} p75 {q[2]:.3f} max {max(scores):.3f}"
    )
    return fails
