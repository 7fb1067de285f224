"""One trial without Ray: merge in place, real lm-eval, real probe, on tiny checkpoints."""

from __future__ import annotations

import json
import textwrap
import time

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sweep.config import load_spec
from sweep.run.trial import TrialTimeout, build_candidate, load_models, run_trial, worker_state
from tests.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_spec(tmp_path_factory, tiny_trio):
    root = tmp_path_factory.mktemp("trial")
    (root / "toy.jsonl").write_text("".join(json.dumps({"q": f"{i}+1", "a": str(i + 1)}) + "\n" for i in range(4)))
    (root / "toy.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: toy_sum
            dataset_path: json
            dataset_kwargs: {{data_files: {{test: {root / "toy.jsonl"}}}}}
            test_split: test
            output_type: generate_until
            doc_to_text: "{{{{q}}}}="
            doc_to_target: "{{{{a}}}}"
            generation_kwargs: {{until: ["\\n"], max_gen_toks: 8, do_sample: false}}
            metric_list: [{{metric: exact_match}}]
            """
        )
    )
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": f"{i}+1?", "answer": str(i + 1)}) + "\n" for i in range(4))
    )
    spec = {
        "name": "trial",
        "models": {k: str(v) for k, v in tiny_trio.items()},
        "evals": {
            "lm_eval": {"include_paths": [str(root)], "search_tasks": ["toy_sum"], "batch_size": 4},
            "probe": {
                "prompts": "prompts.jsonl",
                "steps": 3,
                "group_size": 2,
                "prompts_per_step": 2,
                "max_new_tokens": 8,
            },
        },
        "objectives": [
            {"metric": "lm_eval/toy_sum/exact_match,none", "direction": "maximize"},
            {"metric": "probe/length_retention", "direction": "maximize"},
        ],
        "results_dir": str(root / "results"),
    }
    path = root / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


def test_run_trial_measures_every_metric_and_reuses_the_worker_state(tiny_spec):
    first = run_trial(tiny_spec, {"alpha": 0.3, "beta": 0.8})
    assert 0.0 <= first.metrics["lm_eval/toy_sum/exact_match,none"] <= 1.0
    # lm-eval's stderr rides along (sweep compare's noise where no whole-number limit is set)
    score = first.metrics["lm_eval/toy_sum/exact_match,none"]
    stderr = first.metrics["lm_eval/toy_sum/exact_match,none_stderr"]
    assert stderr is not None and (stderr > 0) == (0 < score < 1)
    assert first.metrics["probe/length_retention"] > 0
    assert len(first.curves["response_length/mean"]) == 3
    assert {"merge_s", "lm_eval_s", "probe_s", "total_s"} <= set(first.timings) and first.timings["load_s"] > 0
    state = worker_state(tiny_spec)
    second = run_trial(tiny_spec, {"alpha": 0.3, "beta": 0.8})
    assert second.timings["load_s"] == 0.0 and worker_state(tiny_spec) is state  # loaded once
    assert second.metrics == first.metrics  # deterministic: same candidate, same numbers
    # The live model holds exactly the closed-form candidate: beta*(a*I + (1-a)*R) + (1-beta)*P.
    run_trial(tiny_spec, {"alpha": 0.6, "beta": 0.9})
    weights = {
        role: load_file(f"{getattr(tiny_spec.models, role)}/model.safetensors")
        for role in ("pretrained", "instruct", "reasoning")
    }
    live = dict(state.model.named_parameters())
    for name, tensor in live.items():
        expected = (
            0.9 * (0.6 * weights["instruct"][name] + 0.4 * weights["reasoning"][name])
            + 0.1 * weights["pretrained"][name]
        )
        torch.testing.assert_close(tensor.detach(), expected, rtol=1e-5, atol=1e-6)


def test_a_trial_past_its_timeout_stops_mid_probe_and_hands_the_model_back(tiny_spec):
    probe = tiny_spec.evals.probe.model_copy(update={"steps": 5000, "collapse_threshold": None})
    spec = tiny_spec.model_copy(
        update={
            "evals": tiny_spec.evals.model_copy(update={"probe": probe}),
            "budget": tiny_spec.budget.model_copy(update={"trial_timeout_s": 2.0}),
        }
    )
    short = tiny_spec.model_copy(
        update={"evals": spec.evals.model_copy(update={"probe": probe.model_copy(update={"steps": 4})})}
    )
    per_step = run_trial(short, {"alpha": 0.5, "beta": 0.5}).timings["probe_s"] / 4  # what one probe step costs here
    worker_state(spec)  # loading the models is not charged to the trial
    started = time.perf_counter()
    with pytest.raises(TrialTimeout, match=r"timeout of 2 s during probe"):
        run_trial(spec, {"alpha": 0.6, "beta": 0.9})
    elapsed = time.perf_counter() - started
    assert elapsed < 2.0 + max(1.0, 3 * per_step), (
        f"stopped {elapsed:.1f} s after the start, 5000 steps would take {5000 * per_step:.0f} s"
    )
    # Handed back as the merge left it: the candidate's weights, no hook left behind.
    state = worker_state(spec)
    assert not state.model._forward_pre_hooks
    weights = {
        role: load_file(f"{getattr(spec.models, role)}/model.safetensors")
        for role in ("pretrained", "instruct", "reasoning")
    }
    for name, tensor in state.model.named_parameters():
        expected = (
            0.9 * (0.6 * weights["instruct"][name] + 0.4 * weights["reasoning"][name])
            + 0.1 * weights["pretrained"][name]
        )
        torch.testing.assert_close(tensor.detach(), expected, rtol=1e-5, atol=1e-6)


def test_live_model_follows_an_untied_merge(tmp_path, tiny_trio, tiny_spec):
    """instruct ties its embeddings, reasoning does not: the live model must be untied."""
    untied = make_tiny_checkpoint(tmp_path / "untied", seed=5, tie=False)
    spec = tiny_spec.model_copy(update={"models": tiny_spec.models.model_copy(update={"reasoning": str(untied)})})
    sources, model, _, _ = load_models(spec)
    build_candidate(spec, {"alpha": 0.5, "beta": 1.0}, model=model, sources=sources)
    head = model.get_output_embeddings().weight
    embed = model.get_input_embeddings().weight
    assert head.data_ptr() != embed.data_ptr()
    reasoning = load_file(untied / "model.safetensors")
    instruct = load_file(tiny_trio["instruct"] / "model.safetensors")
    torch.testing.assert_close(
        head.detach(), 0.5 * instruct["model.embed_tokens.weight"] + 0.5 * reasoning["lm_head.weight"]
    )


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_the_reward_model_loads_in_the_trials_dtype(tmp_path, tiny_spec, dtype):
    """A bf16 trial holds a bf16 reward model (as the memory plan counts it), not an fp32 one
    (the reward checkpoint here is saved in fp32), and it still scores in fp32."""
    from tests.evals.test_rewards import make_reward_model

    reward_dir = make_reward_model(tmp_path / "rm")
    probe = tiny_spec.evals.probe
    probe = probe.model_copy(update={"reward": probe.reward.model_copy(update={"model": str(reward_dir)})})
    spec = tiny_spec.model_copy(
        update={
            "merge": tiny_spec.merge.model_copy(update={"dtype": dtype}),
            "evals": tiny_spec.evals.model_copy(update={"probe": probe, "lm_eval": None}),
        }
    )
    state = worker_state(spec)
    assert {p.dtype for p in state.reward.model.parameters()} == {getattr(torch, dtype)}
    assert next(state.model.parameters()).dtype == getattr(torch, dtype)
    scores = state.reward(prompts=["1+1?"], completions=["2"], answers=[None])
    assert isinstance(scores[0], float)
