"""The trials table's schema lives in sweep.study.table alone: its bookkeeping columns reach the
table and stay out of the metrics everywhere metrics are listed (the report, the balanced
point, the model card), and a new column needs no other module to learn of it."""

from __future__ import annotations

import json

import pytest

from sweep.cli import main
from sweep.study import table
from tests.sweep.test_export_mergekit import make_study

METRICS = {"lm_eval/toy/exact_match,final": 0.5, "probe/length_retention_noise": 0.05}  # beside length_retention
METRIC_NAMES = sorted(["probe/length_retention", *METRICS])


def bookkeeping(spec) -> dict:
    """Every kind of bookkeeping attribute a run records on a trial."""
    from sweep.study.fingerprint import recipe
    from sweep.study.records import ATTR_DRIVER, ATTR_RECIPE, ATTR_RETRIES, ATTR_TIMINGS

    return {
        ATTR_DRIVER: "host:1:abc",
        ATTR_RETRIES: ["worker died"],
        ATTR_RECIPE: recipe(spec),  # what the trial ran with, as a run records it
        ATTR_TIMINGS: {"merge_s": 0.1, "total_s": 1.0},
    }


def study_with_bookkeeping(root, trio):
    """A real SQLite study whose trials carry every kind of bookkeeping attribute."""
    import optuna

    spec = make_study(root, trio, stage1={"method": "linear"}, name="book", metrics=METRICS, attrs=bookkeeping)
    return spec, optuna.load_study(study_name=spec.name, storage=spec.storage_url)


def test_bookkeeping_columns_are_in_the_table_and_nowhere_a_metric_is_listed(tiny_trio, tmp_path, capsys):
    spec, _ = study_with_bookkeeping(tmp_path, tiny_trio)
    trials = table.read(spec.study_dir)
    assert {"driver", "retries", "failure_kind", "recipe", "timing/merge_s"} <= set(trials.columns)
    assert trials.loc[0, "retries"] == 1 and trials.loc[0, "driver"] == "host:1:abc"
    assert sorted(table.metric_columns(trials.columns)) == METRIC_NAMES
    # the report's balanced point lists metrics only
    assert main(["report", str(spec.study_dir)]) == 0
    md = (spec.study_dir / "report.md").read_text()
    assert "retries" not in md and "driver" not in md and "failure\\_kind" not in md
    # and so does the model card
    out = tmp_path / "card"
    assert main(["export", str(spec.study_dir), "--balanced", "--recipe-only", "--out", str(out), "--quiet"]) == 0
    record = json.loads((out / "sweep_export.json").read_text())
    assert sorted(record["metrics"]) == METRIC_NAMES
    card = (out / "README.md").read_text()
    assert "`retries`" not in card and "`driver`" not in card and "`probe/length_retention`" in card


def test_a_new_column_reaches_the_table_and_stays_out_of_the_metrics(tiny_trio, tmp_path, monkeypatch):
    monkeypatch.setitem(table.COLUMNS, "queue", "the queue a trial waited in")
    spec, study = study_with_bookkeeping(tmp_path, tiny_trio)
    built = table.build(study, spec)
    assert "queue" in built.columns and "queue" in table.read(spec.study_dir).columns
    assert "queue" not in table.metric_columns(built.columns)
    assert sorted(table.metric_columns(built.columns)) == METRIC_NAMES


def test_reading_a_missing_or_damaged_table_names_the_file(tmp_path):
    from sweep.errors import SweepError

    with pytest.raises(SweepError, match=r"no trials table at .*trials.parquet: run `python -m sweep run SPEC` first"):
        table.read(tmp_path)
    (tmp_path / table.TRIALS_FILE).write_text("not parquet")
    with pytest.raises(SweepError, match=r"cannot read .*trials.parquet"):
        table.read(tmp_path)
