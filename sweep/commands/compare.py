"""`python -m sweep compare A B`: how the front moved from study A to study B (nightly checks).

Both studies are summarized with B's objectives, constraints and balanced-point rule, and
their hypervolumes are measured against one reference point (B's spec reference, else the
default reference over the union of both tables), so the two numbers compare. Exit code 1
when any objective of B's balanced point is worse than A's by more than --tolerance
plus the two points' noise bands (`<metric>_noise`, recorded by the probe: a change
within the noise is no regression), or when B has no complete feasible trial left;
0 otherwise; 2 for bad input (including an A with no complete feasible trial).
"""

from __future__ import annotations

import argparse
import json

HELP = "compare two studies: hypervolume change, balanced-point change; exit 1 on a regression"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("before", help="the earlier study folder, e.g. results/nightly-2026-11-24")
    parser.add_argument("after", help="the later study folder, e.g. results/nightly-2026-11-25")
    parser.add_argument(
        "--tolerance", type=float, default=0.02, help="allowed worsening per objective (absolute; default 0.02)"
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def compare_studies(before, after, *, tolerance: float) -> dict:
    from sweep.errors import SweepError
    from sweep.pareto import compare_fronts
    from sweep.study import load_study_dir

    spec_a, trials_a = load_study_dir(before)
    spec_b, trials_b = load_study_dir(after)
    if spec_a.objective_names != spec_b.objective_names:
        raise SweepError(
            f"the studies have different objectives ({', '.join(spec_a.objective_names)} vs "
            f"{', '.join(spec_b.objective_names)}): nothing to compare"
        )
    result = compare_fronts(
        trials_a,
        trials_b,
        spec_b.objectives,
        spec_b.constraints,
        rule=spec_b.report.balanced_rule,
        weights=spec_b.report.weights,
        tolerance=tolerance,
        reference=spec_b.report.reference,
    )
    if result.balanced_a is None:
        raise SweepError(f"{before} has no complete feasible trial: nothing to compare against")
    # B without a feasible front counts as a regression in every objective (compare_fronts).
    point = lambda p: None if p is None else {"number": p.number, "params": p.params}  # noqa: E731
    changes = []
    for objective in spec_b.objectives:
        b = result.balanced_b.metrics.get(objective.metric) if result.balanced_b else None
        changes.append(
            {
                "metric": objective.metric,
                "direction": objective.direction,
                "before": result.balanced_a.metrics.get(objective.metric),
                "after": b,
                "improvement": result.changes.get(objective.metric),
                "noise": result.noise.get(objective.metric),
            }
        )
    hv_a, hv_b = result.hypervolume_a, result.hypervolume_b
    return {
        "before": str(before),
        "after": str(after),
        "reference": list(result.reference) if result.reference is not None else None,
        "hypervolume": {"before": hv_a, "after": hv_b, "change": None if hv_a is None or hv_b is None else hv_b - hv_a},
        "balanced": {"before": point(result.balanced_a), "after": point(result.balanced_b), "objectives": changes},
        "tolerance": tolerance,
        "regressions": list(result.regressions),
    }


def run(args: argparse.Namespace) -> int:
    result = compare_studies(args.before, args.after, tolerance=args.tolerance)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result))
    return 1 if result["regressions"] else 0


def render(result: dict) -> str:
    num = lambda v, spec=".4g": "n/a" if v is None else format(v, spec)  # noqa: E731

    def params(p) -> str:
        if p is None:
            return "none"
        return f"trial {p['number']} (" + ", ".join(f"{k}={v:.3f}" for k, v in p["params"].items()) + ")"

    hv, bal = result["hypervolume"], result["balanced"]
    lines = [
        f"compare {result['before']} -> {result['after']}",
        f"  hypervolume   {num(hv['before'])} -> {num(hv['after'])} ({num(hv['change'], '+.4g')}), reference {result['reference']}",
        f"  balanced      {params(bal['before'])} -> {params(bal['after'])}",
    ]
    for change in bal["objectives"]:
        flag = "  REGRESSION" if change["metric"] in result["regressions"] else ""
        band = f", noise ±{num(change['noise'])}" if change.get("noise") else ""
        lines.append(
            f"    {change['direction']} {change['metric']}: {num(change['before'])} -> {num(change['after'])} ({num(change['improvement'], '+.4g')}{band}){flag}"
        )
    if result["regressions"]:
        lines.append(
            f"regression beyond tolerance {result['tolerance']:g} and the noise in: {', '.join(result['regressions'])}"
        )
    else:
        lines.append(f"no regression beyond tolerance {result['tolerance']:g} and the noise")
    return "\n".join(lines)
