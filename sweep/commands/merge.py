"""`python -m sweep merge`: one BAI merge of three checkpoints, written as an HF checkpoint."""

from __future__ import annotations

import argparse
import time

HELP = "merge pretrained, instruct and reasoning checkpoints at (alpha, beta) into an HF checkpoint"

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--pretrained", required=True, help="the shared ancestor checkpoint folder")
    parser.add_argument("--instruct", required=True, help="the instruct fine-tune checkpoint folder")
    parser.add_argument("--reasoning", required=True, help="the reasoning fine-tune checkpoint folder")
    parser.add_argument("--alpha", required=True, type=float, help="instruct share of stage 1 (0..1)")
    parser.add_argument("--beta", required=True, type=float, help="stage-1 share of stage 2, the rest is pretrained (0..1)")
    parser.add_argument("--out", required=True, help="output folder (must be absent or empty unless --force)")
    parser.add_argument("--method-stage1", default="linear", help="linear, task_arithmetic, ties, dare or slerp (default linear)")
    parser.add_argument("--method-stage2", default="linear", help="linear or slerp (default linear)")
    parser.add_argument("--stage1-param", action="append", default=[], metavar="KEY=VALUE", help="stage-1 method parameter, e.g. density=0.5 (repeatable)")
    parser.add_argument("--stage2-param", action="append", default=[], metavar="KEY=VALUE", help="stage-2 method parameter, e.g. eps=0.001 (repeatable)")
    parser.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"], help="output dtype (default: the inputs')")
    parser.add_argument("--device", default="cpu", help="where the arithmetic runs: cpu or cuda (default cpu)")
    parser.add_argument("--vocab", default="strict", choices=["strict", "truncate", "pad"], help="vocabulary-size mismatch policy (default strict: refuse)")
    parser.add_argument("--tokenizer-source", default="instruct", help="role or folder supplying tokenizer, chat template and config (default instruct)")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MiB (default 5GB)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for the arithmetic (default: torch's setting)")
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    parser.add_argument("--allow-extrapolation", action="store_true", help="accept alpha or beta outside [0, 1]")
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickle .bin checkpoints (they can run code when loaded)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def parse_params(items: list[str], flag: str) -> dict:
    """KEY=VALUE strings to a dict; values are read as YAML scalars (0.5 -> float, ties -> str)."""
    import yaml

    from sweep.errors import SweepError

    params = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SweepError(f"{flag} {item!r}: write KEY=VALUE, e.g. {flag} density=0.5")
        try:
            params[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            params[key.strip()] = value
    return params


def run(args: argparse.Namespace) -> int:
    from merge.disk import merge_checkpoints, merge_io_bytes
    from sweep.progressbar import MergeProgressBar

    stage1_params = parse_params(args.stage1_param, "--stage1-param")
    stage2_params = parse_params(args.stage2_param, "--stage2-param")
    bar = MergeProgressBar(enabled=not args.quiet)
    started = time.perf_counter()
    try:
        out = merge_checkpoints(
            pretrained=args.pretrained,
            instruct=args.instruct,
            reasoning=args.reasoning,
            alpha=args.alpha,
            beta=args.beta,
            out=args.out,
            stage1_method=args.method_stage1,
            stage1_params=stage1_params,
            stage2_method=args.method_stage2,
            stage2_params=stage2_params,
            dtype=args.dtype,
            device=args.device,
            tokenizer_source=args.tokenizer_source,
            vocab=args.vocab,
            max_shard_size=args.max_shard_size,
            force=args.force,
            allow_extrapolation=args.allow_extrapolation,
            allow_pickle=args.allow_pickle,
            threads=args.threads,
            progress=bar.update,
        )
    finally:
        bar.close()
    if not args.quiet:
        seconds = time.perf_counter() - started
        moved = merge_io_bytes(out)
        print(f"merged {args.method_stage1}+{args.method_stage2} at alpha={args.alpha:g} beta={args.beta:g} -> {out} "
              f"({moved / 1e9:.2f} GB read+written in {seconds:.1f} s, {moved / 1e9 / max(seconds, 1e-9):.2f} GB/s)")
    return 0
