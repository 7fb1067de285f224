"""Orchestration overhead of `sweep run` per trial, with trivial trials (a sleep).

Measured in one run, on one local Ray started once (ray.init is not counted):
- wall time of N trials of S seconds at 1 and at 2 workers, through the real runner
  (Ray Tune + OptunaSearch + SQLite study + trials table rewrite after every trial);
- overhead per trial = (wall - ideal) / N, where ideal = N * S / workers;
- the throughput ratio 2 workers / 1 worker.
Compare with ~0.75 s per trial measured on this machine for bare Tune with reused actors.

    python bench/sweep_bench.py [--trials 12] [--sleep 0.5]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

from sweep.config import parse_spec  # noqa: E402
from sweep.run.runner import run_sweep  # noqa: E402
from sweep.study.records import TrialResult  # noqa: E402

SPEC = """
name: bench-{workers}
models: {{pretrained: /unused/p, instruct: /unused/i, reasoning: /unused/r}}
space: {{alpha: {{low: 0, high: 1}}, beta: {{low: 0.5, high: 1}}}}
sampler: {{name: tpe, seed: 0}}
budget: {{trials: {trials}, concurrent: {workers}}}
evals:
  probe: {{prompts: /unused/prompts.jsonl}}
objectives:
  - {{metric: probe/length_retention, direction: maximize}}
  - {{metric: probe/reward_final, direction: maximize}}
results_dir: {results}
"""

SLEEP_S = 0.5


def trivial_trial(spec, params):
    time.sleep(SLEEP_S)
    a, b = params["alpha"], params["beta"]
    return TrialResult(params=params, metrics={"probe/length_retention": 1 - a * b, "probe/reward_final": a * b})


def main() -> None:
    global SLEEP_S
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--sleep", type=float, default=0.5, help="seconds per trivial trial")
    args = parser.parse_args()
    SLEEP_S = args.sleep

    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    t0 = time.perf_counter()
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    print(f"ray.init: {time.perf_counter() - t0:.1f} s (not counted below)")

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            spec = parse_spec(SPEC.format(workers=workers, trials=args.trials, results=tmp), base_dir=Path(tmp))
            start = time.perf_counter()
            summary = run_sweep(spec, trial_fn=trivial_trial, quiet=True)
            wall = time.perf_counter() - start
            assert summary.complete == args.trials, summary
            ideal = args.trials * args.sleep / workers
            rows[workers] = wall
            print(
                f"{workers} worker(s): {args.trials} trials of {args.sleep} s in {wall:.1f} s "
                f"(ideal {ideal:.1f} s): overhead {(wall - ideal) / args.trials:.2f} s per trial"
            )
    ray.shutdown()
    print(f"throughput 2 workers / 1 worker: {rows[1] / rows[2]:.2f}x")
    print("reference: bare Tune with reuse_actors=True cost ~0.75 s per trial on this machine")


if __name__ == "__main__":
    main()
