"""Probe repeats: last night's front points probed again tonight, with other probe seeds.

A probe's recorded band is a bootstrap over one run's prompts and samples; the training
trajectory itself varies with the seed by more (sweep.report.regression). `sweep nightly`
therefore probes each compared point `repeats` more times, at seeds seed+1..seed+repeats
of the spec's probe seed, on Ray workers with the trial's resources (`budget.concurrent`
at a time). The merge and the lm-eval scores are not repeated: lm-eval is deterministic
for a given checkpoint and its binomial band covers it.

Rows go to <study_dir>/repeats.parquet: the params (`params/<name>`), `seed`, and the probe
metrics with their bands, or `error`. A rerun of the night runs only the missing rows.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from sweep.config import SweepSpec
from sweep.run.pool import run_pool
from sweep.study.repeats_table import load_repeats, write_repeats

ProbeFn = Callable[[SweepSpec, dict[str, float], int], dict[str, float | None]]


def probe_at(spec: SweepSpec, params: dict[str, float], seed: int) -> dict[str, float | None]:
    """The candidate at `params` built on this worker, probed once at `seed`: probe/* metrics."""
    from sweep.run.trial import build_candidate, probe_on_worker, worker_state
    from sweep.study.records import clean_metric

    state = worker_state(spec)  # cached per worker, keyed on the spec (not on the seed)
    if state.probe_config is None:
        return {}
    build_candidate(spec, params, model=state.model, sources=state.sources)
    config = state.probe_config.model_copy(update={"seed": seed})
    result = probe_on_worker(state, config)
    return {k: clean_metric(v) for k, v in result.metrics.as_metrics().items()}


def run_repeats(
    spec: SweepSpec,
    points: list[dict[str, float]],
    *,
    repeats: int,
    probe_fn: ProbeFn | None = None,
    say: Callable[[str], None] = print,
):
    """Probe each point at seeds seed+1..seed+repeats (those not in repeats.parquet yet) on
    Ray (sweep.run.pool); save and return the whole table. Ray must be initialized."""
    from sweep.report.regression import same_point

    if spec.evals.probe is None or repeats < 1 or not points:
        return load_repeats(spec.study_dir)
    base = spec.evals.probe.seed
    done = load_repeats(spec.study_dir)
    todo = []
    for params in points:
        for seed in range(base + 1, base + repeats + 1):
            if not any(
                row["seed"] == seed and same_point(_params(row), params) and not isinstance(row.get("error"), str)
                for _, row in done.iterrows()
            ):
                todo.append((params, seed))
    if not todo:
        return done
    from sweep.run.trial import warm_worker

    rows: list[dict[str, Any]] = []
    table = done
    # a repeat is a trial's probe alone: the trial's time limit bounds it
    pool = run_pool(
        spec,
        todo,
        partial(_probe_metrics, probe_fn or probe_at),
        warm=warm_worker if probe_fn is None else None,  # a probe_fn of one's own loads what it needs
        timeout_s=spec.budget.trial_timeout_s,
    )
    for (params, seed), metrics, error in pool:
        rows.append({f"params/{k}": v for k, v in params.items()} | {"seed": seed, "error": error} | (metrics or {}))
        table = _save(spec, done, rows)  # after every repeat: a stopped night keeps what it measured
        shown = ", ".join(f"{k} {v:.3f}" for k, v in params.items())
        say(f"repeat {len(rows)}/{len(todo)}: ({shown}) probe seed {seed}" + (f": FAILED {error}" if error else ""))
    return table


def _save(spec: SweepSpec, done, rows: list[dict[str, Any]]):
    import pandas as pd

    kept = done[done["error"].isna()] if len(done) and "error" in done else done
    table = pd.concat([kept, pd.DataFrame(rows)], ignore_index=True)
    write_repeats(spec.study_dir, table)
    return table


def _params(row) -> dict[str, Any]:
    return {c.split("/", 1)[1]: row[c] for c in row.index if str(c).startswith("params/")}


def _probe_metrics(probe_fn: ProbeFn, spec: SweepSpec, params: dict[str, float], seed: int) -> dict[str, Any]:
    """On a worker: the probe/* metrics of one repeat."""
    metrics = probe_fn(spec, dict(params), int(seed))
    return {k: v for k, v in metrics.items() if k.startswith("probe/")}
