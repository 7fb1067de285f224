"""StudySearcher against a real Optuna storage (SQLite through RDBStorage, the code path of
PostgreSQL), with storage errors injected at exact points of the ask: what a PostgreSQL
outage does at random moments in tests/sweep/test_drivers.py, here on every run.

An ask cut off half-way must not leave a trial that a recovery later marks FAIL: the trial
was never launched, so it is closed PRUNED "not run" (not counted, not a failure), and a
queued point is queued again.
"""

from __future__ import annotations

import json
from datetime import UTC, timedelta

import pytest
import sqlalchemy.exc
from optuna.trial import TrialState

from sweep.run.asking import NOT_LAUNCHED
from sweep.run.search import RESULT_KEY, StudySearcher, error_text
from sweep.study.durable import open_study, space_distributions
from sweep.study.lease import Lease
from sweep.study.lease import is_orphan_fn as _is_orphan_fn
from sweep.study.recording import Recorder
from sweep.study.spool import Spool
from tests.sweep.test_study import make_spec, result

ME = "driver-under-test"


def outage() -> sqlalchemy.exc.OperationalError:
    return sqlalchemy.exc.OperationalError("UPDATE ...", {}, Exception("server closed the connection unexpectedly"))


def searcher_for(tmp_path, **kw) -> StudySearcher:
    spec = make_spec(tmp_path)
    study = open_study(spec)
    return StudySearcher(
        spec=spec,
        study=study,
        distributions=space_distributions(spec),
        driver=ME,
        recorder=Recorder(study, spec, Spool(spec.study_dir), retry_s=1.0),
        launch_cap=10,
        is_orphan=lambda trial: False,
        on_record=lambda *a, **k: None,
        own_stray_grace_s=0.0,
        **kw,
    )


def ask_again(searcher: StudySearcher, trial_id: str):
    searcher._next_poll = 0.0  # the storage is back: no need to wait out the 5 s back-off
    return searcher.suggest(trial_id)


def states(searcher: StudySearcher) -> list[tuple[int, str, str | None, str | None]]:
    return [
        (t.number, t.state.name, t.user_attrs.get("driver"), t.user_attrs.get("error"))
        for t in searcher.study.get_trials(deepcopy=False)
    ]


def fail_once(monkeypatch, storage, name: str, *, after_commit: bool) -> list[int]:
    """Make storage.<name> raise a connection error once: before it runs, or after it
    committed (the server did the work, the reply was lost)."""
    real = getattr(storage, name)
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            if after_commit:
                real(*args, **kwargs)
            raise outage()
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, name, flaky)
    return calls


def test_an_ask_cut_off_after_the_trial_was_written_is_closed_as_not_run(tmp_path, monkeypatch):
    searcher = searcher_for(tmp_path)
    calls = fail_once(monkeypatch, searcher.study._storage, "set_trial_param", after_commit=False)
    assert searcher.suggest("tune-1") is None  # the storage went away mid-ask: ask again later
    assert calls
    # The half-made trial carries this driver's tag from its first write: never an untagged RUNNING trial.
    assert states(searcher) == [(0, "RUNNING", ME, None)]

    params = ask_again(searcher, "tune-2")
    assert set(params) == {"alpha", "beta"}
    assert states(searcher) == [(0, "PRUNED", ME, NOT_LAUNCHED), (1, "RUNNING", ME, None)]
    assert searcher.study.trials[0].user_attrs["failure_kind"] == "skipped"

    # The launched trial finishes and is recorded; the run's end closes nothing else.
    payload = json.dumps({"result": result(params["alpha"], params["beta"], 0.9, 0.1).to_dict()})
    searcher.on_trial_complete("tune-2", {RESULT_KEY: payload})
    assert searcher.close_unlaunched(searcher.study.get_trials(deepcopy=False), final=True) == []
    assert [s[:2] for s in states(searcher)] == [(0, "PRUNED"), (1, "COMPLETE")]


def test_a_trial_created_but_its_reply_lost_is_closed_as_not_run(tmp_path, monkeypatch):
    searcher = searcher_for(tmp_path)
    fail_once(monkeypatch, searcher.study._storage, "create_new_trial", after_commit=True)
    assert searcher.suggest("tune-1") is None
    assert states(searcher) == [(0, "RUNNING", ME, None)]  # written, tagged, launched by nobody
    assert ask_again(searcher, "tune-2") is not None
    assert states(searcher) == [(0, "PRUNED", ME, NOT_LAUNCHED), (1, "RUNNING", ME, None)]


@pytest.mark.parametrize(
    ("call", "after_commit"),
    [("set_trial_state_values", True), ("set_trial_user_attr", False)],
    ids=["pop-reply-lost", "tag-after-pop-failed"],
)
def test_a_queued_point_popped_when_the_storage_failed_is_queued_again(tmp_path, monkeypatch, call, after_commit):
    searcher = searcher_for(tmp_path)
    fixed = {"alpha": 0.5, "beta": 1.0}
    searcher.study.enqueue_trial(fixed)
    fail_once(monkeypatch, searcher.study._storage, call, after_commit=after_commit)
    assert searcher.suggest("tune-1") is None
    assert states(searcher) == [(0, "RUNNING", None, None)]  # popped, not tagged: this driver knows its id
    assert ask_again(searcher, "tune-2") == fixed  # the same point, from the queue again
    assert states(searcher) == [(0, "PRUNED", None, NOT_LAUNCHED), (1, "RUNNING", ME, None)]
    assert searcher.study.trials[1].params == fixed


def test_the_runs_end_closes_its_cut_off_ask_as_not_run_however_young(tmp_path, monkeypatch):
    searcher = searcher_for(tmp_path)
    searcher.own_stray_grace_s = 3600.0  # during the run, a young stray waits (another driver may retag it)
    fail_once(monkeypatch, searcher.study._storage, "set_trial_param", after_commit=False)
    assert searcher.suggest("tune-1") is None
    assert ask_again(searcher, "tune-2") is not None
    assert [s[:2] for s in states(searcher)] == [(0, "RUNNING"), (1, "RUNNING")]
    assert searcher.close_unlaunched(searcher.study.get_trials(deepcopy=False), final=True) == [0]
    assert [s[:2] for s in states(searcher)] == [(0, "PRUNED"), (1, "RUNNING")]  # trial 1 is in flight


def test_an_untagged_running_trial_is_no_orphan_once_drivers_hold_leases(tmp_path):
    """A RUNNING trial with no driver tag, left by an older driver's two-step ask: never
    launched, so closed as not run, not marked FAIL. Before leases existed, such a trial
    was a real orphan and is still recovered as one."""
    searcher = searcher_for(tmp_path, grace_s=0.0)
    study = searcher.study
    untagged = study.ask(space_distributions(searcher.spec))  # no tag
    is_orphan = _is_orphan_fn(study, ME, grace_s=0.0)
    frozen = study.trials[untagged.number]
    assert is_orphan(frozen)  # no lease on the study yet: an orphan of a pre-lease driver

    lease = Lease(study, driver="other-driver")
    lease.started = (frozen.datetime_start.astimezone(UTC) - timedelta(seconds=5)).timestamp()
    lease.start()
    try:
        assert not _is_orphan_fn(study, ME, grace_s=0.0)(study.trials[untagged.number])
        assert ask_again(searcher, "tune-1") is not None
    finally:
        lease.end()
    trials = study.get_trials(deepcopy=False)
    assert (trials[0].state, trials[0].user_attrs["error"]) == (TrialState.PRUNED, NOT_LAUNCHED)
    assert not [t for t in trials if t.state == TrialState.FAIL]


class LostTrial:
    """What Tune hands the searcher for a trial whose worker vanished: an error file, maybe empty."""

    def __init__(self, error_file, error=None):
        self.error_file = str(error_file)
        self._error = error

    def get_error(self):
        return self._error


@pytest.mark.parametrize(
    ("error_file_text", "kind", "reason"),
    [
        ("", "infrastructure", "infrastructure: the Ray node or worker running this trial was lost (it ended"),
        ("\n  \n", "infrastructure", "infrastructure: the Ray node or worker running this trial was lost (it ended"),
        (
            "Traceback...\nActorDiedError: The actor died\n  because its node was lost",
            "infrastructure",
            "infrastructure: the Ray node or worker running this trial was lost (ActorDiedError",
        ),
        ("Traceback...\nValueError: bad tensor shape\n", "error", "ValueError: bad tensor shape"),
    ],
)
def test_a_trial_without_a_result_is_classified_on_tunes_error_text(tmp_path, error_file_text, kind, reason):
    error_file = tmp_path / "error.txt"
    error_file.write_text(error_file_text)
    assert (error_text(LostTrial(error_file)) is None) == (error_file_text.strip() == "")
    searcher = searcher_for(tmp_path)
    searcher.trial_objects["tune-1"] = LostTrial(error_file)
    assert searcher.suggest("tune-1") is not None
    searcher.on_trial_complete("tune-1", None, error=True)
    lost = searcher.study.trials[0]
    assert lost.state == TrialState.FAIL
    assert lost.user_attrs["failure_kind"] == kind
    assert lost.user_attrs["error"].startswith(reason)
    queued = [t for t in searcher.study.trials if t.state == TrialState.WAITING]
    assert len(queued) == (1 if kind == "infrastructure" else 0)  # a lost point runs again; a raised one not
