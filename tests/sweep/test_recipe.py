"""`sweep export` rebuilds a trial from the recipe it recorded, not from the latest spec."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sweep.cli import main
from sweep.config import parse_spec
from sweep.study.durable import save_spec_snapshot
from sweep.study.fingerprint import recipe
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


def test_report_rescore_scores_the_recipe_each_trial_recorded(tmp_path, tiny_trio, capsys):
    """The spec was edited (stage 1 linear -> ties) after the trial ran: `report --rescore`
    gives the held-out numbers of the linear merge the trial ran, not of a ties merge."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.lmeval import LmEvalRunner
    from sweep.run.trial import lm_eval_config

    # A held-out task whose score moves with every weight: the answers' perplexity.
    (tmp_path / "toy.jsonl").write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(6)))
    (tmp_path / "toy_ppl.yaml").write_text(
        f"task: toy_ppl\ndataset_path: json\ndataset_kwargs: {{data_files: {{test: {tmp_path / 'toy.jsonl'}}}}}\n"
        'test_split: test\noutput_type: loglikelihood\ndoc_to_text: "{{q}}="\ndoc_to_target: "{{a}}"\n'
        "metric_list: [{metric: perplexity, aggregation: perplexity, higher_is_better: false}]\n"
    )
    lm_eval = f"  lm_eval: {{include_paths: [{tmp_path}], search_tasks: [toy_ppl], report_tasks: [toy_ppl]}}\n"

    def spec(stage1: str):
        text = SPEC.format(
            p=tiny_trio["pretrained"],
            i=tiny_trio["instruct"],
            r=tiny_trio["reasoning"],
            stage1=stage1,
            root=tmp_path,
        ).replace("evals:\n", "evals:\n" + lm_eval)
        return parse_spec(text, base_dir=tmp_path)

    ran_with = spec("{method: linear}")
    latest = spec("{method: ties, params: {density: 0.3}}")
    save_spec_snapshot(latest)
    row = {"number": 0, "state": "COMPLETE", "params/alpha": 0.3, "params/beta": 0.8}
    table = pd.DataFrame([row | {"probe/length_retention": 0.9, "recipe": json.dumps(recipe(ran_with))}])
    table.to_parquet(latest.study_dir / "trials.parquet", index=False)
    assert main(["report", str(latest.study_dir), "--rescore"]) == 0
    assert "re-scored 1/1: trial 0 on toy_ppl" in capsys.readouterr().err
    heldout = pd.read_parquet(latest.study_dir / "heldout.parquet")
    [rescored] = heldout.loc[heldout["number"] == 0, "lm_eval/toy_ppl/perplexity,none"]

    def perplexity(*method: str) -> float:
        """The task scored on a checkpoint written by `sweep merge` (its own merge path, on disk)."""
        out = tmp_path / "-".join(method or ("linear",))
        assert (
            main(merge_argv(tiny_trio, "--alpha", "0.3", "--beta", "0.8", "--out", str(out), "--quiet", *method)) == 0
        )
        model = AutoModelForCausalLM.from_pretrained(out)
        scores = LmEvalRunner(lm_eval_config(latest, ["toy_ppl"])).evaluate(model, AutoTokenizer.from_pretrained(out))
        return next(s.value for s in scores if s.name == "lm_eval/toy_ppl/perplexity,none")

    linear, ties = perplexity(), perplexity("--method-stage1", "ties", "--stage1-param", "density=0.3")
    assert abs(linear - ties) > 1e-3 * linear  # the two recipes give different numbers
    assert rescored == pytest.approx(linear, rel=1e-5)
