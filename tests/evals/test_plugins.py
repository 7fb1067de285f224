"""Contract tests over every registered evals plug-in (as Optuna tests every sampler), and
plug-ins registered from this file used by name with no other file changed."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from evals.errors import EvalError
from evals.lm_backends import LmBackend, make_backend
from evals.lmeval import LmEvalConfig, LmEvalRunner
from evals.plugins import LM_BACKENDS, PROBE_BACKENDS, REWARD_RULES
from evals.probe import BackendRun, ProbeBackend, ProbeConfig, ProbeCurves, ProbeResult, Prompt, run_probe
from evals.probe.backends import get_backend, register_backend
from evals.rewards import get_rule, register_rule, rule_needs_answer
from tests.evals.conftest import PROBE_PROMPTS, load

# A few completions as the probe decodes them, with expected answers: right, wrong,
# think blocks closed, unclosed, repeated, and empty.
COMPLETIONS = [
    "<think>2+3</think>5",
    "5",
    "<think>2+3</think>6",
    "<think>still thinking",
    "<think>a<think>b</think>5",
    "",
]
ANSWERS = ["5", "5", "5", "5", "5", "5"]
PROMPTS = ["2+3?"] * len(COMPLETIONS)
RULE_SCORES = (0.0, 2.0)  # the rules' scale: a sum of at most two 0/1 checks (exact_match+format)


# ---------------------------------------------------------------- reward rules


@pytest.mark.parametrize("name", REWARD_RULES.names())
def test_every_reward_rule_scores_each_completion_on_its_own(name):
    """One finite float per completion, in RULE_SCORES, the same whatever the batch
    (the probe scores steps and baseline chunks of different make-up); a rule that does
    not need answers works without them."""
    rule = REWARD_RULES.get(name)
    answers = ANSWERS if rule_needs_answer(name) else [None] * len(COMPLETIONS)
    scores = rule(prompts=PROMPTS, completions=COMPLETIONS, answers=answers)
    assert len(scores) == len(COMPLETIONS)
    assert all(isinstance(s, float) and math.isfinite(s) for s in scores), scores
    assert all(RULE_SCORES[0] <= s <= RULE_SCORES[1] for s in scores), scores
    one_by_one = [
        rule(prompts=[p], completions=[c], answers=[a])[0]
        for p, c, a in zip(PROMPTS, COMPLETIONS, answers, strict=True)
    ]
    assert one_by_one == scores
    assert get_rule(name) is rule


@pytest.mark.parametrize("name", [n for n in REWARD_RULES.names() if rule_needs_answer(n)])
def test_every_rule_that_needs_answers_reads_them(name):
    rule = REWARD_RULES.get(name)
    right = rule(prompts=PROMPTS, completions=COMPLETIONS, answers=ANSWERS)
    wrong = rule(prompts=PROMPTS, completions=COMPLETIONS, answers=["7"] * len(COMPLETIONS))
    assert right != wrong


# ---------------------------------------------------------------- probe backends


@pytest.mark.parametrize("name", PROBE_BACKENDS.names())
def test_every_probe_backend_runs_a_two_step_probe(name, tiny_dir):
    """Through run_probe on the tiny model: a ProbeResult with one curve point per step
    (point 0: the starting model), finite metrics, and the backend named."""
    assert isinstance(get_backend(name), ProbeBackend)
    model, tokenizer = load(tiny_dir)
    config = ProbeConfig(
        prompts="unused.jsonl", backend=name, steps=2, max_new_tokens=8, baseline_samples=0, noise_samples=0
    )
    prompts = [Prompt(prompt=p, answer=a) for p, a in PROBE_PROMPTS]
    result = run_probe(model, tokenizer, config=config, prompts=prompts, reward=_digit_share)
    assert isinstance(result, ProbeResult) and result.backend == name
    assert result.curves.steps == config.steps and not result.stopped_early
    metrics = result.metrics.as_metrics()
    assert metrics and all(v is None or math.isfinite(v) for v in metrics.values())


def test_an_unknown_probe_backend_lists_the_registered_ones():
    with pytest.raises(EvalError, match=r"unknown probe backend 'nope'; known: .*builtin"):
        get_backend("nope")


# ---------------------------------------------------------------- lm-eval backends


@pytest.mark.parametrize("name", LM_BACKENDS.names())
def test_every_lm_eval_backend_is_an_lm_backend(name):
    backend = LM_BACKENDS.get(name)
    assert isinstance(backend, type) and issubclass(backend, LmBackend)


def test_the_hf_backend_scores_a_tiny_task_and_has_no_engine_to_share(random_model, tiny_tasks):
    """(The vLLM backend is run for real in tests/vllm.)"""
    model, tokenizer = load(random_model)
    config = LmEvalConfig(tasks=["tiny_choice"], include_paths=[str(tiny_tasks)], batch_size=4, limit=4)
    runner = LmEvalRunner(config)
    assert type(runner.backend) is LM_BACKENDS.get("hf")
    scores = {s.name: s.value for s in runner.evaluate(model, tokenizer)}
    assert set(scores) == {"lm_eval/tiny_choice/acc,none", "lm_eval/tiny_choice/acc_norm,none"}
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert runner.backend.engine is None and runner.backend.engine_for(model, tokenizer) is None


def test_an_lm_eval_backend_registered_here_is_built_by_name_and_unknown_names_list_the_known():
    class Recording(LmBackend):
        def __init__(self, config):
            self.config = config

        def lm_for(self, model, tokenizer):
            return None

    LM_BACKENDS.add("test_recording", Recording)
    try:
        config = LmEvalConfig(tasks=["t"], backend="test_recording")
        backend = make_backend(config)
        assert isinstance(backend, Recording) and backend.config is config
        unknown = SimpleNamespace(backend="nope")  # make_backend reads only the name
        with pytest.raises(EvalError, match=r"unknown lm-eval backend 'nope'; known: hf, test_recording, vllm"):
            make_backend(unknown)  # type: ignore[arg-type]
    finally:
        LM_BACKENDS.remove("test_recording")


# ---------------------------------------------------------------- registered from this file


def _digit_share(*, prompts, completions, answers):
    return [sum(ch.isdigit() for ch in c) / max(1, len(c)) for c in completions]


class _EchoBackend(ProbeBackend):
    """Runs no RL: scores each prompt's answer (as its completion) with the reward, once
    per step, so the curves show which reward reached it."""

    name = "test_echo"

    def run(self, model, tokenizer, *, config, prompts, reward, rollouts=None):
        scores = reward(
            prompts=[p.prompt for p in prompts],
            completions=[p.answer or "" for p in prompts],
            answers=[p.answer for p in prompts],
        )
        curves = ProbeCurves()
        for _ in range(config.steps):
            curves = curves.append(
                {
                    "response_length/mean": 10.0,
                    "response_length/min": 10.0,
                    "response_length/max": 10.0,
                    "response_length/clip_ratio": 0.0,
                    "critic/score/mean": sum(scores) / len(scores),
                    "critic/score/std": 0.0,
                    "actor/kl": 0.0,
                    "actor/entropy": 1.0,
                    "actor/grad_norm": 0.0,
                    "timing/step_s": 0.0,
                    "timing/gen_s": 0.0,
                }
            )
        return BackendRun(curves=curves, stopped_early=False, stop_reason=None)


@pytest.fixture
def echo_plugins():
    """A probe backend and a reward rule registered as a user's file would, removed after."""
    register_backend("test_echo", _EchoBackend)

    @register_rule("test_answer_is_digit", needs_answer=True)
    def answer_is_digit(*, prompts, completions, answers):
        return [float(a is not None and c == a and a.isdigit()) for c, a in zip(completions, answers, strict=True)]

    yield
    PROBE_BACKENDS.remove("test_echo")
    REWARD_RULES.remove("test_answer_is_digit")


def test_a_probe_backend_and_a_rule_registered_here_run_by_name(echo_plugins, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "2+3", "answer": "5"}\n{"prompt": "say x", "answer": "x"}\n')
    config = ProbeConfig(
        prompts=str(prompts),
        backend="test_echo",
        reward={"rule": "test_answer_is_digit"},
        steps=3,
        baseline_samples=0,
        noise_samples=0,
    )
    result = run_probe(None, None, config=config, on_step=lambda *_: None)  # its run takes no on_step
    assert result.backend == "test_echo" and result.curves.steps == 3
    assert result.curves.score_mean == (0.5, 0.5, 0.5)  # "5" is a digit answer, "x" is not
    # the rule's needs_answer reached run_probe: a prompt without an answer is refused before any step
    prompts.write_text('{"prompt": "2+3"}\n')
    with pytest.raises(EvalError, match="needs an answer for every prompt"):
        run_probe(None, None, config=config)
    assert "test_echo" in PROBE_BACKENDS.names() and "test_answer_is_digit" in REWARD_RULES.names()
