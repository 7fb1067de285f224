"""`python -m sweep report RESULTS_DIR/NAME [--rescore]`: report.html and report.md."""

from __future__ import annotations

import argparse

HELP = "Pareto front, balanced point, hypervolume: write report.html and report.md for a study"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study", help="the study folder, e.g. results/demo")
    parser.add_argument(
        "--rescore",
        action="store_true",
        help="run the spec's held-out report tasks on the front points first (kept in heldout.parquet)",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from sweep.report.calibration import load_calibration
    from sweep.report.document import report_options, write_report
    from sweep.report.facts import probe_text
    from sweep.report.summary import summarize
    from sweep.run.rescore import load_heldout, rescore_front, save_heldout
    from sweep.study.durable import load_study_dir

    study_dir = Path(args.study)
    spec, trials = load_study_dir(study_dir)
    options = report_options(spec)
    if args.rescore:
        heldout = rescore_front(spec, trials, say=lambda line: print(line, file=sys.stderr))
        save_heldout(study_dir, heldout)
    else:
        heldout = load_heldout(study_dir)
    summary = summarize(  # once: the report and the lines printed below share it
        trials,
        spec.objectives,
        spec.constraints,
        rule=options.get("balanced_rule", "maximin"),
        weights=options.get("weights"),
        reference=options.get("reference"),
    )
    html, md = write_report(
        study_dir,
        trials=trials,
        objectives=spec.objectives,
        constraints=spec.constraints,
        spec_name=spec.name,
        heldout=heldout,
        summary=summary,
        calibration=load_calibration(study_dir),
        probe=probe_text(spec.evals.probe),
        **options,
    )
    print(f"wrote {html} ({html.stat().st_size / 1e6:.1f} MB) and {md}")
    if summary.balanced is not None:
        b = summary.balanced
        params = ", ".join(f"{k}={v:.3f}" for k, v in b.params.items())
        values = ", ".join(f"{o.metric}={b.metrics.get(o.metric, float('nan')):.4g}" for o in spec.objectives)
        print(f"balanced point ({b.rule}): trial {b.number}: {params}: {values}")
        print(
            f"front: {len(summary.front_numbers)} of {summary.n_complete} complete trials; export with "
            f"`python -m sweep export {study_dir} --balanced --out DIR`"
        )
    else:
        print("no complete feasible trial yet: the report lists the trials only")
    return 0
