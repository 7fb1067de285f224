"""Telling the study how a trial ended, without ever losing a finished result.

`Recorder.record(...)` writes the outcome to the spool (sweep.study.spool) first, then tells
the study, retrying with backoff while the storage is unreachable. `Recorder.replay()`
tells the study whatever an earlier run spooled but could not send.

`record_trial(...)` is the single write of one outcome: every metric, curve, timing,
constraint, the recipe, the retries, and a reason for a FAIL.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sweep.config import SweepSpec
from sweep.study import optuna_compat
from sweep.study.durable import datetime_now_iso, space_distributions
from sweep.study.records import (
    ATTR_CURVES,
    ATTR_ERROR,
    ATTR_FAILURE_KIND,
    ATTR_FINISHED,
    ATTR_METRICS,
    ATTR_NOTES,
    ATTR_RAY_TRIAL_ID,
    ATTR_RECIPE,
    ATTR_RETRIES,
    ATTR_TIMINGS,
    ATTR_WORKER,
    TrialResult,
)

log = logging.getLogger("sweep")

# Constraint value recorded when the constrained metric is missing: clearly infeasible.
MISSING_CONSTRAINT_VIOLATION = 1e6
DASHBOARD_CONSTRAINTS_KEY = "constraints"
# seconds: how long one outcome is retried against an unreachable storage before it is
# left in the spool for the next run (which replays it first)
DEFAULT_RETRY_S = 600.0


def storage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean 'the storage is unreachable right now' (worth a retry)."""
    import optuna

    errors: list[type[BaseException]] = [optuna.exceptions.StorageInternalError, OSError, ConnectionError, TimeoutError]
    try:
        import sqlalchemy.exc

        errors += [sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.DisconnectionError]
    except ImportError:  # pragma: no cover - optuna depends on sqlalchemy
        pass
    return tuple(errors)


def with_retry(
    fn: Callable[[], Any], *, what: str, deadline_s: float = DEFAULT_RETRY_S, redact: Callable[[str], str] = str
) -> Any:
    """fn(), retried with exponential backoff (0.5 s doubling to 15 s, jittered) on storage errors."""
    errors = storage_errors()
    started = time.monotonic()
    delay = 0.5
    attempt = 0
    while True:
        try:
            return fn()
        except errors as exc:
            attempt += 1
            if time.monotonic() - started + delay > deadline_s:
                raise
            log.warning(
                "%s: storage unreachable (%s); retry %d in %.1f s",
                what,
                redact(str(exc).splitlines()[0] if str(exc) else type(exc).__name__),
                attempt,
                delay,
            )
            time.sleep(delay * random.uniform(0.8, 1.2))
            delay = min(delay * 2, 15.0)


def record_trial(
    study,
    trial,
    spec: SweepSpec,
    result: TrialResult | None,
    *,
    error: str | None,
    ray_trial_id: str | None,
    kind: str | None = None,
    retries: list[str] | None = None,
    recipe: dict | None = None,
) -> str:
    """Tell the study how `trial` (an optuna Trial, or a trial number) ended. Returns the state told.

    A result whose trial the study already closed (for example, marked orphaned by a
    driver that believed this one dead) is added as a new trial with the same params,
    unless a COMPLETE trial with those params exists: a measured result is never dropped.
    """
    import optuna
    from optuna.trial import TrialState

    storage = optuna_compat.storage_of(study)
    number = trial if isinstance(trial, int) else trial.number
    trial_id = optuna_compat.trial_id_by_number(storage, study, number)
    frozen = storage.get_trial(trial_id)
    attrs: dict[str, Any] = {ATTR_RAY_TRIAL_ID: ray_trial_id, ATTR_FINISHED: datetime_now_iso()}
    if recipe is not None:
        attrs[ATTR_RECIPE] = recipe
    if retries:
        attrs[ATTR_RETRIES] = list(retries)
    constraints: dict[str, float] = {}
    values: list[float] | None = None  # the objectives, only when every one was produced
    if result is None:
        attrs[ATTR_ERROR] = error or "the trial ended without a result"
        attrs[ATTR_FAILURE_KIND] = kind or "error"
    else:
        attrs.update(
            {
                ATTR_METRICS: result.metrics,
                ATTR_CURVES: result.curves,
                ATTR_TIMINGS: result.timings,
                ATTR_WORKER: result.worker,
                ATTR_NOTES: result.notes,
            }
        )
        for constraint in spec.constraints:
            violation = constraint.violation_in(result.metrics)
            constraints[str(constraint)] = MISSING_CONSTRAINT_VIOLATION if violation is None else violation
        produced = [result.metrics.get(name) for name in spec.objective_names]
        missing = [name for name, value in zip(spec.objective_names, produced, strict=True) if value is None]
        if missing:
            attrs[ATTR_ERROR] = f"objective(s) not produced: {', '.join(missing)}"
            attrs[ATTR_FAILURE_KIND] = "error"
        else:
            values = [value for value in produced if value is not None]  # none is None here

    if frozen.state.is_finished():
        if values is None or _has_complete(study, frozen.params):
            log.warning(
                "trial %d was already %s in the study; its outcome here is not added again", number, frozen.state.name
            )
            return frozen.state.name
        log.warning(
            "trial %d was already %s in the study; its result is added as a new trial", number, frozen.state.name
        )
        added = optuna.trial.create_trial(
            params=dict(frozen.params),
            distributions=dict(frozen.distributions) or space_distributions(spec),
            values=values,
            user_attrs=attrs | {"replaces_trial": number},
            constraints=constraints or None,
            system_attrs={DASHBOARD_CONSTRAINTS_KEY: list(constraints.values())} if constraints else None,
        )
        study.add_trial(added)
        return "COMPLETE"

    for key, value in attrs.items():
        storage.set_trial_user_attr(trial_id, key, value)
    ot_trial = optuna.trial.Trial(study, trial_id)
    for name, value in constraints.items():
        ot_trial.set_constraint(name, value)
    if constraints:
        # The older list form too: optuna-dashboard 0.21 reads only `constraints` (a list)
        # to show them and to keep infeasible trials off its best trials.
        storage.set_trial_system_attr(trial_id, DASHBOARD_CONSTRAINTS_KEY, list(constraints.values()))
    if values is None:
        study.tell(number, state=TrialState.FAIL)
        return "FAIL"
    study.tell(number, values)
    return "COMPLETE"


def _has_complete(study, params: dict) -> bool:
    from optuna.trial import TrialState

    from sweep.study.durable import same_params

    return any(same_params(t.params, params) for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


class Recorder:
    """Spool, then tell with retries. One per run."""

    def __init__(
        self, study, spec: SweepSpec, spool, *, redact: Callable[[str], str] = str, retry_s: float = DEFAULT_RETRY_S
    ):
        self.study = study
        self.spec = spec
        self.spool = spool
        self.redact = redact
        self.retry_s = retry_s

    def record(
        self,
        *,
        number: int,
        params: dict,
        result: TrialResult | None,
        error: str | None,
        ray_trial_id: str | None,
        kind: str | None = None,
        retries: list[str] | None = None,
        recipe: dict | None = None,
    ) -> str | None:
        """The state told (COMPLETE / FAIL), or None when the storage stayed unreachable (kept in the spool)."""
        entry = {
            "trial_number": number,
            "params": params,
            "result": result.to_dict() if result else None,
            "error": error,
            "ray_trial_id": ray_trial_id,
            "kind": kind,
            "retries": retries or [],
            "recipe": recipe,
        }
        key = self.spool.add(entry)
        return self._send(key, entry)

    def _send(self, key: str, entry: dict) -> str | None:
        result = TrialResult.from_dict(entry["result"]) if entry.get("result") else None
        try:
            state = with_retry(
                lambda: record_trial(
                    self.study,
                    int(entry["trial_number"]),
                    self.spec,
                    result,
                    error=entry.get("error"),
                    ray_trial_id=entry.get("ray_trial_id"),
                    kind=entry.get("kind"),
                    retries=entry.get("retries"),
                    recipe=entry.get("recipe"),
                ),
                what=f"recording trial {entry['trial_number']}",
                deadline_s=self.retry_s,
                redact=self.redact,
            )
        except storage_errors() as exc:
            log.error(
                "trial %s: the storage stayed unreachable; its outcome is kept in %s and sent by the next run (%s)",
                entry["trial_number"],
                self.spool.path,
                self.redact(str(exc).splitlines()[0] if str(exc) else ""),
            )
            return None
        self.spool.done(key)
        return state

    def replay(self) -> list[int]:
        """Send what an earlier run spooled but could not tell. Returns the trial numbers sent."""
        sent = []
        for entry in self.spool.pending():
            if self._send(entry["key"], entry) is not None:
                sent.append(int(entry["trial_number"]))
        if sent:
            log.warning("replayed %d spooled result(s) into the study: trials %s", len(sent), sent)
        self.spool.compact()
        return sent
