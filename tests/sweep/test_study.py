"""The durable study: orphans, enqueued points, directions, the run lock, the trials table."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest

from sweep.config import parse_spec
from sweep.errors import SweepError
from sweep.run.runner import record_trial
from sweep.study.durable import enqueue_points, open_study, recover_orphans, study_lock
from sweep.study.records import TrialResult
from sweep.study.table import build as trials_table
from sweep.study.table import write as write_table

SPEC = """
name: unit
models: {pretrained: /m/p, instruct: /m/i, reasoning: /m/r}
evals:
  probe: {prompts: /m/prompts.jsonl}
objectives:
  - {metric: probe/length_retention, direction: maximize}
  - {metric: probe/reward_dip, direction: minimize}
constraints: ["probe/length_retention >= 0.5"]
"""


DISTS = {"alpha": optuna.distributions.FloatDistribution(0, 1), "beta": optuna.distributions.FloatDistribution(0, 1)}


def make_spec(tmp_path: Path, text: str = SPEC):
    return parse_spec(text + f"\nresults_dir: {tmp_path}\n", base_dir=tmp_path)


def result(alpha: float, beta: float, retention: float, dip: float | None) -> TrialResult:
    return TrialResult(
        params={"alpha": alpha, "beta": beta},
        metrics={"probe/length_retention": retention, "probe/reward_dip": dip},
        curves={"response_length/mean": [10.0, 8.0]},
        timings={"total_s": 1.5},
        worker={"host": "h", "pid": 1},
    )


def test_orphans_become_fail_with_reason_and_are_requeued(tmp_path):
    spec = make_spec(tmp_path)
    study = open_study(spec)
    trial = study.ask(DISTS)
    params = dict(trial.params)
    assert recover_orphans(study) == [trial.number]
    frozen = study.trials[trial.number]
    assert frozen.state.name == "FAIL" and "orphaned" in frozen.user_attrs["error"]
    waiting = [t for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 1 and waiting[0].system_attrs["fixed_params"] == params
    assert recover_orphans(study) == []  # idempotent


def test_an_orphan_its_driver_never_finished_proposing_is_closed_as_not_run(tmp_path):
    # A driver killed between creating a trial and proposing its last parameter leaves a
    # RUNNING trial with part of its params: it was never launched, so it is no failure, and
    # its partial params are no point to rerun; a queued fixed point it had popped is queued again.
    study = open_study(make_spec(tmp_path))
    partial = study.ask()
    partial.suggest_float("alpha", 0, 1)
    study.enqueue_trial({"alpha": 0.25, "beta": 0.5})
    popped = study.ask()  # the fixed point, popped; no parameter proposed yet
    launched = study.ask(DISTS)
    assert recover_orphans(study, space=DISTS) == [launched.number]
    trials = study.get_trials(deepcopy=False)
    for number in (partial.number, popped.number):
        assert trials[number].state.name == "PRUNED"
        assert trials[number].user_attrs["failure_kind"] == "skipped"
        assert "before it was launched" in trials[number].user_attrs["error"]
    assert trials[launched.number].state.name == "FAIL"
    waiting = [t.system_attrs["fixed_params"] for t in trials if t.state.name == "WAITING"]
    assert waiting == [{"alpha": 0.25, "beta": 0.5}, dict(launched.params)]


def test_enqueue_skips_points_already_complete_or_waiting(tmp_path):
    spec = make_spec(tmp_path)
    study = open_study(spec)
    assert enqueue_points(study, [{"alpha": 0.5, "beta": 1.0}, {"alpha": 0.0, "beta": 1.0}]) == 2
    assert enqueue_points(study, [{"alpha": 0.5, "beta": 1.0}]) == 0
    trial = study.ask(DISTS)
    assert trial.params == {"alpha": 0.5, "beta": 1.0}  # the enqueued point comes first
    record_trial(
        study, trial, spec, result(trial.params["alpha"], trial.params["beta"], 0.9, 0.1), error=None, ray_trial_id="t0"
    )
    assert enqueue_points(study, [{"alpha": 0.5, "beta": 1.0}, {"alpha": 0.0, "beta": 1.0}]) == 0


def test_record_trial_values_constraints_and_failures(tmp_path):
    spec = make_spec(tmp_path)
    study = open_study(spec)
    enqueue_points(
        study,
        [
            {"alpha": 0.1, "beta": 1.0},
            {"alpha": 0.2, "beta": 1.0},
            {"alpha": 0.3, "beta": 1.0},
            {"alpha": 0.4, "beta": 1.0},
        ],
    )
    ok, bad, missing, crashed = (study.ask(DISTS) for _ in range(4))
    record_trial(study, ok, spec, result(0.1, 1.0, 0.9, 0.2), error=None, ray_trial_id="a")
    record_trial(study, bad, spec, result(0.2, 1.0, 0.3, 0.0), error=None, ray_trial_id="b")
    record_trial(study, missing, spec, result(0.3, 1.0, 0.8, None), error=None, ray_trial_id="c")
    record_trial(study, crashed, spec, None, error="RuntimeError: boom", ray_trial_id="d")
    trials = study.trials
    assert trials[0].state.name == "COMPLETE" and trials[0].values == [0.9, 0.2]
    assert trials[1].state.name == "COMPLETE"
    assert trials[1].system_attrs["constraints:probe/length_retention >= 0.5"] == pytest.approx(0.2)
    assert trials[2].state.name == "FAIL" and "probe/reward_dip" in trials[2].user_attrs["error"]
    assert trials[3].state.name == "FAIL" and trials[3].user_attrs["error"] == "RuntimeError: boom"
    assert [t.number for t in study.best_trials] == [0]  # the infeasible trial is off the front

    write_table(study, spec)
    table = pd.read_parquet(spec.study_dir / "trials.parquet")
    assert list(table["state"]) == ["COMPLETE", "COMPLETE", "FAIL", "FAIL"]
    assert list(table["feasible"]) == [True, False, False, False]
    assert table.loc[0, "probe/length_retention"] == 0.9 and table.loc[1, "constraint_violation"] == pytest.approx(0.2)
    assert table.loc[3, "error"] == "RuntimeError: boom"
    assert '"response_length/mean": [10.0, 8.0]' in table.loc[0, "curves"]
    csv = pd.read_csv(spec.study_dir / "trials.csv")
    assert len(csv) == 4 and "curves" not in csv.columns


def test_existing_study_with_other_objectives_is_refused(tmp_path):
    spec = make_spec(tmp_path)
    open_study(spec)
    other = make_spec(tmp_path, SPEC.replace("direction: minimize", "direction: maximize"))
    with pytest.raises(SweepError, match="was created with objectives"):
        open_study(other)


def test_a_second_driver_is_refused_while_the_first_holds_the_lock(tmp_path):
    with study_lock(tmp_path / "s"):
        with pytest.raises(SweepError, match="another `sweep run` is using"):
            with study_lock(tmp_path / "s"):
                pass
    with study_lock(tmp_path / "s"):  # released
        pass


def test_journal_storage(tmp_path):
    spec = make_spec(tmp_path, SPEC + f"storage: {tmp_path / 'study.journal'}\n")
    study = open_study(spec)
    enqueue_points(study, [{"alpha": 0.5, "beta": 1.0}])
    assert (tmp_path / "study.journal").exists()
    assert trials_table(study, spec).empty
