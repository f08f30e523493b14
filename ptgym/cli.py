"""The ``ptgym`` command (DESIGN §9).

Each subcommand is a small function; heavy imports (torch, docker) happen inside them so
``ptgym --help`` and ``ptgym envs list`` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from ptgym import config as C
from ptgym import prefconfig as PC
from ptgym.prefconfig import PairsCommand

EXAMPLES = """examples:
  ptgym train env=math                          GRPO on the embedded default model, CPU
  ptgym train env=math algo=ppo trainer.steps=50 lora.r=8
  ptgym rollout env=math tasks=16 group=4 out=runs/demo
  ptgym eval env=math tasks=50 k=4
  ptgym envs list
  ptgym sandbox build && ptgym train env=code-tools trainer.steps=2
  ptgym tui                                     runs under ./runs: rollouts, monitor, rank
  ptgym tui monitor runs/math                   follow a training run: curves, GPU/CPU
"""


def describe(schema: type) -> list[str]:
    """``key=default  help [choices]`` lines for every leaf of a config schema."""
    lines = []
    obj = schema()
    for key, f in C.field_specs(schema):
        value = C._get(obj, key)
        help_ = f.metadata.get("help", "")
        if f.metadata.get("choices"):
            help_ += f" [{' | '.join(f.metadata['choices'])}]"
        lines.append(f"  {f'{key}={value}':<42} {help_}")
    return lines


def config_epilog(schema: type) -> str:
    groups = [f"  {g}=  {', '.join(C.group_choices(g, schema))}" for g in C.valid_groups(schema)]
    groups[0] += "  (or any env from `ptgym envs list`)" if groups else ""
    aliases = [
        f"{k} -> {v}"
        for k, v in C.ALIASES.items()
        if v.split(".")[0] in {f.name for f in fields(schema)}
    ]
    return "\n".join(
        [
            "config groups:",
            *groups,
            "",
            "short keys: " + ", ".join(aliases),
            "",
            "config keys:",
            *describe(schema),
        ]
    )


def default_out(command: str) -> str:
    return str(Path("runs") / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}")


# --- commands ---------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace) -> int:
    cfg = C.compose(C.TrainCommand, args.overrides)
    cfg.out = cfg.out or default_out("train")
    from ptgym.trainer import EpisodesFailed, train

    try:
        train(cfg)
    except EpisodesFailed as exc:
        print(f"ptgym train: error: {exc}", file=sys.stderr)
        return 1
    return 0


def cmd_rollout(args: argparse.Namespace) -> int:
    cfg = C.compose(C.RolloutCommand, args.overrides)
    cfg.out = cfg.out or default_out("rollout")
    from ptgym.evaluate import run_rollout_command

    run_rollout_command(cfg)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    cfg = C.compose(C.EvalCommand, args.overrides)
    cfg.out = cfg.out or default_out("eval")
    from ptgym.evaluate import run_eval_command

    run_eval_command(cfg)
    return 0


def cmd_envs_list(args: argparse.Namespace) -> int:
    from ptgym.registry import import_module, load_entry_points, specs

    errors = load_entry_points()
    for module in args.modules:  # envs these register in code are listed too
        import_module(module)
    rows = [(s.short_name or "-", s.id, s.source, s.description) for s in specs()]
    widths = [max(len(r[i]) for r in rows + [("name", "id", "source", "")]) for i in range(3)]
    print(f"{'name':<{widths[0]}}  {'id':<{widths[1]}}  {'source':<{widths[2]}}  description")
    for r in rows:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    for e in errors:
        print(f"warning: could not load {e}", file=sys.stderr)
    return 0


def cmd_envs_new(args: argparse.Namespace) -> int:
    from ptgym.scaffold import ScaffoldError, new_env_package

    try:
        path = new_env_package(args.name, Path(args.dir))
    except ScaffoldError as exc:
        print(f"ptgym envs new: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}\nnext: pip install -e {path} && ptgym envs list")
    return 0


def cmd_envs_demos(args: argparse.Namespace) -> int:
    from ptgym.demos import DemosCommand, write_demos

    try:
        write_demos(args.env, C.compose(DemosCommand, args.overrides))
    except (ValueError, RuntimeError) as exc:
        print(f"ptgym envs demos: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_sandbox(args: argparse.Namespace) -> int:
    from ptgym import sandbox

    if args.action == "build":
        try:
            sandbox.build_image(force=args.force, base=args.base)
        except sandbox.ImageBuildError as exc:
            print(f"ptgym sandbox build: error: {exc}", file=sys.stderr)
            return 1
    elif args.action == "ps":
        rows = sandbox.list_sandboxes()
        if not rows:
            print("no ptgym sandboxes running")
        for r in rows:
            print("  ".join(f"{k}={v}" for k, v in r.items()))
    else:
        print(f"removed {sandbox.prune()} sandbox container(s)")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from ptgym.agents import models

    if args.action == "pull":
        print(f"ready: {models.pull_model(args.name)}")
    elif args.action == "merge":
        from ptgym.checkpoint import export_merged

        if not args.out:
            raise C.ConfigError("models merge needs --out DIR for the merged model")
        out = export_merged(Path(args.name), Path(args.out), args.base)
        print(f"merged {args.name} into {out} (load it with from_pretrained, or serve it)")
    else:
        for info in models.list_models():
            where = info.path if info.path else "not built yet (ptgym models pull NAME)"
            print(f"{info.name:<14} {info.description}\n{'':<14} {where}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from ptgym.agents.serve import serve

    serve(model=args.model, host=args.host, port=args.port)
    return 0


def cmd_ray_status(args: argparse.Namespace) -> int:
    if not C._installed("ray"):
        raise C.ConfigError("ray-status needs Ray: pip install 'ptgym[ray]'")
    from ptgym.ray_collector import cluster_status

    try:
        lines = cluster_status(args.address)
    except ConnectionError:
        where = args.address or os.environ.get("RAY_ADDRESS") or "on this machine"
        raise C.ConfigError(
            f"no Ray cluster {where}: start one with `ray start --head`, "
            "or pass --address HOST:PORT / set RAY_ADDRESS"
        ) from None
    print("\n".join(lines))
    return 0


def cmd_tui(args: argparse.Namespace) -> int:
    from ptgym.tui.alerts import Thresholds
    from ptgym.tui.app import run_tui

    th = Thresholds(kl_max=args.kl_max, collapse_frac=args.collapse_frac, window=args.window)
    try:
        return run_tui(args.target, annotator=args.annotator, thresholds=th)
    except ValueError as exc:
        print(f"ptgym tui: error: {exc}", file=sys.stderr)
        return 2


def cmd_prefs_export(args: argparse.Namespace) -> int:
    from ptgym import agreement

    cfg = C.compose(agreement.ExportCommand, args.overrides)
    agreement.run_export_command(args.run, cfg)
    return 0


def cmd_prefs_pairs(args: argparse.Namespace) -> int:
    from ptgym.prefs import pairs_from_run, write_preferences

    cfg = C.compose(PairsCommand, args.overrides)
    pairs = pairs_from_run(args.run, per_group=cfg.per_group or None, seed=cfg.seed)
    if not pairs:
        raise FileNotFoundError(
            f"no pairs in {args.run}: it needs groups of 2+ responses (ptgym rollout group=2)"
        )
    out = cfg.out or str(Path(args.run) / "pairs.jsonl")
    print(f"wrote {write_preferences(out, pairs)} unranked pairs to {out}")
    return 0


def cmd_prefs_judge(args: argparse.Namespace) -> int:
    from ptgym.envs.judge import JudgeCommand, judge_pairs

    try:
        judge_pairs(args.pairs, C.compose(JudgeCommand, args.overrides))
    except (ValueError, FileExistsError) as exc:
        print(f"ptgym prefs judge: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_doctor_rm(args: argparse.Namespace) -> int:
    from ptgym.doctor import DoctorRMCommand, diagnose_rm

    # model= names the policy here: a plain string, not the model config group of train/rm
    overrides = [f"policy={o[6:]}" if o.startswith("model=") else o for o in args.overrides]
    return 1 if diagnose_rm(args.path, C.compose(DoctorRMCommand, overrides)) else 0


def _data_errors(args: argparse.Namespace, fn: Any, cfg: Any) -> int:
    """Run ``fn(cfg)``; a bad data file or setting (ValueError) is one line, not a traceback."""
    try:
        fn(cfg)
    except ValueError as exc:
        print(f"ptgym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_sft(args: argparse.Namespace) -> int:
    cfg = C.compose(PC.SFTCommand, args.overrides)
    cfg.out = cfg.out or default_out("sft")
    from ptgym.sft import train_sft

    return _data_errors(args, train_sft, cfg)


def cmd_rm(args: argparse.Namespace) -> int:
    cfg = C.compose(PC.RMCommand, args.overrides)
    cfg.out = cfg.out or default_out("rm")
    from ptgym.reward_model import train_rm

    return _data_errors(args, train_rm, cfg)


def cmd_dpo(args: argparse.Namespace) -> int:
    cfg = C.compose(PC.DPOCommand, args.overrides)
    cfg.out = cfg.out or default_out("dpo")
    from ptgym.dpo import train_dpo

    return _data_errors(args, train_dpo, cfg)


# --- parser -----------------------------------------------------------------------------------


def _config_command(sub: Any, name: str, schema: type, help: str, fn: Any) -> None:
    p = sub.add_parser(
        name,
        help=help,
        description=help,
        epilog=config_epilog(schema),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    p.set_defaults(fn=fn)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ptgym",
        description="A gym for post-training language models with RL, run from the terminal.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _config_command(
        sub, "train", C.TrainCommand, "train a policy with GRPO or PPO on an env", cmd_train
    )
    _config_command(
        sub,
        "rollout",
        C.RolloutCommand,
        "collect trajectories from a model in an env into a run directory",
        cmd_rollout,
    )
    _config_command(
        sub,
        "eval",
        C.EvalCommand,
        "evaluate a model on held-out tasks: mean reward, pass@1, pass@k",
        cmd_eval,
    )

    _config_command(
        sub,
        "sft",
        PC.SFTCommand,
        "supervised fine-tuning on conversations (loss on the model's tokens)",
        cmd_sft,
    )
    _config_command(
        sub, "rm", PC.RMCommand, "train a Bradley-Terry reward model on preference pairs", cmd_rm
    )
    _config_command(sub, "dpo", PC.DPOCommand, "DPO, IPO or SimPO on preference pairs", cmd_dpo)

    envs = sub.add_parser("envs", help="list or scaffold environments")
    envs_sub = envs.add_subparsers(dest="action", metavar="ACTION", required=True)
    ls = envs_sub.add_parser("list", help="every registered env: built-in, entry points, code")
    ls.add_argument(
        "modules", nargs="*", metavar="MODULE", help="import these first (envs they register)"
    )
    ls.set_defaults(fn=cmd_envs_list)
    new = envs_sub.add_parser("new", help="write a pip-installable package with a custom env")
    new.add_argument("name", help="env short name, e.g. my-env")
    new.add_argument("--dir", default=".", help="where to create the package (default: .)")
    new.set_defaults(fn=cmd_envs_new)
    demos = envs_sub.add_parser(
        "demos", help="write an env's own solved episodes as SFT data (TRL messages JSONL)"
    )
    demos.add_argument("env", help="env short name (math-tools, code-tools)")
    demos.add_argument("overrides", nargs="*", metavar="key=value", help="n=200 out=demos.jsonl")
    demos.set_defaults(fn=cmd_envs_demos)

    sb = sub.add_parser("sandbox", help="build and manage the Docker code sandbox")
    sb.add_argument("action", choices=["build", "ps", "prune"])
    sb.add_argument("--force", action="store_true", help="build: rebuild even if the image exists")
    sb.add_argument(
        "--base",
        default=None,
        help="build: a base image (e.g. python:3.11-slim) when a registry is reachable; "
        "default: a Debian rootfs made with debootstrap (works offline)",
    )
    sb.set_defaults(fn=cmd_sandbox)

    md = sub.add_parser(
        "models",
        help="fetch the embedded default model; list cached models; merge a LoRA checkpoint",
    )
    md.add_argument("action", choices=["pull", "list", "merge"])
    md.add_argument(
        "name",
        nargs="?",
        default="smollm2-135m",
        help="model short name; for merge: a checkpoint folder (RUN/checkpoints/step-N)",
    )
    md.add_argument("--out", default=None, help="merge: the folder to write the merged model to")
    md.add_argument("--base", default=None, help="merge: the base model (default: the adapter's)")
    md.set_defaults(fn=cmd_models)

    sv = sub.add_parser("serve", help="serve a model with the OpenAI chat-completions API")
    sv.add_argument("--model", default="smollm2-135m")
    sv.add_argument("--host", default="127.0.0.1")
    sv.add_argument("--port", type=int, default=8000)
    sv.set_defaults(fn=cmd_serve)

    rs = sub.add_parser("ray-status", help="a Ray cluster's nodes and ptgym's env actors on them")
    rs.add_argument("--address", default=None, help="the cluster (default: RAY_ADDRESS)")
    rs.set_defaults(fn=cmd_ray_status)

    tui = sub.add_parser(
        "tui",
        help="terminal UI: runs, rollouts token by token, rank pairs, monitor training live",
        description="ptgym tui [PATH] | ptgym tui monitor RUN | ptgym tui rank RUN",
    )
    tui.add_argument(
        "target", nargs="*", metavar="[monitor|rank] PATH", help="a run or a folder of runs"
    )
    tui.add_argument("--annotator", default=None, help="rank: your name (default: login name)")
    tui.add_argument("--kl-max", type=float, default=1.0, help="monitor: warn when KL exceeds it")
    tui.add_argument(
        "--collapse-frac",
        type=float,
        default=0.5,
        help="monitor: warn when the recent mean reward falls below this share of the best",
    )
    tui.add_argument("--window", type=int, default=5, help="monitor: steps per reward window")
    tui.set_defaults(fn=cmd_tui)

    prefs = sub.add_parser("prefs", help="preference data: make pairs, export ranked pairs")
    prefs_sub = prefs.add_subparsers(dest="action", metavar="ACTION", required=True)
    from ptgym.agreement import ExportCommand

    pe = prefs_sub.add_parser(
        "export",
        help="write a run's judgments (ptgym tui rank) as preference JSONL for rm/dpo",
        epilog="config keys:\n" + "\n".join(describe(ExportCommand)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pe.add_argument("run", help="the run directory holding judgments.jsonl")
    pe.add_argument("overrides", nargs="*", metavar="key=value", help="out=FILE ties=true ...")
    pe.set_defaults(fn=cmd_prefs_export)
    pp = prefs_sub.add_parser(
        "pairs",
        help="unranked pairs (two responses per prompt) from a rollout run, to judge or rank",
        epilog="config keys:\n" + "\n".join(describe(PairsCommand)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pp.add_argument("run", help="a run directory from ptgym rollout ... group=2")
    pp.add_argument("overrides", nargs="*", metavar="key=value", help="out=pairs.jsonl ...")
    pp.set_defaults(fn=cmd_prefs_pairs)
    from ptgym.envs.judge import JudgeCommand

    pj = prefs_sub.add_parser(
        "judge",
        help="label pairs with an LLM judge (both orders; a flip is a tie)",
        epilog="config keys:\n" + "\n".join(describe(JudgeCommand)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    pj.add_argument("pairs", help="a pairs JSONL (ptgym prefs pairs RUN)")
    pj.add_argument("overrides", nargs="*", metavar="key=value", help="judge=MODEL out=FILE ...")
    pj.set_defaults(fn=cmd_prefs_judge)

    from ptgym.doctor import DoctorRMCommand

    doctor = sub.add_parser("doctor", help="check a component for known silent failures")
    doctor_sub = doctor.add_subparsers(dest="action", metavar="ACTION", required=True)
    dr = doctor_sub.add_parser(
        "rm",
        help="a reward model: padding, chat template, policy mismatch, score distribution",
        epilog="config keys:\n" + "\n".join(describe(DoctorRMCommand)),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    dr.add_argument("path", help="the RM folder (ptgym rm's OUT or OUT/model)")
    dr.add_argument("overrides", nargs="*", metavar="key=value", help="model=POLICY n=32 ...")
    dr.set_defaults(fn=cmd_doctor_rm)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "fn", None):
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except (C.ConfigError, KeyError, FileNotFoundError) as exc:
        if isinstance(exc, KeyError) and not exc.__class__.__name__.endswith("EnvError"):
            raise
        print(f"ptgym {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            f"\nptgym {args.command}: interrupted; everything written so far is kept",
            file=sys.stderr,
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
