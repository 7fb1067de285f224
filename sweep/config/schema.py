"""The schema of `space.yaml`: the top-level SweepSpec and the sections only the sweep reads.

One pydantic model per YAML section, `extra="forbid"` everywhere, so a typo fails at
load with the path of the field. The sections a library consumes are that library's
models, embedded here: `merge` is merge.config.MergeConfig, `evals.probe` is
evals.probe.config.ProbeConfig, and `evals.lm_eval` extends evals.lmeval_config's
LmEvalSettings with the search and report tasks. Plug-in names (samplers, balanced rules,
merge methods, backends, reward rules) are checked against their registries.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from core.config import Section, registered
from evals.lmeval_config import LmEvalSettings
from evals.metric_names import PROBE_METRICS
from evals.probe.config import ProbeConfig
from merge.config import MergeConfig
from sweep.config.secrets import ENV_PREFIX, mask_url, url_secrets
from sweep.errors import ConfigError
from sweep.plugins import BALANCED_RULES, SAMPLERS

Direction = Literal["maximize", "minimize"]
MODEL_ROLES = ("pretrained", "instruct", "reasoning")


# ---------------------------------------------------------------- models


class ModelsSpec(Section):
    """Local HF checkpoints sharing one pretrained ancestor (or `demo:<member>`)."""

    pretrained: str
    instruct: str
    reasoning: str
    # Which checkpoint supplies tokenizer and chat template: a role name or a path.
    tokenizer: str = "instruct"

    def paths(self) -> dict[str, str]:
        return {"pretrained": self.pretrained, "instruct": self.instruct, "reasoning": self.reasoning}

    def tokenizer_path(self) -> str:
        return self.paths().get(self.tokenizer, self.tokenizer)


# ---------------------------------------------------------------- search space


class RangeSpec(Section):
    low: float
    high: float
    step: Annotated[float, Field(gt=0)] | None = None  # grid spacing; required by the grid sampler

    @model_validator(mode="after")
    def _ordered(self) -> RangeSpec:
        if self.low > self.high:
            raise ValueError(f"low ({self.low}) must be <= high ({self.high})")
        return self

    def contains(self, value: float) -> bool:
        return self.low - 1e-12 <= value <= self.high + 1e-12

    def grid(self) -> list[float]:
        if self.step is None:
            return [self.low, self.high] if self.low != self.high else [self.low]
        n = int(round((self.high - self.low) / self.step))
        return sorted({round(min(self.low + i * self.step, self.high), 10) for i in range(n + 1)} | {self.high})


class RatioRange(RangeSpec):
    low: Annotated[float, Field(ge=0, le=1)] = 0.0
    high: Annotated[float, Field(ge=0, le=1)] = 1.0


class SpaceSpec(Section):
    alpha: RatioRange = Field(default_factory=RatioRange)  # instruct share of stage 1
    beta: RatioRange = Field(default_factory=RatioRange)  # stage-1 share of stage 2
    # Ranges for stage-1 method parameters, by parameter name (e.g. density: {low: 0.3, high: 0.9}).
    params: dict[str, RangeSpec] = Field(default_factory=dict)
    # Fixed points evaluated first, e.g. the corners: [{alpha: 0.5, beta: 1.0}, ...].
    points: list[dict[str, float]] = Field(default_factory=list)


class SamplerSpec(Section):
    name: str = "tpe"  # a name in sweep.plugins.SAMPLERS
    seed: int = 0

    @field_validator("name")
    @classmethod
    def _registered(cls, name: str) -> str:
        return registered(SAMPLERS, name)


class BudgetSpec(Section):
    trials: Annotated[int, Field(ge=1)] = 12
    concurrent: Annotated[int, Field(ge=1)] = 1
    trial_timeout_s: Annotated[float, Field(gt=0)] | None = None
    max_failures: Annotated[int, Field(ge=0)] = 0  # retries of a raising trial before it is recorded FAIL
    # A fixed point (space.points, warm start) that failed this many times is not queued again.
    point_failure_limit: Annotated[int, Field(ge=1)] = 2
    # A trial's probe and calibrate's long runs save their state this often (0: after every
    # step; null: never), so a run lost with its node goes on from there (evals/probe/resume.py).
    checkpoint_every_s: Annotated[float, Field(ge=0)] | None = 600.0


# ---------------------------------------------------------------- evals


class LmEvalSpec(LmEvalSettings):
    """lm-eval's settings plus the tasks: search_tasks steer the search, report_tasks are
    the held-out split, run for the chosen points only."""

    search_tasks: list[str] = Field(default_factory=list)
    report_tasks: list[str] = Field(default_factory=list)


class EvalsSpec(Section):
    lm_eval: LmEvalSpec | None = None
    probe: ProbeConfig | None = None


# ---------------------------------------------------------------- objectives


class ObjectiveSpec(Section):
    metric: str  # lm_eval/<task>/<metric>,<filter> or probe/<name>
    direction: Direction


_CONSTRAINT_RE = re.compile(r"^\s*(?P<metric>\S+)\s*(?P<op>>=|<=)\s*(?P<value>[-+0-9.eE]+)\s*$")


class ConstraintSpec(Section):
    """`metric >= value` or `metric <= value`; a trial violating it is infeasible."""

    metric: str
    op: Literal[">=", "<="]
    value: float

    @model_validator(mode="before")
    @classmethod
    def _parse_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            match = _CONSTRAINT_RE.match(data)
            if not match:
                raise ValueError(
                    f"write a constraint as '<metric> >= <number>' or '<metric> <= <number>', got {data!r}"
                )
            return {"metric": match["metric"], "op": match["op"], "value": float(match["value"])}
        return data

    def violation(self, value: float) -> float:
        """Optuna constraint value: <= 0 when satisfied, the amount of violation otherwise."""
        return self.value - value if self.op == ">=" else value - self.value

    def violation_in(self, metrics: dict[str, float | None]) -> float | None:
        """`violation` of this constraint's metric in `metrics`; None when the metric is missing."""
        value = metrics.get(self.metric)
        return None if value is None else self.violation(value)

    def __str__(self) -> str:
        return f"{self.metric} {self.op} {self.value:g}"


# ---------------------------------------------------------------- report


class ReportSpec(Section):
    """How the balanced point is chosen and the hypervolume measured (see docs/report.md)."""

    # maximin: best worst objective, normalized from the best on the front to the worst eligible trial; knee: farthest from the line
    # (plane) through the front's extremes; weighted: best weighted sum of normalized objectives.
    balanced_rule: str = "maximin"  # a name in sweep.plugins.BALANCED_RULES
    weights: dict[str, Annotated[float, Field(ge=0)]] | None = None  # by objective metric, for weighted
    reference: list[float] | None = None  # hypervolume reference point, one value per objective

    @field_validator("balanced_rule")
    @classmethod
    def _registered(cls, rule: str) -> str:
        return registered(BALANCED_RULES, rule)


# ---------------------------------------------------------------- resources / top level


class ResourcesSpec(Section):
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0  # fractions share a GPU
    address: str | None = None  # Ray cluster address; None: $RAY_ADDRESS or a local Ray
    torch_threads: Annotated[int, Field(ge=1)] = 1  # per worker: contended threads are ~50x slower
    # GB of one trial's GPU: with it set, `sweep validate` refuses a spec whose memory plan
    # (sweep/run/memory_plan.py) does not fit, and names the settings that would.
    gpu_memory_gb: Annotated[float, Field(gt=0)] | None = None


_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"
_MODULE_RE = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$"  # a dotted module name


class SweepSpec(Section):
    name: Annotated[str, Field(pattern=_NAME_RE)]
    models: ModelsSpec
    merge: MergeConfig = Field(default_factory=MergeConfig)
    space: SpaceSpec = Field(default_factory=SpaceSpec)
    sampler: SamplerSpec = Field(default_factory=SamplerSpec)
    budget: BudgetSpec = Field(default_factory=BudgetSpec)
    evals: EvalsSpec = Field(default_factory=EvalsSpec)
    objectives: Annotated[list[ObjectiveSpec], Field(min_length=1)]
    constraints: list[ConstraintSpec] = Field(default_factory=list)
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    report: ReportSpec = Field(default_factory=ReportSpec)
    # Optuna storage: an RDB URL (sqlite:///..., postgresql://...), a journal file path, or
    # env:VAR (the URL is read from $VAR, so no password sits in the spec file).
    # Default: sqlite:///<results_dir>/<name>/study.db
    storage: str | None = None
    results_dir: str = "results"
    # Previous studies whose Pareto fronts are enqueued first (nightly warm start).
    warm_start_from: list[str] = Field(default_factory=list)
    # Python modules imported before the spec is validated (and on every Ray worker), so
    # plug-ins they register (merge methods, samplers, backends, rules) are usable here.
    plugins: list[Annotated[str, Field(pattern=_MODULE_RE)]] = Field(default_factory=list)

    # Filled by load_spec, not by the user.
    spec_path: str | None = Field(default=None, exclude=True)

    @property
    def study_dir(self) -> Path:
        return Path(self.results_dir) / self.name

    @property
    def storage_url(self) -> str:
        """The storage URL to connect to (env:VAR read now). Never print it: use storage_display."""
        if self.storage and self.storage.startswith(ENV_PREFIX):
            var = self.storage[len(ENV_PREFIX) :]
            value = os.environ.get(var)
            if not value:
                raise ConfigError(
                    [
                        f"storage: {self.storage}: the environment variable {var} is not set (export {var}=postgresql://user:password@host/db)"
                    ]
                )
            return value
        return self.storage or f"sqlite:///{self.study_dir / 'study.db'}"

    @property
    def storage_display(self) -> str:
        """The storage URL with any password masked (***), safe to print, log and write."""
        try:
            url = self.storage_url
        except ConfigError:
            return f"{self.storage} (unset)"
        shown = mask_url(url)
        return f"{shown} (from {self.storage})" if self.storage and self.storage.startswith(ENV_PREFIX) else shown

    def secrets(self) -> list[str]:
        """Secret strings of this spec (the storage password), for redacting any text."""
        try:
            return url_secrets(self.storage_url)
        except ConfigError:
            return []

    @property
    def objective_names(self) -> list[str]:
        return [o.metric for o in self.objectives]

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    def produced_metrics(self) -> tuple[list[str], list[str]]:
        """(lm-eval task prefixes `lm_eval/<task>/`, exact probe metric names) this spec produces."""
        lm = [f"lm_eval/{t}/" for t in (self.evals.lm_eval.search_tasks if self.evals.lm_eval else [])]
        probe = [f"probe/{m}" for m in PROBE_METRICS] if self.evals.probe else []
        return lm, probe
