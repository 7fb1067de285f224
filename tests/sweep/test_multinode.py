"""A real two-node Ray cluster on 127.0.0.1 (tests/sweep/raycluster.py): a sweep joins it with
--address, runs trials on both nodes, and survives the worker node's raylet being killed
mid-trial. Also: a cluster that refuses the driver's token is one clear error."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest

from tests.sweep.raycluster import LocalCluster
from tests.sweep.test_drivers import DRIVER_TIMEOUT_S, REPO, driver_env, finish, start_driver, write_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    cluster = LocalCluster()
    try:
        cluster.start()
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        cluster.stop()
        pytest.skip(f"could not start a two-node Ray cluster: {exc}")
    try:
        yield cluster
    finally:
        cluster.stop()


def _trials(spec_path: Path, name: str) -> list:
    url = f"sqlite:///{spec_path.parent / spec_path.stem / name / 'study.db'}"
    try:
        return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
    except Exception:  # noqa: BLE001 - not created yet
        return []


# one node named: the worker node, by its address and the start of its Ray node id
UNSHARED = re.compile(r"is not on a file system that the Ray node\(s\) at [\w.:]+ \(node [0-9a-f]{8}\) see: ")


def _swept_study(tmp_path: Path, cluster, name: str, *, shared: bool = True) -> tuple[Path, dict]:
    """A study of 4 stand-in trials swept on the cluster, 2 at a time: (its folder, the driver env).
    The driver warns when a node does not see the results folder, and only then."""
    spec_path = write_spec(
        tmp_path,
        tmp_path / "results",
        name=name,
        storage="",
        budget=4,
        extra={"budget": {"trials": 4, "concurrent": 2}},
    )
    spec_path.write_text(spec_path.read_text().replace("storage: ''\n", ""))
    env = driver_env(RAY_AUTH_MODE="token", SWEEP_TEST_TRIAL_S="0.5")
    code, _, err = finish(start_driver(spec_path, "--quiet", "--address", cluster.address, env=env))
    assert code == 0, err[-3000:]
    assert (UNSHARED.search(err) is None) is shared, err[-3000:]
    return tmp_path / "results" / name, env


def _calibrate_command(study: Path, cluster, *more: str) -> list[str]:
    """`sweep calibrate STUDY --address` with the stand-in's long runs (tests/sweep/driver.py)."""
    return [sys.executable, "-m", "tests.sweep.driver", "--calibrate", str(study), "--address", cluster.address, *more]


def _calibrate(study: Path, cluster, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        _calibrate_command(study, cluster), cwd=REPO, env=env, capture_output=True, text=True, timeout=DRIVER_TIMEOUT_S
    )


def test_calibrate_runs_its_long_runs_on_both_nodes_and_records_each(tmp_path, cluster):
    """Before the node-loss test below (which kills the worker node): a study swept on the
    cluster, then `sweep calibrate --address` on it, its long runs spread over both nodes."""
    import json

    study, env = _swept_study(tmp_path, cluster, "calnodes")
    # each long run takes the cluster's SWEEP_TEST_TRIAL_S, 3 s (workers take their node's environment)
    proc = _calibrate(study, cluster, env)
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    record = json.loads((study / "calibration.json").read_text())
    assert len(record["candidates"]) == 4 and record["long_steps"] == 32
    runs = [json.loads(line)["outcome"] for line in (study / "calibration-runs.jsonl").read_text().splitlines()]
    assert len(runs) == 4 and len({run["node"] for run in runs}) == 2, runs  # both nodes ran long runs
    assert sum(f"long run {i}/4: trial " in proc.stderr for i in range(1, 5)) == 4, proc.stderr[-3000:]
    assert "calibrating 4 candidates of calnodes" in proc.stderr and "2 at a time" in proc.stderr
    assert UNSHARED.search(proc.stderr) is None  # both nodes see tmp_path: no warning


def test_a_node_that_does_not_see_the_models_is_refused_and_one_without_the_results_warned(tmp_path):
    """A worker node that sees two folders as empty disks of its own (tmpfs mounted over them
    in its own mount namespace): one holds the spec's models and prompts, one is the results
    folder. A sweep whose models are there exits 2 naming the node and each field before
    anything is created; one whose models every node sees runs on both nodes, and `sweep
    run` and `sweep calibrate` each warn that the node does not see the results folder,
    because a run lost with it could not go on from its checkpoint. (The module's cluster,
    which shares the folders, gets no warning.)"""
    import json

    if subprocess.run(["unshare", "--mount", "--map-root-user", "true"], capture_output=True).returncode != 0:
        pytest.skip("this machine does not allow a mount namespace (unshare --mount --map-root-user)")
    hidden, results = tmp_path / "hidden", tmp_path / "results"
    for role in ("p", "i", "r"):
        (hidden / "m" / role).mkdir(parents=True)
    (hidden / "m" / "prompts.jsonl").write_text('{"prompt": "1+1", "answer": "2"}\n')
    results.mkdir()
    cluster = LocalCluster(private=(hidden, results))
    cluster.env["SWEEP_TEST_TRIAL_S"] = "0.5"  # the stand-in long runs: what is asked here is the warning
    try:
        cluster.start()
        spec_path = write_spec(hidden, results, name="unseen", storage="", budget=2)
        spec_path.write_text(spec_path.read_text().replace("storage: ''\n", ""))
        env = driver_env(RAY_AUTH_MODE="token")
        code, _, err = finish(start_driver(spec_path, "--quiet", "--address", cluster.address, env=env))
        study, env = _swept_study(tmp_path, cluster, "private", shared=False)
        proc = _calibrate(study, cluster, env)
    finally:
        cluster.stop()
    assert code == 2, err[-3000:]
    node = re.search(
        r"Ray node\(s\) that can run trials do not see what the spec names: ([\w.:]+ \(node [0-9a-f]{8}\))", err
    )
    assert node, err[-3000:]
    for field, path in [("models.pretrained", "m/p"), ("models.instruct and models.tokenizer", "m/i")]:
        assert f"{field} {hidden / path}" in err
    assert f"evals.probe.prompts {hidden / 'm' / 'prompts.jsonl'}" in err and "Nothing was run" in err
    assert not (results / "unseen").exists()  # refused before the study or its log was made
    assert proc.returncode in (0, 1), proc.stderr[-3000:]
    assert (found := UNSHARED.search(proc.stderr)), proc.stderr[-3000:]
    assert proc.stderr[found.end() :].startswith("a long run lost with such a node starts over")
    runs = [json.loads(line)["outcome"] for line in (study / "calibration-runs.jsonl").read_text().splitlines()]
    assert len(runs) == 4 and len({run["node"] for run in runs}) == 2, runs  # a warning, not a refusal
    assert not list(study.glob(".sweep-visible-*"))  # the marker is gone


def test_a_long_run_lost_with_its_node_runs_again_and_the_pool_grows_back_when_a_node_joins(tmp_path, cluster):
    """`sweep calibrate --address` (12 long runs of 3 s) with both nodes busy, then the
    worker node's raylet killed and a worker node started again: the long run the dead
    node held runs again, the worker started in the dead one's place runs long runs on the
    node that joined, and calibrate finishes with all 12 recorded."""
    import json

    study, env = _swept_study(tmp_path, cluster, "calloss")
    marks = study / "marks"  # the stand-in long run leaves a file here as it starts, named by its node
    marks.mkdir()
    proc = subprocess.Popen(
        _calibrate_command(study, cluster, "--seeds", "1", "2", "3"),
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )

    def nodes() -> set[str]:
        return {m.name.split("-")[0] for m in marks.iterdir()}

    try:
        deadline = time.monotonic() + DRIVER_TIMEOUT_S
        while len(nodes()) < 2:  # a long run on each node
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "calibrate did not use both nodes in time"
            time.sleep(0.2)
        before = nodes()
        os.kill(cluster.worker_raylet(), signal.SIGKILL)
        cluster.start_worker()  # a node joins again (for the tests below too) while runs are left
        code, out, err = finish(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code in (0, 1), f"exit {code}\n{err[-3000:]}"
    assert re.search(r"the long run of trial \d+ seed \d was lost with its worker \(.+\): running it again", err), err[
        -3000:
    ]
    runs = [json.loads(line)["outcome"] for line in (study / "calibration-runs.jsonl").read_text().splitlines()]
    assert len(runs) == 12 and len(json.loads((study / "calibration.json").read_text())["candidates"]) == 4
    assert "long run 12/12: trial " in err and "FAILED" not in err
    joined = nodes() - before  # the pool grew back: long runs started on the node that joined
    assert len(joined) == 1 and any(run["node"] in joined for run in runs), (before, nodes(), err[-3000:])


def test_node_loss_mid_trial_loses_nothing_and_reruns_the_lost_point(tmp_path, cluster):
    spec_path = write_spec(
        tmp_path,
        tmp_path / "results",
        name="nodes",
        storage="",
        budget=6,
        extra={"budget": {"trials": 6, "concurrent": 2}},
    )
    text = spec_path.read_text().replace("storage: ''\n", "")
    spec_path.write_text(text)
    env = driver_env(RAY_AUTH_MODE="token", SWEEP_TEST_TRIAL_S="3")
    proc = start_driver(spec_path, "--quiet", "--address", cluster.address, env=env)
    deadline = time.monotonic() + DRIVER_TIMEOUT_S
    # Wait until both nodes have finished a trial and both are busy again, then kill the
    # worker node's raylet: the trial running there is lost with its node.
    while True:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the sweep did not use both nodes in time"
        trials = _trials(spec_path, "nodes")
        nodes = {t.user_attrs["worker"].get("node_id") for t in trials if t.state.name == "COMPLETE"}
        if len(nodes) == 2 and sum(t.state.name == "RUNNING" for t in trials) == 2:
            break
        time.sleep(0.3)
    os.kill(cluster.worker_raylet(), signal.SIGKILL)
    code, out, err = finish(proc)
    assert code == 0, f"exit {code}\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-3000:]}"
    url = f"sqlite:///{tmp_path / 'results' / 'nodes' / 'study.db'}"
    study = optuna.load_study(study_name="nodes", storage=url)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6 and not [t for t in study.trials if t.state.name == "RUNNING"]
    keys = [tuple(round(t.params[k], 9) for k in sorted(t.params)) for t in complete]
    assert len(set(keys)) == 6, "a point ran twice"
    lost = [t for t in study.trials if t.state.name == "FAIL"]
    assert lost, "the killed node's trial was recorded"
    for trial in lost:
        assert trial.user_attrs["failure_kind"] == "infrastructure"
        assert "infrastructure: the Ray node or worker running this trial was lost" in trial.user_attrs["error"]
        assert any(t.params == trial.params for t in complete), "the lost trial's params were proposed again"
    # --quiet: nothing on stdout; on stderr only our own lines (the lost trial), none of Ray's.
    assert out == ""
    for line in err.splitlines():
        assert re.match(r"^(\[\d+/6\] trial \d+ |done: |marked \d+ trial)", line), f"not a sweep line: {line!r}"
    log = (tmp_path / "results" / "nodes" / "sweep.log").read_text()
    assert "infrastructure" in log


def test_a_cluster_refusing_the_token_is_one_clear_error(tmp_path, cluster):
    spec_path = write_spec(tmp_path, tmp_path / "results", name="refused", storage="", budget=2)
    spec_path.write_text(spec_path.read_text().replace("storage: ''\n", ""))
    env = {k: v for k, v in driver_env().items() if not k.startswith("RAY_AUTH")} | {"RAY_AUTH_MODE": "disabled"}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.sweep.driver", str(spec_path), "--address", cluster.address],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "refused this driver's authentication token" in proc.stderr
    assert "RAY_AUTH_MODE" in proc.stderr and "~/.ray/auth_token" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "refused").exists()  # nothing created before Ray is reached
