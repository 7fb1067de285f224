"""The durable Optuna study: the source of truth of a sweep.

- `open_study(spec)` creates or loads it from the spec's storage, refusing a study whose
  directions or objectives differ from the spec.
- `recover_orphans(study)` marks trials left RUNNING by a dead driver FAIL (with a reason)
  and enqueues their params again, so nothing is lost and nothing is counted twice; one
  its driver never launched (stopped mid-ask) is closed as not run (`close_not_run`).
- `enqueue_points(study, points)` enqueues fixed points not already in the study.
- `load_study_dir(folder)` reads a study folder back: its spec snapshot and trials table
  (sweep.study.table owns the table).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sweep.config import SweepSpec, spec_from_json
from sweep.errors import SweepError
from sweep.study import optuna_compat, table
from sweep.study.records import ATTR_ERROR, ATTR_FAILURE_KIND

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

STUDY_ATTR_OBJECTIVES = "sweep_objectives"

_PARAM_TOLERANCE = 1e-9


def make_storage(url: str):
    """An Optuna storage object for `url` (see sweep.study.storage.connect)."""
    from sweep.study.storage import connect

    return connect(url)


def open_study(spec: SweepSpec, *, sampler=None, storage=None):
    """Create or load the study named spec.name, checking it matches the spec's objectives."""
    import optuna

    storage = storage or make_storage(spec.storage_url)
    directions = [
        optuna.study.StudyDirection[d.upper()] for d in spec.directions
    ]  # the spec allows only minimize/maximize
    study = optuna.create_study(
        storage=storage, study_name=spec.name, directions=directions, sampler=sampler, load_if_exists=True
    )
    recorded = check_objectives(study, spec)
    wanted = [[o.metric, o.direction] for o in spec.objectives]
    if recorded is None:
        study.set_user_attr(STUDY_ATTR_OBJECTIVES, wanted)
    if list(study.metric_names or []) != spec.objective_names:
        import warnings

        with warnings.catch_warnings():  # experimental since Optuna 3.2, still so in 5
            warnings.simplefilter("ignore")
            study.set_metric_names(spec.objective_names)  # optuna-dashboard shows these names
    return study


def check_objectives(study, spec: SweepSpec):
    """Raise SweepError when the study's directions or objectives differ from the spec's.
    Returns the objectives the study recorded (None for a study from before they were)."""
    recorded = study.user_attrs.get(STUDY_ATTR_OBJECTIVES)
    wanted = [[o.metric, o.direction] for o in spec.objectives]
    have_dirs = [d.name.lower() for d in study.directions]
    if have_dirs != spec.directions or (recorded is not None and recorded != wanted):
        have = recorded or [["?", d] for d in have_dirs]
        raise SweepError(
            f"study '{spec.name}' in {spec.storage_display} was created with objectives "
            f"{_fmt_objectives(have)}, but the spec asks for {_fmt_objectives(wanted)}. "
            "Give the spec a new name (or storage) to start a new study; the existing one is left untouched"
        )
    return recorded


def _fmt_objectives(pairs: list) -> str:
    return "[" + ", ".join(f"{d} {m}" for m, d in pairs) + "]"


def same_params(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(math.isclose(float(a[k]), float(b[k]), abs_tol=_PARAM_TOLERANCE) for k in a)


def _trial_params(trial) -> dict[str, Any]:
    """Params of a trial, or the fixed params of a WAITING (enqueued) one."""
    return dict(trial.params) or dict(trial.system_attrs.get("fixed_params", {}))


def space_distributions(spec: SweepSpec) -> dict:
    """The Optuna distributions of the spec's space: alpha, beta, then searched method parameters."""
    import optuna

    ranges = {"alpha": spec.space.alpha, "beta": spec.space.beta} | dict(spec.space.params)
    return {name: optuna.distributions.FloatDistribution(r.low, r.high, step=r.step) for name, r in ranges.items()}


def recover_orphans(
    study,
    *,
    reason: str = "orphaned: the driver stopped while this trial ran",
    kind: str = "orphaned",
    is_orphan=None,
    failure_limit: int | None = None,
    storage=None,
    space: Iterable[str] = (),
) -> list[int]:
    """Mark RUNNING trials FAIL with `reason` and enqueue their params again. Returns their numbers.

    `is_orphan(frozen_trial) -> bool` picks which RUNNING trials are orphans (default: all of
    them; sweep.run.runner passes one that accepts only trials whose driver's lease expired).
    `space`: the searched parameter names. A trial missing one of them was never launched
    (a driver launches only once its ask has proposed every parameter; it stopped mid-ask):
    it is closed as not run (`close_not_run`), not failed, and its partial params are not
    queued. `storage`: the study's storage (default: read from the study).
    """
    from optuna.trial import TrialState

    storage = storage if storage is not None else optuna_compat.storage_of(study)
    recovered = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if is_orphan is not None and not is_orphan(trial):
            continue
        if any(name not in trial.params for name in space):
            close_not_run(study, trial, STOPPED_MID_ASK, failure_limit=failure_limit, storage=storage)
            continue
        attrs = {ATTR_ERROR: reason, ATTR_FAILURE_KIND: kind}
        if not optuna_compat.close_trial(storage, trial, TrialState.FAIL, attrs):
            continue  # finished meanwhile (its driver told it after all): not an orphan
        recovered.append(trial.number)
        if trial.params:
            enqueue_points(study, [trial.params], failure_limit=failure_limit)
    return recovered


STOPPED_MID_ASK = "not run: its driver stopped while proposing it, before it was launched"


def close_not_run(study, trial, note: str, *, failure_limit: int | None = None, storage=None) -> bool:
    """Close a never-launched RUNNING trial PRUNED with `note` (kind skipped: no failure, not
    counted), and queue its fixed point again. False if it finished meanwhile."""
    from optuna.trial import TrialState

    storage = storage if storage is not None else optuna_compat.storage_of(study)
    closed = optuna_compat.close_trial(
        storage, trial, TrialState.PRUNED, {ATTR_ERROR: note, ATTR_FAILURE_KIND: "skipped"}
    )
    if not closed:  # finished meanwhile, so someone ran it after all
        return False
    fixed = trial.system_attrs.get("fixed_params")
    if fixed:
        enqueue_points(study, [dict(fixed)], failure_limit=failure_limit)
    return True


def error_failures(study, params: dict[str, Any]) -> int:
    """How many times a trial at `params` raised (FAIL of kind error; infrastructure losses do not count)."""
    from optuna.trial import TrialState

    return sum(
        1
        for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        if t.user_attrs.get(ATTR_FAILURE_KIND, "error") == "error" and t.params and same_params(t.params, params)
    )


def enqueue_points(study, points: list[dict[str, float]], *, failure_limit: int | None = None) -> int:
    """Enqueue points that are neither COMPLETE nor already waiting or running, nor failed
    `failure_limit` times already. Returns how many were added."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    existing = [
        _trial_params(t) for t in trials if t.state in (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    ]
    added = 0
    for point in points:
        if any(same_params(point, other) for other in existing):
            continue
        if failure_limit is not None and error_failures(study, point) >= failure_limit:
            continue
        study.enqueue_trial(dict(point), skip_if_exists=False)
        existing.append(dict(point))
        added += 1
    return added


def datetime_now_iso() -> str:
    from datetime import datetime

    return datetime.now(UTC).isoformat(timespec="seconds")


INTERRUPTED = "INTERRUPTED"  # count_states' key for FAIL trials a signal stopped (failure_kind interrupted)


def is_interrupted(state: str, failure_kind: object) -> bool:
    """A trial stopped by Ctrl-C or SIGTERM: stored FAIL (Optuna has no other end state that
    gives the sampler no signal), queued again, and never counted as a failure."""
    return str(state).upper() == "FAIL" and failure_kind == "interrupted"


def count_states(study) -> dict[str, int]:
    """Trials per state name; FAIL trials that were interrupted count under INTERRUPTED, not FAIL."""
    counts: dict[str, int] = {}
    for trial in study.get_trials(deepcopy=False):
        name = trial.state.name
        if is_interrupted(name, trial.user_attrs.get(ATTR_FAILURE_KIND)):
            name = INTERRUPTED
        counts[name] = counts.get(name, 0) + 1
    return counts


@contextmanager
def study_lock(study_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the study folder for the whole run (released even on kill -9)."""
    study_dir.mkdir(parents=True, exist_ok=True)
    lock_file = study_dir / ".lock"
    handle = open(lock_file, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise SweepError(
            f"another `sweep run` is using {study_dir} right now (lock {lock_file}); "
            "wait for it to finish, or give this spec another name"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield
    finally:
        fcntl.flock(handle, fcntl.LOCK_UN)
        handle.close()


# ---------------------------------------------------------------- spec snapshot

SPEC_SNAPSHOT = "spec.json"


def spec_hash(spec: SweepSpec) -> str:
    """sha256 of the spec's content (paths resolved), stable across runs of the same file."""
    import hashlib

    return hashlib.sha256(spec.model_dump_json().encode()).hexdigest()


def save_spec_snapshot(spec: SweepSpec) -> Path:
    """<study_dir>/spec.json: what report, export and compare read back (no spec path needed)."""
    path = spec.study_dir / SPEC_SNAPSHOT
    path.parent.mkdir(parents=True, exist_ok=True)
    data = spec.model_dump(mode="json")
    if data.get("storage"):
        from sweep.config import mask_url

        data["storage"] = mask_url(data["storage"])  # never a password on disk
    payload = {"spec": data, "spec_path": spec.spec_path, "sha256": spec_hash(spec)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2))
    os.replace(tmp, path)
    return path


def load_study_dir(study_dir: str | Path) -> tuple[SweepSpec, pd.DataFrame]:
    """(spec, trials table) of a finished or running study folder. Raises SweepError when absent."""
    study_dir = Path(study_dir)
    snapshot, trials = study_dir / SPEC_SNAPSHOT, table.path(study_dir)
    if not study_dir.is_dir():
        raise SweepError(f"{study_dir}: no such study folder (expected <results_dir>/<name> of a `sweep run`)")
    for file in (snapshot, trials):
        if not file.exists():
            raise SweepError(f"{study_dir}: {file.name} is missing; is this the folder of a `sweep run`?")
    data = json.loads(snapshot.read_text())
    spec = spec_from_json(data["spec"])
    spec = spec.model_copy(update={"spec_path": data.get("spec_path")})
    return spec, table.read(study_dir)
