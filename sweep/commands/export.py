"""`python -m sweep export RESULTS_DIR/NAME (--balanced | --trial N) --out DIR`.

Writes the chosen actor as an HF checkpoint through merge's streaming disk writer, with
the study's own merge settings, plus a model card (README.md), sweep_export.json
recording the params, the metrics and the spec's sha256, and mergekit.yaml: the mergekit
recipe that reproduces the weights (shown in the model card too). `--recipe-only` writes
the card, the record and the recipe without the weights.
"""

from __future__ import annotations

import argparse
import json
import time

HELP = "write the balanced (or a chosen) trial's actor as an HF checkpoint, with a model card"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="the study folder, e.g. results/demo")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--balanced", action="store_true", help="the balanced point (the spec's report.balanced_rule)")
    which.add_argument("--trial", type=int, help="a COMPLETE trial by number")
    parser.add_argument("--out", required=True, help="output folder (must be absent or empty unless --force)")
    parser.add_argument(
        "--dtype",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="output dtype (default: the spec's merge.dtype)",
    )
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where the arithmetic runs (default cpu)"
    )
    parser.add_argument("--force", action="store_true", help="overwrite a non-empty output folder")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    parser.add_argument(
        "--recipe-only",
        action="store_true",
        help="write mergekit.yaml, the model card and sweep_export.json, but no weights (reads only the sources' headers)",
    )


def choose_trial(spec, trials, *, balanced: bool, number: int | None) -> tuple[int, dict, dict]:
    """(trial number, params, metrics) of the chosen trial. Raises SweepError when there is none."""
    from sweep.errors import SweepError
    from sweep.report.summary import summarize_spec
    from sweep.study.table import trial_metrics, trial_params

    if balanced:
        summary = summarize_spec(trials, spec)
        if summary.balanced is None:
            raise SweepError("the study has no complete feasible trial: no balanced point to export")
        return summary.balanced.number, summary.balanced.params, summary.balanced.metrics
    if number is None:
        raise SweepError("give --balanced or --trial N")
    rows = trials[trials["number"] == number]
    if rows.empty:
        raise SweepError(
            f"--trial {number}: no such trial in the study (numbers {int(trials['number'].min())}..{int(trials['number'].max())})"
        )
    row = rows.iloc[0]
    if row["state"] != "COMPLETE":
        raise SweepError(
            f"--trial {number}: the trial is {row['state']}, not COMPLETE ({row.get('error') or 'no error recorded'})"
        )
    return number, trial_params(row), trial_metrics(row, trials.columns)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from sweep.study.durable import load_study_dir, spec_hash
    from sweep.study.fingerprint import trial_spec

    spec, trials = load_study_dir(args.study)
    number, params, metrics = choose_trial(spec, trials, balanced=args.balanced, number=args.trial)
    spec = trial_spec(spec, trials, number)  # the models and merge this trial ran with (its recorded recipe)
    started = time.perf_counter()
    if args.recipe_only:
        out = Path(args.out).expanduser().absolute()
        recipe = _recipe_only(spec, params, out, dtype=args.dtype, force=args.force)
    else:
        out = _merge(spec, params, args)
        from merge.mergekit_recipe import recipe_for_merged

        recipe = recipe_for_merged(out)
    from merge.mergekit_recipe import FILE_NAME

    record = {
        "study": spec.name,
        "trial": number,
        "chosen_by": f"balanced ({spec.report.balanced_rule})" if args.balanced else "--trial",
        "params": params,
        "metrics": metrics,
        "objectives": [[o.metric, o.direction] for o in spec.objectives],
        "spec_sha256": spec_hash(spec),
        "spec_path": spec.spec_path,
        "weights": not args.recipe_only,
        "mergekit_recipe": FILE_NAME,
    }
    (out / FILE_NAME).write_text(recipe)
    (out / "sweep_export.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "README.md").write_text(model_card(record, recipe))
    if not args.quiet:
        what = "the mergekit recipe (no weights)" if args.recipe_only else "trial"
        print(
            f"exported {what} {number} of {spec.name} ({_fmt(params)}) to {out} in {time.perf_counter() - started:.1f} s"
        )
    return 0


def _plan(spec, params: dict, dtype: str | None):
    """The trial's merge plan (`sweep.run.trial.merge_plan`), written in `dtype` when given."""
    from dataclasses import replace

    from sweep.run.trial import merge_plan

    plan = merge_plan(spec, params)
    return replace(plan, dtype=dtype) if dtype else plan


def _merge(spec, params: dict, args: argparse.Namespace):
    import merge
    from merge.mergekit_recipe import mergekit_problems
    from sweep.run.progressbar import MergeProgressBar

    plan = _plan(spec, params, args.dtype)
    if problems := mergekit_problems(plan):  # before the weights: the export writes the recipe too
        raise merge.MergeError.collected("cannot write the mergekit recipe", problems)
    bar = MergeProgressBar(enabled=not args.quiet)
    try:
        return merge.merge_checkpoints(plan, out=args.out, device=args.device, force=args.force, progress=bar.update)
    finally:
        bar.close()


def _recipe_only(spec, params: dict, out, *, dtype: str | None, force: bool) -> str:
    """The mergekit recipe from the study's settings and the sources' headers; `out` made
    ready (absent or empty, unless force). Raises MergeError / SweepError on bad input."""
    from merge.errors import MergeError
    from merge.layout import load_infos
    from merge.mergekit_recipe import mergekit_problems, recipe_for_sources
    from sweep.errors import SweepError

    if out.exists() and not out.is_dir():
        raise SweepError(f"the output {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise SweepError(
            f"the output folder {out} exists and is not empty; choose another, or overwrite it with --force"
        )
    problems: list[str] = []
    plan = infos = None
    try:
        plan = _plan(spec, params, dtype)
        problems += mergekit_problems(plan)
    except MergeError as exc:
        problems += exc.problems
    try:
        infos = load_infos(**spec.models.paths(), vocab=spec.merge.vocab)
    except MergeError as exc:
        problems += exc.problems
    if problems or plan is None or infos is None:
        raise MergeError.collected("cannot write the mergekit recipe", problems)
    recipe = recipe_for_sources(plan, infos=infos)
    out.mkdir(parents=True, exist_ok=True)
    if force:
        from merge.io import weight_files

        for file in list(weight_files(out)):  # weights of an earlier export would not match the new recipe
            file.unlink()
    return recipe


def _fmt(values: dict) -> str:
    return ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


def model_card(record: dict, recipe: str | None = None) -> str:
    rows = "\n".join(
        f"| `{k}` | {v:.6g} |" if isinstance(v, (int, float)) else f"| `{k}` | {v} |"
        for k, v in record["metrics"].items()
    )
    objectives = ", ".join(f"{d} `{m}`" for m, d in record["objectives"])
    card = f"""# Actor initialization from sweep study `{record["study"]}`

Balanced Actor Initialization merge, trial {record["trial"]} (chosen by {record["chosen_by"]}).

- params: {_fmt(record["params"])}
- objectives: {objectives}
- spec sha256: `{record["spec_sha256"]}`

| metric | value |
| --- | --- |
{rows}
"""
    if recipe is not None:
        weights = (
            "The weights in this folder"
            if record.get("weights", True)
            else "This folder holds no weights (`sweep export --recipe-only`); the weights"
        )
        card += f"""
## Reproduce with mergekit

{weights} are reproduced by this mergekit recipe (`{record.get("mergekit_recipe", "mergekit.yaml")}` here);
its comments say how to run it and how exact the match is.

```yaml
{recipe.rstrip()}
```
"""
    return card
