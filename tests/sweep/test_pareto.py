"""Pareto maths: hand-computed fronts, hypervolumes and balanced points, and agreement
with a real Optuna study's `best_trials`."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sweep.config import ConstraintSpec
from sweep.errors import SweepError
from sweep.report.balanced import BalancedPoint, balanced_point
from sweep.report.front import hypervolume, hypervolume_history, pareto_front, pareto_mask, reference_point
from sweep.report.summary import ParetoSummary, summarize

A, B, C = "lm_eval/toy/exact_match,final", "probe/length_retention", "probe/reward_dip"
MAX2 = [(A, "maximize"), (B, "maximize")]


def Constraint(metric: str, op: str, value: float) -> ConstraintSpec:
    """The spec's own constraint record, as the runner passes it."""
    return ConstraintSpec(metric=metric, op=op, value=value)


def table(rows: list[dict]) -> pd.DataFrame:
    """A trials table the way the runner writes it, from short rows."""
    out = []
    for i, row in enumerate(rows):
        full = {
            "number": i,
            "state": "COMPLETE",
            "error": None,
            "params/alpha": 0.1 * i,
            "params/beta": 1.0,
            "feasible": True,
            "constraint_violation": -1.0,
            "curves": "{}",
        }
        full.update(row)
        out.append(full)
    return pd.DataFrame(out)


# ---------------------------------------------------------------- hypervolume


def test_hypervolume_2d_staircase_by_hand():
    # Maximize both from reference (0, 0): boxes [0,1]x[0,3], [0,2]x[0,2], [0,3]x[0,1].
    # Union = 3 + 2 + 1 = 6; the dominated point (1, 1) and a point outside the box add nothing.
    pts = np.array([[1, 3], [2, 2], [3, 1], [1, 1], [-1, 5]], dtype=float)
    assert hypervolume(pts, directions=["maximize", "maximize"], reference=[0, 0]) == pytest.approx(6.0)
    # Mixed directions: minimize the first column (negate it, reference 0 stays 0).
    mixed = pts * np.array([-1, 1])
    assert hypervolume(mixed, directions=["minimize", "maximize"], reference=[0, 0]) == pytest.approx(6.0)


def test_hypervolume_3d_by_hand():
    # Minimize; reference (1, 1, 1). Box of (0, 0, 0.5): 1*1*0.5 = 0.5; of (0.5, 0.5, 0):
    # 0.5*0.5*1 = 0.25; overlap [0.5,1]^3 = 0.125. Union = 0.625.
    pts = np.array([[0, 0, 0.5], [0.5, 0.5, 0]])
    assert hypervolume(pts, directions=["minimize"] * 3, reference=[1, 1, 1]) == pytest.approx(0.625)
    one = np.array([[0.0, 0.0, 0.0]])
    assert hypervolume(one, directions=["minimize"] * 3, reference=[2, 3, 4]) == pytest.approx(24.0)
    assert hypervolume(np.empty((0, 3)), directions=["minimize"] * 3, reference=[1, 1, 1]) == 0.0


@pytest.mark.parametrize("dims", [2, 3])
def test_hypervolume_matches_optuna_on_random_fronts(dims):
    from optuna._hypervolume import compute_hypervolume  # private: a cross-check only

    rng = np.random.default_rng(dims)
    for _ in range(25):
        pts = rng.random((int(rng.integers(1, 20)), dims))
        pts[: len(pts) // 3] = pts[0]  # duplicates too
        ref = np.full(dims, 1.2)
        ours = hypervolume(pts, directions=["minimize"] * dims, reference=ref)
        assert ours == pytest.approx(compute_hypervolume(pts, ref), rel=1e-12, abs=1e-12)


def test_default_reference_point_is_worst_minus_a_tenth_of_the_span():
    values = np.array([[0.2, 1.0, 0.5], [0.8, 3.0, 0.5], [np.nan, 9.0, 9.0]])
    ref = reference_point(values, directions=["maximize", "minimize", "maximize"])
    # 0.2 - 0.1*0.6; 3 + 0.1*2; a constant column moves by 0.1 * max(1, |0.5|).
    assert ref == pytest.approx((0.14, 3.2, 0.4))


# ---------------------------------------------------------------- front


def test_front_keeps_only_complete_feasible_finite_trials():
    trials = table(
        [
            {A: 0.5, B: 0.5},  # 0: front
            {A: 0.9, B: 0.9, "state": "FAIL", "error": "boom"},  # 1: failed
            {A: 1.0, B: 1.0, "feasible": False},  # 2: infeasible, dominates everything
            {A: 0.2, B: 0.8},  # 3: front
            {A: 0.2, B: 0.4},  # 4: dominated by 0
            {A: 0.99, B: np.nan},  # 5: missing objective
            {A: 0.5, B: 0.5},  # 6: duplicate of 0, also on the front (as in Optuna)
            {A: 0.95, B: 0.95, "state": "RUNNING"},
        ]
    )
    assert list(pareto_front(trials, MAX2)["number"]) == [0, 3, 6]


def test_front_is_empty_when_no_trial_is_feasible():
    trials = table([{A: 1.0, B: 1.0, "feasible": False}, {A: 0.1, B: 0.1, "feasible": False}])
    assert not pareto_mask(trials, MAX2).any()
    summary = summarize(trials, MAX2)
    assert summary.front_numbers == () and summary.balanced is None
    assert summary.hypervolume == 0.0


def test_feasibility_comes_from_constraints_when_the_column_is_missing():
    trials = table([{A: 1.0, B: 0.3}, {A: 0.5, B: 0.6}]).drop(columns=["feasible"])
    keep = [Constraint(B, ">=", 0.5)]
    assert list(pareto_front(trials, MAX2, keep)["number"]) == [1]


def _optuna_study_and_table(seed: int, n: int, dims: int, constrained: bool):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    directions = ["maximize", "minimize", "maximize"][:dims]
    names = [A, B, C][:dims]
    study = optuna.create_study(directions=directions, sampler=optuna.samplers.RandomSampler(seed=seed))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        trial = study.ask()
        alpha, beta = trial.suggest_float("alpha", 0, 1), trial.suggest_float("beta", 0.5, 1)
        # Coarse values so that ties and duplicates happen.
        values = [round(float(v), 1) for v in rng.random(dims)]
        violation = round(float(rng.normal(-0.2, 0.5)), 2)
        row = {"number": trial.number, "params/alpha": alpha, "params/beta": beta, "error": None, "curves": "{}"}
        row |= dict(zip(names, values, strict=True))
        if rng.random() < 0.15:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            row |= {"state": "FAIL", "error": "planted failure", "feasible": False, "constraint_violation": np.nan}
            row |= {k: np.nan for k in names}
        else:
            if constrained:
                trial.set_constraint("length", violation)
            study.tell(trial, values)
            feasible = violation <= 0 if constrained else True
            row |= {"state": "COMPLETE", "feasible": feasible, "constraint_violation": violation}
        rows.append(row)
    return study, pd.DataFrame(rows), list(zip(names, directions, strict=True))


@pytest.mark.parametrize("dims,constrained", [(2, True), (3, True), (2, False), (3, False)])
def test_front_equals_optuna_best_trials(dims, constrained):
    for seed in range(6):
        study, trials, objectives = _optuna_study_and_table(seed, 40, dims, constrained)
        ours = sorted(pareto_front(trials, objectives)["number"])
        theirs = sorted(t.number for t in study.best_trials)
        assert ours == theirs, f"seed {seed}"


# ---------------------------------------------------------------- history


def test_hypervolume_history_steps_only_when_the_front_grows():
    trials = table(
        [
            {A: 1.0, B: 1.0},  # 0 -> 1
            {A: 9.0, B: 9.0, "state": "FAIL"},  # 1 -> 1 (failed)
            {A: 2.0, B: 0.5},  # 2 -> 1 + 1*0.5 = 1.5
            {A: 5.0, B: 5.0, "feasible": False},  # 3 -> 1.5 (infeasible)
            {A: 0.5, B: 0.5},  # 4 -> 1.5 (dominated)
            {A: 0.5, B: 3.0},  # 5 -> 1.5 + 0.5*2 = 2.5
        ]
    )
    history = hypervolume_history(trials, MAX2, reference=(0.0, 0.0))
    assert list(history["number"]) == [0, 1, 2, 3, 4, 5]
    assert list(history["hypervolume"]) == pytest.approx([1.0, 1.0, 1.5, 1.5, 1.5, 2.5])


def test_incremental_history_equals_recomputing_from_scratch():
    rng = np.random.default_rng(3)
    rows = []
    for k in range(60):
        x = rng.random(3)
        rows.append(
            {
                A: round(float(x[0]), 2),
                B: round(float(x[1]), 2),
                C: round(float(x[2]), 2),
                "state": "FAIL" if k % 7 == 3 else "COMPLETE",
                "feasible": k % 5 != 2,
            }
        )
    trials = table(rows).sample(frac=1.0, random_state=0)  # row order must not matter, numbers do
    objectives = [(A, "maximize"), (B, "minimize"), (C, "maximize")]
    ref = (0.0, 1.1, 0.0)
    history = hypervolume_history(trials, objectives, reference=ref)
    by_number = trials.set_index("number").sort_index()
    for number, volume in zip(history["number"], history["hypervolume"], strict=True):
        upto = by_number.loc[:number].reset_index()
        assert volume == pytest.approx(summarize(upto, objectives, reference=ref).hypervolume, abs=1e-12)
    assert history["hypervolume"].is_monotonic_increasing


# ---------------------------------------------------------------- balanced point

FRONT_2D = [{A: 0.0, B: 1.0}, {A: 0.3, B: 0.95}, {A: 0.6, B: 0.6}, {A: 1.0, B: 0.0}]


def test_balanced_rules_on_a_hand_computed_2d_front():
    front = pareto_front(table(FRONT_2D), MAX2)
    assert len(front) == 4
    # maximin: min(u) = 0, 0.3, 0.6, 0 -> trial 2.
    point = balanced_point(front, MAX2)
    assert (point.number, point.rule, point.score) == (2, "maximin", pytest.approx(0.6))
    assert point.params == {"alpha": pytest.approx(0.2), "beta": 1.0}
    assert point.metrics[A] == 0.6 and point.metrics[B] == 0.6
    # knee: distance beyond the line u1 + u2 = 1 through the extremes: 0, 0.25, 0.2, 0 (/sqrt 2) -> trial 1.
    knee = balanced_point(front, MAX2, rule="knee")
    assert knee.number == 1 and knee.score == pytest.approx(0.25 / math.sqrt(2))
    # weighted: (1*u1 + 3*u2) / 4 = 0.75, 0.7875, 0.6, 0.25 -> 1; weights (3, 1) -> 3.
    assert balanced_point(front, MAX2, rule="weighted", weights={A: 1, B: 3}).number == 1
    assert balanced_point(front, MAX2, rule="weighted", weights=[3, 1]).number == 3


def test_balanced_rules_on_a_hand_computed_3d_front():
    objectives = [(A, "maximize"), (B, "maximize"), (C, "maximize")]
    rows = [
        {A: 1.0, B: 0.0, C: 0.5},  # 0
        {A: 0.0, B: 1.0, C: 0.5},  # 1
        {A: 0.5, B: 0.5, C: 0.0},  # 2: dominated by 4
        {A: 0.4, B: 0.4, C: 1.0},  # 3
        {A: 0.6, B: 0.6, C: 0.6},  # 4
    ]
    front = pareto_front(table(rows), objectives)
    assert list(front["number"]) == [0, 1, 3, 4]
    # Normalized over the front (C spans 0.5..1): 0 -> (1,0,0), 1 -> (0,1,0), 3 -> (.4,.4,1), 4 -> (.6,.6,.2).
    # maximin: 0, 0, 0.4, 0.2 -> trial 3.
    assert balanced_point(front, objectives).number == 3
    # knee: plane through the anchors is u1 + u2 + 0.2 u3 = 1; beyond it: 0, 0, 0, 0.24 -> trial 4.
    knee = balanced_point(front, objectives, rule="knee")
    assert knee.number == 4 and knee.score == pytest.approx(0.24 / math.sqrt(2.04))


def test_a_two_point_front_is_scaled_by_the_trials_not_by_itself():
    """The demo sweep's front on the shipped family: one point that cannot add but keeps
    its length, one that adds and keeps most of it. Normalized over the front alone both
    score 0 under maximin and the trial number decides; scaled by every eligible trial,
    the one that adds scores (0.807 - 0.656) / (1.054 - 0.656) = 0.38 and wins."""
    rows = [
        {A: 0.0, B: 0.993},  # 0: the instruct member
        {A: 1.0, B: 0.656},  # 1: the reasoning member
        {A: 0.0, B: 1.054},  # 2: front, cannot add
        {A: 1.0, B: 0.807},  # 3: front, adds
    ]
    trials = table(rows)
    front = pareto_front(trials, MAX2)
    assert list(front["number"]) == [2, 3]
    assert balanced_point(front, MAX2).number == 2  # front-only scaling: a tie, the lower number
    point = balanced_point(front, MAX2, trials=trials)
    assert point.number == 3 and point.score == pytest.approx((0.807 - 0.656) / (1.054 - 0.656))
    assert summarize(trials, MAX2).balanced.number == 3  # what report and run print


def test_balanced_point_ties_go_to_the_lower_trial_number():
    front = pareto_front(table([{A: 0.5, B: 0.5}, {A: 0.5, B: 0.5}]), MAX2)
    assert balanced_point(front, MAX2).number == 0
    assert balanced_point(front.iloc[:0], MAX2) is None


@pytest.mark.parametrize(
    "rule,weights,message",
    [
        ("best", None, "unknown balanced-point rule 'best'; choose one of knee, maximin, weighted"),
        ("weighted", {A: 1, "probe/typo": 2}, "weights name metrics that are not objectives: probe/typo"),
        ("weighted", {A: 1}, f"weights are missing for: {B}"),
        ("weighted", [1, -1], "weights must be finite, >= 0 and not all 0"),
        ("weighted", [1, 2, 3], "3 weights given for 2 objectives"),
        ("maximin", [1, 2], "weights are used by the 'weighted' rule only"),
    ],
)
def test_bad_rules_and_weights_are_user_errors(rule, weights, message):
    with pytest.raises(SweepError, match=message.replace("(", r"\(").replace(")", r"\)")):
        summarize(table(FRONT_2D), MAX2, rule=rule, weights=weights)


def test_summary_round_trips_through_json():
    trials = table(FRONT_2D + [{A: 0.9, B: 0.9, "state": "FAIL", "error": "x"}])
    summary = summarize(trials, MAX2, reference=(0.0, 0.0))
    assert summary.front_numbers == (0, 1, 2, 3)
    # From (0, 0) the points (0, 1) and (1, 0) have zero-width boxes; (0.3, 0.95) and
    # (0.6, 0.6) give 0.3 * 0.95 + (0.6 - 0.3) * 0.6 = 0.465.
    assert summary.hypervolume == pytest.approx(0.465)
    assert (summary.n_trials, summary.n_complete, summary.n_failed, summary.n_feasible) == (5, 4, 1, 4)
    again = ParetoSummary.from_json(summary.to_json())
    assert again == summary and isinstance(again.balanced, BalancedPoint)
    with pytest.raises(SweepError, match="one finite number per objective"):
        summarize(trials, MAX2, reference=(0.0,))


def test_front_of_the_runners_parquet_table_equals_best_trials(tmp_path):
    """Through the real recording path: record_trial into a durable study, the table
    written to trials.parquet, read back; the front must be Optuna's best_trials."""
    import optuna

    from sweep.config import parse_spec
    from sweep.run.runner import record_trial
    from sweep.study.durable import open_study
    from sweep.study.records import TrialResult
    from sweep.study.table import write as write_table

    text = f"""
name: pareto-check
models: {{pretrained: /m/p, instruct: /m/i, reasoning: /m/r}}
evals:
  lm_eval: {{search_tasks: [toy]}}
  probe: {{prompts: /m/prompts.jsonl}}
objectives:
  - {{metric: "{A}", direction: maximize}}
  - {{metric: probe/length_retention, direction: maximize}}
  - {{metric: probe/reward_dip, direction: minimize}}
constraints: ["probe/length_retention >= 0.4"]
results_dir: {tmp_path}
"""
    spec = parse_spec(text, base_dir=tmp_path)
    study = open_study(spec, storage=optuna.storages.InMemoryStorage())  # SQLite costs ~0.4 s per trial on a busy disk
    dists = {
        "alpha": optuna.distributions.FloatDistribution(0, 1),
        "beta": optuna.distributions.FloatDistribution(0.5, 1),
    }
    rng = np.random.default_rng(7)
    for k in range(30):
        trial = study.ask(dists)
        metrics = {A: round(float(rng.random()), 1), B: round(float(rng.random()), 1), C: round(float(rng.random()), 1)}
        if k % 9 == 4:
            metrics[C] = None  # an objective not produced: recorded FAIL
        result = (
            None
            if k % 11 == 5
            else TrialResult(params=dict(trial.params), metrics=metrics, curves={"response_length/mean": [3.0, 2.0]})
        )
        record_trial(
            study, trial, spec, result, error="RuntimeError: planted" if result is None else None, ray_trial_id=f"r{k}"
        )
    table = pd.read_parquet(write_table(study, spec))
    objectives = list(zip(spec.objective_names, spec.directions, strict=True))
    assert sorted(pareto_front(table, objectives, spec.constraints)["number"]) == sorted(
        t.number for t in study.best_trials
    )
    assert 0 < len(study.best_trials) < (table["state"] == "COMPLETE").sum()  # the check is not vacuous
    assert (~table["feasible"] & (table["state"] == "COMPLETE")).any()


# ---------------------------------------------------------------- comparing studies


def test_compare_flags_a_planted_regression_and_shares_one_reference():
    from sweep.report.compare import compare_fronts

    objectives = [(A, "maximize"), (C, "minimize")]
    before = table([{A: 0.8, C: 0.4}, {A: 0.6, C: 0.2}, {A: 0.4, C: 0.1}, {A: 0.3, C: 0.5}])
    # Same study, the balanced point's accuracy drops 0.6 -> 0.5 and its dip grows 0.2 -> 0.25.
    after = table([{A: 0.8, C: 0.4}, {A: 0.5, C: 0.25}, {A: 0.4, C: 0.1}, {A: 0.3, C: 0.5}])
    result = compare_fronts(before, after, objectives)
    assert result.balanced_a.number == 1 and result.balanced_b.number == 1
    assert result.changes == {A: pytest.approx(-0.1), C: pytest.approx(-0.05)}
    assert result.regressions == (A, C) and result.regressed
    # One reference from both studies: A worst 0.3 - 0.05 = 0.25; C worst 0.5 + 0.04 = 0.54.
    assert result.reference == pytest.approx((0.25, 0.54))
    assert result.hypervolume_change < 0
    # Within tolerance, nothing regresses; a per-metric tolerance flags only that metric.
    assert not compare_fronts(before, after, objectives, tolerance=0.1 + 1e-9).regressed
    assert compare_fronts(before, after, objectives, tolerance={A: 0.2, C: 0.01}).regressions == (C,)
    # An improvement is never a regression.
    assert not compare_fronts(after, before, objectives).regressed
    # Losing every feasible trial is a regression in every objective.
    assert compare_fronts(before, after.assign(feasible=False), objectives).regressions == (A, C)
    with pytest.raises(SweepError, match="tolerance must be >= 0"):
        compare_fronts(before, after, objectives, tolerance=-0.1)
