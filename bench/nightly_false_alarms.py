"""False alarms of `sweep nightly` on unchanged models: nights that differ only in the probe seed.

Runs N nights of the nightly spec on the same checkpoints (night k with evals.probe.seed 10k,
dates 2026-02-01 onwards), each through the real command (`python -m sweep nightly`, so
each night is warm-started from the one before and re-measures its front with probe
repeats), and counts the comparisons that report a regression: every one is a false
alarm. For contrast it re-judges the same pairs of nights with the probe's recorded
bootstrap bands only (no repeats) and with the balanced points alone, the rules
`sweep compare` had before, and prints all three counts.

    python bench/nightly_false_alarms.py --nights 11 --trials 4   # on the shipped demo family

Measured figures are quoted in docs/report.md ("Nightly comparisons").
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SEED_STRIDE = 10  # probe seed of night k; its repeats use the next --repeats seeds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", default=str(REPO / "search_spaces" / "nightly.yaml"))
    parser.add_argument("--nights", type=int, default=11, help="nights (comparisons = nights - 1)")
    parser.add_argument("--trials", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--tolerance", type=float, default=0.02)
    parser.add_argument("--results-dir", help="default: a new temporary folder")
    args = parser.parse_args()

    root = Path(args.results_dir or tempfile.mkdtemp(prefix="nightly-false-alarms-"))
    root.mkdir(parents=True, exist_ok=True)
    base = yaml.safe_load(Path(args.spec).read_text())
    start = dt.date(2026, 2, 1)
    rows = []
    for k in range(args.nights):
        date = start + dt.timedelta(days=k)
        spec = dict(base)
        # Seeds 10k apart: night k's trials probe at 10k, its repeats at 10k+1..; no two nights share a seed
        # (a shared seed on the same checkpoint repeats the same trajectory and would hide noise).
        seed = SEED_STRIDE * k
        spec["evals"] = dict(base["evals"]) | {"probe": dict(base["evals"]["probe"]) | {"seed": seed}}
        path = root / f"spec-seed{seed}.yaml"
        path.write_text(yaml.safe_dump(spec, sort_keys=False))
        command = [sys.executable, "-m", "sweep", "nightly", str(path), "--date", date.isoformat()]
        command += ["--trials", str(args.trials), "--repeats", str(args.repeats), "--tolerance", str(args.tolerance)]
        command += ["--results-dir", str(root / "results"), "--quiet"]
        t0 = time.perf_counter()
        done = subprocess.run(
            command, cwd=REPO, capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)}
        )
        seconds = time.perf_counter() - t0
        rows.append((date, seed, done.returncode, seconds))
        print(f"night {date} probe seed {seed}: exit {done.returncode} ({seconds:.0f} s)", flush=True)
        if done.returncode not in (0, 1):
            print(done.stdout[-3000:], done.stderr[-3000:], sep="\n", file=sys.stderr)
            return 2
        for line in done.stderr.splitlines():
            if line.strip().startswith("regression:"):
                print("   ", line.strip(), flush=True)
    compared = rows[1:]
    alarms = sum(code == 1 for *_, code, _ in compared)
    boot, old = rejudge(root / "results", [d for d, *_ in rows], args.tolerance)
    print()
    print(f"results: {root / 'results'}")
    print(f"comparisons: {len(compared)} (same checkpoints, probe seeds 0, 10, ..., {SEED_STRIDE * (args.nights - 1)})")
    print(f"false alarms, sweep nightly (same points, repeats {args.repeats}, 99% bands): {alarms}")
    print(f"false alarms, the same pairs with the probe's bootstrap bands only (no repeats): {boot}")
    print(f"false alarms, the old rule (balanced points, recorded bands, tolerance {args.tolerance}): {old}")
    print(f"wall time: {sum(s for *_, s in rows):.0f} s for {len(rows)} nights")
    return 0


def rejudge(results: Path, dates: list[dt.date], tolerance: float) -> tuple[int, int]:
    """(alarms with bootstrap bands only, alarms of compare's old balanced-point rule) over the same pairs."""
    from sweep.report.compare import compare_fronts
    from sweep.report.regression import compare_studies, whole_limit
    from sweep.study.durable import load_study_dir

    boot = old = 0
    for before, after in zip(dates, dates[1:], strict=False):
        spec_a, trials_a = load_study_dir(results / f"nightly-{before}")
        spec_b, trials_b = load_study_dir(results / f"nightly-{after}")
        result = compare_studies(
            trials_a,
            trials_b,
            spec_b.objectives,
            spec_b.constraints,
            tolerance=tolerance,
            n_docs=(whole_limit(spec_a), whole_limit(spec_b)),
        )
        boot += bool(result.regressions)
        old += compare_fronts(trials_a, trials_b, spec_b.objectives, spec_b.constraints, tolerance=tolerance).regressed
    return boot, old


if __name__ == "__main__":
    sys.exit(main())
