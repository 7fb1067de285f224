"""Asking the study for a trial tagged with its driver, and closing asks that were cut off.

- `ask_tagged` is `study.ask` with the trial tagged by this driver's id before it is RUNNING
  (in the same storage write for a new trial).
- `unlaunched` tells a RUNNING trial that no driver launched (an ask cut off by a storage
  error) from one in flight; `close_unlaunched` closes it PRUNED "not run" (no failure, not
  counted) and queues its fixed point again.

The storage writes go through sweep.study.optuna_compat.
"""

from __future__ import annotations

from sweep.study import optuna_compat
from sweep.study.durable import close_not_run
from sweep.study.records import ATTR_DRIVER

NOT_LAUNCHED = "not run: its proposal was cut off by a storage error before it was launched"


def ask_tagged(study, distributions: dict, driver: str, *, popping: set[int] | None = None, storage=None):
    """`study.ask(distributions)` with the trial tagged `driver` (user attr `driver`).

    Optuna's ask then a separate tag is two writes: a storage error between them (or a
    commit whose reply was lost) leaves a RUNNING trial that no driver owns. Here:
    - a new trial is created from a template that carries the tag: one transaction in
      RDBStorage, one log record in JournalStorage;
    - a queued (WAITING) point is popped (WAITING -> RUNNING, atomic in the storage: of two
      drivers popping it, one wins), then tagged. Its trial number is added to `popping`
      before the pop and left there while it is untagged, so that a storage error in between
      leaves a trial this driver knows to be its own.
    Then the sampler proposes each parameter, as in `study.ask`. A storage error at any step
    propagates; what it leaves RUNNING is this driver's and in no Tune trial's hands, and
    `StudySearcher.close_unlaunched` closes it as not run.
    `storage`: the study's storage (default: read from the study).
    """
    import optuna

    popping = set() if popping is None else popping
    storage = storage if storage is not None else optuna_compat.storage_of(study)
    optuna_compat.forget_cached_trials(study)  # as study.ask does: the sampler sees every trial told so far
    tag = {ATTR_DRIVER: driver}
    trial_id = optuna_compat.pop_waiting(storage, study, tag, popping=popping)
    if trial_id is None:
        trial_id = optuna_compat.create_running(storage, study, tag)
    trial = optuna.Trial(study, trial_id)
    for name, dist in distributions.items():
        if not isinstance(dist, optuna.distributions.FloatDistribution):
            raise TypeError(f"{name}: only float ranges are searched, got {dist!r}")
        trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial


def unlaunched(
    trial,
    *,
    me: str,
    in_flight: set[int],
    popping: set[int],
    leases: dict,
    own_grace_s: float,
    grace_s: float,
    now=None,
) -> bool:
    """Whether a RUNNING trial was proposed but never launched by any driver.

    - tagged `me` (or untagged, and its number in `popping`: this driver's pop of it broke
      off), not in flight here, and older than `own_grace_s`: this driver's ask broke off
      after the trial was written (a driver launches a trial only after its ask returned);
    - untagged, older than `grace_s`, and started after some driver of the study held a
      lease: every such driver tags before it launches. (An untagged trial from before
      leases existed is a real orphan: sweep.run.runner recovers it as such.)
    """
    from datetime import UTC, datetime

    from optuna.trial import TrialState

    if trial.state != TrialState.RUNNING:
        return False
    driver = trial.user_attrs.get(ATTR_DRIVER)
    if driver is None and trial.number in popping:
        driver = me
    if driver is not None and driver != me:
        return False
    if driver == me and trial.number in in_flight:
        return False
    start = trial.datetime_start
    if start is None:
        return driver == me
    if start.tzinfo is None:
        start = start.astimezone(UTC)
    age = ((now or datetime.now(UTC)) - start).total_seconds()
    if driver == me:
        return age >= own_grace_s
    return age > grace_s and any(info.started <= start.timestamp() for info in leases.values())


def close_unlaunched(study, trial, *, failure_limit: int | None = None, storage=None) -> bool:
    """Close a never-launched RUNNING trial PRUNED with a "not run" note (no failure, not
    counted), and queue its fixed point again. False if it finished meanwhile."""
    return close_not_run(study, trial, NOT_LAUNCHED, failure_limit=failure_limit, storage=storage)
