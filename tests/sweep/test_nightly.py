"""`sweep nightly`: nights as a user runs them from cron, through the real command in its own
process (tests/sweep/nightly_driver.py: real Ray, real Optuna storage, the stand-in trial
and probe of tests/sweep/sweeps.py, so a night takes seconds plus Ray's start-up).

What is asserted is what a user sees: exit codes, the lines printed, nightly.json, the
trend page, the webhook's body. The demo family's nights (real merges, lm-eval, probe)
are in test_nightly_demo.py.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml

from sweep.cli import main

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 300
pytestmark = pytest.mark.slow  # nights are processes with their own Ray (~25 s each)


def nightly_spec(root: Path, trio: dict[str, Path], **extra) -> Path:
    prompts = root / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "1+1", "answer": "2"}) + "\n")
    spec = {
        "name": "nightly-{date}",
        "models": {role: str(path) for role, path in trio.items()},
        "evals": {"probe": {"prompts": str(prompts)}},
        "objectives": [
            {"metric": "probe/length_retention", "direction": "maximize"},
            {"metric": "probe/reward_dip", "direction": "minimize"},
        ],
        "constraints": ["probe/length_retention >= 0.2"],
        "sampler": {"name": "tpe", "seed": 0},
        "budget": {"trials": 4, "concurrent": 2},
        "results_dir": str(root / "results"),
    } | extra
    path = root / "nightly.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def night(spec: Path, date: str, *args: str, **env: str) -> subprocess.CompletedProcess:
    environment = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SWEEP_TEST_TRIAL_S": "0.2"} | env
    environment.pop("RAY_AUTH_MODE", None)
    environment.pop("SWEEP_NOTIFY_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "tests.sweep.nightly_driver", str(spec), "--date", date, *args],
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )


class Webhook:
    """A local HTTP server that records JSON bodies; `fail_first` requests get HTTP 503."""

    def __init__(self, fail_first: int = 0):
        self.bodies: list[dict] = []
        self.requests = 0
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                hook.requests += 1
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if hook.requests <= fail_first:
                    self.send_response(503)
                    self.end_headers()
                    return
                hook.bodies.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def series(tmp_path_factory, tiny_trio):
    """Two nights on the same models, the second re-run (resumed), then a degraded third
    night that notifies a webhook which fails twice before it answers."""
    root = tmp_path_factory.mktemp("nightly")
    spec = nightly_spec(root, tiny_trio)
    first = night(spec, "2026-01-01")
    second = night(spec, "2026-01-02")
    again = night(spec, "2026-01-02")
    hook = Webhook(fail_first=2)
    try:
        third = night(spec, "2026-01-03", "--notify", hook.url, SWEEP_TEST_DEGRADE="0.7")
    finally:
        hook.close()
    return root, [first, second, again, third], hook


def test_two_nights_on_the_same_models_exit_0_and_the_trend_shows_both(series):
    root, (first, second, _, _), _ = series
    assert first.returncode == 0, first.stdout + first.stderr
    assert "nightly nightly-2026-01-01: no regression" in first.stdout
    assert "no earlier night of this series: nothing to compare with (the first night)" in first.stdout
    assert second.returncode == 0, second.stdout + second.stderr
    out = second.stdout
    assert "compared with 2026-01-01 at the same points" in out
    # last night's front, warm-started first tonight, re-measured with 2 extra probe seeds each
    assert out.count("probe seeds: 1 before, 3 after") >= 1 and "repeat 1/" in out
    record = json.loads((root / "results" / "nightly-2026-01-02" / "nightly.json").read_text())
    assert record["verdict"] == "ok" and record["exit_code"] == 0 and record["regressions"] == []
    assert record["previous"]["date"] == "2026-01-01"
    points = record["comparison"]["points"]
    assert points and points[0]["balanced"] and all(p["number_after"] is not None for p in points)
    for change in points[0]["changes"]:
        assert abs(change["change"]) <= change["noise"], change
    trend = (root / "results" / "nightly-trend.md").read_text()
    assert "| 2026-01-01 | 4 |" in trend and "| 2026-01-02 | 4 |" in trend, trend
    assert (root / "results" / "nightly-trend.html").read_text().count("2026-01-0") >= 2


def test_a_night_that_already_ran_is_resumed_not_repeated(series):
    root, (_, second, again, _), _ = series
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already has 4 complete trials (budget 4): nothing to run" in again.stdout
    assert "repeat " not in again.stdout  # the repeats are in repeats.parquet already
    import pandas as pd

    trials = pd.read_parquet(root / "results" / "nightly-2026-01-02" / "trials.parquet")
    assert (trials["state"] == "COMPLETE").sum() == 4
    assert again.stdout.split("nightly nightly-2026-01-02:")[1] == second.stdout.split("nightly nightly-2026-01-02:")[1]


def test_a_degraded_night_exits_1_naming_the_metric_with_numbers_and_noise(series):
    root, (*_, third), _ = series
    assert third.returncode == 1, third.stdout + third.stderr
    out = third.stdout
    assert "nightly nightly-2026-01-03: REGRESSION" in out
    record = json.loads((root / "results" / "nightly-2026-01-03" / "nightly.json").read_text())
    assert record["verdict"] == "regression" and record["regressions"]
    regression = record["regressions"][0]
    assert regression["metric"] == "probe/length_retention"
    assert regression["after"] == pytest.approx(0.7 * regression["before"], rel=0.05)
    assert regression["change"] < -(regression["noise"] + 0.02)
    assert f"regression: {regression['text']}" in out
    assert f"{regression['before']:.4g} -> {regression['after']:.4g}" in regression["text"]
    assert "noise ±" in regression["text"] and "at 99%" in regression["text"]
    trend = (root / "results" / "nightly-trend.md").read_text()
    assert "| 2026-01-03 |" in trend and "regression: " in trend and "## Regressions" in trend


def test_the_webhook_gets_the_summary_after_retries(series):
    _, (*_, third), hook = series
    assert hook.requests == 3 and len(hook.bodies) == 1  # two 503s, then delivered
    body = hook.bodies[0]
    assert body["verdict"] == "regression" and body["exit_code"] == 1 and body["date"] == "2026-01-03"
    assert body["text"].startswith("sweep nightly nightly-2026-01-03: REGRESSION")
    assert body["regressions"][0]["metric"] == "probe/length_retention"
    assert body["regressions"][0]["text"] in body["text"]
    assert body["report"].endswith("nightly-2026-01-03/report.html") and body["trend"].endswith("nightly-trend.html")
    assert "notified http://127.0.0.1:" in third.stdout and "after 3 attempt(s)" in third.stdout


def test_a_webhook_that_never_answers_does_not_change_the_exit_code(series):
    """The degraded night again (resumed: nothing re-run), its webhook down: still exit 1, a warning."""
    root, *_ = series
    hook = Webhook()
    url = hook.url
    hook.close()  # nothing listens there now
    rerun = night(root / "nightly.yaml", "2026-01-03", "--notify", url, "--quiet", SWEEP_TEST_DEGRADE="0.7")
    assert rerun.returncode == 1, rerun.stdout + rerun.stderr
    assert rerun.stdout == ""  # --quiet: problems only, on stderr
    assert "nightly nightly-2026-01-03: REGRESSION" in rerun.stderr
    assert f"sweep nightly: warning: could not notify {url}:" in rerun.stderr and "after 4 attempts" in rerun.stderr
    record = json.loads((root / "results" / "nightly-2026-01-03" / "nightly.json").read_text())
    assert record["notified"]["delivered"] is False


def test_a_clean_night_logs_no_ray_warnings(series):
    root, *_ = series
    for date in ("2026-01-01", "2026-01-02"):
        log = (root / "results" / f"nightly-{date}" / "sweep.log").read_text()
        assert "WARNING" not in log and "Traceback" not in log, log


def test_bad_input_is_one_message_and_exit_2_before_any_work(tmp_path, tiny_trio, capsys):
    spec = nightly_spec(tmp_path, tiny_trio)
    assert main(["nightly", str(spec), "--date", "2026-13-01"]) == 2
    assert "--date '2026-13-01': give a date as YYYY-MM-DD" in capsys.readouterr().err
    assert main(["nightly", str(spec), "--notify", "slack-please"]) == 2
    assert "--notify 'slack-please': give an http:// or https:// webhook URL" in capsys.readouterr().err
    undated = nightly_spec(tmp_path, tiny_trio, name="nightly")
    assert main(["nightly", str(undated)]) == 2
    err = capsys.readouterr().err
    assert "a nightly spec's name must hold {date}" in err and "Traceback" not in err
    assert not (tmp_path / "results").exists()  # nothing created


def test_a_clean_night_with_quiet_prints_nothing(series):
    root, *_ = series
    rerun = night(root / "nightly.yaml", "2026-01-02", "--quiet")
    assert (rerun.returncode, rerun.stdout, rerun.stderr) == (0, "", ""), rerun.stdout + rerun.stderr


def test_a_night_with_failed_trials_is_incomplete_exit_2(tmp_path, tiny_trio):
    """Trials that raise leave the night short of its budget: exit 2 with the fix, not a verdict of 0."""
    spec = nightly_spec(
        tmp_path, tiny_trio, space={"points": [{"alpha": 0.9, "beta": 1.0}, {"alpha": 0.1, "beta": 1.0}]}
    )
    done = night(spec, "2026-01-01", SWEEP_TEST_FAIL_ABOVE="0.5")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "nightly nightly-2026-01-01: could not complete" in done.stdout
    assert "the night is incomplete:" in done.stdout and "run the same command again to resume" in done.stdout
    record = json.loads((tmp_path / "results" / "nightly-2026-01-01" / "nightly.json").read_text())
    assert record["verdict"] == "error" and record["exit_code"] == 2 and record["run"]["failed_this_run"] >= 1
