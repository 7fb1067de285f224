"""What a morning reader trusts: an interrupted trial reads as interrupted (never as a
failure) in the progress lines, the run's summary, the report and the Pareto summary; a
file storage whose folder is missing (an unmounted share) is refused by `validate` and
`run` before anything is created."""

from __future__ import annotations

import signal
import time

import pytest

from sweep.cli import main
from sweep.report.summary import summarize
from sweep.study.durable import load_study_dir
from tests.sweep.test_drivers import DRIVER_TIMEOUT_S, _running, driver_env, finish, start_driver, write_spec
from tests.sweep.test_validate import base_spec, validate, workspace, write  # noqa: F401 - fixture


@pytest.mark.parametrize("kind", ["journal", "sqlite"])
def test_validate_and_run_refuse_a_storage_folder_that_does_not_exist(workspace, tiny_trio, capsys, kind):  # noqa: F811
    folder = workspace / f"not-mounted-{kind}" / "sweeps"
    storage = str(folder / "x.journal") if kind == "journal" else f"sqlite:///{folder / 'x.db'}"
    path = write(workspace, f"{kind}.yaml", base_spec(tiny_trio) | {"storage": storage, "name": f"share-{kind}"})
    code, output = validate(path, capsys)
    assert code == 2, output
    assert f"the folder {folder} does not exist" in output and "the share may not be mounted" in output
    assert "Traceback" not in output
    code = main(["run", str(path)])
    output = capsys.readouterr().err
    assert code == 2 and f"the folder {folder} does not exist" in output
    assert not folder.parent.exists() and not (workspace / "results" / f"share-{kind}").exists()
    folder.mkdir(parents=True)  # mounted: the same spec is fine
    code, output = validate(path, capsys)
    assert code == 0, output


def test_the_default_storage_in_a_new_study_folder_is_fine(workspace, tiny_trio, capsys):  # noqa: F811
    """The study folder is the one folder a run creates itself (sqlite:///<results>/<name>/study.db)."""
    path = write(workspace, "default.yaml", base_spec(tiny_trio) | {"name": "fresh-study"})
    code, output = validate(path, capsys)
    assert code == 0 and not (workspace / "results" / "fresh-study").exists(), output


@pytest.mark.slow
def test_an_interrupted_run_reads_interrupted_not_failed_and_resumes(tmp_path):
    """SIGTERM mid-sweep, then the same command again: the stopped trials show as
    interrupted in the first run's summary, never as failed; the resumed run's progress
    lines and summary say `failed 0`; the report and the Pareto summary count them apart."""
    journal = str(tmp_path / "study.journal")
    spec_path = write_spec(
        tmp_path,
        tmp_path / "results",
        name="stopped",
        storage=journal,
        budget=5,
        extra={"budget": {"trials": 5, "concurrent": 2}},
    )
    proc = start_driver(spec_path, env=driver_env(SWEEP_TEST_TRIAL_S="4"))
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while _running(journal, "stopped") < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 130, f"{out[-3000:]}\n{err[-3000:]}"
    assert "interrupted: trial(s)" in out and "recorded as interrupted (not failed) and queued again" in out
    assert "0 failed this run" in out and "interrupted (queued again)" in out, out
    assert "marked FAIL" not in out

    code, out, err = finish(start_driver(spec_path, env=driver_env(SWEEP_TEST_TRIAL_S="0.3")))
    assert code == 0, f"{out[-3000:]}\n{err[-3000:]}"
    progress = [line for line in out.splitlines() if line.startswith("[")]
    assert progress and all(", failed 0, interrupted " in line for line in progress), progress
    assert "5/5 complete, 0 failed this run" in out

    study_dir = tmp_path / "results" / "stopped"
    spec, trials = load_study_dir(study_dir)
    stopped = int((trials["failure_kind"] == "interrupted").sum())
    assert stopped >= 1
    summary = summarize(trials, spec.objectives, spec.constraints)
    assert (summary.n_failed, summary.n_interrupted, summary.n_complete) == (0, stopped, 5)
    assert main(["report", str(study_dir)]) == 0
    md = (study_dir / "report.md").read_text()
    assert f"0 failed, {stopped} interrupted and queued again" in md and "## Failed trials" not in md
    html = (study_dir / "report.html").read_text()
    assert html.count('<td class="text">INTERRUPTED</td>') == stopped
