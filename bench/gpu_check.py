"""The GPU checks of issue 12, as one prepared run for a machine with an NVIDIA GPU.

Prints, for the same prompts: generated tokens/s of the hf backend (bf16) and the vllm backend
(when vLLM is installed), the sampler KL of each against the trainer's own forward pass, then a
short bf16 GRPO run with each backend: step time, its generation/train shares, MFU of the train
part (6 * params * trained tokens / seconds / peak), and ``rollout/sampler_kl`` from the update.

    python bench/gpu_check.py [--model smollm2-135m] [--steps 3] [--peak-tflops 989]

The peak defaults to an H100/H200's dense bf16 989 TFLOP/s; pass your GPU's. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ptgym.agents.backend import SamplingParams
from ptgym.agents.chat import ChatRenderer
from ptgym.agents.hf import HFBackend
from ptgym.agents.models import load_model
from ptgym.agents.vllm_backend import vllm_unavailable
from ptgym.config import TrainCommand, compose
from ptgym.losses import sampler_is_weights, token_logprobs
from ptgym.metrics import read_metrics


def sampler_kl(model, prompts, outs, temperature) -> float:
    kls = []
    for prompt, out in zip(prompts, outs, strict=True):
        ids = torch.tensor([prompt + list(out.token_ids)], device=model.device)
        with torch.no_grad():
            logits = model(ids).logits.float() / temperature
        lp = token_logprobs(logits[:, :-1], ids[:, 1:])[:, len(prompt) - 1 :].cpu()
        q = torch.as_tensor(out.logprobs).view(1, -1)
        kls.append(float(sampler_is_weights(lp, q, torch.ones_like(q))[1]["sampler_kl"]))
    return sum(kls) / len(kls)


def generation(args) -> None:
    model, tok = load_model(args.model, dtype="bfloat16", device="cuda")
    renderer = ChatRenderer(tok)
    prompts = [
        renderer.initial(
            [{"role": "user", "content": f"What is {a} * {a + 7}? Think step by step."}]
        )
        for a in range(args.prompts)
    ]
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0, seed=0)
    backends = {"hf": lambda: HFBackend(model, tok, max_batch_size=len(prompts))}
    if vllm_unavailable() is None:
        from ptgym.agents.vllm_backend import VLLMBackend

        backends["vllm"] = lambda: VLLMBackend(args.model, tok, gpu_memory_utilization=0.3)
    else:
        print(f"vllm: skipped ({vllm_unavailable()})")
    for name, make in backends.items():
        backend = make()
        backend.generate(prompts[:2], SamplingParams(max_new_tokens=8))  # warm-up
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        outs = backend.generate(prompts, params)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        n = sum(len(o.token_ids) for o in outs)
        kl = sampler_kl(model, prompts, outs, 1.0)
        print(
            f"{name:5s} {len(prompts)} prompts, {n} tokens in {dt:.2f} s: {n / dt:8.0f} tok/s, "
            f"sampler_kl vs bf16 forward {kl:.2e}"
        )


def train(args) -> None:
    n_params = None
    for backend in ["hf", "vllm"] if vllm_unavailable() is None else ["hf"]:
        out = f"bench/results/gpu_check-{backend}-{int(time.time())}"
        cfg = compose(TrainCommand, [
            "env=math", f"model={args.model}", f"trainer.steps={args.steps}", "tasks=8", "group=8",
            f"rollout.backend={backend}", "model.dtype=bfloat16", "model.device=cuda", f"out={out}",
        ])  # fmt: skip
        from ptgym.trainer import train as run_train

        run_train(cfg, log=lambda *_: None)
        records = read_metrics(out)
        if n_params is None:
            model, _ = load_model(args.model, dtype="bfloat16", device="cpu")
            n_params = sum(p.numel() for p in model.parameters())
        for r in records[1:] or records:  # the first step carries warm-up
            trained = r.get("rollout/trajectory_tokens", 0) * args.tasks_x_group
            flops = 6 * n_params * trained
            mfu = flops / max(r["perf/train_s"], 1e-9) / (args.peak_tflops * 1e12)
            print(json.dumps({
                "backend": backend, "step": r["step"], "step_s": round(r["perf/step_s"], 2),
                "generation_frac": round(r["perf/generation_frac"], 3),
                "tokens_per_s": round(r["perf/tokens_per_s"], 1), "train_mfu": round(mfu, 4),
                "sampler_kl": r.get("rollout/sampler_kl"), "reward": r.get("reward/mean"),
            }))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--peak-tflops", type=float, default=989.0)
    args = p.parse_args()
    args.tasks_x_group = 64
    if not torch.cuda.is_available():
        raise SystemExit("gpu_check needs an NVIDIA GPU (torch.cuda.is_available() is False)")
    print(torch.cuda.get_device_name(0), "torch", torch.__version__)
    generation(args)
    train(args)


if __name__ == "__main__":
    main()
