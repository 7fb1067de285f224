"""`sweep compare` on two real (Optuna SQLite) study folders, one with a planted regression."""

from __future__ import annotations

import json

import optuna
import pytest

from sweep.cli import main
from sweep.records import TrialResult
from sweep.runner import record_trial
from sweep.spec import parse_spec
from sweep.study import open_study, save_spec_snapshot, write_table

SPEC = """
name: {name}
models: {{pretrained: /m/p, instruct: /m/i, reasoning: /m/r}}
evals:
  probe: {{prompts: /m/prompts.jsonl}}
objectives:
  - {{metric: probe/length_retention, direction: maximize}}
  - {{metric: probe/reward_dip, direction: minimize}}
results_dir: {root}
"""
DISTS = {"alpha": optuna.distributions.FloatDistribution(0, 1), "beta": optuna.distributions.FloatDistribution(0, 1)}


def make_study(root, name, points, *, noise=None):
    """points: [(alpha, beta, length_retention, reward_dip)]; noise: probe/<name>_noise values for every trial"""
    spec = parse_spec(SPEC.format(name=name, root=root))
    study = open_study(spec)
    for alpha, beta, retention, dip in points:
        study.enqueue_trial({"alpha": alpha, "beta": beta})
        trial = study.ask(DISTS)
        metrics = {"probe/length_retention": retention, "probe/reward_dip": dip} | (noise or {})
        result = TrialResult(params={"alpha": alpha, "beta": beta}, metrics=metrics)
        record_trial(study, trial, spec, result, error=None, ray_trial_id=None)
    write_table(study, spec)
    save_spec_snapshot(spec)
    return spec.study_dir


GOOD = [(0.2, 1.0, 0.95, 0.30), (0.5, 0.9, 0.85, 0.10), (0.8, 1.0, 0.60, 0.02)]


def test_compare_flags_a_planted_regression(tmp_path, capsys):
    before = make_study(tmp_path, "nightly-a", GOOD)
    # Same sweep, but the middle of the front got worse: retention fell by 0.2.
    after = make_study(tmp_path, "nightly-b", [(0.2, 1.0, 0.95, 0.30), (0.5, 0.9, 0.65, 0.10), (0.8, 1.0, 0.60, 0.02)])
    code = main(["compare", str(before), str(after), "--tolerance", "0.05"])
    out = capsys.readouterr().out
    assert code == 1, out
    assert "REGRESSION" in out and "probe/length_retention" in out and "hypervolume" in out
    code = main(["compare", str(before), str(after), "--tolerance", "-1"])
    assert code == 2 and "tolerance must be >= 0" in capsys.readouterr().err

    code = main(["compare", str(before), str(after), "--tolerance", "0.5", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["regressions"] == []
    assert data["hypervolume"]["change"] < 0


def test_compare_same_front_is_no_regression(tmp_path, capsys):
    before = make_study(tmp_path, "a", GOOD)
    after = make_study(tmp_path, "b", GOOD)
    assert main(["compare", str(before), str(after)]) == 0
    assert "no regression" in capsys.readouterr().out


def test_compare_missing_folder_is_a_clear_error(tmp_path, capsys):
    before = make_study(tmp_path, "a", GOOD)
    assert main(["compare", str(before), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err
    assert "no such study folder" in err and "Traceback" not in err


def test_a_change_within_the_noise_band_is_no_regression(tmp_path, capsys):
    """Retention fell by 0.2 at the balanced point; with each probe's noise band at 0.15
    (combined sqrt(2) * 0.15 = 0.21) that is noise, not a regression. With a band of 0.05
    it is a regression again."""
    worse = [(0.2, 1.0, 0.95, 0.30), (0.5, 0.9, 0.65, 0.10), (0.8, 1.0, 0.60, 0.02)]
    noisy = {"probe/length_retention_noise": 0.15, "probe/reward_dip_noise": 0.01}
    before = make_study(tmp_path, "noisy-a", GOOD, noise=noisy)
    after = make_study(tmp_path, "noisy-b", worse, noise=noisy)
    code = main(["compare", str(before), str(after), "--tolerance", "0", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0 and data["regressions"] == [], data
    retention = next(c for c in data["balanced"]["objectives"] if c["metric"] == "probe/length_retention")
    assert retention["noise"] == pytest.approx(0.15 * 2**0.5)

    quiet = {"probe/length_retention_noise": 0.05, "probe/reward_dip_noise": 0.01}
    before = make_study(tmp_path, "quiet-a", GOOD, noise=quiet)
    after = make_study(tmp_path, "quiet-b", worse, noise=quiet)
    code = main(["compare", str(before), str(after), "--tolerance", "0"])
    out = capsys.readouterr().out
    assert code == 1 and "REGRESSION" in out and "noise ±0.07071" in out, out
