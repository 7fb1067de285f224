"""Warm start: enqueue the Pareto front of earlier studies (nightly runs build on last night).

`warm_start_from` entries are study folders or globs of them (`results/nightly-*`). For
each entry the latest matching folder other than this study's own is used; its
`trials.parquet` front (under this spec's objectives and constraints) is enqueued first.
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from sweep.config import SweepSpec
from sweep.study import table

log = logging.getLogger("sweep")


def previous_studies(spec: SweepSpec) -> list[Path]:
    own = spec.study_dir.resolve()
    found: list[Path] = []
    for pattern in spec.warm_start_from:
        candidates = sorted(Path(p).resolve() for p in glob.glob(pattern))
        candidates = [c for c in candidates if c != own and table.exists(c)]
        if candidates:
            found.append(candidates[-1])  # the latest by name: date-stamped names sort by date
        else:
            log.warning("warm_start_from: nothing matches %s (a study folder with trials.parquet)", pattern)
    return found


def warm_start_points(spec: SweepSpec) -> list[dict[str, float]]:
    """Params of the previous studies' Pareto fronts that lie inside this spec's space."""
    from sweep.report.front import pareto_front

    ranges = {"alpha": spec.space.alpha, "beta": spec.space.beta} | dict(spec.space.params)
    points: list[dict[str, float]] = []
    for folder in previous_studies(spec):
        trials = table.read(folder)
        if not set(spec.objective_names) <= set(trials.columns):
            log.warning("warm start: %s lacks this spec's objectives; skipped", folder)
            continue
        front = pareto_front(trials, spec.objectives, spec.constraints)
        for _, row in front.iterrows():
            prefix = table.PARAM_PREFIX
            point = {name: float(row[prefix + name]) for name in ranges if prefix + name in row}
            if len(point) == len(ranges) and all(ranges[k].contains(v) for k, v in point.items()):
                points.append(point)
        log.info("warm start: %d point(s) from the front of %s", len(points), folder)
    return points
