"""The worker's one vLLM engine for eval and probe, in real trials (sweep/run/trial.py).

Two candidates run through `run_trial` with `evals.lm_eval.backend: vllm` and
`evals.probe.generator: vllm`: exactly one vllm.LLM is constructed, the probe samples with
the eval's engine, each candidate's eval scores equal the HF backend's on that candidate,
and after each probe the engine scores the candidate itself again (its log-likelihoods
and greedy generations equal HF's on the live model), for full and LoRA updates. The
shared engine has LoRA off (vLLM 0.32 with LoRA on fails on lm-eval's log-likelihood
requests), so a LoRA probe pushes merged weights into it, and says so.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from evals.lmeval import LmEvalConfig, LmEvalRunner
from tests.evals.conftest import ANSWER_REGEX
from tests.vllm.test_vllm_eval import TASKS, _requests

CANDIDATES = [(0.0, 1.0), (0.5, 0.8)]  # (alpha, beta)


def _spec(tmp_path, trio, tiny_tasks, update):
    from sweep.config import load_spec
    from tests.evals.test_rewards import make_reward_model

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a in range(3) for b in range(3))
    )
    spec = {
        "name": f"vllm-trial-{update}",
        "models": {role: str(trio[role]) for role in ("pretrained", "instruct", "reasoning")},
        "merge": {"dtype": "float32"},
        "evals": {
            "lm_eval": {
                "backend": "vllm",
                "include_paths": [str(tiny_tasks)],
                "search_tasks": TASKS,
                "batch_size": 4,
                "answer_regex": ANSWER_REGEX,
                # an untrained checkpoint of the same shape: every weight it scores with was pushed
                "vllm": {
                    "model": str(trio["engine_base"]),
                    "dtype": "float32",
                    "max_model_len": 256,
                    "enforce_eager": True,
                },
            },
            "probe": {
                "prompts": str(prompts),
                "steps": 3,
                "group_size": 2,
                "prompts_per_step": 2,
                "max_new_tokens": 16,
                "reward": {"model": str(make_reward_model(tmp_path / "rm"))},  # graded scores: advantages not all 0
                "learning_rate": 1e-2,  # large: the probe really moves the policy the engine samples
                "baseline_samples": 0,
                "generator": "vllm",
                "update": update,
                "lora_rank": 4,
                "vllm_lora": "requests",  # asked for, but the shared engine cannot: merged (the note)
            },
        },
        "objectives": [{"metric": "probe/length_retention", "direction": "maximize"}],
        "results_dir": str(tmp_path / "results"),
    }
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_spec(path)


@pytest.mark.parametrize("update", ["full", "lora"])
def test_one_engine_serves_eval_and_probe_across_trials(trio, tiny_tasks, tmp_path, monkeypatch, capsys, update):
    from lm_eval.models.huggingface import HFLM

    from evals.answers import think_end_token
    from evals.vllm_backend import import_vllm
    from sweep.run import trial
    from sweep.run.trial import SHARED_ENGINE_LORA_NOTE

    vllm = import_vllm()
    built: list[dict] = []
    original_init = vllm.LLM.__init__

    def counting_init(self, *args, **kwargs):
        built.append(kwargs)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(vllm.LLM, "__init__", counting_init)
    spec = _spec(tmp_path, trio, tiny_tasks, update)
    hf_runner = LmEvalRunner(
        LmEvalConfig(tasks=TASKS, include_paths=[str(tiny_tasks)], batch_size=4, answer_regex=ANSWER_REGEX)
    )
    seen = set()
    pushed = 0  # what the engine must have been sent so far
    try:
        for done, (alpha, beta) in enumerate(CANDIDATES, start=1):
            result = trial.run_trial(spec, {"alpha": alpha, "beta": beta})
            state = trial.worker_state(spec)
            backend = state.evaluator.backend
            engine = trial._ROLLOUTS[state.key]
            assert len(built) == 1, built  # one vllm.LLM for the worker: eval and probe
            assert engine.llm is backend._lm.model  # the probe sampled with the eval's engine
            assert result.metrics["probe/kl_final"] > 0.01  # the probe moved the policy it sampled from
            # the candidate in, one push per update (lora: merged weights; none for a flat batch,
            # skip_flat_batches), the candidate back
            updates = result.curves["actor/updated"]
            assert len(updates) == spec.evals.probe.steps and sum(updates) >= 1
            pushed += 2 + int(sum(updates))
            assert (engine.pushes, engine.adapters) == (pushed, 0)
            assert not built[0].get("enable_lora")  # lm-eval passes enable_lora=False
            if update == "lora" and done == 1:
                assert SHARED_ENGINE_LORA_NOTE in capsys.readouterr().err
            # the eval's scores are the candidate's (the HF backend on the live model, built in place)
            hf_scores = {s.name: s.value for s in hf_runner.evaluate(state.model, state.tokenizer)}
            assert {k: result.metrics[k] for k in hf_scores} == hf_scores, (alpha, beta)
            # after the probe the engine holds the candidate again, not a probe policy
            hf_lm = HFLM(
                pretrained=state.model,
                tokenizer=state.tokenizer,
                batch_size=4,
                think_end_token=think_end_token(state.tokenizer, "</think>"),
            )
            loglik, gen = _requests(state.tokenizer)
            vllm_ll, hf_ll = backend._lm.loglikelihood(loglik), hf_lm.loglikelihood(loglik)
            # the candidates differ where it shows on any machine: their log-likelihoods (their
            # exact-match scores on the tiny tasks can be equal, as on an AMD EPYC host)
            seen.add(tuple(round(v, 3) for v, _ in hf_ll))
            torch.testing.assert_close(
                torch.tensor([v for v, _ in vllm_ll]), torch.tensor([v for v, _ in hf_ll]), rtol=0, atol=2e-4
            )
            assert backend._lm.generate_until(gen) == hf_lm.generate_until(gen), (alpha, beta)
        assert backend.reloads == len(CANDIDATES) and len(seen) == len(CANDIDATES), seen  # the candidates differ
    finally:
        trial._STATE.clear()
        trial._ROLLOUTS.clear()


def test_calibrates_long_run_samples_through_the_workers_engine_as_the_trials_probe_does(trio, tiny_tasks, tmp_path):
    """`sweep calibrate`'s long run (sweep.run.longrun.long_run_at) and `sweep nightly`'s
    probe repeat (sweep.run.repeats.probe_at) on a spec with generator vllm: both sample
    with the worker's one engine (before, each called the probe with no engine and
    failed), built when the worker warms up, and greedy, the long run's outcome is the HF loop's."""
    from sweep.run import trial
    from sweep.run.longrun import SHAPES, long_run_at
    from sweep.run.repeats import probe_at

    spec = _spec(tmp_path, trio, tiny_tasks, "full")
    probe = spec.evals.probe.model_copy(update={"baseline_samples": 2, "temperature": 0.0})
    outcomes = {}
    try:
        for generator in ("vllm", "hf"):
            worker = spec.model_copy(
                update={
                    "evals": spec.evals.model_copy(update={"probe": probe.model_copy(update={"generator": generator})})
                }
            )
            if generator == "vllm":  # as sweep.run.pool warms a worker: the engine is built before any run
                trial.warm_worker(worker)
                warmed = trial._ROLLOUTS[trial.worker_state(worker).key]
            outcomes[generator] = long_run_at(worker, {"alpha": 0.0, "beta": 1.0}, 1, 6)
            if generator == "vllm":
                state = trial.worker_state(worker)
                engine = trial._ROLLOUTS[state.key]
                assert engine is warmed  # the long run used the engine the warm-up built
                assert engine.llm is state.evaluator.backend._lm.model  # the eval's engine: one per worker
                assert engine.pushes >= 2  # the candidate in, and back at the end
                # `sweep nightly`'s probe repeat takes the same path (before, it too had no engine)
                repeat = probe_at(worker, {"alpha": 0.0, "beta": 1.0}, 2)
                assert repeat["probe/length_retention"] is not None and trial._ROLLOUTS[state.key] is engine
    finally:
        trial._STATE.clear()
        trial._ROLLOUTS.clear()
    vllm, hf = outcomes["vllm"], outcomes["hf"]
    assert vllm["steps"] == hf["steps"] == 6 and vllm["seed"] == 1 and vllm["reward_shape"] in SHAPES
    for name in ("final_length", "min_length", "final_reward", "final_score", "dip"):
        assert vllm[name] == pytest.approx(hf[name], abs=1e-4), name
