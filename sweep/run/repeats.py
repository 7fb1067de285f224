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

import json
from collections.abc import Callable
from typing import Any

from sweep.config import SweepSpec, spec_from_json
from sweep.study.repeats_table import load_repeats, write_repeats

ProbeFn = Callable[[SweepSpec, dict[str, float], int], dict[str, float | None]]


def probe_at(spec: SweepSpec, params: dict[str, float], seed: int) -> dict[str, float | None]:
    """The candidate at `params` built on this worker, probed once at `seed`: probe/* metrics."""
    from evals.probe import run_probe
    from sweep.run.trial import build_candidate, worker_state
    from sweep.study.records import clean_metric

    state = worker_state(spec)  # cached per worker, keyed on the spec (not on the seed)
    if state.probe_config is None:
        return {}
    build_candidate(spec, params, model=state.model, sources=state.sources)
    config = state.probe_config.model_copy(update={"seed": seed})
    result = run_probe(state.model, state.tokenizer, config=config, prompts=state.prompts, reward=state.reward)
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
    Ray; save and return the whole table. Ray must be initialized."""
    import ray

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
    worker_spec = spec.model_copy(update={"storage": None})  # workers never need the storage
    actor_class = ray.remote(num_cpus=spec.resources.cpus_per_trial, num_gpus=spec.resources.gpus_per_trial)(
        _RepeatWorker
    )
    workers: list[Any] = [
        actor_class.remote(worker_spec.model_dump_json(), probe_fn)
        for _ in range(min(spec.budget.concurrent, len(todo)))
    ]
    rows: list[dict[str, Any]] = []
    pending: dict[Any, tuple[dict[str, float], int, Any]] = {}
    queue = list(todo)
    idle: list[Any] = list(workers)
    while queue or pending:
        while queue and idle:
            params, seed = queue.pop(0)
            worker = idle.pop()
            pending[worker.probe.remote(params, seed)] = (params, seed, worker)
        ready, _ = ray.wait(list(pending), num_returns=1)
        params, seed, worker = pending.pop(ready[0])
        idle.append(worker)
        try:
            metrics, error = ray.get(ready[0]), None
        except Exception as exc:  # noqa: BLE001 - a failed repeat is recorded, the night goes on
            metrics, error = (
                {},
                f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}",
            )
        rows.append({f"params/{k}": v for k, v in params.items()} | {"seed": seed, "error": error} | metrics)
        table = _save(spec, done, rows)  # after every repeat: a stopped night keeps what it measured
        shown = ", ".join(f"{k} {v:.3f}" for k, v in params.items())
        say(f"repeat {len(rows)}/{len(todo)}: ({shown}) probe seed {seed}" + (f": FAILED {error}" if error else ""))
    for worker in workers:
        ray.kill(worker)
    return table


def _save(spec: SweepSpec, done, rows: list[dict[str, Any]]):
    import pandas as pd

    kept = done[done["error"].isna()] if len(done) and "error" in done else done
    table = pd.concat([kept, pd.DataFrame(rows)], ignore_index=True)
    write_repeats(spec.study_dir, table)
    return table


def _params(row) -> dict[str, Any]:
    return {c.split("/", 1)[1]: row[c] for c in row.index if str(c).startswith("params/")}


class _RepeatWorker:
    """One Ray actor per concurrent slot: loads the models once, then probes point after point."""

    def __init__(self, spec_json: str, probe_fn: ProbeFn | None):
        self.spec = spec_from_json(spec_json)  # imports the spec's plugins: on this worker first
        self.probe_fn = probe_fn or probe_at

    def probe(self, params: dict[str, float], seed: int) -> dict[str, float | None]:
        metrics = self.probe_fn(self.spec, dict(params), int(seed))
        return json.loads(json.dumps({k: v for k, v in metrics.items() if k.startswith("probe/")}))
