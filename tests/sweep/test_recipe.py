"""`sweep export` rebuilds a trial from the recipe it recorded, not from the latest spec."""

from __future__ import annotations

import json

import pandas as pd
import torch
from safetensors.torch import load_file

from sweep.cli import main
from sweep.fingerprint import recipe
from sweep.spec import parse_spec
from sweep.study import save_spec_snapshot
from tests.merge.helpers import merge_argv

SPEC = """
name: recipe
models: {{pretrained: {p}, instruct: {i}, reasoning: {r}}}
merge: {{stage1: {stage1}}}
evals:
  probe: {{prompts: {root}/prompts.jsonl}}
objectives:
  - {{metric: probe/length_retention, direction: maximize}}
results_dir: {root}/results
"""


def test_export_uses_the_trials_recorded_recipe(tmp_path, tiny_trio):
    def spec(stage1: str):
        return parse_spec(
            SPEC.format(
                p=tiny_trio["pretrained"],
                i=tiny_trio["instruct"],
                r=tiny_trio["reasoning"],
                stage1=stage1,
                root=tmp_path,
            ),
            base_dir=tmp_path,
        )

    ran_with = spec("{method: linear}")
    latest = spec("{method: ties, params: {density: 0.3}}")  # the spec was edited after the trial ran
    save_spec_snapshot(latest)
    table = pd.DataFrame(
        [
            {
                "number": 0,
                "state": "COMPLETE",
                "params/alpha": 0.3,
                "params/beta": 0.8,
                "probe/length_retention": 0.9,
                "recipe": json.dumps(recipe(ran_with)),
            }
        ]
    )
    table.to_parquet(latest.study_dir / "trials.parquet", index=False)

    out, fresh = tmp_path / "exported", tmp_path / "fresh"
    assert main(["export", str(latest.study_dir), "--trial", "0", "--out", str(out), "--quiet"]) == 0
    # linear, as the trial ran
    assert main(merge_argv(tiny_trio, "--alpha", "0.3", "--beta", "0.8", "--out", str(fresh), "--quiet")) == 0
    a, b = load_file(out / "model.safetensors"), load_file(fresh / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
