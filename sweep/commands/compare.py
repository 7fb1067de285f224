"""`python -m sweep compare A B`: how the front moved from study A to study B (nightly checks).

Both studies are summarized with B's objectives, constraints and balanced-point rule, and
their hypervolumes are measured against one reference point (B's spec reference, else the
default reference over the union of both tables), so the two numbers compare. Exit code 1
when any objective of B's balanced point is worse than A's by more than --tolerance
(absolute, in the metric's own units); 0 otherwise; 2 for bad input.
"""

from __future__ import annotations

import argparse
import json

HELP = "compare two studies: hypervolume change, balanced-point change; exit 1 on a regression"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("before", help="the earlier study folder, e.g. results/nightly-2026-11-24")
    parser.add_argument("after", help="the later study folder, e.g. results/nightly-2026-11-25")
    parser.add_argument("--tolerance", type=float, default=0.02, help="allowed worsening per objective (absolute; default 0.02)")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def compare_studies(before, after, *, tolerance: float) -> dict:
    import pandas as pd

    from sweep.errors import SweepError
    from sweep.pareto import default_reference, summarize
    from sweep.study import load_study_dir

    spec_a, trials_a = load_study_dir(before)
    spec_b, trials_b = load_study_dir(after)
    if spec_a.objective_names != spec_b.objective_names:
        raise SweepError(
            f"the studies have different objectives ({', '.join(spec_a.objective_names)} vs "
            f"{', '.join(spec_b.objective_names)}): nothing to compare"
        )
    objectives, constraints = spec_b.objectives, spec_b.constraints
    reference = spec_b.report.reference or default_reference(pd.concat([trials_a, trials_b], ignore_index=True), objectives)
    kwargs = dict(rule=spec_b.report.balanced_rule, weights=spec_b.report.weights, reference=reference)
    sum_a = summarize(trials_a, objectives, constraints, **kwargs) if reference else None
    sum_b = summarize(trials_b, objectives, constraints, **kwargs) if reference else None
    if sum_a is None or sum_b is None or sum_a.balanced is None or sum_b.balanced is None:
        raise SweepError("one of the studies has no complete feasible trial: nothing to compare")
    changes, regressions = [], []
    for objective in objectives:
        a = sum_a.balanced.metrics[objective.metric]
        b = sum_b.balanced.metrics[objective.metric]
        better = (b - a) if objective.direction == "maximize" else (a - b)  # > 0: improved
        changes.append({"metric": objective.metric, "direction": objective.direction, "before": a, "after": b, "improvement": better})
        if better < -tolerance:
            regressions.append(objective.metric)
    return {
        "before": str(before),
        "after": str(after),
        "reference": list(reference),
        "hypervolume": {"before": sum_a.hypervolume, "after": sum_b.hypervolume, "change": sum_b.hypervolume - sum_a.hypervolume},
        "front_size": {"before": len(sum_a.front_numbers), "after": len(sum_b.front_numbers)},
        "balanced": {
            "before": {"number": sum_a.balanced.number, "params": sum_a.balanced.params},
            "after": {"number": sum_b.balanced.number, "params": sum_b.balanced.params},
            "objectives": changes,
        },
        "tolerance": tolerance,
        "regressions": regressions,
    }


def run(args: argparse.Namespace) -> int:
    from sweep.errors import SweepError

    if args.tolerance < 0:
        raise SweepError("--tolerance must be >= 0")
    result = compare_studies(args.before, args.after, tolerance=args.tolerance)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 1 if result["regressions"] else 0


def render(result: dict) -> str:
    hv = result["hypervolume"]
    bal = result["balanced"]
    params = lambda p: ", ".join(f"{k}={v:.3f}" for k, v in p.items())  # noqa: E731
    lines = [
        f"compare {result['before']} -> {result['after']}",
        f"  hypervolume   {hv['before']:.4g} -> {hv['after']:.4g} ({hv['change']:+.4g}), reference {result['reference']}",
        f"  front size    {result['front_size']['before']} -> {result['front_size']['after']}",
        f"  balanced      trial {bal['before']['number']} ({params(bal['before']['params'])}) -> "
        f"trial {bal['after']['number']} ({params(bal['after']['params'])})",
    ]
    for change in bal["objectives"]:
        flag = "  REGRESSION" if change["metric"] in result["regressions"] else ""
        lines.append(f"    {change['direction']} {change['metric']}: {change['before']:.4g} -> {change['after']:.4g} ({change['improvement']:+.4g}){flag}")
    if result["regressions"]:
        lines.append(f"regression beyond tolerance {result['tolerance']:g} in: {', '.join(result['regressions'])}")
    else:
        lines.append(f"no regression beyond tolerance {result['tolerance']:g}")
    return "\n".join(lines)
