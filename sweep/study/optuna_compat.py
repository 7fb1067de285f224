"""The one module that reaches into Optuna's private attributes.

Optuna has no public way to get a study's storage, a trial's storage id, or to drop the
study's per-thread trial cache; the sweep needs all three to write a trial's state and tags
as single storage operations (see sweep.run.search.ask_tagged). Everything else goes
through Optuna's public API (`study.get_trials`, `study.tell`, `optuna.Trial`, the
`optuna.storages.BaseStorage` methods). An Optuna upgrade that moves these attributes
breaks this module only.

Writes take the storage explicitly: the study's own storage object, `storage_of(study)`. That
is not always the object given to `optuna.create_study`: Optuna wraps an RDBStorage in a
caching layer, and a trial written around that layer is unknown to it.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any


def storage_of(study) -> Any:
    """The `optuna.storages.BaseStorage` a study reads and writes (for an RDBStorage, Optuna's
    cache around it): the one to write the study's trials through."""
    return study._storage


def trial_id_of(trial) -> int:
    """The storage's id of a `FrozenTrial` or `optuna.Trial` (not its number)."""
    return int(trial._trial_id)


def trial_id_by_number(storage, study, number: int) -> int:
    """The storage's id of the study's trial `number`."""
    return storage.get_trial_id_from_study_id_trial_number(study._study_id, number)


def forget_cached_trials(study) -> None:
    """Drop the study's per-thread trial cache, as `study.ask` does, so that the sampler then
    sees every trial told so far."""
    local = getattr(study, "_thread_local", None)
    if local is not None:
        local.cached_all_trials = None


def close_trial(storage, trial, state, attrs: dict[str, Any]) -> bool:
    """Set `attrs` as user attrs of a RUNNING `trial`, then end it in `state` (FAIL, PRUNED).
    False when another process finished it meanwhile (UpdateFinishedTrialError)."""
    trial_id = trial_id_of(trial)
    try:
        for key, value in attrs.items():
            storage.set_trial_user_attr(trial_id, key, value)
        storage.set_trial_state_values(trial_id, state)
    except RuntimeError:  # UpdateFinishedTrialError: it finished meanwhile
        return False
    return True


def pop_waiting(storage, study, user_attrs: dict[str, Any], *, popping: set[int]) -> int | None:
    """Move the first WAITING (enqueued) trial that this process wins to RUNNING and tag it
    with `user_attrs`. Returns its trial id, or None when nothing is queued.

    The pop is atomic in the storage (of two drivers popping one trial, one wins); the tag is
    a second write. The trial's number is in `popping` from before the pop until it is
    tagged, so a storage error in between leaves a trial this process knows to be its own."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    for waiting in study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        popping.add(waiting.number)
        try:
            popped = storage.set_trial_state_values(trial_id_of(waiting), state=TrialState.RUNNING)
        except UpdateFinishedTrialError:
            popped = False
        if not popped:  # another driver popped it first (or finished it)
            popping.discard(waiting.number)
            continue
        for key, value in user_attrs.items():
            storage.set_trial_user_attr(trial_id_of(waiting), key, value)
        popping.discard(waiting.number)
        return trial_id_of(waiting)
    return None


def create_running(storage, study, user_attrs: dict[str, Any]) -> int:
    """A new RUNNING trial that carries `user_attrs` from its first write (one transaction in
    RDBStorage, one log record in JournalStorage). Returns its trial id."""
    from optuna.trial import FrozenTrial, TrialState

    template = FrozenTrial(
        number=0,  # the storage numbers it
        state=TrialState.RUNNING,
        value=None,
        values=None,
        datetime_start=datetime.now(),
        datetime_complete=None,
        params={},
        distributions={},
        user_attrs=dict(user_attrs),
        system_attrs={},
        intermediate_values={},
        trial_id=0,
    )
    return storage.create_new_trial(study._study_id, template_trial=template)
