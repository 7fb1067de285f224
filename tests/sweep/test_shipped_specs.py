"""Every shipped spec loads, starts with a comment saying what it is for, and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from sweep.config import load_spec
from sweep.config.checks import spec_problems

SPACES = Path(__file__).resolve().parents[2] / "search_spaces"
SPECS = sorted(SPACES.glob("*.yaml"))


def test_the_three_specs_are_shipped():
    assert {p.name for p in SPECS} >= {"demo.yaml", "bai-7b.yaml", "nightly.yaml"}


@pytest.mark.parametrize("path", SPECS, ids=[p.name for p in SPECS])
def test_spec_starts_with_a_comment_and_loads(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and len(first) > 20
    spec = load_spec(path, resolve_demo=False)
    assert spec.objectives and spec.budget.trials >= 1


def test_cluster_example_validates_except_for_its_model_paths():
    spec = load_spec(SPACES / "bai-7b.yaml", resolve_demo=False)
    _, problems = spec_problems(spec)
    assert problems, "the /ckpt paths do not exist here"
    assert all(p.startswith("models.") for p in problems), problems


def test_nightly_spec_scores_and_probes_as_the_demo_spec_does():
    """The nightly spec runs the demo family with the demo spec's eval and probe settings
    (demo.yaml's comments say why each: a 5e-4 probe or 64 eval tokens misread this family)."""
    demo, nightly = (load_spec(SPACES / name, resolve_demo=False) for name in ("demo.yaml", "nightly.yaml"))
    assert nightly.evals.lm_eval == demo.evals.lm_eval
    assert nightly.evals.probe == demo.evals.probe
