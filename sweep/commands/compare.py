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


def run(args: argparse.Namespace) -> int:
    from sweep.report.compare import compare_dirs, render

    result = compare_dirs(args.before, args.after, tolerance=args.tolerance)
    print(json.dumps(result, indent=2) if args.json else render(result))
    return 1 if result["regressions"] else 0
