"""Rebuild the demo family from its recipe across seeds and thread counts, each against the gate.

    python bench/demo_rebuilds.py [--seeds 0 1 2] [--threads 1 2] [--kernels native default] [--jobs 2] [--out DIR]

A thousand training steps land somewhere else on another CPU: its kernels round
differently. Two stand-ins for another machine here: another torch thread count (the
order of some reductions), and ATen's scalar kernels (`ATEN_CPU_CAPABILITY=default`,
what a CPU without AVX2 runs; `--kernels default`) instead of the vectorized ones this
CPU picks (`native`). Measured on torch 2.13's CPU build here: threads 1 and 2 gave
bit-identical families; the scalar kernels gave other weights. A recipe has margin when
every rebuild passes the gate (`sweep.demo.gate`), not only the one that was shipped.

Each build runs `python -m sweep demo build --rebuild` in its own process (the gate is
measured at the end of every build). Builds with one thread run `--jobs` at a time; a
build with more threads runs alone, so its threads do not wait on each other. Prints a
table: seed, threads, label (the weights' digest), build time, the gate's numbers, and
the verdict. Exit 1 when any rebuild misses the gate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--kernels",
        nargs="+",
        choices=["native", "default"],
        default=["native"],
        help="ATen CPU kernels (default native)",
    )
    parser.add_argument("--jobs", type=int, default=2, help="one-thread builds at a time (default 2)")
    parser.add_argument("--out", type=Path, help="where the families go (default: a temporary folder, kept)")
    args = parser.parse_args()

    out = (args.out or Path(tempfile.mkdtemp(prefix="demo-rebuilds-"))).resolve()
    out.mkdir(parents=True, exist_ok=True)
    builds = [(seed, threads, kernels) for kernels in args.kernels for threads in args.threads for seed in args.seeds]
    print(f"{len(builds)} rebuilds into {out}", flush=True)
    start = time.monotonic()
    running: list[tuple[subprocess.Popen, tuple[int, int, str]]] = []
    for seed, threads, kernels in builds:
        limit = args.jobs if threads == 1 else 1
        # a many-thread build runs alone: wait for the others, and make the others wait for it
        while running and (len(running) >= limit or threads > 1 or any(b[1] > 1 for _, b in running)):
            running = _reap(running)
        running.append((_start(out, seed, threads, kernels), (seed, threads, kernels)))
    while running:
        running = _reap(running)
    print(f"\nall builds: {time.monotonic() - start:.0f} s wall\n")

    lines = [
        "| seed | threads | kernels | label | build s (wall) | reasoning member | instruct member | length ratio | best merge, both skills | gate |",
        "|---:|---:|---|---|---:|---:|---:|---:|---|---|",
    ]
    failed = 0
    for seed, threads, kernels in builds:
        root = _root(out, seed, threads, kernels)
        try:
            manifest = json.loads((root / "family.json").read_text())
        except OSError:
            lines.append(f"| {seed} | {threads} | {kernels} | (build failed: see {root}.log) | | | | | | FAIL |")
            failed += 1
            continue
        gate = manifest["gate"]
        rows = {(r["alpha"], r["beta"]): r for r in gate["rows"]}
        reasoner, instruct = rows[(0.0, 1.0)], rows[(1.0, 1.0)]
        ratio = reasoner["reasoning"]["mean_length"] / max(instruct["reasoning"]["mean_length"], 1e-9)
        merges = [r for key, r in rows.items() if key not in ((0.0, 1.0), (1.0, 1.0))]
        best = max(merges, key=lambda r: min(r["reasoning"]["accuracy"], r["instruct"]["accuracy"]))
        missed = [c["name"] for c in gate["criteria"] if not c["passed"]]
        failed += bool(missed)
        lines.append(
            f"| {seed} | {threads} | {kernels} | {manifest['label']} | {manifest['build_wall_s']:.0f} "
            f"| {reasoner['reasoning']['accuracy']:.2f} | {instruct['instruct']['accuracy']:.2f} | {ratio:.1f}x "
            f"| ({best['alpha']:g}, {best['beta']:g}): {best['reasoning']['accuracy']:.2f} / {best['instruct']['accuracy']:.2f} "
            f"| {'PASS' if not missed else 'FAIL: ' + '; '.join(missed)} |"
        )
    print("\n".join(lines))
    print(f"\n{len(builds) - failed} of {len(builds)} rebuilds pass the gate")
    return 1 if failed else 0


def _root(out: Path, seed: int, threads: int, kernels: str) -> Path:
    return (
        out / f"seed{seed}-threads{threads}" if kernels == "native" else out / f"seed{seed}-threads{threads}-{kernels}"
    )


def _start(out: Path, seed: int, threads: int, kernels: str) -> subprocess.Popen:
    """A build in its own process; a complete family already at its root is reused."""
    root = _root(out, seed, threads, kernels)
    print(f"  building seed {seed} with {threads} thread(s), {kernels} kernels: log {root}.log", flush=True)
    log = open(f"{root}.log", "a")  # closed with the process, in _reap
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)}
    if kernels == "default":
        env["ATEN_CPU_CAPABILITY"] = "default"
    argv = [sys.executable, "-m", "sweep", "demo", "build", "--rebuild"]
    argv += ["--root", str(root), "--seed", str(seed), "--threads", str(threads)]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log = log  # type: ignore[attr-defined]
    return proc


def _reap(running: list) -> list:
    time.sleep(2)
    still = []
    for proc, build in running:
        if proc.poll() is None:
            still.append((proc, build))
        else:
            proc.log.close()
            print(f"  seed {build[0]}, {build[1]} thread(s), {build[2]} kernels: exit {proc.returncode}", flush=True)
    return still


if __name__ == "__main__":
    raise SystemExit(main())
