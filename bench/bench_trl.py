"""ptgym's GRPO step against TRL's ``GRPOTrainer``: same model, LoRA, prompts, batch, lengths.

One invocation runs both, one after the other (never at once: they would share the CPU cores),
each in a fresh process with ``torch.set_num_threads(--threads)``, ``--rounds`` times in ABBA order
(TRL, ptgym, ptgym, TRL): the speed of a shared machine drifts by tens of percent within minutes,
and the alternation spreads that drift over both sides. Medians pool the rounds' measured steps.

- TRL, in its own virtual environment (``--venv``, made with ``--system-site-packages`` so it
  reuses the installed torch/transformers/peft; ``pip install trl==--trl-version`` the first time);
- ptgym, in this interpreter's environment: ``ptgym.trainer.train`` on ``env=math``.

Identical settings: the cached SmolLM2-135M-Instruct folder in float32; LoRA r=16, alpha=32,
dropout 0 on q/k/v/o; 2 prompts x 4 generations per step; at most 128 new tokens; temperature 1.0,
top-p 1, top-k off; beta = 0 (no reference pass); one optimisation pass per batch, one micro-batch
of 8 rows; clip 0.2 / 0.28 (DAPO clip-higher), token-mean loss (TRL ``loss_type="dapo"``), group
std scaling; AdamW at the same constant lr, grad clip 1.0; no gradient checkpointing (TRL defaults
to it: turned off), fp32 (TRL defaults to bf16: turned off). Prompts: the `env=math` preset's train problems
of ptgym's task seeds for each step, rendered with the tokenizer's chat template (the script
checks ptgym's prompt token ids equal TRL's ``apply_chat_template`` ids). TRL's reward is
``ptgym.envs.answer.check_answer``, which is what Math-v0 computes.

Not identical, by design of each trainer: sampled completions (different RNG streams), hence
lengths, which drive the time: the report gives mean completion lengths and time per generated
token side by side. ptgym also returns the sampler's logprobs from ``generate``
(``output_logits``) and writes trajectories, metrics and a checkpoint; TRL does not.

Step time: ptgym's ``perf/step_s`` (collect + update; the final checkpoint is outside it); TRL's
time from ``on_step_begin`` to ``on_step_end`` (generation, reward, loss, optimizer step), with
its own ``step_time`` log as a cross-check. The first ``--warmup`` steps are not counted.

    python bench/bench_trl.py [--steps 4] [--warmup 1] [--rounds 2] [--threads 2] [--only ptgym|trl]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
TASKS, GROUP, MAX_NEW = 2, 4, 128
LORA = dict(r=16, alpha=32, dropout=0.0, targets=["q_proj", "k_proj", "v_proj", "o_proj"])


# --- the TRL environment --------------------------------------------------------------------


def ensure_trl(venv: Path, version: str) -> Path:
    """The venv's python, with ``trl==version`` importable (created and installed if needed)."""
    python = venv / "bin" / "python"
    check = [
        str(python),
        "-c",
        "import trl, sys; sys.exit(trl.__version__ != sys.argv[1])",
        version,
    ]
    if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
        return python
    if not python.exists():
        print(f"creating {venv} (--system-site-packages)", flush=True)
        subprocess.run(
            [sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True
        )
    print(f"installing trl=={version} into {venv}", flush=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", f"trl=={version}"], check=True)
    return python


# --- the shared specification ---------------------------------------------------------------


def make_spec(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    """Model folder, prompts of every step (ptgym's task seeds), and the shared settings."""
    from ptgym.agents.models import pull_model
    from ptgym.build import env_factory, task_seeds
    from ptgym.config import TrainCommand, compose

    steps = args.warmup + args.steps
    cfg = compose(TrainCommand, ["env=math", f"rollout.tasks={TASKS}", f"rollout.group={GROUP}"])
    rollout = cfg.rollout
    env = env_factory(cfg.env, split="train")[1]()  # the preset's generators, as ptgym trains
    prompts = []
    for step in range(steps):
        for seed in task_seeds(rollout, step):
            obs, info = env.reset(seed=seed)
            prompts.append({"prompt": obs, "answer": info["answer"], "task_id": info["task_id"]})
    return {
        "model": str(pull_model("smollm2-135m")),
        "steps": steps,
        "warmup": args.warmup,
        "threads": args.threads,
        "lr": args.lr,
        "sampler": args.sampler,
        "prompts": prompts,
        "out": str(out),
    }


# --- workers (each in a fresh process) ------------------------------------------------------


def worker_ptgym(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    from ptgym.agents.models import load_tokenizer
    from ptgym.config import TrainCommand, compose
    from ptgym.metrics import read_metrics
    from ptgym.store import TrajectoryStore
    from ptgym.trainer import train

    run = Path(spec["out"]) / "ptgym"
    cfg = compose(
        TrainCommand,
        [
            "env=math",
            "model=smollm2-135m",
            f"rollout.tasks={TASKS}",
            f"rollout.group={GROUP}",
            f"sampling.max_new_tokens={MAX_NEW}",
            "sampling.temperature=1.0",
            "sampling.top_p=1.0",
            "sampling.top_k=0",
            "algo=grpo",
            "algo.beta=0",
            "algo.epochs=1",
            "algo.clip_low=0.2",
            "algo.clip_high=0.28",
            "algo.aggregation=token-mean",
            "algo.dynamic_sampling=false",  # TRL trains on every group (the math preset drops some)
            f"rollout.sampler={spec.get('sampler', 'exact')}",
            f"lora.target_modules=[{','.join(LORA['targets'])}]",
            f"lora.r={LORA['r']}",
            f"lora.alpha={LORA['alpha']}",
            f"lora.dropout={LORA['dropout']}",
            f"trainer.steps={spec['steps']}",
            f"trainer.lr={spec['lr']}",
            "trainer.micro_batch=8",
            "trainer.grad_clip=1.0",
            "trainer.save_every=100000",
            "trainer.seed=0",
            "model.dtype=float32",
            "model.device=cpu",
            f"out={run}",
        ],
    )
    train(cfg)
    tok = load_tokenizer(spec["model"])
    trajs = list(TrajectoryStore(run))
    wanted = [p["prompt"] for p in spec["prompts"] for _ in range(GROUP)]
    same = sum(
        list(t.turns[0].prompt_ids)
        == tok.apply_chat_template(w, add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for t, w in zip(trajs, wanted, strict=True)
    )
    longest: dict[int, int] = {}
    for t in trajs:
        n = len(t.turns[0].completion_ids)
        longest[t.policy_version] = max(longest.get(t.policy_version, 0), n)
    rows = read_metrics(run)
    keys = (
        "perf/step_s",
        "perf/generation_frac",
        "perf/env_frac",
        "perf/train_frac",
        "perf/other_frac",
        "perf/train_s",
        "rollout/response_tokens",
        "reward/mean",
        "perf/gen_tokens_per_s",
    )
    return {
        "steps": [
            {**{k: r.get(k) for k in keys}, "max_length": longest[i]} for i, r in enumerate(rows)
        ],
        "prompts_identical": same,
        "prompts": len(trajs),
    }


def worker_trl(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    torch.set_num_threads(spec["threads"])
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from ptgym.agents.models import load_tokenizer
    from ptgym.envs.answer import check_answer

    def math_reward(completions: list, answer: list, **_: Any) -> list[float]:
        return [
            float(check_answer(c[-1]["content"], a))
            for c, a in zip(completions, answer, strict=True)
        ]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.t0, self.seconds, self.logs = 0.0, [], []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.seconds.append(time.perf_counter() - self.t0)

        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "reward" in logs:
                self.logs.append(dict(logs))

    dataset = Dataset.from_list(
        [{"prompt": p["prompt"], "answer": p["answer"]} for p in spec["prompts"]]
    )
    config = GRPOConfig(
        output_dir=str(Path(spec["out"]) / "trl"),
        use_cpu=True,
        bf16=False,
        gradient_checkpointing=False,
        per_device_train_batch_size=TASKS * GROUP,
        gradient_accumulation_steps=1,
        num_generations=GROUP,
        max_completion_length=MAX_NEW,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        beta=0.0,
        num_iterations=1,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=spec["lr"],
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=spec["steps"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        shuffle_dataset=False,
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
    )
    lora = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=list(LORA["targets"]),
        task_type="CAUSAL_LM",
    )
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    timer = StepTimer()
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[math_reward],
        args=config,
        train_dataset=dataset,
        processing_class=load_tokenizer(spec["model"]),
        peft_config=lora,
        callbacks=[timer],
    )
    gen_seconds: list[float] = []
    unwrapped = trainer.accelerator.unwrap_model(trainer.model)
    generate = unwrapped.generate

    def timed_generate(*a: Any, **kw: Any) -> Any:
        t = time.perf_counter()
        out = generate(*a, **kw)
        gen_seconds.append(time.perf_counter() - t)
        return out

    unwrapped.generate = timed_generate  # measures only: TRL calls the unwrapped model's generate
    trainer.train()
    steps = [
        {
            "step_s": s,
            "gen_s": g,
            "trl_step_time": log.get("step_time"),
            "mean_length": log.get("completions/mean_length"),
            "max_length": log.get("completions/max_length"),
            "reward": log.get("reward"),
        }
        for s, g, log in zip(timer.seconds, gen_seconds, timer.logs, strict=True)
    ]
    return {"steps": steps, "version": trl.__version__}


# --- the report -----------------------------------------------------------------------------


def _join(values: Any, fmt: str = ".1f") -> str:
    return " ".join(format(v, fmt) for v in values)


def _summary(side: str, steps: list[dict[str, Any]]) -> dict[str, Any]:
    """One shape for both trainers' per-step records."""
    if side == "ptgym":
        return {
            "step_s": [r["perf/step_s"] for r in steps],
            "gen_s": [r["perf/generation_frac"] * r["perf/step_s"] for r in steps],
            "mean_len": [r["rollout/response_tokens"] for r in steps],
            "max_len": [r["max_length"] for r in steps],
            "reward": [r["reward/mean"] for r in steps],
        }
    return {
        "step_s": [r["step_s"] for r in steps],
        "gen_s": [r["gen_s"] for r in steps],
        "mean_len": [r["mean_length"] for r in steps],
        "max_len": [r["max_length"] for r in steps],
        "reward": [r["reward"] for r in steps],
    }


def merge_rounds(runs: list[dict[str, Any]], warmup: int) -> dict[str, Any]:
    """One side's measured steps of every round in one list (each round's warm-up dropped)."""
    merged = {**runs[0], "steps": [step for run in runs for step in run["steps"][warmup:]]}
    if "prompts" in runs[0]:  # ptgym's check of its prompt ids against TRL's template
        merged["prompts"] = sum(run["prompts"] for run in runs)
        merged["prompts_identical"] = sum(run["prompts_identical"] for run in runs)
    return merged


def report(spec: dict[str, Any], res: dict[str, Any], loads: list[tuple[float, ...]]) -> None:
    """Medians over the measured steps, side by side; ratios when both sides ran.

    Generation runs every row until the longest one ends, so its time follows the batch's
    longest completion: "ms/decode step" is generation seconds / max length.
    """
    w = spec["warmup"]
    print(
        f"\nload average (1/5/15 min) at start and after each side: "
        f"{'; '.join(_join(load, '.2f') for load in loads)}; "
        f"threads {spec['threads']}; {spec['rounds']} round(s) of {spec['steps']} measured steps "
        f"(each after its warm-up); ptgym rollout.sampler={spec.get('sampler', 'exact')}"
    )
    if "ptgym" in res:
        print(
            "prompts: ptgym's prompt ids equal TRL's apply_chat_template ids for "
            f"{res['ptgym']['prompts_identical']}/{res['ptgym']['prompts']} rollouts"
        )
    med: dict[str, dict[str, float]] = {}
    for side, name in (("ptgym", "ptgym"), ("trl", f"TRL {res.get('trl', {}).get('version')}")):
        if side not in res:
            continue
        s = _summary(side, res[side]["steps"][w:])
        m = med[side] = {k: statistics.median(v) for k, v in s.items()}
        m["mean_len"] = statistics.mean(s["mean_len"])
        m["train_s"] = statistics.median(
            a - g for a, g in zip(s["step_s"], s["gen_s"], strict=True)
        )
        m["ms_token"] = m["step_s"] / (TASKS * GROUP * m["mean_len"]) * 1e3
        m["ms_decode"] = statistics.median(
            g / n * 1e3 for g, n in zip(s["gen_s"], s["max_len"], strict=True)
        )
        print(
            f"{name:<10} step s {_join(s['step_s'])}  median {m['step_s']:.1f}  "
            f"generate {m['gen_s']:.1f} s, rest {m['train_s']:.1f} s  "
            f"completion mean {m['mean_len']:.1f} / max {m['max_len']:.0f} tokens  "
            f"{m['ms_token']:.0f} ms/token  {m['ms_decode']:.0f} ms/decode step  "
            f"reward {_join(s['reward'], '.2f')}"
        )
    if "ptgym" in res:
        p = res["ptgym"]["steps"][w:]
        shares = {
            k: statistics.mean(r[f"perf/{k}_frac"] for r in p)
            for k in ("generation", "env", "train", "other")
        }
        print("ptgym shares: " + ", ".join(f"{k} {v:.0%}" for k, v in shares.items()))
    if len(med) == 2:
        p, t = med["ptgym"], med["trl"]
        print(
            f"ratio ptgym/TRL: {p['step_s'] / t['step_s']:.2f}x per step (goal <= 0.8x), "
            f"{p['ms_token'] / t['ms_token']:.2f}x per generated token, "
            f"generate {p['ms_decode'] / t['ms_decode']:.2f}x per decode step, "
            f"rest (loss, backward, optimizer, env) {p['train_s'] / t['train_s']:.2f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps")
    parser.add_argument("--warmup", type=int, default=1, help="steps run first and not counted")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for both")
    parser.add_argument("--lr", type=float, default=1e-4, help="learning rate for both")
    parser.add_argument("--venv", type=Path, default=HERE / ".venv-trl", help="TRL's venv")
    parser.add_argument("--trl-version", default="1.16.0", help="pip pin for TRL")
    parser.add_argument(
        "--out",
        type=Path,
        default=HERE / "results" / "trl",
        help="results folder (a fresh subfolder per run)",
    )
    parser.add_argument("--only", choices=["ptgym", "trl"], help="run one side only")
    parser.add_argument(
        "--sampler",
        choices=["exact", "bf16", "int8"],
        default="exact",
        help="ptgym's rollout.sampler (bf16, int8: a cheaper copy decodes, with the correction)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="runs of each side, in ABBA order (TRL, ptgym, ...)"
    )
    parser.add_argument("--worker", choices=["ptgym", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--spec", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        spec = json.loads(args.spec.read_text())
        result = (worker_ptgym if args.worker == "ptgym" else worker_trl)(spec)
        (Path(spec["out"]) / f"{args.worker}.json").write_text(json.dumps(result, indent=1))
        return

    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True)
    sides = [args.only] if args.only else ["trl", "ptgym"]
    pythons = {"ptgym": Path(sys.executable)}
    if "trl" in sides:
        pythons["trl"] = ensure_trl(args.venv, args.trl_version)
    spec = make_spec(args, out)
    (out / "spec.json").write_text(json.dumps(spec, indent=1))
    loads = [os.getloadavg()]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    rounds: list[dict[str, Any]] = []
    for r in range(args.rounds):
        # ABBA order (TRL, ptgym, ptgym, TRL, ...): a machine that speeds up or slows down during
        # the run weighs on both sides alike.
        order = sides if r % 2 == 0 else sides[::-1]
        spec_r = {**spec, "out": str(out / f"round-{r}")}
        Path(spec_r["out"]).mkdir()
        (out / f"spec-{r}.json").write_text(json.dumps(spec_r, indent=1))
        rounds.append({})
        for side in order:
            print(f"--- round {r + 1}/{args.rounds}: {side} ({pythons[side]})", flush=True)
            worker = ["--worker", side, "--spec", str(out / f"spec-{r}.json")]
            subprocess.run([str(pythons[side]), __file__, *worker], check=True, env=env)
            rounds[-1][side] = json.loads((Path(spec_r["out"]) / f"{side}.json").read_text())
            loads.append(os.getloadavg())
    results = {side: merge_rounds([r[side] for r in rounds], spec["warmup"]) for side in sides}
    spec = {**spec, "warmup": 0, "steps": spec["steps"] - spec["warmup"], "rounds": args.rounds}
    report(spec, results, loads)
    print(f"results: {out}")


if __name__ == "__main__":
    main()
