"""`python -m sweep merge`: one BAI merge of three checkpoints, written as an HF checkpoint.

Each source may be a folder or a demo member (`demo:pretrained`, `demo:instruct`,
`demo:reasoning`). `--print-mergekit` prints the mergekit YAML that reproduces the merge
(after it, or instead of it when `--out` is not given).
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from merge.plugins import METHODS

HELP = "merge pretrained, instruct and reasoning checkpoints at (alpha, beta) into an HF checkpoint"

ROLES = ("pretrained", "instruct", "reasoning")
DEMO_CHECKPOINTS = ROLES  # the demo members a source may name


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--pretrained", required=True, help="the shared ancestor checkpoint folder (or demo:pretrained)"
    )
    parser.add_argument("--instruct", required=True, help="the instruct fine-tune checkpoint folder (or demo:instruct)")
    parser.add_argument(
        "--reasoning", required=True, help="the reasoning fine-tune checkpoint folder (or demo:reasoning)"
    )
    parser.add_argument("--alpha", required=True, type=float, help="instruct share of stage 1 (0..1)")
    parser.add_argument(
        "--beta", required=True, type=float, help="stage-1 share of stage 2, the rest is pretrained (0..1)"
    )
    parser.add_argument(
        "--out", help="output folder (must be absent or empty unless --force); required unless --print-mergekit"
    )
    parser.add_argument(
        "--method-stage1",
        default="linear",
        help=f"a merge method (merge.plugins.METHODS): {', '.join(METHODS.names())}, or one a --plugin module "
        "registers (default linear)",
    )
    parser.add_argument(
        "--method-stage2",
        default="linear",
        help="a merge method of two models, one that needs no shared base: linear or slerp built in (default linear)",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (as a spec's plugins: list), e.g. one registering a merge method",
    )
    parser.add_argument(
        "--stage1-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="stage-1 method parameter, e.g. density=0.5 (repeatable)",
    )
    parser.add_argument(
        "--stage2-param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="stage-2 method parameter, e.g. eps=0.001 (repeatable)",
    )
    parser.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="output dtype (default: the inputs')",
    )
    parser.add_argument("--device", default="cpu", help="where the arithmetic runs: cpu or cuda (default cpu)")
    parser.add_argument(
        "--vocab",
        default="strict",
        choices=["strict", "truncate", "pad"],
        help="vocabulary-size mismatch policy (default strict: refuse)",
    )
    parser.add_argument(
        "--tokenizer-source",
        default="instruct",
        help="role or folder supplying tokenizer, chat template and config (default instruct)",
    )
    parser.add_argument(
        "--max-shard-size", default="5GB", help="largest output shard, e.g. 5GB or 500MiB (default 5GB)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads for the arithmetic (default: torch's setting)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    parser.add_argument("--allow-extrapolation", action="store_true", help="accept alpha or beta outside [0, 1]")
    parser.add_argument(
        "--allow-pickle", action="store_true", help="accept pickle .bin checkpoints (they can run code when loaded)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "--print-mergekit",
        action="store_true",
        help="print the mergekit YAML that reproduces this merge (on stdout; the summary goes to stderr); "
        "without --out, print it and merge nothing",
    )


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
    from sweep.config.plugins import import_plugins
    from sweep.errors import SweepError
    from sweep.run.progressbar import MergeProgressBar

    if problems := import_plugins(args.plugin):
        raise SweepError("; ".join(problems))
    stage1_params = parse_params(args.stage1_param, "--stage1-param")
    stage2_params = parse_params(args.stage2_param, "--stage2-param")
    if args.out is None and not args.print_mergekit:
        raise SweepError(
            "--out DIR is required (or --print-mergekit alone, to print the mergekit recipe without merging)"
        )
    # the plan's keywords; merge_checkpoints checks them with everything else, all at once
    recipe = _recipe(args, stage1_params, stage2_params)
    recipe |= resolve_sources(args, recipe) | {"tokenizer_source": args.tokenizer_source}
    if args.out is None:
        print(_recipe_without_merge(args, recipe), end="")
        return 0
    bar = MergeProgressBar(enabled=not args.quiet)
    started = time.perf_counter()
    try:
        out = merge_checkpoints(
            **recipe,
            out=args.out,
            device=args.device,
            max_shard_size=args.max_shard_size,
            force=args.force,
            allow_pickle=args.allow_pickle,
            threads=args.threads,
            progress=bar.update,
        )
    finally:
        bar.close()
    if not args.quiet:
        seconds = time.perf_counter() - started
        moved = merge_io_bytes(out)
        print(
            f"merged {args.method_stage1}+{args.method_stage2} at alpha={args.alpha:g} beta={args.beta:g} -> {out} "
            f"({moved / 1e9:.2f} GB read+written in {seconds:.1f} s, {moved / 1e9 / max(seconds, 1e-9):.2f} GB/s)",
            file=sys.stderr if args.print_mergekit else sys.stdout,
        )
    if args.print_mergekit:
        from merge.mergekit_recipe import recipe_for_merged

        print(recipe_for_merged(out), end="")
    return 0


def _recipe(args: argparse.Namespace, stage1_params: dict, stage2_params: dict) -> dict[str, Any]:
    """`MergePlan.create`'s keywords from the command line, the source folders aside."""
    return dict(
        alpha=args.alpha,
        beta=args.beta,
        stage1_method=args.method_stage1,
        stage1_params=stage1_params,
        stage2_method=args.method_stage2,
        stage2_params=stage2_params,
        dtype=args.dtype,
        vocab=args.vocab,
        tokenizer_source=args.tokenizer_source,
        allow_extrapolation=args.allow_extrapolation,
    )


def resolve_sources(args: argparse.Namespace, recipe: dict) -> dict[str, str]:
    """The three source folders, with `demo:<member>` names resolved (and args.tokenizer_source
    too). The recipe is checked first, so a bad ratio fails before a first-use demo build."""
    from sweep.config import DEMO_PREFIX, resolve_demo_ref

    values = {role: getattr(args, role) for role in ROLES}
    if any(str(v).startswith(DEMO_PREFIX) for v in [*values.values(), args.tokenizer_source]):
        from merge.plan import MergePlan

        for role, value in values.items():  # unknown member names: before any build
            if value.startswith(DEMO_PREFIX) and value[len(DEMO_PREFIX) :] not in DEMO_CHECKPOINTS:
                resolve_demo_ref(value, field=f"--{role}", members=DEMO_CHECKPOINTS)
        MergePlan.create(**recipe)  # raises MergeError listing every recipe problem
    resolved = {
        role: resolve_demo_ref(value, field=f"--{role}", members=DEMO_CHECKPOINTS) for role, value in values.items()
    }
    args.tokenizer_source = resolve_demo_ref(
        args.tokenizer_source, field="--tokenizer-source", members=DEMO_CHECKPOINTS
    )
    return resolved


def _recipe_without_merge(args: argparse.Namespace, recipe: dict) -> str:
    """--print-mergekit without --out: check the recipe and the sources' headers, merge nothing."""
    from merge.errors import MergeError
    from merge.io import parse_dtype
    from merge.layout import load_infos
    from merge.mergekit_recipe import mergekit_problems, recipe_for_sources
    from merge.plan import MergePlan

    problems: list[str] = []
    plan = infos = None
    try:
        plan = MergePlan.create(**recipe)
        problems += mergekit_problems(plan)
    except MergeError as exc:
        problems += exc.problems
    try:
        parse_dtype(args.dtype)
    except MergeError as exc:
        problems += exc.problems
    try:
        infos = load_infos(**{role: recipe[role] for role in ROLES}, vocab=args.vocab, allow_pickle=args.allow_pickle)
    except MergeError as exc:
        problems += exc.problems
    if problems or plan is None or infos is None:
        raise MergeError.collected("cannot write the mergekit recipe", problems)
    return recipe_for_sources(plan, infos=infos)
