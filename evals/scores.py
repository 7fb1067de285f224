"""`EvalScore`: one lm-eval number with its stable name, as a typed record.

Import-free (no lm-eval, no torch) so that `sweep` can read results cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from evals.metric_names import lm_eval_metric_name


@dataclass(frozen=True)
class EvalScore:
    """A capability score.

    name: `lm_eval/<task>/<metric>,<filter>` (see `evals.metric_names.lm_eval_metric_name`),
      e.g. `lm_eval/gsm8k/exact_match,strict-match`.
    value: a plain float in the metric's own units (exact_match: fraction of docs, 0..1).
    stderr: lm-eval's standard error of `value`, or None where lm-eval gives none.
    """

    name: str
    value: float
    stderr: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "value": self.value, "stderr": self.stderr}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalScore:
        stderr = data.get("stderr")
        return cls(name=str(data["name"]), value=float(data["value"]), stderr=None if stderr is None else float(stderr))


def scores_from_results(results: dict[str, Any]) -> list[EvalScore]:
    """EvalScores from the dict lm-eval's `evaluate`/`simple_evaluate` returns (or its JSON file).

    Reads `results["results"]` (tasks and groups): every `"<metric>,<filter>"` key with a
    numeric value becomes one score; its `"<metric>_stderr,<filter>"` twin is the stderr
    ("N/A" or missing: None). Sorted by name, so the order is stable.
    """
    scores: dict[str, EvalScore] = {}
    for task, metrics in (results.get("results") or {}).items():
        for key, value in metrics.items():
            if "," not in key:
                continue  # alias, name, sample_len, ...
            metric, filter_name = key.split(",", 1)
            if metric.endswith("_stderr"):
                continue
            number = _as_float(value)
            if number is None:
                continue
            name = lm_eval_metric_name(task, metric, filter_name)
            stderr = _as_float(metrics.get(f"{metric}_stderr,{filter_name}"))
            stderr = None if stderr is None or math.isnan(stderr) else stderr
            scores[name] = EvalScore(name=name, value=number, stderr=stderr)
    return [scores[n] for n in sorted(scores)]


def _as_float(value: Any) -> float | None:
    """A plain float from lm-eval's numbers (numpy floats, ints); None for "N/A", None, text."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
