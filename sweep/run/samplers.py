"""The built-in samplers: one factory each, registered in sweep.plugins.SAMPLERS.

A factory is `(spec, *, seed) -> optuna.samplers.BaseSampler`; `sweep.run.runner.make_sampler`
picks one by `spec.sampler.name` and passes the seed (already offset for a resumed or shared
study). Registry metadata `needs_grid=True`: every range needs a `step`, and the sampler
proposes only the grid's points (the searcher ends the run when every point is done).

A new sampler is one function here or in any module the spec's `plugins:` list names:

    @SAMPLERS.register("my_sampler")
    def my_sampler(spec, *, seed): return optuna.samplers.QMCSampler(seed=seed)
"""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING

from sweep.plugins import SAMPLERS

if TYPE_CHECKING:  # pragma: no cover
    from sweep.config import SweepSpec


@SAMPLERS.register("tpe")
def tpe(spec: SweepSpec, *, seed: int):
    import optuna

    return optuna.samplers.TPESampler(seed=seed)  # constant_liar is on by default in Optuna 5


@SAMPLERS.register("gp")
def gp(spec: SweepSpec, *, seed: int):
    import optuna

    return optuna.samplers.GPSampler(seed=seed)


@SAMPLERS.register("nsga2")
def nsga2(spec: SweepSpec, *, seed: int):
    import optuna

    return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, spec.budget.trials // 2)))


@SAMPLERS.register("random")
def random(spec: SweepSpec, *, seed: int):
    import optuna

    return optuna.samplers.RandomSampler(seed=seed)


@SAMPLERS.register("grid", needs_grid=True)
def grid(spec: SweepSpec, *, seed: int):
    import optuna

    class StudyGridSampler(optuna.samplers.GridSampler):
        """GridSampler without its end-of-grid `study.stop()` (which raises outside
        `optimize`): StudySearcher ends the run when every grid point is done."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return StudyGridSampler(grid_space(spec), seed=seed)


def needs_grid(spec: SweepSpec) -> bool:
    """Whether the spec's sampler proposes only grid points (registry metadata `needs_grid`)."""
    return bool(SAMPLERS.meta(spec.sampler.name).get("needs_grid"))


def grid_space(spec: SweepSpec) -> dict[str, list[float]]:
    """Each searched parameter's grid values: alpha, beta, then the method's parameters."""
    space = {"alpha": spec.space.alpha.grid(), "beta": spec.space.beta.grid()}
    space.update({k: r.grid() for k, r in spec.space.params.items()})
    return space


def grid_points(spec: SweepSpec) -> list[dict[str, float]]:
    """Every point of the grid, as {parameter: value}."""
    space = grid_space(spec)
    names = list(space)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*(space[n] for n in names))]
