"""The trials table: one row per trial, the one home of its schema.

This module owns which columns the table has and which of them are metrics, its file
names, and reading and writing it. Everything else asks it:

- `COLUMNS`: every column that is not a metric (bookkeeping, params alpha and beta),
  present in every table even before any result. A new bookkeeping column is added
  here, once: `build` writes it, and `metric_columns` keeps it out of the metrics (the
  report's tables, the balanced point's metrics, the model card).
- `params/<name>`: a searched param; `timing/<phase>_s`: a phase's seconds. Neither is a
  metric. Every other column is a metric (an objective, a probe metric, an lm-eval
  score, a noise band `<metric>_noise`).
- `build(study, spec)` makes the table from the Optuna study; `write(study, spec)`
  writes `trials.parquet` and `trials.csv` (without the curves) atomically; `read(dir)`
  reads it back, with one clear error when it is missing or damaged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.errors import SweepError

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

TRIALS_FILE = "trials.parquet"
CSV_FILE = "trials.csv"
PARAM_PREFIX = "params/"
TIMING_PREFIX = "timing/"

# Column -> what it holds. Every column here is kept out of the metrics.
COLUMNS: dict[str, str] = {
    "number": "the Optuna trial number",
    "state": "COMPLETE, FAIL, RUNNING, PRUNED",
    "error": "the error of a failed trial (secrets redacted)",
    "failure_kind": "error | infrastructure | orphaned | interrupted",
    "params/alpha": "stage-1 ratio",
    "params/beta": "stage-2 ratio",
    "constraint_violation": "largest constraint violation (<= 0: all met; NaN: a constraint's metric is missing)",
    "feasible": "COMPLETE and every constraint met",
    "duration_s": "the trial's seconds",
    "worker": "host:pid that ran it",
    "ray_trial_id": "Ray Tune's id of the trial",
    "driver": "the driver that launched it",
    "retries": "attempts retried before this outcome",
    "started_at": "ISO start time",
    "finished_at": "ISO end time",
    "recipe": "the models and merge it ran with (JSON)",
    "curves": "the probe's per-step curves (JSON; not in the CSV)",
}
NOT_METRIC_PREFIXES = (PARAM_PREFIX, TIMING_PREFIX)


def is_metric(column: object) -> bool:
    """True for a metric column: not a param, a timing or a column of COLUMNS."""
    name = str(column)
    return not name.startswith(NOT_METRIC_PREFIXES) and name not in COLUMNS


def metric_columns(columns: Iterable[str]) -> list[str]:
    """The metric columns of a trials table, in table order."""
    return [c for c in columns if is_metric(c)]


def param_columns(columns: Iterable[str]) -> list[str]:
    """`params/*` columns, alpha and beta first."""
    cols = [c for c in columns if str(c).startswith(PARAM_PREFIX)]
    first = [c for c in (PARAM_PREFIX + "alpha", PARAM_PREFIX + "beta") if c in cols]
    return first + sorted(c for c in cols if c not in first)


def plain(value: Any) -> Any:
    """A table cell as a plain Python value (numpy scalars unwrapped, NaN and inf as None)."""
    import numpy as np

    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def finite_number(value: Any) -> float | None:
    """A cell as a finite float; None when missing, NaN, infinite or not a number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def trial_params(row: pd.Series) -> dict[str, Any]:
    """A row's params, without the `params/` prefix."""
    return {c[len(PARAM_PREFIX) :]: plain(row[c]) for c in param_columns(row.index)}


def trial_metrics(row: pd.Series, columns: Iterable[str] | None = None) -> dict[str, float | None]:
    """A row's metrics (numbers; None where missing or not a number)."""
    import pandas as pd

    out: dict[str, float | None] = {}
    for c in metric_columns(columns if columns is not None else row.index):
        v = pd.to_numeric(pd.Series([row[c]]), errors="coerce").iloc[0]
        out[c] = float(v) if pd.notna(v) else None
    return out


def build(study: Any, spec: Any) -> pd.DataFrame:
    """One row per trial: number, state, params/<name>, every metric, feasibility, timings, curves."""
    import pandas as pd

    from sweep.config import redact
    from sweep.study.records import (
        ATTR_CURVES,
        ATTR_DRIVER,
        ATTR_ERROR,
        ATTR_FAILURE_KIND,
        ATTR_METRICS,
        ATTR_RAY_TRIAL_ID,
        ATTR_RECIPE,
        ATTR_RETRIES,
        ATTR_TIMINGS,
        ATTR_WORKER,
    )

    secrets = spec.secrets()
    rows = []
    for trial in study.get_trials(deepcopy=False):
        if trial.state.name == "WAITING" or trial.user_attrs.get(ATTR_FAILURE_KIND) == "skipped":
            continue
        attrs = trial.user_attrs
        metrics = attrs.get(ATTR_METRICS, {})
        error = attrs.get(ATTR_ERROR)
        row: dict[str, Any] = {
            "number": trial.number,
            "state": trial.state.name,
            "error": redact(error, secrets) if error else error,
            "failure_kind": attrs.get(ATTR_FAILURE_KIND),
        }
        row.update({f"{PARAM_PREFIX}{k}": v for k, v in trial.params.items()})
        row.update({k: (float("nan") if v is None else float(v)) for k, v in metrics.items()})
        checked = [c.violation_in(metrics) for c in spec.constraints]
        violations = [v for v in checked if v is not None]
        missing = len(violations) < len(checked)
        row["constraint_violation"] = max(violations) if violations else (float("nan") if missing else 0.0)
        row["feasible"] = trial.state.name == "COMPLETE" and not missing and all(v <= 0 for v in violations)
        timings = attrs.get(ATTR_TIMINGS, {})
        row["duration_s"] = timings.get("total_s", trial.duration.total_seconds() if trial.duration else float("nan"))
        row.update({f"{TIMING_PREFIX}{k}": v for k, v in timings.items() if k != "total_s"})
        worker = attrs.get(ATTR_WORKER, {})
        row["worker"] = f"{worker.get('host', '')}:{worker.get('pid', '')}" if worker else None
        row["ray_trial_id"] = attrs.get(ATTR_RAY_TRIAL_ID)
        row["driver"] = attrs.get(ATTR_DRIVER)
        row["retries"] = len(attrs.get(ATTR_RETRIES, []))
        row["recipe"] = json.dumps(attrs[ATTR_RECIPE]) if ATTR_RECIPE in attrs else None
        row["started_at"] = trial.datetime_start.isoformat() if trial.datetime_start else None
        row["finished_at"] = trial.datetime_complete.isoformat() if trial.datetime_complete else None
        row["curves"] = json.dumps(attrs.get(ATTR_CURVES, {}))
        rows.append(row)
    table = pd.DataFrame(rows)
    # Columns every table has, even before any result (objectives included).
    for name in [*COLUMNS, *spec.objective_names]:
        if name not in table.columns:
            table[name] = pd.Series(dtype="float64" if "/" in name or name.endswith("_s") else "object")
    return table.sort_values("number").reset_index(drop=True)


def write(study: Any, spec: Any) -> Path:
    """Write <study_dir>/trials.parquet and trials.csv atomically; returns the parquet path."""
    table = build(study, spec)
    study_dir = spec.study_dir
    study_dir.mkdir(parents=True, exist_ok=True)
    parquet, csv = study_dir / TRIALS_FILE, study_dir / CSV_FILE
    table.to_parquet(parquet.with_suffix(".parquet.tmp"), index=False)
    os.replace(parquet.with_suffix(".parquet.tmp"), parquet)
    table.drop(columns=["curves"]).to_csv(csv.with_suffix(".csv.tmp"), index=False)
    os.replace(csv.with_suffix(".csv.tmp"), csv)
    return parquet


def path(study_dir: str | Path) -> Path:
    return Path(study_dir) / TRIALS_FILE


def exists(study_dir: str | Path) -> bool:
    return path(study_dir).exists()


def read(study_dir: str | Path) -> pd.DataFrame:
    """Read `<study_dir>/trials.parquet`. Raises SweepError naming the path when it is missing or unreadable."""
    import pandas as pd

    file = path(study_dir)
    if not file.is_file():
        hint = " (it is a file; give the study's results folder)" if Path(study_dir).is_file() else ""
        raise SweepError(
            f"no trials table at {file}{hint}: run `python -m sweep run SPEC` first, or give results/<study name>"
        )
    try:
        return pd.read_parquet(file)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a damaged file
        raise SweepError(f"cannot read {file}: {exc}") from None
