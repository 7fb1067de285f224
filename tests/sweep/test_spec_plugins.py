"""Plug-in names in a spec come from the registries: a plug-in registered in a test file
(or in a module the spec's `plugins:` list names) is usable from a spec with no other
change, and an unknown name is refused with the registered names listed."""

from __future__ import annotations

import sys
import textwrap

import pytest

from evals.plugins import LM_BACKENDS, PROBE_BACKENDS, REWARD_RULES
from merge.plugins import METHODS
from sweep.config import import_plugins, load_spec
from sweep.errors import ConfigError
from sweep.plugins import BALANCED_RULES, SAMPLERS

BASE = """\
name: plugged
models: {pretrained: a, instruct: b, reasoning: c}
merge: {stage1: {method: STAGE1}, stage2: {method: STAGE2}}
sampler: {name: SAMPLER}
evals:
  lm_eval: {backend: LM_BACKEND, search_tasks: [toy]}
  probe: {prompts: p.jsonl, backend: PROBE_BACKEND, reward: {rule: REWARD_RULE}}
objectives:
  - {metric: "lm_eval/toy/exact_match,none", direction: maximize}
  - {metric: probe/length_retention, direction: maximize}
report: {balanced_rule: BALANCED_RULE}
"""
DEFAULTS = {
    "STAGE1": "linear",
    "STAGE2": "linear",
    "SAMPLER": "tpe",
    "LM_BACKEND": "hf",
    "PROBE_BACKEND": "builtin",
    "REWARD_RULE": "exact_match",
    "BALANCED_RULE": "maximin",
}


def spec_text(**names: str) -> str:
    text = BASE
    for key, value in (DEFAULTS | names).items():
        text = text.replace(key, value)
    return text


def load(tmp_path, text: str):
    for role in "abc":  # model folders (only their presence is checked at load)
        (tmp_path / role).mkdir(exist_ok=True)
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return load_spec(path, resolve_demo=False)


def test_the_defaults_load(tmp_path):
    spec = load(tmp_path, spec_text())
    assert (spec.merge.stage1.method, spec.sampler.name, spec.report.balanced_rule) == ("linear", "tpe", "maximin")


@pytest.fixture
def registered():
    """One plug-in of each kind, registered here and nowhere else; removed afterwards."""

    def my_merge(tensors, weights, *, base=None, sharpness: float = 1.0):
        return tensors[0]

    entries = [
        (METHODS, "my_merge", my_merge, {}),
        (SAMPLERS, "my_sampler", lambda spec, *, seed: None, {}),
        (LM_BACKENDS, "my_lm", object, {}),
        (PROBE_BACKENDS, "my_probe", object, {}),
        (REWARD_RULES, "my_reward", lambda *, prompts, completions, answers: [0.0] * len(completions), {}),
        (BALANCED_RULES, "my_balance", lambda util, weights: util.min(axis=1), {"doc": "a test rule"}),
    ]
    for registry, name, obj, meta in entries:
        registry.add(name, obj, **meta)
    yield
    for registry, name, _, _ in entries:
        registry.remove(name)


def test_a_plugin_of_each_kind_registered_here_is_usable_from_a_spec(tmp_path, registered):
    spec = load(
        tmp_path,
        spec_text(
            STAGE1="my_merge",
            STAGE2="my_merge",
            SAMPLER="my_sampler",
            LM_BACKEND="my_lm",
            PROBE_BACKEND="my_probe",
            REWARD_RULE="my_reward",
            BALANCED_RULE="my_balance",
        ),
    )
    assert (spec.merge.stage1.method, spec.merge.stage2.method) == ("my_merge", "my_merge")
    assert (spec.sampler.name, spec.report.balanced_rule) == ("my_sampler", "my_balance")
    assert (spec.evals.lm_eval.backend, spec.evals.probe.backend) == ("my_lm", "my_probe")
    assert spec.evals.probe.reward.rule == "my_reward"


@pytest.mark.parametrize(
    "key, where, registry",
    [
        ("STAGE1", "merge.stage1.method", METHODS),
        ("SAMPLER", "sampler.name", SAMPLERS),
        ("LM_BACKEND", "evals.lm_eval.backend", LM_BACKENDS),
        ("PROBE_BACKEND", "evals.probe.backend", PROBE_BACKENDS),
        ("REWARD_RULE", "evals.probe.reward.rule", REWARD_RULES),
        ("BALANCED_RULE", "report.balanced_rule", BALANCED_RULES),
    ],
)
def test_an_unknown_name_is_refused_listing_the_registered_ones(tmp_path, registered, key, where, registry):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, spec_text(**{key: "nosuch"}))
    (problem,) = info.value.problems
    assert problem.startswith(f"{where} (line ")
    assert f"unknown {registry.kind} 'nosuch'; known: {', '.join(registry.names())}" in problem
    assert any(name.startswith("my_") for name in registry.names())  # the test's plug-in is listed


def test_stage2_refuses_a_method_that_needs_a_base(tmp_path):
    METHODS.add("my_task_vectors", lambda tensors, weights, *, base=None: base, needs_base=True)
    try:
        load(tmp_path, spec_text(STAGE1="my_task_vectors"))  # stage 1 has the pretrained model as base
        with pytest.raises(ConfigError, match="stage 2 merges two models") as info:
            load(tmp_path, spec_text(STAGE2="my_task_vectors"))
        assert "merge.stage2" in info.value.problems[0] and "my_task_vectors" in info.value.problems[0]
    finally:
        METHODS.remove("my_task_vectors")


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """A user's module, beside the spec, that registers a reward rule when imported."""
    (tmp_path / "my_plugins.py").write_text(
        textwrap.dedent(
            """\
            from evals.plugins import REWARD_RULES


            @REWARD_RULES.register("shouting")
            def shouting(*, prompts, completions, answers):
                return [float(c.isupper()) for c in completions]
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_plugins"
    REWARD_RULES.remove("shouting")
    sys.modules.pop("my_plugins", None)


def test_plugins_key_imports_the_users_module_before_names_are_checked(tmp_path, plugin_module):
    assert "shouting" not in REWARD_RULES
    spec = load(tmp_path, f"plugins: [{plugin_module}]\n" + spec_text(REWARD_RULE="shouting"))
    assert spec.plugins == [plugin_module]
    assert spec.evals.probe.reward.rule == "shouting"
    assert REWARD_RULES.get("shouting")(prompts=["p"], completions=["YES"], answers=[None]) == [1.0]


def test_an_unimportable_plugin_module_is_one_clear_problem(tmp_path):
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "plugins: [no_such_plugin_module]\n" + spec_text())
    (problem,) = info.value.problems
    assert problem.startswith("plugins.0 (line 1): cannot import plug-in module 'no_such_plugin_module'")
    assert "ModuleNotFoundError" in problem


def test_a_plugin_that_fails_to_import_is_reported_with_the_names_it_would_have_registered(tmp_path):
    (tmp_path / "broken_plugin.py").write_text("raise RuntimeError('half-written plug-in')\n")
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(ConfigError) as info:
            load(tmp_path, "plugins: [broken_plugin]\n" + spec_text(REWARD_RULE="shouting"))
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("broken_plugin", None)
    text = "\n".join(info.value.problems)
    assert "cannot import plug-in module 'broken_plugin': RuntimeError: half-written plug-in" in text
    assert "unknown reward rule 'shouting'" in text
    assert "2 problems" in str(info.value)


def test_import_plugins_returns_problems_for_ray_workers():
    assert import_plugins(["json", "evals.plugins"]) == []
    (problem,) = import_plugins(["json", "no_such_plugin_module"])
    assert "no_such_plugin_module" in problem
