"""`sweep export` writes mergekit.yaml beside the checkpoint and shows it in the model card;
`--recipe-only` writes the same recipe without weights; mergekit run on the file as written
reproduces the exported weights.

The study is a real Optuna SQLite study with told trials (no Ray run: the export reads
only the study folder), over the tiny trio.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from sweep.cli import main
from tests.merge.helpers import load_state


def make_study(root, trio, *, stage1: dict, name: str, metrics: dict | None = None, attrs=None):
    """A finished study folder: spec snapshot, SQLite study with three COMPLETE trials, trials table.

    metrics: more metrics for every trial; attrs(spec): more user attributes for every trial."""
    import optuna

    from sweep.config import parse_spec
    from sweep.study.durable import open_study, save_spec_snapshot
    from sweep.study.records import ATTR_METRICS
    from sweep.study.table import write as write_table

    spec = parse_spec(
        yaml.safe_dump(
            {
                "name": name,
                "models": {role: str(path) for role, path in trio.items()},
                "merge": {"stage1": stage1, "stage2": {"method": "linear"}, "dtype": "bfloat16"},
                "space": {"alpha": {"low": 0, "high": 1}, "beta": {"low": 0.5, "high": 1}},
                "evals": {"probe": {"prompts": str(root / "prompts.jsonl")}},
                "objectives": [{"metric": "probe/length_retention", "direction": "maximize"}],
                "results_dir": str(root / "results"),
            }
        )
    )
    study = open_study(spec)
    space = {
        "alpha": optuna.distributions.FloatDistribution(0, 1),
        "beta": optuna.distributions.FloatDistribution(0.5, 1),
    }
    for alpha, beta, value in ((0.3, 0.8, 0.9), (0.7, 0.6, 0.5), (0.1, 1.0, 0.2)):
        study.enqueue_trial({"alpha": alpha, "beta": beta})
        trial = study.ask(space)
        trial.set_user_attr(ATTR_METRICS, {"probe/length_retention": value} | (metrics or {}))
        for key, attr in (attrs(spec) if attrs else {}).items():
            trial.set_user_attr(key, attr)
        study.tell(trial, [value])
    save_spec_snapshot(spec)
    write_table(study, spec)
    return spec


@pytest.fixture
def linear_study(tiny_trio, tmp_path):
    return make_study(tmp_path, tiny_trio, stage1={"method": "linear"}, name="lin")


@pytest.fixture
def ties_study(tiny_trio, tmp_path):
    return make_study(tmp_path, tiny_trio, stage1={"method": "ties", "params": {"density": 0.5}}, name="ties")


def test_export_writes_mergekit_yaml_and_shows_it_in_the_card(linear_study, tmp_path, capsys):
    out = tmp_path / "actor"
    assert main(["export", str(linear_study.study_dir), "--balanced", "--out", str(out), "--quiet"]) == 0
    recipe = (out / "mergekit.yaml").read_text()
    record = json.loads((out / "sweep_export.json").read_text())
    alpha, beta = record["params"]["alpha"], record["params"]["beta"]
    (doc,) = yaml.safe_load_all(recipe)
    assert doc["merge_method"] == "linear" and doc["out_dtype"] == "bfloat16" and doc["dtype"] == "float32"
    assert [m["parameters"]["weight"] for m in doc["models"]] == [alpha * beta, (1 - alpha) * beta, 1 - beta]
    card = (out / "README.md").read_text()
    assert "## Reproduce with mergekit" in card and recipe.rstrip() in card
    assert "# match: bit-identical" in recipe and "mergekit-yaml mergekit.yaml OUT" in recipe


def test_recipe_only_writes_the_same_recipe_and_no_weights(ties_study, tmp_path):
    full, only = tmp_path / "full", tmp_path / "only"
    assert main(["export", str(ties_study.study_dir), "--trial", "1", "--out", str(full), "--quiet"]) == 0
    assert (
        main(["export", str(ties_study.study_dir), "--trial", "1", "--out", str(only), "--quiet", "--recipe-only"]) == 0
    )
    assert (only / "mergekit.yaml").read_text() == (full / "mergekit.yaml").read_text()
    assert not list(only.glob("*.safetensors")) and list(full.glob("*.safetensors"))
    assert json.loads((only / "sweep_export.json").read_text())["weights"] is False
    assert "holds no weights" in (only / "README.md").read_text()
    stage1, stage2 = yaml.safe_load_all((only / "mergekit.yaml").read_text())
    assert (
        stage1["merge_method"] == "ties"
        and stage1["parameters"] == {"normalize": True}
        and stage1["out_dtype"] == "float32"
    )
    assert stage2["out_dtype"] == "bfloat16"
    # an occupied folder is refused, as for a full export
    assert (
        main(["export", str(ties_study.study_dir), "--trial", "1", "--out", str(only), "--quiet", "--recipe-only"]) == 2
    )


@pytest.mark.slow
def test_mergekit_on_the_exported_file_reproduces_the_weights(linear_study, ties_study, tmp_path):
    from tests.merge.mergekit_tools import require_mergekit, run_mergekit

    mergekit = require_mergekit()
    lin, ties = tmp_path / "lin", tmp_path / "ties"
    assert main(["export", str(linear_study.study_dir), "--balanced", "--out", str(lin), "--quiet"]) == 0
    assert main(["export", str(ties_study.study_dir), "--balanced", "--out", str(ties), "--quiet"]) == 0
    run_mergekit([str(mergekit / "mergekit-yaml"), str(lin / "mergekit.yaml"), str(tmp_path / "mk-lin")])
    run_mergekit(
        [
            str(mergekit / "mergekit-multi"),
            str(ties / "mergekit.yaml"),
            "--intermediate-dir",
            str(tmp_path / "tmp"),
            "--out-path",
            str(tmp_path / "mk-ties"),
        ]
    )
    for ours, theirs in ((lin, tmp_path / "mk-lin"), (ties, tmp_path / "mk-ties")):
        a, b = load_state(ours), load_state(theirs)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == torch.bfloat16 and torch.equal(a[name], b[name]), (ours.name, name)
