"""The sweep's registries: the only lists of sampler names and balanced-point rules.

- SAMPLERS: name -> a factory `(spec, *, seed) -> optuna.samplers.BaseSampler`; metadata
  `needs_grid` (every range needs a `step`, the proposals are the grid's points).
- BALANCED_RULES: name -> a rule `(util, weights) -> score per front point` (util: the
  front's objective values normalized to [0, 1], higher better; the highest score is the
  balanced point); metadata `doc` (one line, shown in the report) and `uses_weights`
  (the rule reads `report.weights`).

Built-in entries are named lazily, so listing names (as validating a spec does) imports
neither Optuna nor pandas.
"""

from __future__ import annotations

from typing import Any

from core.registry import Registry

SAMPLERS: Registry[Any] = Registry(
    "sampler",
    builtins={
        "tpe": "sweep.run.samplers:tpe",
        "gp": "sweep.run.samplers:gp",
        "nsga2": "sweep.run.samplers:nsga2",
        "random": "sweep.run.samplers:random",
        "grid": "sweep.run.samplers:grid",
    },
)
BALANCED_RULES: Registry[Any] = Registry(
    "balanced rule",
    builtins={
        "maximin": "sweep.report.balanced:maximin",
        "weighted": "sweep.report.balanced:weighted",
        "knee": "sweep.report.balanced:knee",
    },
)
