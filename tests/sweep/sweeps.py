"""Helpers for sweep tests that exercise the orchestration (Ray Tune, Optuna, storage, drivers)
with a stand-in trial: the metrics are a smooth function of the params, computed on a real Ray
worker, so a sweep of a few trials takes seconds. The real trial (merge, lm-eval, probe)
runs end to end in test_run.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sweep.config import parse_spec
from sweep.study.records import TrialResult

SPEC = """
name: {name}
models: {{pretrained: {root}/m/p, instruct: {root}/m/i, reasoning: {root}/m/r}}
evals:
  probe: {{prompts: {root}/m/prompts.jsonl}}
objectives:
  - {{metric: probe/length_retention, direction: maximize}}
  - {{metric: probe/reward_dip, direction: minimize}}
constraints: ["probe/length_retention >= 0.2"]
results_dir: {results}
"""


def make_spec(root: Path, *, name: str = "orch", results: Path | None = None, extra: str = ""):
    text = SPEC.format(name=name, root=root, results=results or root / "results") + extra
    return parse_spec(text, base_dir=root)


def stand_in_trial(spec, params) -> TrialResult:
    """A trial whose outcome depends only on its params (a trade-off between the two
    objectives); SWEEP_TEST_TRIAL_S sets how long it takes (seconds). While the file named by
    SWEEP_TEST_GATE exists, a trial waits before it starts (a test holds every driver's first
    trial until all its drivers are up)."""
    gate = os.environ.get("SWEEP_TEST_GATE")
    while gate and os.path.exists(gate):
        time.sleep(0.1)
    started = time.perf_counter()
    time.sleep(float(os.environ.get("SWEEP_TEST_TRIAL_S", "0.2")))
    alpha, beta = params["alpha"], params["beta"]
    if alpha > float(os.environ.get("SWEEP_TEST_FAIL_ABOVE", "2")):
        raise RuntimeError(f"planted failure at alpha={alpha:.3f}")
    metrics = {"probe/length_retention": 1.0 - 0.8 * alpha * beta, "probe/reward_dip": (1.0 - alpha) * beta}
    worker = {"host": os.uname().nodename, "pid": os.getpid()}
    try:
        import ray

        if ray.is_initialized():
            worker["node_id"] = ray.get_runtime_context().get_node_id()
    except ImportError:  # pragma: no cover
        pass
    return TrialResult(
        params=dict(params),
        metrics=metrics,
        curves={"response_length/mean": [1.0, 1.0 - alpha]},
        timings={"total_s": round(time.perf_counter() - started, 3)},
        worker=worker,
    )


def stand_in_long_run(spec, params, seed, long_steps) -> dict:
    """sweep calibrate's long run (sweep.run.longrun.long_run_at) for the stand-in trial:
    the outcomes its probe metrics stand for, after SWEEP_TEST_TRIAL_S seconds, with the
    Ray node that ran it (`node`); where the study folder has a `marks` folder, a file in
    it as the run starts. (Workers take their node's environment: the cluster's
    SWEEP_TEST_TRIAL_S.)"""
    import ray

    started = time.perf_counter()
    node = ray.get_runtime_context().get_node_id()
    marks = spec.study_dir / "marks"
    if marks.is_dir():  # a file per run started, named by its node
        (marks / f"{node}-{os.getpid()}-{time.monotonic_ns()}").touch()
    time.sleep(float(os.environ.get("SWEEP_TEST_TRIAL_S", "0.2")))
    alpha, beta = params["alpha"], params["beta"]
    return {
        "final_length": 1.0 - 0.8 * alpha * beta,
        "min_length": 1.0 - 0.8 * alpha * beta,
        "final_reward": 0.0,
        "final_score": 0.5,
        "dip": (1.0 - alpha) * beta,
        "recovery_step": None,
        "steps": long_steps,
        "reward_shape": "no dip",
        "dip_null": 1.0,
        "dip_noise": 0.0,
        "fall": 0.0,
        "low_step": 0,
        "back_step": None,
        "seed": seed,
        "wall_s": round(time.perf_counter() - started, 3),
        "node": node,
    }


def degraded(metrics: dict) -> dict:
    """SWEEP_TEST_DEGRADE=f scales length_retention by f: a night whose models got worse."""
    factor = float(os.environ.get("SWEEP_TEST_DEGRADE", "1"))
    return metrics | {"probe/length_retention": metrics["probe/length_retention"] * factor}


def stand_in_nightly_trial(spec, params) -> TrialResult:
    """stand_in_trial, degraded by SWEEP_TEST_DEGRADE, with a recorded probe band of 0.02."""
    result = stand_in_trial(spec, params)
    metrics = degraded(result.metrics) | {"probe/length_retention_noise": 0.02, "probe/reward_dip_noise": 0.02}
    return TrialResult(params=result.params, metrics=metrics, curves=result.curves, timings=result.timings)


def stand_in_probe(spec, params, seed) -> dict:
    """A repeat of the stand-in's probe at another seed: the same values moved by a
    seed-dependent 0.01-0.03 (the trajectory's noise), with the recorded band of 0.02."""
    alpha, beta = params["alpha"], params["beta"]
    shift = 0.01 * (1 + seed % 3) * (-1) ** seed
    metrics = {"probe/length_retention": 1.0 - 0.8 * alpha * beta + shift, "probe/reward_dip": (1.0 - alpha) * beta}
    return degraded(metrics) | {"probe/length_retention_noise": 0.02, "probe/reward_dip_noise": 0.02}
