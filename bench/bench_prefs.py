"""``ptgym dpo`` and ``ptgym rm`` against TRL's ``DPOTrainer`` and ``RewardTrainer``, side by side.

Same model folder, LoRA (r=16, alpha=32, dropout 0, q/k/v/o; the RM's score head trained in
full on both sides), batch (``--batch`` pairs, one micro-batch), data (synthetic standard-format
pairs: TRL and ptgym both score ``prompt`` + ``response`` + eos, so the tokens are identical), AdamW
at one constant lr, grad clip 1.0, fp32, no gradient checkpointing, beta 0.1, sigmoid DPO loss.
Runs are in this process, one after another in ABBA order per trainer (TRL, ptgym, ptgym, TRL)
because a shared machine's speed drifts within minutes; medians pool both runs of a side, the first
``--warmup`` steps of each run left out.

Step time: ptgym's ``perf/step_s`` (padding, forward/backward of chosen+rejected in one batch, the
reference pass, optimizer step); TRL's ``on_step_begin`` to ``on_step_end`` (its collation happens
before, so TRL's side leaves out a little that ptgym's includes).

Loss check: before timing, one batch through both DPO losses with the same non-zero LoRA weights
(ptgym's seeded adapters copied into TRL's model), so the policy differs from the reference and the
loss is not the trivial log 2; the two must agree to 1e-5.

    python bench/bench_prefs.py [--model tiny|smollm2-135m] [--steps 4] [--warmup 1] [--batch 4]
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

WORDS = ["apple", "river", "stone", "cloud", "green", "quick", "house", "table", "music", "paper"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_data(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = f"Question: say something about the {rng.choice(WORDS)}.\nAnswer:"
        body = " ".join(rng.choice(WORDS) for _ in range(12))
        rows.append(
            {
                "prompt": prompt,
                "chosen": f" {body} banana",
                "rejected": f" {body} {rng.choice(WORDS)}",
            }
        )
    return rows


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class StepTimer:
    """A transformers TrainerCallback timing each optimizer step."""

    def __init__(self) -> None:
        from transformers import TrainerCallback

        timer = self

        class _CB(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):  # noqa: ANN001
                timer._t0 = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):  # noqa: ANN001
                timer.times.append(time.perf_counter() - timer._t0)

        self.times: list[float] = []
        self.callback = _CB()


def _common_trl_args(a: argparse.Namespace, out: str) -> dict[str, Any]:
    return dict(
        output_dir=out,
        per_device_train_batch_size=a.batch,
        gradient_accumulation_steps=1,
        max_steps=a.warmup + a.steps,
        learning_rate=a.lr,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        gradient_checkpointing=False,
        logging_steps=1,
        report_to="none",
        save_strategy="no",
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
        seed=0,
        disable_tqdm=True,
    )


def _peft(task: str) -> Any:
    from peft import LoraConfig

    return LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules=TARGETS, task_type=task)


def trl_dpo(
    a: argparse.Namespace, folder: str, data: list[dict], out: str
) -> tuple[Any, list[float]]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    cfg = DPOConfig(**_common_trl_args(a, out), beta=0.1, loss_type=["sigmoid"], max_length=None)
    timer = StepTimer()
    trainer = DPOTrainer(
        model=model,
        args=cfg,
        train_dataset=datasets.Dataset.from_list(data),
        processing_class=tok,
        peft_config=_peft("CAUSAL_LM"),
        callbacks=[timer.callback],
    )
    return trainer, timer.times


def trl_rm(
    a: argparse.Namespace, folder: str, data: list[dict], out: str
) -> tuple[Any, list[float]]:
    import datasets
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=1, dtype=torch.float32
    )
    model.config.pad_token_id = tok.pad_token_id
    timer = StepTimer()
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(**_common_trl_args(a, out), max_length=None),
        train_dataset=datasets.Dataset.from_list(data),
        processing_class=tok,
        peft_config=_peft("SEQ_CLS"),
        callbacks=[timer.callback],
    )
    return trainer, timer.times


def ptgym_args(a: argparse.Namespace, data_file: Path, out: Path) -> list[str]:
    return [
        f"data={data_file}",
        f"model={a.model}",
        "lora.enabled=true",
        "lora.r=16",
        "lora.alpha=32",
        "lora.dropout=0.0",
        f"trainer.batch={a.batch}",
        f"trainer.micro_batch={a.batch}",
        f"trainer.max_steps={a.warmup + a.steps}",
        f"trainer.lr={a.lr}",
        "trainer.eval_fraction=0",
        "trainer.eval_every=0",
        "trainer.grad_clip=1.0",
        f"out={out}",
    ]


def ptgym_run(kind: str, a: argparse.Namespace, data_file: Path, out: Path) -> list[float]:
    from ptgym.config import compose
    from ptgym.metrics import read_metrics
    from ptgym.prefconfig import DPOCommand, RMCommand

    if kind == "dpo":
        from ptgym.dpo import train_dpo

        train_dpo(compose(DPOCommand, ptgym_args(a, data_file, out)), log=lambda _: None)
    else:
        from ptgym.reward_model import train_rm

        train_rm(compose(RMCommand, ptgym_args(a, data_file, out)), log=lambda _: None)
    return [r["perf/step_s"] for r in read_metrics(out)]


def dpo_loss_check(
    a: argparse.Namespace, folder: str, data: list[dict], data_file: Path, tmp: Path
) -> tuple[float, float]:
    """The DPO loss of the first batch under ptgym and under TRL with the same LoRA weights."""
    from ptgym.config import compose
    from ptgym.dpo import encode_pairs, preference_loss
    from ptgym.policy import build_policy
    from ptgym.prefconfig import DPOCommand
    from ptgym.prefs import read_preferences

    cfg = compose(DPOCommand, ptgym_args(a, data_file, tmp / "check"))
    torch.manual_seed(0)
    policy = build_policy(cfg.model, cfg.lora, value_head=False, need_reference=True)
    for name, p in policy.model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(0.0, 0.05)  # non-zero adapters: the policy differs from the reference
    policy.eval()
    with torch.no_grad():
        pairs = encode_pairs(policy, read_preferences(data_file)[: a.batch], cfg)
        ours = preference_loss(policy, pairs, cfg)[0].item()
    trainer, _ = trl_dpo(a, folder, data, str(tmp / "trl-check"))
    lora = {k: v for k, v in policy.model.state_dict().items() if "lora_" in k}
    result = trainer.model.load_state_dict(lora, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys[:3]
    trainer.model.eval()
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(a.batch)])
    batch = {k: v.to(trainer.model.device) if hasattr(v, "to") else v for k, v in batch.items()}
    with torch.no_grad():
        theirs = trainer.compute_loss(trainer.model, batch).item()
    return ours, theirs


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="tiny")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", choices=["dpo", "rm"], default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    import trl

    from ptgym.agents.models import _model_folder
    from ptgym.prefs import Preference, write_preferences

    folder = str(_model_folder(a.model))
    data = make_data(a.batch * (a.warmup + a.steps) * 2)
    tmp = Path(tempfile.mkdtemp(prefix="bench-prefs-"))
    data_file = tmp / "prefs.jsonl"
    write_preferences(data_file, [Preference(**row) for row in data])
    print(
        f"model {a.model}, batch {a.batch} pairs, {a.steps} timed steps (+{a.warmup} warm-up), trl {trl.__version__}, threads {a.threads}"
    )
    if a.only in (None, "dpo"):
        ours, theirs = dpo_loss_check(a, folder, data, data_file, tmp)
        print(
            f"dpo loss on one batch: ptgym {ours:.7f}  trl {theirs:.7f}  |diff| {abs(ours - theirs):.2e}  {'OK' if abs(ours - theirs) <= 1e-5 else 'MISMATCH'}"
        )
    for kind in [k for k in ("dpo", "rm") if a.only in (None, k)]:
        times: dict[str, list[float]] = {"trl": [], "ptgym": []}
        for i, side in enumerate(["trl", "ptgym", "ptgym", "trl"]):
            out = tmp / f"{kind}-{side}-{i}"
            if side == "ptgym":
                times[side] += ptgym_run(kind, a, data_file, out)[a.warmup :]
            else:
                trainer, steps = (trl_dpo if kind == "dpo" else trl_rm)(a, folder, data, str(out))
                trainer.train()
                times[side] += steps[a.warmup :]
        t, g = _median(times["trl"]), _median(times["ptgym"])
        print(
            f"{kind}: step median  trl {t:.3f}s  ptgym {g:.3f}s  ratio ptgym/trl {g / t:.2f}  (n={len(times['trl'])}/{len(times['ptgym'])})"
        )


if __name__ == "__main__":
    main()
