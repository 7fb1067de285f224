"""`sweep nightly` on the demo family, as a user runs it: `python -m sweep nightly` in its own
process with real Ray, real Optuna storage, real lm-eval and real probe steps.

Two nights on the same checkpoints both exit 0 and the trend page shows both; a third
night with a degraded reasoning checkpoint (the instruct member in its slot: it answers
additions directly and scores 0.00 on them; the shipped family's ancestor thinks and adds) exits 1,
naming the reasoning metric with its numbers and noise. Each night runs 4 trials (the
spec's three fixed points, then last night's front and the sampler) and 2 probe repeats
per compared point.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
REASONING = "lm_eval/toy_reasoning/exact_match,final"


def night(spec: Path, date: str, results: Path) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHONPATH": str(REPO)}
    env.pop("RAY_AUTH_MODE", None)
    env.pop("SWEEP_NOTIFY_URL", None)
    command = [sys.executable, "-m", "sweep", "nightly", str(spec), "--date", date, "--trials", "4"]
    return subprocess.run(
        [*command, "--results-dir", str(results)], cwd=REPO, env=env, capture_output=True, text=True, timeout=1800
    )


def test_two_demo_nights_then_a_degraded_reasoning_checkpoint(tmp_path, demo_family):
    spec = REPO / "search_spaces" / "nightly.yaml"
    degraded = tmp_path / "degraded.yaml"
    text = spec.read_text()
    assert "  reasoning: demo:reasoning\n" in text
    degraded.write_text(text.replace("  reasoning: demo:reasoning\n", "  reasoning: demo:instruct\n"))
    results = tmp_path / "results"

    for date in ("2026-01-01", "2026-01-02"):
        done = night(spec, date, results)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
        assert f"nightly nightly-{date}: no regression" in done.stdout
        log = (results / f"nightly-{date}" / "sweep.log").read_text()
        assert "WARNING" not in log, log  # a clean night: no Ray warnings either
    trend = (results / "nightly-trend.md").read_text()
    assert "| 2026-01-01 | 4 |" in trend and "| 2026-01-02 | 4 |" in trend, trend
    import pandas as pd

    table = pd.read_parquet(results / "nightly-2026-01-02" / "trials.parquet")
    assert REASONING + "_stderr" in table  # lm-eval's own stderr is recorded beside each score
    second = json.loads((results / "nightly-2026-01-02" / "nightly.json").read_text())
    assert second["comparison"]["points"][0]["number_after"] is not None  # last night's balanced point, re-measured

    done = night(degraded, "2026-01-03", results)
    assert done.returncode == 1, done.stdout[-4000:] + done.stderr[-4000:]
    record = json.loads((results / "nightly-2026-01-03" / "nightly.json").read_text())
    lost = [r for r in record["regressions"] if r["metric"] == REASONING]
    assert lost, record["regressions"]
    worst = min(lost, key=lambda r: r["change"])
    assert worst["params"] == {"alpha": 0.0, "beta": 1.0}  # the reasoning member's own slot
    assert worst["before"] >= 0.5 and worst["after"] <= 0.1 and -worst["change"] > worst["noise"] + 0.02
    assert f"regression: {worst['text']}" in done.stdout
    assert f"{REASONING} at (alpha 0.000, beta 1.000)" in worst["text"] and "noise ±" in worst["text"]
    assert "| 2026-01-03 |" in (results / "nightly-trend.md").read_text()
