"""Several `sweep run` drivers on one study, on a journal file and on a real PostgreSQL
server started here; a storage outage mid-sweep; the password never printed or written.

Every driver is a real process with its own local Ray (tests/sweep/driver.py: the run
command with the stand-in trial of tests/sweep/sweeps.py, so a trial takes ~1 s).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from tests.sweep import pg

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
DRIVER_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def postgres():
    server, reason = pg.start_or_skip_reason()
    if server is None:
        pytest.skip(reason)
    try:
        yield server
    finally:
        server.close()


def write_spec(root: Path, results: Path, *, name: str, storage: str, budget: int, extra: dict | None = None) -> Path:
    spec = {
        "name": name,
        "models": {"pretrained": f"{root}/m/p", "instruct": f"{root}/m/i", "reasoning": f"{root}/m/r"},
        "evals": {"probe": {"prompts": f"{root}/m/prompts.jsonl"}},
        "objectives": [
            {"metric": "probe/length_retention", "direction": "maximize"},
            {"metric": "probe/reward_dip", "direction": "minimize"},
        ],
        "constraints": ["probe/length_retention >= 0.2"],
        "sampler": {"name": "tpe", "seed": 0},
        "budget": {"trials": budget, "concurrent": 1},
        "space": {"points": [{"alpha": 0.5, "beta": 1.0}, {"alpha": 0.0, "beta": 1.0}]},
        "results_dir": str(results),
        "storage": storage,
    } | (extra or {})
    results.mkdir(parents=True, exist_ok=True)
    path = results.parent / f"{results.name}.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def driver_env(**extra: str) -> dict[str, str]:
    return os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SWEEP_TEST_TRIAL_S": "1.0"} | extra


def start_driver(spec_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sweep.driver", str(spec_path), *args],
        cwd=REPO,
        env=env or driver_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def run_driver(spec_path: Path) -> subprocess.CompletedProcess:
    """A driver expected to stop at once (bad input): run to its end, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "tests.sweep.driver", str(spec_path)],
        cwd=REPO,
        env=driver_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=DRIVER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"driver did not finish in {DRIVER_TIMEOUT_S} s:\n{out[-3000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def check_study(url: str, name: str, budget: int) -> list:
    study = optuna.load_study(
        study_name=name,
        storage=url
        if "://" in url
        else optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(url)),
    )
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    keys = [tuple(round(t.params[k], 9) for k in sorted(t.params)) for t in complete]
    assert len(complete) == budget, [(t.number, t.state.name, t.user_attrs.get("error")) for t in trials]
    assert len(set(keys)) == len(keys), f"duplicate params among COMPLETE trials: {sorted(keys)}"
    fails = [(t.number, t.user_attrs.get("error")) for t in trials if t.state.name == "FAIL"]
    assert fails == [], f"FAIL trials (no trial fails here, so each reason is false): {fails}"
    assert not [t for t in trials if t.state.name == "RUNNING"], "a trial was left RUNNING (lost)"
    skipped = [t for t in trials if t.state.name == "PRUNED"]
    assert all(t.user_attrs.get("error", "").startswith("not run:") for t in skipped)
    return complete


def run_two_drivers(root: Path, storage: str, *, name: str, budget: int, env: dict | None = None):
    """Two drivers started at once; every trial waits until both hold a lease on the study
    (a driver's Ray start-up took 5 to 45 s on a loaded box: without the gate, one driver
    could finish the whole budget before the other was up)."""
    specs = [write_spec(root, root / f"results-{who}", name=name, storage=storage, budget=budget) for who in "ab"]
    gate = root / "gate"
    gate.touch()
    env = (env or driver_env(SWEEP_TEST_TRIAL_S="2")) | {"SWEEP_TEST_GATE": str(gate)}
    procs = [start_driver(path, env=env) for path in specs]
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while _leases(env.get("SWEEP_STORAGE") or storage, name) < 2:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        assert time.monotonic() < deadline, "the two drivers did not both start in time"
        time.sleep(0.3)
    gate.unlink()
    outcomes = [finish(p) for p in procs]
    for code, out, err in outcomes:
        assert code == 0, f"exit {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
        assert "interrupted" not in out + err
    return specs, outcomes


def test_two_drivers_on_a_fresh_journal_share_the_budget(tmp_path):
    (tmp_path / "shared").mkdir()  # the share is mounted: a journal's folder must exist
    journal = str(tmp_path / "shared" / "study.journal")
    run_two_drivers(tmp_path, journal, name="shared-journal", budget=6)
    complete = check_study(journal, "shared-journal", 6)
    assert len({t.user_attrs["driver"] for t in complete}) == 2, "both drivers ran trials"


def test_two_drivers_on_fresh_postgres_then_on_the_existing_study(tmp_path, postgres):
    url = postgres.create_database("fresh")
    env = driver_env(
        SWEEP_STORAGE=url, SWEEP_TEST_TRIAL_S="2"
    )  # 2 s trials: both drivers are up before the work is done
    # Fresh database: both create the schema and the study at once.
    specs, outcomes = run_two_drivers(tmp_path, "env:SWEEP_STORAGE", name="shared-pg", budget=4, env=env)
    complete = check_study(url, "shared-pg", 4)
    # The existing study, topped up to 10 by two drivers started at once (distinct seeds,
    # no duplicate proposals).
    more = [
        write_spec(tmp_path, tmp_path / f"results-{who}2", name="shared-pg", storage="env:SWEEP_STORAGE", budget=10)
        for who in "ab"
    ]
    procs = [start_driver(path, env=env) for path in more]
    outcomes += [finish(p) for p in procs]
    for code, out, err in outcomes[2:]:
        assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    complete = check_study(url, "shared-pg", 10)
    assert len({t.user_attrs["driver"] for t in complete}) >= 3
    # The password was never printed or written (the storage came from the environment).
    assert_no_password(outcomes, [tmp_path / f"results-{d}" for d in ("a", "b", "a2", "b2")])


def assert_no_password(outcomes, folders, at_least: int = 8) -> None:
    for _code, out, err in outcomes:
        assert pg.PASSWORD not in out and pg.PASSWORD not in err
    checked = 0
    for folder in folders:
        for path in Path(folder).rglob("*"):
            if path.is_file():
                assert pg.PASSWORD.encode() not in path.read_bytes(), f"password found in {path}"
                checked += 1
    assert checked >= at_least  # spec.json, trials.parquet/.csv, sweep.log, ... in each folder


def test_storage_stopped_mid_sweep_loses_no_finished_trial(tmp_path, postgres):
    url = postgres.create_database("outage")
    spec_path = write_spec(tmp_path, tmp_path / "results", name="outage", storage=url, budget=8)
    proc = start_driver(spec_path, env=driver_env(SWEEP_TEST_TRIAL_S="1.5"))
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while _complete(url, "outage") < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no 2 complete trials in time"
        time.sleep(0.5)
    # The database is gone for at least 10 s while trials keep finishing, and until the
    # driver has logged the outage: on a slow machine no storage call may fall within a
    # fixed 10 s, and the outage would go unseen.
    postgres.stop("fast")
    log_path = tmp_path / "results" / "outage" / "sweep.log"
    outage_ends = time.monotonic() + 10
    while time.monotonic() < outage_ends or "storage unreachable" not in _text(log_path):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the driver never logged the storage outage"
        time.sleep(0.5)
    postgres.start()
    code, out, err = finish(proc)
    assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    check_study(url, "outage", 8)
    log = (tmp_path / "results" / "outage" / "sweep.log").read_text()
    assert "storage unreachable" in log  # the outage was seen, and waited out
    assert not (tmp_path / "results" / "outage" / "spool.jsonl").exists()  # nothing left unsent
    # The password sat in the spec's storage URL: masked in everything printed and written.
    assert_no_password([(code, out, err)], [tmp_path / "results"], at_least=4)


def _text(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def _leases(storage: str, name: str) -> int:
    """How many drivers hold (or held) a lease on the study; 0 before it exists."""
    try:
        backend = (
            storage
            if "://" in storage
            else optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(storage))
        )
        attrs = optuna.load_study(study_name=name, storage=backend).user_attrs
    except Exception:  # noqa: BLE001 - not created yet
        return 0
    return sum(key.startswith("sweep_driver:") for key in attrs)


def _complete(url: str, name: str) -> int:
    try:
        return sum(
            t.state.name == "COMPLETE"
            for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
        )
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_unreachable_storage_or_missing_driver_is_one_error_and_creates_nothing(tmp_path, postgres):
    closed = f"postgresql://sweep:{pg.PASSWORD}@127.0.0.1:{pg._free_port()}/nothing"
    spec_path = write_spec(tmp_path, tmp_path / "results", name="nowhere", storage=closed, budget=2)
    proc = run_driver(spec_path)
    assert proc.returncode == 2, proc.stderr
    assert (
        "cannot reach the storage postgresql://sweep:***@127.0.0.1" in proc.stderr
        and "Nothing was created" in proc.stderr
    )
    assert pg.PASSWORD not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "nowhere").exists()

    import importlib.util

    if importlib.util.find_spec("psycopg2") is None:  # a driver that is not installed
        spec_path = write_spec(
            tmp_path,
            tmp_path / "results",
            name="nodriver",
            budget=2,
            storage=postgres.create_database("nodriver").replace("postgresql://", "postgresql+psycopg2://"),
        )
        proc = run_driver(spec_path)
        assert proc.returncode == 2 and "the database driver `psycopg2` is not installed" in proc.stderr, proc.stderr
        assert not (tmp_path / "results" / "nodriver").exists()


def test_ctrl_c_marks_only_this_drivers_trials_interrupted_and_exits_130(tmp_path):
    journal = str(tmp_path / "study.journal")
    spec_path = write_spec(
        tmp_path,
        tmp_path / "results",
        name="ctrl-c",
        storage=journal,
        budget=6,
        extra={"budget": {"trials": 6, "concurrent": 2}},
    )
    proc = start_driver(spec_path, env=driver_env(SWEEP_TEST_TRIAL_S="4"))
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while _running(journal, "ctrl-c") < 1:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.3)
    time.sleep(1.0)
    proc.send_signal(2)  # SIGINT, as Ctrl-C sends it to the driver
    code, out, err = finish(proc)
    assert code == 130, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    trials = _journal_study(journal, "ctrl-c").get_trials(deepcopy=False)
    interrupted = [t for t in trials if t.state.name == "FAIL"]
    assert interrupted and all(t.user_attrs["failure_kind"] == "interrupted" for t in interrupted)
    assert "interrupted: trial(s)" in out
    assert not [t for t in trials if t.state.name == "RUNNING"]
    waiting = [t.system_attrs["fixed_params"] for t in trials if t.state.name == "WAITING"]
    assert all(t.params in waiting for t in interrupted)  # queued again


def _journal_study(journal: str, name: str):
    return optuna.load_study(
        study_name=name, storage=optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(journal))
    )


def _running(journal: str, name: str) -> int:
    try:
        return sum(t.state.name == "RUNNING" for t in _journal_study(journal, name).get_trials(deepcopy=False))
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def test_a_driver_killed_mid_sweep_leaves_its_trials_to_the_other(tmp_path):
    journal = str(tmp_path / "shared.journal")
    specs = [
        write_spec(tmp_path, tmp_path / f"results-{who}", name="survivor", storage=journal, budget=8) for who in "ab"
    ]
    env = driver_env(SWEEP_TEST_TRIAL_S="3")
    first, second = (start_driver(path, env=env) for path in specs)
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    while True:  # both drivers busy: then the first dies with its trial in flight
        drivers = {
            t.user_attrs.get("driver") for t in _trials_or_none(journal, "survivor") if t.state.name == "RUNNING"
        } - {None}
        if len(drivers) == 2:
            break
        assert first.poll() is None and second.poll() is None, "a driver ended before both ran a trial"
        assert time.monotonic() < deadline
        time.sleep(0.3)
    os.killpg(first.pid, 9)  # the driver and its local Ray
    first.communicate()
    code, out, err = finish(second)
    assert code == 0, f"exit {code}\n{out[-3000:]}\n{err[-3000:]}"
    trials = _journal_study(journal, "survivor").get_trials(deepcopy=False)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    keys = [tuple(round(t.params[k], 9) for k in sorted(t.params)) for t in complete]
    assert len(complete) == 8 and len(set(keys)) == 8
    orphans = [t for t in trials if t.state.name == "FAIL"]
    assert orphans and all(t.user_attrs["failure_kind"] == "orphaned" for t in orphans)
    assert all(any(c.params == t.params for c in complete) for t in orphans)  # rerun by the survivor
    assert not [t for t in trials if t.state.name == "RUNNING"]


def _trials_or_none(journal: str, name: str) -> list:
    try:
        return _journal_study(journal, name).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet
        return []
