"""Every sampler in sweep.plugins.SAMPLERS against one contract, and a sampler registered
from this file used by `make_sampler` by name.

The contract: on a small in-memory Optuna study over the demo's space (alpha, beta and
one method parameter), each sampler proposes only values inside the ranges, on each
range's step; a sampler whose metadata says `needs_grid` proposes only grid points.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest

from sweep.config import SweepSpec, parse_spec
from sweep.plugins import SAMPLERS
from sweep.run.runner import make_sampler
from sweep.run.samplers import grid_points
from sweep.study.durable import same_params, space_distributions

SPEC = """
name: sampler-contract
models: {pretrained: /m/p, instruct: /m/i, reasoning: /m/r}
merge: {stage1: {method: ties}}
evals:
  probe: {prompts: /m/prompts.jsonl}
objectives:
  - {metric: probe/length_retention, direction: maximize}
  - {metric: probe/reward_dip, direction: minimize}
space:
  alpha: {low: 0.0, high: 1.0, step: 0.25}
  beta: {low: 0.5, high: 1.0, step: 0.25}
  params: {density: {low: 0.2, high: 0.6, step: 0.2}}
budget: {trials: 8}
"""


def make_spec(tmp_path: Path) -> SweepSpec:
    return parse_spec(SPEC + f"\nresults_dir: {tmp_path}\n", base_dir=tmp_path)


def _on_step(value: float, low: float, step: float) -> bool:
    steps = (value - low) / step
    return math.isclose(steps, round(steps), abs_tol=1e-9)


@pytest.mark.parametrize(("name", "factory"), SAMPLERS.items(), ids=SAMPLERS.names())
def test_every_sampler_proposes_points_of_the_space(name, factory, tmp_path):
    spec = make_spec(tmp_path)
    distributions = space_distributions(spec)
    assert set(distributions) == {"alpha", "beta", "density"}
    study = optuna.create_study(directions=spec.directions, sampler=factory(spec, seed=7))
    grid = grid_points(spec) if SAMPLERS.meta(name).get("needs_grid") else None
    for _ in range(6):
        trial = study.ask(distributions)
        params = trial.params
        for key, dist in distributions.items():
            assert dist.low <= params[key] <= dist.high, (name, key, params[key])
            assert _on_step(params[key], dist.low, dist.step), (name, key, params[key])
        if grid is not None:
            assert any(same_params(params, point) for point in grid), (name, params)
        study.tell(trial, [params["alpha"] * params["beta"], 1.0 - params["alpha"]])
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))) == 6


def test_a_sampler_registered_here_is_the_one_make_sampler_builds(tmp_path):
    made = []

    @SAMPLERS.register("contract_fixed")
    def contract_fixed(spec, *, seed):
        made.append(seed)
        return optuna.samplers.RandomSampler(seed=seed)

    try:
        spec = make_spec(tmp_path)
        # The spec's sampler name is set directly: the check of a name against the registry
        # at load time is the spec's own test.
        spec.sampler = spec.sampler.model_copy(update={"name": "contract_fixed", "seed": 5})
        sampler = make_sampler(spec, trials_so_far=3, salt=10)
        assert isinstance(sampler, optuna.samplers.RandomSampler)
        assert made == [5 + 3 + 10]  # the seed offsets reach the registered factory
    finally:
        SAMPLERS.remove("contract_fixed")
    assert "contract_fixed" not in SAMPLERS
