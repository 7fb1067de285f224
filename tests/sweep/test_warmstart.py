"""Nightly warm start: the latest earlier study's Pareto front is enqueued first."""

from __future__ import annotations

from sweep.config import parse_spec
from sweep.run.warmstart import previous_studies, warm_start_points
from sweep.study.durable import enqueue_points, open_study
from tests.sweep.test_compare import GOOD, SPEC, make_study


def test_latest_previous_front_is_enqueued_once(tmp_path):
    make_study(tmp_path, "nightly-2026-11-23", [(0.1, 1.0, 0.99, 0.5), (0.9, 1.0, 0.2, 0.0)])
    make_study(tmp_path, "nightly-2026-11-24", GOOD + [(0.4, 0.6, 0.5, 0.4)])  # the last point is dominated
    text = SPEC.format(name="nightly-2026-11-25", root=tmp_path) + f"warm_start_from: ['{tmp_path}/nightly-*']\n"
    spec = parse_spec(text)
    assert previous_studies(spec) == [tmp_path / "nightly-2026-11-24"]
    points = warm_start_points(spec)
    assert sorted((p["alpha"], p["beta"]) for p in points) == sorted((a, b) for a, b, _, _ in GOOD)
    study = open_study(spec)
    assert enqueue_points(study, points) == 3
    assert enqueue_points(study, warm_start_points(spec)) == 0  # a rerun adds nothing twice
    waiting = [t.system_attrs["fixed_params"] for t in study.trials if t.state.name == "WAITING"]
    assert len(waiting) == 3


def test_points_outside_this_space_are_skipped(tmp_path):
    make_study(tmp_path, "old", GOOD)
    text = (
        SPEC.format(name="new", root=tmp_path)
        + f"warm_start_from: ['{tmp_path}/old']\nspace: {{beta: {{low: 0.95, high: 1.0}}}}\n"
    )
    points = warm_start_points(parse_spec(text))
    assert sorted(p["alpha"] for p in points) == [0.2, 0.8]  # beta 0.9 is outside [0.95, 1]


def test_no_previous_study_is_not_an_error(tmp_path):
    text = SPEC.format(name="first", root=tmp_path) + f"warm_start_from: ['{tmp_path}/nightly-*']\n"
    assert warm_start_points(parse_spec(text)) == []
