"""`python -m sweep compare A B`: did the models get worse from study A to study B, beyond noise?

Like with like (sweep.report.regression): A's balanced point and the rest of A's front are
looked up in B at the same params and compared objective by objective, each change with
the 99% noise band of the difference (lm-eval: binomial at the spec's `limit`; probe: its
recorded bands, or the seed spread of `sweep nightly`'s repeats). B's own balanced
point, when it is another point, is reported as information. Both hypervolumes use one
reference point (B's spec reference, else the default over both tables).

Exit code 1 when an objective at one of A's points is worse in B by more than
--tolerance plus the noise, or when B has no complete feasible trial left; 0 otherwise;
2 for bad input (including an A with no complete feasible trial).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "compare two studies at the same points, with noise bands; exit 1 on a regression beyond the noise"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("before", help="the earlier study folder, e.g. results/nightly-2026-11-24")
    parser.add_argument("after", help="the later study folder, e.g. results/nightly-2026-11-25")
    parser.add_argument(
        "--tolerance",
        type=float,
        default=0.02,
        help="allowed worsening per objective on top of the noise (absolute, metric units; default 0.02)",
    )
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")


def compare_dirs(before, after, *, tolerance: float, fallback: bool = True) -> dict:
    """The comparison of two study folders as a plain dict (what --json prints). fallback:
    see sweep.report.regression.compare_studies (the nightly passes False)."""
    from sweep.errors import SweepError
    from sweep.report.front import default_reference
    from sweep.report.regression import compare_studies, whole_limit
    from sweep.report.summary import summarize
    from sweep.run.repeats import load_repeats  # sweep nightly's probe repeats, when the folder has them
    from sweep.study.durable import load_study_dir

    spec_a, trials_a = load_study_dir(before)
    spec_b, trials_b = load_study_dir(after)
    if spec_a.objective_names != spec_b.objective_names:
        raise SweepError(
            f"the studies have different objectives ({', '.join(spec_a.objective_names)} vs "
            f"{', '.join(spec_b.objective_names)}): nothing to compare"
        )
    import pandas as pd

    result = compare_studies(
        trials_a,
        trials_b,
        spec_b.objectives,
        spec_b.constraints,
        rule=spec_b.report.balanced_rule,
        weights=spec_b.report.weights,
        tolerance=tolerance,
        n_docs=(whole_limit(spec_a), whole_limit(spec_b)),
        repeats=(load_repeats(Path(before)), load_repeats(Path(after))),
        fallback=fallback,
    )
    if result.balanced_before is None:
        raise SweepError(f"{before} has no complete feasible trial: nothing to compare against")
    reference = spec_b.report.reference or default_reference(
        pd.concat([trials_a, trials_b], ignore_index=True), spec_b.objectives
    )
    hv = [
        summarize(t, spec_b.objectives, spec_b.constraints, rule=spec_b.report.balanced_rule, reference=reference)
        for t in (trials_a, trials_b)
    ]
    data = result.to_dict()
    regressions = data["regressions"]
    if result.balanced_after is None:  # B lost its feasible front entirely
        regressions.append({"metric": "(every objective)", "problem": f"{after} has no complete feasible trial"})
    hv_a, hv_b = hv[0].hypervolume, hv[1].hypervolume
    balanced = result.points[0] if result.points else None
    return {
        "before": str(before),
        "after": str(after),
        "reference": list(reference) if reference is not None else None,
        "hypervolume": {"before": hv_a, "after": hv_b, "change": None if hv_a is None or hv_b is None else hv_b - hv_a},
        "balanced": {
            "before": _point(result.balanced_before),
            "after": _point(result.balanced_after),
            "same_point": result.same_balanced_point,
            "compared_as": None if balanced is None else balanced.number_after,
            "objectives": [] if balanced is None else data["points"][0]["changes"],
        },
        "points": data["points"],
        "fallback": result.fallback,
        "notes": list(result.notes),
        "tolerance": tolerance,
        "regressions": regressions,
    }


def _point(p: dict | None) -> dict | None:
    return None if p is None else {"number": p["number"], "params": p["params"]}


def run(args: argparse.Namespace) -> int:
    result = compare_dirs(args.before, args.after, tolerance=args.tolerance)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 1 if result["regressions"] else 0


def _params(p: dict | None) -> str:
    if p is None:
        return "none"
    return "(" + ", ".join(f"{k} {v:.3f}" for k, v in p.items()) + ")"


def render_points(result: dict, indent: str = "  ") -> list[str]:
    """One block per compared point: each objective's change with its noise, REGRESSION flagged."""
    lines = []
    for point in result["points"]:
        label = "balanced point" if point["balanced"] else "front point"
        if point["number_after"] is None:
            lines.append(f"{indent}{label} {_params(point['params'])}: not measured in the later study")
            continue
        lines.append(
            f"{indent}{label} {_params(point['params'])}: trial {point['number_before']} -> trial {point['number_after']}"
        )
        for c in point["changes"]:
            flag = "  REGRESSION" if c["regressed"] else ""
            lines.append(
                f"{indent}  {c['direction']} {c['metric']}: {c['before']:.4g} -> {c['after']:.4g} "
                f"({c['change']:+.4g}; noise ±{c['noise']:.3g}, {c['basis']}){flag}"
            )
    return lines


def render(result: dict) -> str:
    num = lambda v, spec=".4g": "n/a" if v is None else format(v, spec)  # noqa: E731
    hv, bal = result["hypervolume"], result["balanced"]
    before, after = bal["before"], bal["after"]
    lines = [
        f"compare {result['before']} -> {result['after']}",
        f"  hypervolume   {num(hv['before'])} -> {num(hv['after'])} ({num(hv['change'], '+.4g')}), reference {result['reference']}",
        f"  balanced      trial {before['number']} {_params(before['params'])} -> "
        + ("none" if after is None else f"trial {after['number']} {_params(after['params'])}")
        + (
            ""
            if after is None or bal["same_point"]
            else "  (another point: the sampler's choice, information, not a regression)"
        ),
    ]
    lines += render_points(result)
    lines += [f"  note: {n}" for n in result["notes"]]
    if result["regressions"]:
        named = [
            r.get("problem") or f"{r['metric']} at {_params(r['params'])}: {r['change']:+.4g} (noise ±{r['noise']:.3g})"
            for r in result["regressions"]
        ]
        lines.append(f"regression beyond tolerance {result['tolerance']:g} and the noise (99%): " + "; ".join(named))
    else:
        lines.append(f"no regression beyond tolerance {result['tolerance']:g} and the noise (99%)")
    return "\n".join(lines)
