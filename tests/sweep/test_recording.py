"""The spool: a finished result is on disk before the study is told, and a later run sends
what an earlier one could not."""

from __future__ import annotations

import json

from sweep.study.durable import open_study, recover_orphans
from sweep.study.recording import Recorder
from sweep.study.spool import Spool
from tests.sweep.test_study import DISTS, make_spec, result


def test_a_spooled_result_is_replayed_into_the_study(tmp_path):
    spec = make_spec(tmp_path)
    study = open_study(spec)
    trial = study.ask(DISTS)
    spool = Spool(spec.study_dir)
    # An earlier run finished the trial, wrote the spool, then lost the storage and died.
    spool.add(
        {
            "trial_number": trial.number,
            "params": trial.params,
            "ray_trial_id": "r1",
            "result": result(trial.params["alpha"], trial.params["beta"], 0.9, 0.1).to_dict(),
        }
    )
    assert len(spool.pending()) == 1
    assert Recorder(study, spec, spool).replay() == [trial.number]
    frozen = study.trials[trial.number]
    assert frozen.state.name == "COMPLETE" and frozen.values == [0.9, 0.1]
    assert spool.pending() == [] and not spool.path.exists()


def test_a_result_whose_trial_was_closed_meanwhile_is_added_not_lost(tmp_path):
    spec = make_spec(tmp_path)
    study = open_study(spec)
    trial = study.ask(DISTS)
    params = dict(trial.params)
    recover_orphans(study)  # another driver believed this one dead: FAIL, params queued again
    recorder = Recorder(study, spec, Spool(spec.study_dir))
    state = recorder.record(
        number=trial.number,
        params=params,
        result=result(params["alpha"], params["beta"], 0.8, 0.2),
        error=None,
        ray_trial_id="r2",
    )
    assert state == "COMPLETE"
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert (
        len(complete) == 1 and complete[0].params == params and complete[0].user_attrs["replaces_trial"] == trial.number
    )
    assert complete[0].constraints  # constraints came along
    # Told once: recording it again adds nothing.
    recorder.record(
        number=trial.number,
        params=params,
        result=result(params["alpha"], params["beta"], 0.8, 0.2),
        error=None,
        ray_trial_id="r2",
    )
    assert sum(t.state.name == "COMPLETE" for t in study.trials) == 1


def test_a_torn_last_line_is_ignored(tmp_path):
    spool = Spool(tmp_path)
    key = spool.add({"trial_number": 1})
    with open(spool.path, "a") as handle:
        handle.write('{"key": "x", "trial_')  # a crash mid-write
    assert [e["key"] for e in spool.pending()] == [key]
    assert json.loads(spool.path.read_text().splitlines()[0])["trial_number"] == 1
