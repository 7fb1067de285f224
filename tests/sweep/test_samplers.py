"""Every sampler end to end through run_sweep on a real local Ray and a real Optuna study,
with a stand-in trial (tests/sweep/sweeps.py) so that each sweep takes seconds."""

from __future__ import annotations

import sys

import optuna
import pytest

from sweep.run.runner import run_sweep
from tests.sweep import sweeps

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_local():
    import ray
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sweeps)
    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}},
    )
    yield
    ray.shutdown()


def _study(spec):
    return optuna.load_study(study_name=spec.name, storage=spec.storage_url)


def _keys(trials):
    return [tuple(round(t.params[k], 9) for k in sorted(t.params)) for t in trials]


@pytest.mark.parametrize("sampler", ["tpe", "gp", "nsga2", "random"])
def test_sampler_runs_a_sweep_to_its_budget(sampler, tmp_path, ray_local, capsys):
    spec = sweeps.make_spec(
        tmp_path,
        name=f"s-{sampler}",
        extra=(
            f"sampler: {{name: {sampler}, seed: 3}}\nbudget: {{trials: 4, concurrent: 2}}\n"
            "space: {points: [{alpha: 0.5, beta: 1.0}]}\n"
        ),
    )
    summary = run_sweep(spec, trial_fn=sweeps.stand_in_trial)
    assert summary.exit_code == 0, capsys.readouterr()
    trials = _study(spec).trials
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 4 and len(trials) == 4
    assert len(set(_keys(complete))) == 4, "a point ran twice"
    assert (0.5, 1.0) in _keys(complete)  # the fixed point ran
    for trial in complete:
        a, b = trial.params["alpha"], trial.params["beta"]
        assert trial.values == pytest.approx([1.0 - 0.8 * a * b, (1.0 - a) * b])
        assert trial.user_attrs["driver"] and trial.user_attrs["recipe"]["merge"]["stage1"]["method"] == "linear"
    assert _study(spec).metric_names == spec.objective_names  # named in optuna-dashboard
    assert not (spec.study_dir / "ray").exists()  # Tune's state is removed after a clean run
    assert "done: 4/4 complete, 0 failed this run" in capsys.readouterr().out


def test_grid_ends_cleanly_when_exhausted(tmp_path, ray_local, capsys):
    spec = sweeps.make_spec(
        tmp_path,
        name="grid",
        extra=(
            "sampler: {name: grid}\nbudget: {trials: 10, concurrent: 2}\n"
            "space: {alpha: {low: 0, high: 1, step: 0.5}, beta: {low: 0.5, high: 1, step: 0.5}}\n"
        ),
    )
    summary = run_sweep(spec, trial_fn=sweeps.stand_in_trial)
    out = capsys.readouterr().out
    assert summary.exit_code == 0 and summary.grid_exhausted, out
    complete = [t for t in _study(spec).trials if t.state.name == "COMPLETE"]
    assert sorted(_keys(complete)) == [(a, b) for a in (0.0, 0.5, 1.0) for b in (0.5, 1.0)]
    assert "the grid is exhausted: all 6 grid points are done" in out
    # A rerun has nothing left to do and says so, still exit 0.
    again = run_sweep(spec, trial_fn=sweeps.stand_in_trial)
    assert again.exit_code == 0 and len(_study(spec).trials) == 6


def fails_at_alpha_09(spec, params):
    if params["alpha"] == pytest.approx(0.9):  # only the fixed point (random proposals never hit it)
        raise RuntimeError("planted failure at alpha=0.900")
    return sweeps.stand_in_trial(spec, params)


def test_a_fixed_point_that_failed_twice_is_not_queued_again(tmp_path, ray_local):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = sweeps.make_spec(
        tmp_path,
        name="failing-point",
        extra=(
            "sampler: {name: random, seed: 1}\nbudget: {trials: 2, concurrent: 1}\n"
            "space: {points: [{alpha: 0.9, beta: 1.0}]}\n"
        ),
    )
    runs = [run_sweep(spec, trial_fn=fails_at_alpha_09, trials=n) for n in (2, 3, 4)]
    trials = _study(spec).trials
    failed = [t for t in trials if t.state.name == "FAIL"]
    assert [t.params["alpha"] for t in failed] == [0.9, 0.9]  # tried twice (runs 1 and 2), then never
    assert all("planted failure" in t.user_attrs["error"] for t in failed)
    assert [r.exit_code for r in runs] == [1, 1, 0]
    assert sum(t.state.name == "COMPLETE" for t in trials) == 4


def test_max_failures_retries_are_recorded_but_timeouts_are_not_retried(tmp_path, ray_local, monkeypatch):
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = sweeps.make_spec(
        tmp_path,
        name="retries",
        extra=(
            "sampler: {name: random}\nbudget: {trials: 2, concurrent: 1, max_failures: 2}\n"
            "space: {points: [{alpha: 0.1, beta: 1.0}, {alpha: 0.2, beta: 1.0}]}\n"
        ),
    )
    summary = run_sweep(spec, trial_fn=flaky_once_then_timeout, trials=2)
    trials = {round(t.params["alpha"], 3): t for t in _study(spec).trials}
    assert trials[0.1].state.name == "COMPLETE" and len(trials[0.1].user_attrs["retries"]) == 1
    assert "flaky" in trials[0.1].user_attrs["retries"][0]
    timed_out = trials[0.2]
    assert timed_out.state.name == "FAIL" and "TrialTimeout" in timed_out.user_attrs["error"]
    assert "retries" not in timed_out.user_attrs  # deterministic: not retried
    assert summary.exit_code == 1


_ATTEMPTS: dict[float, int] = {}


def flaky_once_then_timeout(spec, params):
    from sweep.run.trial import TrialTimeout

    if params["alpha"] == pytest.approx(0.2):
        raise TrialTimeout("trial passed its timeout of 1 s during probe")
    _ATTEMPTS[params["alpha"]] = _ATTEMPTS.get(params["alpha"], 0) + 1
    if _ATTEMPTS[params["alpha"]] == 1:
        raise RuntimeError("flaky worker hiccup")
    return sweeps.stand_in_trial(spec, params)


def test_a_changed_probe_learning_rate_is_refused_naming_the_field(tmp_path, ray_local):
    from sweep.errors import SweepError

    spec = sweeps.make_spec(tmp_path, name="drift", extra="budget: {trials: 2, concurrent: 2}\n")
    assert run_sweep(spec, trial_fn=sweeps.stand_in_trial).exit_code == 0
    before = len(_study(spec).trials)
    old = spec.evals.probe.learning_rate
    probe = spec.evals.probe.model_copy(update={"learning_rate": old * 2})
    changed = spec.model_copy(update={"evals": spec.evals.model_copy(update={"probe": probe})})
    with pytest.raises(SweepError) as info:
        run_sweep(changed, trials=4, trial_fn=sweeps.stand_in_trial)
    message = str(info.value)
    assert f"evals.probe.learning_rate: {old!r} -> {old * 2!r}" in message
    assert "give the spec a new `name`" in message and "1 field(s)" in message
    assert len(_study(spec).trials) == before  # nothing run, nothing changed
    # What only changes memory is not a change: a study whose trials ran out of memory goes
    # on with a smaller micro-batch, chunked log-probs and checkpointing, sources on the CPU.
    probe = spec.evals.probe.model_copy(
        update={"micro_batch_size": 2, "logprob_chunk": 8, "activation_checkpointing": True}
    )
    smaller = spec.model_copy(
        update={
            "evals": spec.evals.model_copy(update={"probe": probe}),
            "merge": spec.merge.model_copy(update={"source_device": "cpu"}),
        }
    )
    assert run_sweep(smaller, trials=4, trial_fn=sweeps.stand_in_trial).exit_code == 0
    assert len([t for t in _study(spec).trials if t.state.name == "COMPLETE"]) == 4
    # Every trial recorded the recipe it ran with; the table carries it for export.
    import json

    import pandas as pd

    table = pd.read_parquet(spec.study_dir / "trials.parquet")
    recipes = [json.loads(r) for r in table["recipe"]]
    assert all(r["merge"]["stage1"]["method"] == "linear" and r["models"]["instruct"].endswith("/m/i") for r in recipes)


def test_a_study_from_before_skip_flat_batches_goes_on_only_with_the_old_behaviour(tmp_path):
    """A study recorded before `skip_flat_batches` existed ran every flat batch's update.
    A spec that sets it false matches that study; the new default (true) is a change,
    refused with the old value shown as the behaviour it had."""
    import optuna

    from sweep.errors import SweepError
    from sweep.study.fingerprint import STUDY_ATTR_FINGERPRINT, check_fingerprint, fingerprint

    spec = sweeps.make_spec(tmp_path, name="older")

    def with_skip(value: bool):
        probe = spec.evals.probe.model_copy(update={"skip_flat_batches": value})
        return spec.model_copy(update={"evals": spec.evals.model_copy(update={"probe": probe})})

    older = {k: v for k, v in fingerprint(with_skip(True)).items() if k != "evals.probe.skip_flat_batches"}
    assert fingerprint(with_skip(False)) == older  # the old behaviour leaves no trace
    study = optuna.create_study(directions=["maximize"])
    study.set_user_attr(STUDY_ATTR_FINGERPRINT, older)
    check_fingerprint(study, with_skip(False), "memory")
    with pytest.raises(SweepError) as info:
        check_fingerprint(study, with_skip(True), "memory")
    assert "evals.probe.skip_flat_batches: false -> true" in str(info.value)
    assert study.user_attrs[STUDY_ATTR_FINGERPRINT] == older  # nothing rewritten


def test_a_kl_reference_is_fingerprinted_by_its_weights_not_its_path(tmp_path):
    """A study recorded before `evals.probe.reference` existed used the candidate as the
    reference: a spec without one goes on; one with a reference is a named change. The
    reference enters as its weights' digest, so moving the folder changes nothing."""
    import shutil

    import optuna

    from sweep.errors import SweepError
    from sweep.study.fingerprint import STUDY_ATTR_FINGERPRINT, check_fingerprint, fingerprint, model_digest

    spec = sweeps.make_spec(tmp_path, name="older")

    def with_reference(value):
        probe = spec.evals.probe.model_copy(update={"reference": value})
        return spec.model_copy(update={"evals": spec.evals.model_copy(update={"probe": probe})})

    older = fingerprint(with_reference(None))
    assert "evals.probe.reference" not in older
    study = optuna.create_study(directions=["maximize"])
    study.set_user_attr(STUDY_ATTR_FINGERPRINT, older)
    check_fingerprint(study, with_reference(None), "memory")
    from tests.tiny import make_tiny_checkpoint

    sft = str(make_tiny_checkpoint(tmp_path / "sft"))
    with pytest.raises(SweepError) as info:
        check_fingerprint(study, with_reference(sft), "memory")
    assert f"evals.probe.reference: null -> {model_digest(sft)}" in str(info.value)
    moved = shutil.copytree(sft, tmp_path / "moved-sft")
    assert fingerprint(with_reference(str(moved))) == fingerprint(with_reference(sft))


def test_a_clip_ratio_counts_only_where_it_can_act_and_memory_settings_never(tmp_path):
    """With one update a step the policy is the sampling one and the clip never acts, so its
    ratio is no change; with mini-batches it is. The memory-only settings are left out of
    a fingerprint recorded before they were (this one has them, as the earlier code wrote)."""
    import optuna

    from sweep.errors import SweepError
    from sweep.study.fingerprint import STUDY_ATTR_FINGERPRINT, check_fingerprint, fingerprint

    spec = sweeps.make_spec(tmp_path, name="clip")

    def with_probe(**update):
        probe = spec.evals.probe.model_copy(update=update)
        return spec.model_copy(update={"evals": spec.evals.model_copy(update={"probe": probe})})

    recorded = fingerprint(with_probe(clip_ratio=0.28)) | {
        "evals.probe.clip_ratio": 0.28,
        "evals.probe.micro_batch_size": 4,
        "evals.probe.logprob_chunk": 1024,
        "merge.source_device": "same",
    }
    study = optuna.create_study(directions=["maximize"])
    study.set_user_attr(STUDY_ATTR_FINGERPRINT, recorded)
    check_fingerprint(study, with_probe(clip_ratio=0.2, micro_batch_size=1, logprob_chunk=64), "memory")
    four = fingerprint(with_probe(mini_batches=4, clip_ratio=0.28))
    study.set_user_attr(STUDY_ATTR_FINGERPRINT, four)
    check_fingerprint(study, with_probe(mini_batches=4, clip_ratio=0.28, micro_batch_size=2), "memory")
    with pytest.raises(SweepError) as info:
        check_fingerprint(study, with_probe(mini_batches=4, clip_ratio=0.2), "memory")
    assert "evals.probe.clip_ratio: 0.28 -> 0.2" in str(info.value) and "1 field(s)" in str(info.value)


@pytest.mark.parametrize(
    "field, old, new, base",
    [
        ("loss_agg", "token-mean", "seq-mean-token-mean", {}),
        ("mini_batches", 1, 4, {}),
        ("clip_ratio", 0.2, 0.28, {"mini_batches": 4}),
    ],
)
def test_a_study_from_before_an_update_setting_goes_on_only_with_its_old_value(tmp_path, field, old, new, base):
    """Studies recorded before `loss_agg`, `mini_batches` and `clip_ratio` existed took one
    token-mean update a step: the defaults leave no trace in the fingerprint, another
    value is a named change."""
    import optuna

    from sweep.errors import SweepError
    from sweep.study.fingerprint import STUDY_ATTR_FINGERPRINT, check_fingerprint, fingerprint

    spec = sweeps.make_spec(tmp_path, name="older")

    def with_value(value):
        probe = spec.evals.probe.model_copy(update={**base, field: value})
        return spec.model_copy(update={"evals": spec.evals.model_copy(update={"probe": probe})})

    older = fingerprint(with_value(old))
    assert f"evals.probe.{field}" not in older
    study = optuna.create_study(directions=["maximize"])
    study.set_user_attr(STUDY_ATTR_FINGERPRINT, older)
    check_fingerprint(study, with_value(old), "memory")
    with pytest.raises(SweepError) as info:
        check_fingerprint(study, with_value(new), "memory")
    assert f"evals.probe.{field}: {old} -> {new}" in str(info.value)
