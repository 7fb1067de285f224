"""`sweep run` end to end on the demo family: real Ray, real Optuna SQLite, real lm-eval and probe.

One local Ray serves the in-process runs of this module; the kill-and-resume test
drives the real CLI in subprocesses.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import yaml

from sweep.cli import main
from sweep.config import load_spec
from sweep.run.longrun import SHAPES

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def demo_spec_dict(results_dir: Path, **budget) -> dict:
    """search_spaces/demo.yaml, made cheaper for tests (fewer docs and probe steps)."""
    spec = yaml.safe_load((REPO / "search_spaces" / "demo.yaml").read_text())
    spec["results_dir"] = str(results_dir)
    spec["budget"].update({"trials": 8, "concurrent": 2} | budget)
    spec["evals"]["lm_eval"].update({"limit": 8, "batch_size": 8})
    spec["evals"]["probe"].update({"steps": 3, "prompts_per_step": 2, "group_size": 2, "max_new_tokens": 48})
    return spec


def write_spec(folder: Path, spec: dict, name: str = "spec.yaml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def ray_local(demo_family):
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {
                "OMP_NUM_THREADS": "1",
                "HF_HUB_OFFLINE": "1",
                "HF_DATASETS_OFFLINE": "1",
                "PYTHONPATH": str(REPO),
            }
        },
    )
    yield
    ray.shutdown()


def load_study(spec):
    return optuna.load_study(study_name=spec.name, storage=spec.storage_url)


@pytest.fixture(scope="module")
def demo_study(tmp_path_factory, ray_local):
    """One real demo sweep of 8 trials, 2 at a time, through the CLI entry point."""
    import contextlib
    import io

    root = tmp_path_factory.mktemp("demo-study")
    spec_path = write_spec(root, demo_spec_dict(root / "results"))
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(spec_path)])
    return spec_path, code, out.getvalue()


def test_demo_sweep_8_trials_two_at_a_time(demo_study, capsys):
    spec_path, code, out = demo_study
    assert code == 0, out
    spec = load_spec(spec_path)
    study = load_study(spec)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) >= 8
    for trial in complete:
        assert len(trial.values) == 3 and all(math.isfinite(v) for v in trial.values)
        metrics = trial.user_attrs["metrics"]
        assert {"lm_eval/toy_reasoning/exact_match,final", "probe/length_retention", "probe/reward_dip"} <= set(metrics)
        assert trial.user_attrs["curves"]["response_length/mean"], "probe curves recorded"
        assert trial.user_attrs["timings"]["total_s"] > 0 and trial.user_attrs["ray_trial_id"]
        assert trial.user_attrs["worker"]["pid"] > 0
    # The four fixed points of the spec ran first.
    first = sorted((t.params["alpha"], t.params["beta"]) for t in study.trials if t.number < 4)
    assert first == sorted([(0.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.5, 0.75)])
    # trials.parquet matches the study.
    table = pd.read_parquet(spec.study_dir / "trials.parquet")
    assert sorted(table["number"]) == sorted(t.number for t in study.trials)
    for trial in complete:
        row = table[table["number"] == trial.number].iloc[0]
        assert row["state"] == "COMPLETE"
        assert row["params/alpha"] == pytest.approx(trial.params["alpha"])
        for name, value in zip(spec.objective_names, trial.values, strict=True):
            assert row[name] == pytest.approx(value)
    assert (spec.study_dir / "trials.csv").exists() and (spec.study_dir / "sweep.log").stat().st_size > 0
    assert "[8/8]" in out and "Pareto front" in out
    # A second run has nothing to do: the study already holds its budget.
    assert main(["run", str(spec_path)]) == 0
    assert "nothing to run" in capsys.readouterr().out
    assert len(load_study(spec).trials) == len(study.trials)


def test_report_front_equals_optuna_best_trials(demo_study, capsys):
    from sweep.report.front import pareto_front

    spec_path, _, _ = demo_study
    spec = load_spec(spec_path)
    assert main(["report", str(spec.study_dir)]) == 0
    out = capsys.readouterr().out
    assert "balanced point" in out
    table = pd.read_parquet(spec.study_dir / "trials.parquet")
    front = pareto_front(table, spec.objectives, spec.constraints)
    assert sorted(front["number"]) == sorted(t.number for t in load_study(spec).best_trials)
    html = (spec.study_dir / "report.html").read_text()
    md = (spec.study_dir / "report.md").read_text()
    assert "plotly" in html.lower() and len(html) > 100_000  # self-contained: plotly.js inlined
    assert f"## Pareto front ({len(front)} trials)" in md
    for number in front["number"]:
        assert f"\n| {number} | " in md
    assert "- **Balanced point:** trial " in md


def test_export_balanced_equals_a_fresh_merge(demo_study, tmp_path, capsys):
    import json

    import torch
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    spec_path, _, _ = demo_study
    spec = load_spec(spec_path)
    out = tmp_path / "actor"
    assert main(["export", str(spec.study_dir), "--balanced", "--out", str(out)]) == 0
    record = json.loads((out / "sweep_export.json").read_text())
    assert record["spec_sha256"] and set(record["params"]) == {"alpha", "beta"}
    assert "spec sha256" in (out / "README.md").read_text()
    fresh = tmp_path / "fresh"
    code = main(
        [
            "merge",
            "--pretrained",
            spec.models.pretrained,
            "--instruct",
            spec.models.instruct,
            "--reasoning",
            spec.models.reasoning,
            "--alpha",
            repr(record["params"]["alpha"]),
            "--beta",
            repr(record["params"]["beta"]),
            "--out",
            str(fresh),
            "--quiet",
        ]
    )
    assert code == 0
    a, b = load_file(out / "model.safetensors"), load_file(fresh / "model.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.architectures == ["LlamaForCausalLM"]
    with pytest.raises(SystemExit):
        main(["export", str(spec.study_dir), "--out", str(tmp_path / "x")])  # needs --balanced or --trial
    assert main(["export", str(spec.study_dir), "--trial", "999", "--out", str(tmp_path / "y")]) == 2
    assert "no such trial" in capsys.readouterr().err


def test_report_rescore_runs_heldout_tasks_on_the_front(demo_study, capsys):
    spec_path, _, _ = demo_study
    spec = load_spec(spec_path)
    assert main(["report", str(spec.study_dir), "--rescore"]) == 0
    heldout = pd.read_parquet(spec.study_dir / "heldout.parquet")
    front = [t.number for t in load_study(spec).best_trials]
    assert sorted(heldout["number"]) == sorted(front)
    assert "lm_eval/toy_reasoning_heldout/exact_match,final" in heldout.columns
    assert heldout["lm_eval/toy_reasoning_heldout/exact_match,final"].between(0, 1).all()
    md = (spec.study_dir / "report.md").read_text()
    assert "## Held-out scores" in md and "held-out: lm\\_eval/toy\\_reasoning\\_heldout" in md  # markdown-escaped


def test_calibrate_runs_long_rl_on_the_study_and_the_report_shows_it(demo_study, capsys):
    import json

    spec_path, _, _ = demo_study
    spec = load_spec(spec_path)
    # bad input: one message, exit 2, before any model loads
    assert main(["calibrate", str(spec.study_dir), "--trials", "999"]) == 2
    assert "trial 999: no such trial" in capsys.readouterr().err
    assert main(["calibrate", str(spec_path), "--long-steps", "2"]) == 2
    assert "shorter than the probe's 3 steps" in capsys.readouterr().err
    assert main(["calibrate", str(spec_path), "--long-run-timeout", "0"]) == 2
    assert "--long-run-timeout must be more than 0 seconds, got 0" in capsys.readouterr().err
    assert main(["calibrate", str(spec_path), "--checkpoint-every", "-1"]) == 2
    assert "--checkpoint-every must be 0 (every step) or more seconds, got -1" in capsys.readouterr().err
    assert not (spec.study_dir / "calibration.json").exists()

    code = main(["calibrate", str(spec_path), "--long-steps", "12", "--max-trials", "4"])
    out, err = capsys.readouterr()
    record = json.loads((spec.study_dir / "calibration.json").read_text())
    assert code == (0 if record["trusted"] else 1)
    assert ("ok: " if record["trusted"] else "warning: ") + record["verdict"] in err
    assert record["long_steps"] == 12 and record["probe_steps"] == 3 and record["seeds"] == [1]  # probe seed 0 + 1
    table = pd.read_parquet(spec.study_dir / "trials.parquet")
    assert len(record["candidates"]) == 4 and len({c["number"] for c in record["candidates"]}) == 4
    for c in record["candidates"]:
        row = table[table["number"] == c["number"]].iloc[0]
        for metric in ("reward_gain", "length_retention"):  # the study's own values and noise bands
            assert c["probe"][metric] == pytest.approx(row[f"probe/{metric}"])
            assert c["noise"][metric] == pytest.approx(row[f"probe/{metric}_noise"])
        (run,) = c["long"]
        assert run["steps"] == 12 and run["seed"] == 1 and run["final_length"] > 0 and run["dip"] >= 0
        # the reward's shape, held against the no-learning run simulated from its own baseline
        assert run["reward_shape"] in SHAPES and run["dip_null"] >= 0
        assert (run["reward_shape"] == "no dip") == (run["dip"] <= max(run["dip_null"], 2 * run["dip_noise"]))
    from sweep.report.calibration import spearman, tie_within_noise

    # the objective is judged by its order (trials within each other's noise band tied), the constraint by its verdicts
    probe, ties = tie_within_noise(
        [c["probe"]["reward_gain"] for c in record["candidates"]],
        [c["noise"]["reward_gain"] for c in record["candidates"]],
    )
    added = [c["long"][0]["final_reward"] for c in record["candidates"]]
    assert list(record["spearman"]) == ["reward_gain"]
    assert record["spearman"]["reward_gain"] == pytest.approx(spearman(probe, added), nan_ok=True)
    assert record["ties"] == (
        {"reward_gain": [[record["candidates"][i]["number"] for i in t] for t in ties]} if ties else {}
    )
    kept = [
        (c["probe"]["length_retention"] >= 0.5) == (c["long"][0]["final_length"] >= 0.5) for c in record["candidates"]
    ]
    assert record["agreement"] == {"probe/length_retention >= 0.5": pytest.approx(sum(kept) / len(kept))}
    assert "## Calibration: the probe (3 steps) against 12-step runs" in out
    assert main(["report", str(spec.study_dir)]) == 0
    md = (spec.study_dir / "report.md").read_text()
    assert "## Calibration: the probe (3 steps) against 12-step runs" in md and "**Verdict:**" in md
    assert f"long-run reward: {record['reward_shapes']}" in err and record["reward_shapes"]
    assert f"**Long-run reward:** {record['reward_shapes']}" in md.replace("\\", "")
    assert 'id="calibration"' in (spec.study_dir / "report.html").read_text()

    # every long run was recorded as it finished; a rerun reuses them all and reads the same
    runs_file = spec.study_dir / "calibration-runs.jsonl"
    lines = runs_file.read_text().splitlines()
    assert len(lines) == 4 and sum(f"long run {i}/4: trial " in err for i in (1, 2, 3, 4)) == 4
    # each line: the run's time and the calibration's; until the last, the time left at this pace
    ends = {line.split(":")[0]: line for line in err.splitlines() if line.startswith("long run ")}
    t = r"\d+(:\d\d)? (s|min|h)"  # sweep.run.progress.duration
    assert all(re.search(rf"\({t}; {t} in all, about {t} left\)$", ends[f"long run {i}/4"]) for i in (1, 2, 3)), ends
    assert re.search(rf"\({t}; {t} in all\)$", ends["long run 4/4"]), ends
    assert main(["calibrate", str(spec_path), "--long-steps", "12", "--max-trials", "4"]) == code
    err = capsys.readouterr().err
    assert f"reusing 4 of the 4 long runs, recorded in {runs_file}" in err and "long run 1/4" not in err
    again = json.loads((spec.study_dir / "calibration.json").read_text())
    assert again["candidates"] == record["candidates"] and again["verdict"] == record["verdict"]

    # runs recorded before the memory-only settings left the key (under its older form) are reused too
    from sweep.run.longrun import run_key

    older = []
    for line in lines:
        run = json.loads(line)
        params = {
            k.removeprefix("params/"): float(v)
            for k, v in table[table["number"] == run["number"]].iloc[0].items()
            if k.startswith("params/")
        }
        assert run["key"] == run_key(spec, params, 1, 12) != run_key(spec, params, 1, 12, legacy=True)
        older.append(json.dumps(run | {"key": run_key(spec, params, 1, 12, legacy=True)}))
    runs_file.write_text("\n".join(older) + "\n")
    assert main(["calibrate", str(spec_path), "--long-steps", "12", "--max-trials", "4"]) == code
    assert f"reusing 4 of the 4 long runs, recorded in {runs_file}" in capsys.readouterr().err

    # a calibration stopped after 3 runs: the rerun runs only the 4th, on a fresh worker, to the same outcome
    runs_file.write_text("\n".join(lines[:3]) + '\n{"key": "cut short by a cra')
    assert main(["calibrate", str(spec_path), "--long-steps", "12", "--max-trials", "4"]) == code
    err = capsys.readouterr().err
    last = json.loads(lines[3])["number"]
    assert "reusing 3 of the 4 long runs" in err and f"long run 4/4: trial {last} (" in err
    again = json.loads((spec.study_dir / "calibration.json").read_text())

    def outcomes(calibration):
        return [
            [{k: v for k, v in run.items() if k != "wall_s"} for run in c["long"]] for c in calibration["candidates"]
        ]

    assert outcomes(again) == outcomes(record) and again["verdict"] == record["verdict"]


def _calibration_inputs(demo_study):
    """(spec, trials, the 4 candidates calibrate chooses) of the demo study, its recorded
    long runs removed; this module's functions pickled by value for the Ray workers."""
    import ray.cloudpickle

    from sweep.run.calibrate import choose_trials
    from sweep.run.longrun import RUNS_FILE
    from sweep.study.durable import load_study_dir

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec_path, _, _ = demo_study
    spec, trials = load_study_dir(load_spec(spec_path).study_dir)
    (spec.study_dir / RUNS_FILE).unlink(missing_ok=True)
    return spec, trials, choose_trials(spec, trials, numbers=None, limit=4)


def _reasoning_end(demo_study):
    """_calibration_inputs, each chosen trial's alpha, and those at the reasoning-heavy end
    (alpha < 0.1: some of the chosen, not all)."""
    spec, trials, chosen = _calibration_inputs(demo_study)
    alphas = {n: float(trials[trials["number"] == n].iloc[0]["params/alpha"]) for n, _ in chosen}
    end = [n for n, a in alphas.items() if a < 0.1]
    assert end and len(end) < len(chosen), alphas
    return spec, trials, chosen, alphas, end


def planted_long_run(spec, params, seed, long_steps):
    """The real long run, except that it raises for the reasoning-heavy end of the square."""
    from sweep.run.longrun import long_run_at

    if params["alpha"] < 0.1:
        raise RuntimeError(f"planted failure at alpha={params['alpha']:.3f}")
    return long_run_at(spec, params, seed, long_steps)


def test_a_failed_long_run_fails_calibrate_and_keeps_the_others(demo_study):
    import json

    from sweep.errors import SweepError
    from sweep.run.calibrate import calibrate
    from sweep.run.longrun import RUNS_FILE

    spec, trials, chosen, alphas, failing = _reasoning_end(demo_study)
    said: list[str] = []
    with pytest.raises(SweepError) as caught:
        calibrate(spec, trials, chosen, long_steps=5, say=said.append, run_fn=planted_long_run, heartbeat_s=0.5)
    assert caught.value.exit_code == 1
    message = str(caught.value)
    assert f"{len(failing)} of {len(chosen)} long runs failed" in message
    assert all(f"trial {n} seed 1: RuntimeError: planted failure at alpha=" in message for n in failing), message
    kept = [json.loads(line)["number"] for line in (spec.study_dir / RUNS_FILE).read_text().splitlines()]
    assert sorted(kept) == sorted(n for n in alphas if n not in failing)  # the others were recorded
    # no run finished for half a second: the runs in flight are named, with how long they ran
    # and, once their worker has said (test_a_long_run_reports_each_step), the step and the time left
    t = r"\d+(:\d\d)? (s|min|h)"  # sweep.run.progress.duration
    run = rf"trial \d+ seed 1 for {t}( \(step [1-5]/5, about {t} left\))?"
    heartbeats = [line for line in said if line.startswith("still running: ")]
    assert heartbeats and all(re.fullmatch(f"still running: {run}(, {run})?", line) for line in heartbeats), said


def test_a_long_run_reports_each_step_to_its_pool(demo_study):
    """long_run_at, run here as a pool's job would be (sweep.run.pool._REPORTING set): it
    reports each of its steps, which the heartbeat shows. (Whether a heartbeat falls
    inside the steps of a real 5-step run is timing; the pool's test checks the rest.)"""
    from types import SimpleNamespace

    import torch

    from sweep.run import pool, trial
    from sweep.run.longrun import long_run_at
    from sweep.study.table import trial_params

    spec, trials, chosen = _calibration_inputs(demo_study)
    params = {k: float(v) for k, v in trial_params(trials[trials["number"] == chosen[0][0]].iloc[0]).items()}
    reports: list[tuple] = []
    board = SimpleNamespace(report=SimpleNamespace(remote=lambda *report: reports.append(report)))
    pool._REPORTING[:] = [(board, 7)]
    threads = torch.get_num_threads()  # the worker state sets the spec's: this is the test's process
    try:
        outcome = long_run_at(spec, params, 1, 4)
    finally:
        pool._REPORTING.clear()
        trial._STATE.clear()
        torch.set_num_threads(threads)
    assert outcome["steps"] == 4 and reports == [(7, 1, 4, 0), (7, 2, 4, 0), (7, 3, 4, 0), (7, 4, 4, 0)]


def flaky_trial(spec, params):
    """The real trial, except that it raises for large alpha."""
    from sweep.run.trial import run_trial

    if params["alpha"] > 0.7:
        raise RuntimeError(f"planted failure at alpha={params['alpha']:.3f}")
    return run_trial(spec, params)


def test_raising_trials_are_recorded_and_the_sweep_continues(tmp_path, ray_local, capfd):
    import ray.cloudpickle

    from sweep.run.runner import run_sweep

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec_dict = demo_spec_dict(tmp_path / "results", trials=5)
    spec_dict["space"]["points"] = [
        {"alpha": 0.9, "beta": 1.0},
        {"alpha": 0.2, "beta": 1.0},
        {"alpha": 1.0, "beta": 0.8},
    ]
    spec = load_spec(write_spec(tmp_path, spec_dict))
    capfd.readouterr()
    summary = run_sweep(spec, trial_fn=flaky_trial, quiet=True)
    printed = capfd.readouterr()
    study = load_study(spec)
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) >= 2
    for trial in failed:
        assert trial.params["alpha"] > 0.7
        assert "RuntimeError: planted failure at alpha=" in trial.user_attrs["error"]
    assert summary.complete == len([t for t in study.trials if t.state.name == "COMPLETE"]) >= 1
    assert summary.exit_code == 1  # short of the budget: a rerun tops it up
    # --quiet (cron): only the problems, on stderr: each failed trial, the summary, the shortfall.
    assert printed.out == ""
    failed_lines = [line for line in printed.err.splitlines() if "FAILED: RuntimeError: planted failure" in line]
    assert len(failed_lines) == len(failed)
    assert f"done: {summary.complete}/5 complete, {len(failed)} failed this run" in printed.err
    assert "short of its budget: run the same command again" in printed.err
    table = pd.read_parquet(spec.study_dir / "trials.parquet")
    assert table[table["state"] == "FAIL"]["error"].str.contains("planted failure").all()


def trial_dying_mid_probe(spec, params):
    """The real trial, except that the point alpha=0.2 kills its own worker after step 2 of its
    probe, once (while the study folder holds a `stop-once` file): a node lost mid-trial."""
    from sweep.run import trial

    marker, original = spec.study_dir / "stop-once", trial.probe_on_worker

    def probe(state, config, **kwargs):
        def on_step(done, planned):
            if params["alpha"] == 0.2 and done == 2 and marker.exists():
                marker.unlink()
                os._exit(1)

        return original(state, config, on_step=on_step, **kwargs)

    trial.probe_on_worker = probe
    try:
        return trial.run_trial(spec, params)
    finally:
        trial.probe_on_worker = original


def test_a_trial_lost_mid_probe_goes_on_from_its_checkpoint_when_its_point_is_queued_again(tmp_path, ray_local):
    import ray.cloudpickle
    import torch

    from sweep.run import trial
    from sweep.run.runner import run_sweep

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec_dict = demo_spec_dict(tmp_path / "results", trials=2, checkpoint_every_s=0)
    spec_dict["space"]["points"] = [{"alpha": 0.2, "beta": 1.0}, {"alpha": 0.5, "beta": 1.0}]
    spec = load_spec(write_spec(tmp_path, spec_dict))
    spec.study_dir.mkdir(parents=True)
    (spec.study_dir / "stop-once").touch()
    run_sweep(spec, trial_fn=trial_dying_mid_probe, quiet=True)
    assert not (spec.study_dir / "stop-once").exists()  # the worker did die
    trials = [t for t in load_study(spec).trials if t.params["alpha"] == 0.2]
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"], trials
    assert "infrastructure" in trials[0].user_attrs["error"]
    again = trials[1]
    assert again.user_attrs["notes"]["probe_resumed_at"] == 2  # its probe went on after step 2
    assert not any((spec.study_dir / trial.PROBE_CHECKPOINTS).iterdir())  # deleted as each trial ended
    # and it measured what the trial never lost measures
    threads = torch.get_num_threads()
    try:
        whole = trial.run_trial(spec, {"alpha": 0.2, "beta": 1.0})
    finally:
        trial._STATE.clear()
        torch.set_num_threads(threads)
    assert "probe_resumed_at" not in whole.notes
    assert again.user_attrs["metrics"] == whole.metrics


def test_budget_checkpoint_every_s_null_keeps_no_probe_checkpoint(tmp_path):
    """`checkpoint_every_s: null` (never): a trial's probe and a long run get no Checkpointing;
    a number gives one in the study folder, keyed by the candidate and the probe's settings."""
    from sweep.run import trial

    params = {"alpha": 0.2, "beta": 1.0}
    never = load_spec(write_spec(tmp_path, demo_spec_dict(tmp_path / "results", checkpoint_every_s=None)))
    assert trial._probe_checkpoint(never, params, never.evals.probe) is None
    often = load_spec(write_spec(tmp_path, demo_spec_dict(tmp_path / "results", checkpoint_every_s=30)))
    checkpoint = trial._probe_checkpoint(often, params, often.evals.probe)
    assert checkpoint.every_s == 30 and checkpoint.path.parent == often.study_dir / trial.PROBE_CHECKPOINTS
    assert checkpoint.path.name == f"{checkpoint.tag}.pt"


def test_constraint_violations_reach_the_sampler(tmp_path, ray_local, capfd):
    """An infeasible trial is COMPLETE with its constraint value recorded (Optuna 5 set_constraint)."""
    from sweep.run.runner import run_sweep

    spec_dict = demo_spec_dict(tmp_path / "results", trials=2)
    spec_dict["constraints"] = ["probe/length_retention >= 2.0"]  # impossible: every trial violates it
    spec_dict["space"]["points"] = [{"alpha": 0.5, "beta": 1.0}, {"alpha": 0.0, "beta": 1.0}]
    spec = load_spec(write_spec(tmp_path, spec_dict))
    run_sweep(spec, quiet=True)
    assert "done:" not in capfd.readouterr().err  # a clean --quiet run prints nothing (cron mails nothing)
    study = load_study(spec)
    for trial in study.trials:
        assert trial.state.name == "COMPLETE"
        (violation,) = [v for k, v in trial.system_attrs.items() if k.startswith("constraints:")]
        assert violation == pytest.approx(2.0 - trial.user_attrs["metrics"]["probe/length_retention"])
        assert trial.system_attrs["constraints"] == [violation]  # the list optuna-dashboard reads
        assert violation > 0
    table = pd.read_parquet(spec.study_dir / "trials.parquet")
    assert not table["feasible"].any()


def _count_complete(spec) -> int:
    try:
        study = optuna.load_study(study_name=spec.name, storage=spec.storage_url)
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return sum(t.state.name == "COMPLETE" for t in study.trials)


def test_kill_9_then_resume_loses_nothing_and_duplicates_nothing(tmp_path, demo_family):
    spec_path = write_spec(tmp_path, demo_spec_dict(tmp_path / "results", trials=8))
    spec = load_spec(spec_path)
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "sweep", "run", str(spec_path), "--quiet"]
    driver = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 300
    while _count_complete(spec) < 3:
        assert driver.poll() is None, driver.stdout.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no 3 complete trials within 300 s"
        time.sleep(0.5)
    os.killpg(driver.pid, signal.SIGKILL)  # the driver and everything it started
    driver.wait()

    before = {t.number: (t.params, t.values) for t in load_study(spec).trials if t.state.name == "COMPLETE"}
    assert len(before) >= 3

    proc = subprocess.run(cmd[:-1], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    after = load_study(spec).trials
    complete = [t for t in after if t.state.name == "COMPLETE"]
    assert len(complete) == 8
    for number, (params, values) in before.items():  # nothing lost, nothing changed
        assert after[number].state.name == "COMPLETE"
        assert after[number].params == params and after[number].values == values
    keys = [tuple(round(t.params[k], 9) for k in sorted(t.params)) for t in complete]
    assert len(set(keys)) == len(keys), "a params set ran twice"
    orphans = [t for t in after if t.state.name == "FAIL"]
    assert all("orphaned" in t.user_attrs.get("error", "") for t in orphans)
    if orphans:
        assert "orphaned" in proc.stdout


def test_a_worker_the_cluster_cannot_place_is_named_before_the_pool_waits_on_it(tmp_path, ray_local):
    from sweep.run.pool import capacity_warning

    spec = load_spec(write_spec(tmp_path, demo_spec_dict(tmp_path / "results")))
    assert capacity_warning(spec) is None  # 1 CPU a worker, 2 in this Ray
    gpu = spec.model_copy(update={"resources": spec.resources.model_copy(update={"gpus_per_trial": 1.0})})
    assert capacity_warning(gpu) == (
        "warning: each worker asks for 1 GPU (resources.cpus_per_trial / gpus_per_trial) and the Ray cluster "
        "has 0 GPU: nothing runs until a node that has them joins"
    )


def _stop_at_step(spec, params, seed, long_steps, stop):
    """The real long run, checkpointed after every step, with `stop()` called after step 3
    of the reasoning-heavy end while the study folder holds a `stop-once` file."""
    from sweep.run import pool
    from sweep.run.longrun import long_run_at

    marker, report = spec.study_dir / "stop-once", pool.report_progress

    def report_or_stop(done, total, start=0):
        if params["alpha"] < 0.1 and done == 3 and marker.exists():
            marker.unlink()
            stop()
        report(done, total, start)

    pool.report_progress = report_or_stop
    try:
        return long_run_at(spec, params, seed, long_steps, checkpoint_every_s=0)
    finally:
        pool.report_progress = report


def dying_long_run(spec, params, seed, long_steps):
    """The reasoning-heavy end kills its own worker process after step 3, once: a node or
    worker lost mid-run."""
    return _stop_at_step(spec, params, seed, long_steps, lambda: os._exit(1))


def stopped_long_run(spec, params, seed, long_steps):
    """The reasoning-heavy end stops after step 3, once, as a stopped driver stops it."""

    def stop():
        raise RuntimeError("the driver was stopped")

    return _stop_at_step(spec, params, seed, long_steps, stop)


def hanging_long_run(spec, params, seed, long_steps):
    """The real long run, except that the reasoning-heavy end hangs (a stuck engine or collective)."""
    from sweep.run.longrun import long_run_at

    if params["alpha"] < 0.1:
        time.sleep(3600)
    return long_run_at(spec, params, seed, long_steps)


def test_a_long_run_past_its_timeout_is_stopped_and_the_others_are_kept(demo_study):
    import json

    from sweep.errors import SweepError
    from sweep.run.calibrate import calibrate
    from sweep.run.longrun import RUNS_FILE, long_run_timeout

    spec, trials, chosen, alphas, hanging = _reasoning_end(demo_study)
    # the default: a trial's timeout scaled by the long run's steps over the probe's
    timeout = spec.budget.trial_timeout_s
    assert long_run_timeout(spec, 24) == 8 * timeout and long_run_timeout(spec, 3) == timeout  # probe: 3 steps
    untimed = spec.model_copy(update={"budget": spec.budget.model_copy(update={"trial_timeout_s": None})})
    assert long_run_timeout(untimed, 24) is None
    started = time.monotonic()
    with pytest.raises(SweepError) as caught:
        calibrate(spec, trials, chosen, long_steps=3, run_fn=hanging_long_run, timeout_s=20, say=lambda _: None)
    assert time.monotonic() - started < 300  # not the hour the hung run would take
    message = str(caught.value)
    assert caught.value.exit_code == 1 and f"{len(hanging)} of {len(chosen)} long runs failed" in message
    assert all(f"trial {n} seed 1: timed out after 20 s (its worker was stopped)" in message for n in hanging)
    kept = [json.loads(line)["number"] for line in (spec.study_dir / RUNS_FILE).read_text().splitlines()]
    assert sorted(kept) == sorted(n for n in alphas if n not in hanging)


def note_warm(spec):
    """A pool's warm-up that leaves its worker's pid in the study folder's `warm` file."""
    with open(spec.study_dir / "warm", "a") as handle:
        handle.write(f"{os.getpid()}\n")


def pid_job(spec, i):
    """Job 0 kills its worker once (while `die-once` exists); every job waits until a third
    worker is warm (the one started in the dead one's place), then returns its worker's pid."""
    if i == 0 and (spec.study_dir / "die-once").exists():
        (spec.study_dir / "die-once").unlink()
        os._exit(1)
    deadline = time.monotonic() + 120
    while len((spec.study_dir / "warm").read_text().split()) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    return os.getpid()


def progress_job(spec, i):
    """Says it has done 3 of 10, then takes 4 s (heartbeats every 0.3 s read the report, once
    the pool's board, an actor started with the pool, is up)."""
    from sweep.run.pool import report_progress

    report_progress(3, 10, 1)
    time.sleep(4)
    return i


def failing_warm(spec):
    raise FileNotFoundError(f"no model at {spec.models.reasoning}")


def test_the_pool_starts_a_worker_in_a_dead_ones_place_and_a_failed_warm_up_fails_the_jobs(tmp_path, ray_local):
    import ray.cloudpickle

    from sweep.run.pool import run_pool

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    spec = load_spec(write_spec(tmp_path, demo_spec_dict(tmp_path / "results")))
    spec.study_dir.mkdir(parents=True)
    (spec.study_dir / "warm").touch()
    (spec.study_dir / "die-once").touch()
    lost: list[tuple] = []
    done = list(run_pool(spec, [(i,) for i in range(6)], pid_job, warm=note_warm, on_lost=lambda j, _: lost.append(j)))
    warmed = [int(p) for p in (spec.study_dir / "warm").read_text().split()]
    assert len(warmed) == 3 and lost == [(0,)]
    assert sorted(job for job, _, _ in done) == [(i,) for i in range(6)] and all(e is None for _, _, e in done)
    # the 6 jobs ran on the worker left and on the new one: the pool grew back to 2
    pids = {pid for _, pid, _ in done}
    assert len(pids) == 2 and warmed[2] in pids and len(pids & set(warmed[:2])) == 1

    # a job's progress reaches the heartbeat
    waits: list = []
    done = list(run_pool(spec, [(7,), (8,)], progress_job, heartbeat_s=0.3, on_wait=waits.append))
    assert sorted(result for _, result, _ in done) == [7, 8]
    assert any(progress == (3, 10, 1) for running in waits for _, _, progress in running), waits

    # a warm-up that raises: no worker can start, and every job fails with its error
    done = list(run_pool(spec, [(i,) for i in range(3)], pid_job, warm=failing_warm))
    assert [error for _, _, error in done] == [
        f"no worker could start (FileNotFoundError: no model at {spec.models.reasoning})"
    ] * 3


def _uninterrupted(spec, trials, number, long_steps):
    """The long run of trial `number`, here, as it runs when nothing stops it."""
    import torch

    from sweep.run import trial
    from sweep.run.longrun import long_run_at
    from sweep.study.table import trial_params

    params = {k: float(v) for k, v in trial_params(trials[trials["number"] == number].iloc[0]).items()}
    threads = torch.get_num_threads()
    try:
        return long_run_at(spec, params, 1, long_steps)
    finally:
        trial._STATE.clear()
        torch.set_num_threads(threads)


def _without_timing(outcome):
    return {k: v for k, v in outcome.items() if k not in ("wall_s", "resumed_at")}


def test_a_long_run_whose_worker_dies_goes_on_from_its_checkpoint_on_a_worker_still_alive(demo_study):
    from sweep.run.calibrate import calibrate
    from sweep.run.longrun import CHECKPOINTS, RUNS_FILE

    spec, trials, chosen, alphas, end = _reasoning_end(demo_study)
    (spec.study_dir / "stop-once").touch()
    said: list[str] = []
    result = calibrate(spec, trials, chosen, long_steps=5, say=said.append, run_fn=dying_long_run)
    assert not (spec.study_dir / "stop-once").exists()  # the worker did die
    died = [line for line in said if "was lost with its worker" in line]
    assert len(died) == 1 and re.match(
        rf"the long run of trial {end[0]} seed 1 was lost with its worker \(.+\): running it again$", died[0]
    ), said
    assert len(result.candidates) == 4 and all(len(c.long) == 1 and c.long[0]["steps"] == 5 for c in result.candidates)
    assert len((spec.study_dir / RUNS_FILE).read_text().splitlines()) == 4  # every run recorded, the lost one once
    # the lost run went on from its checkpoint after step 3, and made what a run never stopped makes
    runs = {c.number: c.long[0] for c in result.candidates}
    assert runs[end[0]]["resumed_at"] == 3 and all(runs[n]["resumed_at"] is None for n in runs if n != end[0])
    assert any(re.search(rf"trial {end[0]} .*, from step 3 on; ", line) for line in said), said
    assert _without_timing(runs[end[0]]) == _without_timing(_uninterrupted(spec, trials, end[0], 5))
    assert not any((spec.study_dir / CHECKPOINTS).iterdir())  # a recorded run's checkpoint is deleted


def test_a_calibration_stopped_mid_run_goes_on_from_the_checkpoint_when_run_again(demo_study):
    from sweep.errors import SweepError
    from sweep.run.calibrate import calibrate
    from sweep.run.longrun import CHECKPOINTS

    spec, trials, chosen, alphas, end = _reasoning_end(demo_study)
    (spec.study_dir / "stop-once").touch()
    with pytest.raises(SweepError) as caught:
        calibrate(spec, trials, chosen, long_steps=5, say=lambda _: None, run_fn=stopped_long_run)
    assert "RuntimeError: the driver was stopped" in str(caught.value)
    assert len(list((spec.study_dir / CHECKPOINTS).glob("*.pt"))) == len(end)  # what the stopped runs left
    said: list[str] = []
    result = calibrate(spec, trials, chosen, long_steps=5, say=said.append, checkpoint_every_s=0)
    assert f"reusing {len(chosen) - len(end)} of the {len(chosen)} long runs" in said[0], said
    assert any(
        re.fullmatch(rf"trial {end[0]} seed 1 goes on from its checkpoint: step 3/5, saved \d+ s ago", line)
        for line in said
    ), said
    again = {c.number: c.long[0] for c in result.candidates}[end[0]]
    assert again["resumed_at"] == 3
    assert _without_timing(again) == _without_timing(_uninterrupted(spec, trials, end[0], 5))
