"""`python -m sweep probe --model DIR (--spec SPEC | --prompts FILE) [...] [--checkpoint FILE]`: the RLHF probe on one checkpoint."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from evals.plugins import PROBE_BACKENDS, REWARD_RULES
from evals.probe.config import LOSS_AGGREGATIONS
from sweep.run.longrun import CHECKPOINT_EVERY_S  # light: no torch, no Ray

HELP = "run the short RLHF probe on one checkpoint and print its curves and stability metrics"
CHECKPOINT_MEMBERS = ("pretrained", "instruct", "reasoning")  # demo members that are checkpoints

# Command-line flag -> ProbeConfig field; unset flags keep the spec's (or the default) value.
_OVERRIDES = {
    "steps": int,
    "group_size": int,
    "prompts_per_step": int,
    "kl_coef": float,
    "learning_rate": float,
    "max_new_tokens": int,
    "temperature": float,
    "seed": int,
    "window": int,
    "collapse_threshold": float,
    "collapse_patience": int,
    "mini_batches": int,
    "clip_ratio": float,
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="HF checkpoint folder (or demo:<member>, e.g. demo:reasoning)")
    parser.add_argument("--tokenizer", help="tokenizer folder or demo:<member> (default: the model's)")
    parser.add_argument("--spec", help="sweep spec whose evals.probe section gives the settings")
    parser.add_argument("--prompts", help='jsonl file, {"prompt": ..., "answer": ...} per line (overrides the spec)')
    for name, kind in _OVERRIDES.items():
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=None, help=f"probe {name} (overrides the spec)"
        )
    parser.add_argument("--generator", choices=["hf", "vllm"], help="who samples the rollouts (overrides the spec)")
    parser.add_argument("--update", choices=["full", "lora"], help="what the probe trains (overrides the spec)")
    parser.add_argument(
        "--loss-agg",
        choices=LOSS_AGGREGATIONS,
        help="how the per-token loss is aggregated, as your RL does it (overrides the spec)",
    )
    parser.add_argument(
        "--micro-batch-size", type=int, default=None, help="rollouts per forward/backward (overrides the spec)"
    )
    parser.add_argument(
        "--reward-rule",
        help=f"rule reward (evals.plugins.REWARD_RULES): {', '.join(REWARD_RULES.names())}, or one a --plugin "
        "module registers (overrides the spec)",
    )
    parser.add_argument(
        "--backend",
        help=f"probe backend (evals.plugins.PROBE_BACKENDS): {', '.join(PROBE_BACKENDS.names())}, or one a "
        "--plugin module registers (overrides the spec)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (as a spec's plugins: list), e.g. one registering a reward rule or a "
        "probe backend",
    )
    parser.add_argument("--reward-model", help="local AutoModelForSequenceClassification folder used as the reward")
    parser.add_argument(
        "--reference",
        help="the KL term's reference: a checkpoint folder or demo:<member> (default: the spec's, else the "
        "model itself; `candidate` sets the model itself over the spec's)",
    )
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        default="auto",
        help="load dtype (auto: as stored)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (default 1: contended threads are far slower)"
    )
    parser.add_argument(
        "--checkpoint",
        metavar="FILE",
        help="save the run's state to FILE every --checkpoint-every seconds; run again with the same FILE, a "
        "stopped run goes on from there (deleted when the run ends)",
    )
    parser.add_argument(
        "--checkpoint-every",
        type=float,
        metavar="SECONDS",
        default=CHECKPOINT_EVERY_S,
        help=f"how often to save with --checkpoint (default {CHECKPOINT_EVERY_S:g}; 0: after every step)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")


def run(args: argparse.Namespace) -> int:
    from evals.probe import ProbeConfig, load_prompts
    from sweep.config.plugins import import_plugins
    from sweep.errors import SweepError

    problems = import_plugins(args.plugin)
    for flag, registry, name in (
        ("--reward-rule", REWARD_RULES, args.reward_rule),
        ("--backend", PROBE_BACKENDS, args.backend),
    ):
        if name is not None and (unknown := registry.problem(name)):
            problems.append(f"{flag}: {unknown}")
    if problems:
        raise SweepError("; ".join(problems))
    settings: dict = {}
    if args.spec:
        from sweep.config import load_spec

        spec = load_spec(args.spec)
        if spec.evals.probe is None:
            raise SweepError(f"{args.spec}: has no evals.probe section; add one or give --prompts")
        settings = spec.evals.probe.model_dump()
    if args.prompts:
        settings["prompts"] = args.prompts if args.prompts.startswith("demo:") else str(Path(args.prompts).resolve())
    if "prompts" not in settings:
        raise SweepError("give --prompts FILE or --spec SPEC (with an evals.probe section)")
    settings["prompts"] = _resolve_demo(settings["prompts"], "--prompts")
    for name in (*_OVERRIDES, "generator", "update", "loss_agg", "micro_batch_size", "backend"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    if args.reward_model:
        settings["reward"] = {"rule": None, "model": str(Path(args.reward_model).resolve())}
    elif args.reward_rule:
        settings["reward"] = {"rule": args.reward_rule, "model": None}
    if args.reference == "candidate":
        settings["reference"] = None
    elif args.reference:
        settings["reference"] = str(Path(_resolve_demo(args.reference, "--reference", CHECKPOINT_MEMBERS)).resolve())
    if settings.get("reference") is not None and not (Path(settings["reference"]) / "config.json").is_file():
        raise SweepError(f"--reference {settings['reference']}: no such checkpoint folder (config.json missing)")
    config = ProbeConfig.from_dict(settings)
    prompts = load_prompts(config.prompts)  # bad input fails before the model loads
    if args.checkpoint_every < 0:
        raise SweepError(f"--checkpoint-every must be 0 (every step) or more seconds, got {args.checkpoint_every:g}")

    model_dir = Path(_resolve_demo(args.model, "--model", CHECKPOINT_MEMBERS))
    tokenizer_dir = (
        Path(_resolve_demo(args.tokenizer, "--tokenizer", CHECKPOINT_MEMBERS)) if args.tokenizer else model_dir
    )
    for flag, path in (("--model", model_dir), ("--tokenizer", tokenizer_dir)):
        if not path.is_dir():
            raise SweepError(f"{flag} {path}: no such checkpoint folder")
    if not (model_dir / "config.json").is_file():
        raise SweepError(f"--model {model_dir}: no config.json (not an HF checkpoint folder)")

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from evals.probe import run_probe
    from sweep.run.progress import so_far

    hf_logging.disable_progress_bar()  # keep the output to the table (or the JSON)
    torch.set_num_threads(args.threads)
    dtype = "auto" if args.dtype == "auto" else getattr(torch, args.dtype)
    try:
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise SweepError(f"cannot load {model_dir}: {exc}") from None
    rollouts = None
    if config.generator == "vllm":  # an engine on the checkpoint; the probe pushes its updates into it
        from evals.errors import EvalError
        from evals.probe.vllm_rollout import VllmRollouts, probe_engine_args

        try:
            rollouts = VllmRollouts.build(
                model_dir,
                tokenizer=str(tokenizer_dir),
                dtype=str(model.dtype).removeprefix("torch."),
                **probe_engine_args(config),
            )
        except EvalError as exc:
            raise SweepError(f"--generator vllm: {exc}") from None
    checkpoint = None
    if args.checkpoint:
        from evals.probe.resume import Checkpointing

        tag = f"{model_dir.resolve()} {args.dtype}"  # the checkpoint of another model is not taken up
        checkpoint = Checkpointing(Path(args.checkpoint).resolve(), every_s=args.checkpoint_every, tag=tag)
    started = time.perf_counter()

    def step_done(done: int, planned: int) -> None:  # a line a step on stderr: a 7B probe takes an hour
        start = (checkpoint.resumed_at if checkpoint is not None else None) or 0
        if start and done == start + 1:
            print(f"probe: went on from {args.checkpoint} after step {start}", file=sys.stderr)
        print(f"probe: {so_far(time.perf_counter() - started, (done, planned, start))}", file=sys.stderr, flush=True)

    result = run_probe(
        model, tokenizer, config=config, prompts=prompts, rollouts=rollouts, on_step=step_done, checkpoint=checkpoint
    )

    if args.json:
        out = result.to_dict() | {"probe_metrics": result.metrics.as_metrics(), "config": config.to_dict()}
        json.dump(out, sys.stdout)
        print()
    else:
        print(curves_table(result.curves))
        print()
        print(metrics_text(result))
    return 0


def _resolve_demo(value: str, flag: str, members: tuple[str, ...] | None = None) -> str:
    from sweep.config import resolve_demo_ref

    return resolve_demo_ref(value, field=flag, members=members)


_COLUMNS = [  # (header, curve key, format)
    ("step", None, "{:>4d}"),
    ("len", "response_length/mean", "{:>7.1f}"),
    ("min", "response_length/min", "{:>5.0f}"),
    ("max", "response_length/max", "{:>5.0f}"),
    ("clip", "response_length/clip_ratio", "{:>5.2f}"),
    ("score", "critic/score/mean", "{:>7.3f}"),
    ("std", "critic/score/std", "{:>6.3f}"),
    ("kl", "actor/kl", "{:>7.4f}"),
    ("entropy", "actor/entropy", "{:>7.3f}"),
    ("grad", "actor/grad_norm", "{:>6.3f}"),
    ("step_s", "timing/step_s", "{:>6.2f}"),
]


def curves_table(curves) -> str:
    widths = [len(f.format(0)) for _, _, f in _COLUMNS]
    header = " ".join(h.rjust(w) for (h, _, _), w in zip(_COLUMNS, widths, strict=True))
    lines = [header]
    for t in range(curves.steps):
        cells = [fmt.format(t) if key is None else fmt.format(curves[key][t]) for _, key, fmt in _COLUMNS]
        lines.append(" ".join(cells))
    return "\n".join(lines)


def metrics_text(result) -> str:
    lines = ["stability metrics" + (f" (window {result.metrics.window})" if result.metrics.window > 1 else "") + ":"]
    for name, value in result.metrics.as_metrics().items():
        shown = "none" if value is None else f"{value:.4g}"
        lines.append(f"  {name:<28} {shown}")
    if result.stopped_early:
        lines.append(f"stopped early: {result.stop_reason}")
    lines.append(f"{result.curves.steps} steps, {result.step_s_mean:.3f} s/step, {result.wall_s:.1f} s in all")
    skipped = sum(u == 0 for u in result.curves.updated)
    if skipped:
        lines.append(
            f"{skipped} of {result.curves.steps} steps took no update: no group's reward varied (skip_flat_batches)"
        )
    return "\n".join(lines)
