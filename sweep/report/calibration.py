"""Calibration's record: does the short probe rank a study's candidates as long RL runs do?

`sweep calibrate` (sweep.run.calibrate) runs the long RL from a few candidates; this module
holds what it found and reads it back: the candidates with their probe metrics and long-run
outcomes, the rank agreement (Spearman) of each steering probe metric with the outcome it
stands for (OUTCOMES), the feasibility agreement, the verdict, <study_dir>/calibration.json,
and the report's Calibration section (markdown and HTML, from the same data).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

CALIBRATION_FILE = "calibration.json"


TRUST_SPEARMAN = 0.8  # the probe ranks candidates as the long runs do


TRUST_AGREEMENT = 0.9  # the feasibility verdict agrees with the long run's


MIN_CANDIDATES = 4  # below this a rank correlation says little (n=3: rho is one of 4 values)


# probe metric (without "probe/") -> the long-run outcome it stands for
OUTCOMES = {
    "length_retention": "final_length",
    "length_growth": "final_length",
    "reward_dip": "dip",
    "reward_fall": "fall",
    "reward_final": "final_score",
    "reward_gain": "final_reward",
}


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rank correlation, ties at their average rank; nan when a side is constant or n < 2."""
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    if len(x) < 2:
        return float("nan")
    rx, ry = ranks(x), ranks(y)
    mx, my = mean(rx), mean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry, strict=True))
    sxx = sum((a - mx) ** 2 for a in rx)
    syy = sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else float("nan")


@dataclass
class Candidate:
    number: int
    params: dict[str, float]
    why: str  # why it was chosen: "front: best <metric>", "balanced", "lowest <metric>", "--trials"
    probe: dict[str, float | None]  # the study's recorded probe/<name> values that steer
    feasible: bool | None  # the study's feasibility verdict
    long: list[dict[str, Any]] = field(default_factory=list)  # one outcome per long-run seed
    wall_s: float = 0.0
    noise: dict[str, float | None] = field(default_factory=dict)  # probe/<name>_noise, the band's half-width

    def outcome(self, name: str) -> float | None:
        values = [run[name] for run in self.long if run.get(name) is not None]
        return mean(values) if values else None


@dataclass
class Calibration:
    study: str
    long_steps: int
    probe_steps: int
    seeds: list[int]
    candidates: list[Candidate]
    spearman: dict[str, float]  # probe metric -> rho against its outcome
    agreement: dict[str, float]  # constraint text -> share of candidates whose verdicts agree
    trusted: bool
    verdict: str
    wall_s: float
    # probe metric -> groups of trials whose probe values lie within each other's noise band:
    # the probe does not order them, so they enter the Spearman tied
    ties: dict[str, list[list[int]]] = field(default_factory=dict)
    # the long runs' reward shapes against their null, one line ("" in records from before)
    reward_shapes: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        data = dict(data)
        data["candidates"] = [Candidate(**c) for c in data["candidates"]]
        return cls(**data)


def tie_within_noise(values: Sequence[float], noise: Sequence[float | None]) -> tuple[list[float], list[list[int]]]:
    """`values` with each run of neighbours (in sorted order) whose gap is within the larger
    of their noise half-widths set to the run's mean, and the runs (indices) of 2 or more.
    A probe value says nothing about the order of candidates inside its own noise band, so
    their long runs' order must not count for or against it."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    groups: list[list[int]] = []
    for i in order:
        last = groups[-1][-1] if groups else None
        if last is not None and values[i] - values[last] <= max(noise[i] or 0.0, noise[last] or 0.0):
            groups[-1].append(i)
        else:
            groups.append([i])
    tied = list(values)
    for group in groups:
        for i in group:
            tied[i] = mean(values[j] for j in group)
    return tied, [sorted(g) for g in groups if len(g) > 1]


def steering_metrics(spec: Any) -> list[str]:
    """Probe metrics (without "probe/") the spec's objectives or constraints use and OUTCOMES maps."""
    names = [o.metric for o in spec.objectives] + [c.metric for c in spec.constraints]
    out = []
    for name in names:
        short = name.removeprefix("probe/")
        if name.startswith("probe/") and short in OUTCOMES and short not in out:
            out.append(short)
    return out


def ranking_metrics(spec: Any) -> list[str]:
    """The steering metrics an objective uses: the front ranks by them, so their Spearman counts.
    A metric used only in a constraint is judged by its verdict (agreement), not by its order."""
    objectives = {o.metric.removeprefix("probe/") for o in spec.objectives if o.metric.startswith("probe/")}
    return [m for m in steering_metrics(spec) if m in objectives]


def probe_constraints(spec: Any) -> list[Any]:
    return [c for c in spec.constraints if c.metric.startswith("probe/") and c.metric[6:] in OUTCOMES]


def summarize_calibration(
    spec: Any, candidates: list[Candidate], *, long_steps: int, probe_steps: int, seeds: list[int], wall_s: float
) -> Calibration:
    """Rank agreement and feasibility agreement, and the verdict."""
    rhos: dict[str, float] = {}
    ties: dict[str, list[list[int]]] = {}
    for metric in ranking_metrics(spec):
        rows: list[tuple[int, float, float | None, float]] = []  # trial, probe value, its noise, outcome
        for c in candidates:
            probe, long = c.probe.get(metric), c.outcome(OUTCOMES[metric])
            if probe is not None and long is not None:
                rows.append((c.number, probe, c.noise.get(metric), long))
        values, groups = tie_within_noise([r[1] for r in rows], [r[2] for r in rows])
        rhos[metric] = spearman(values, [r[3] for r in rows]) if rows else float("nan")
        if groups:
            ties[metric] = [[rows[i][0] for i in g] for g in groups]
    agreement: dict[str, float] = {}
    for constraint in probe_constraints(spec):
        metric = constraint.metric.removeprefix("probe/")
        verdicts = []
        for c in candidates:
            probe, long = c.probe.get(metric), c.outcome(OUTCOMES[metric])
            if probe is not None and long is not None:
                verdicts.append((constraint.violation(probe) <= 0) == (constraint.violation(long) <= 0))
        if verdicts:
            agreement[str(constraint)] = sum(verdicts) / len(verdicts)
    n = len(candidates)
    probe_spec = spec.evals.probe
    lora = probe_spec is not None and probe_spec.update == "lora"  # the long runs train as the probe does
    runs = f"{long_steps}-step {'LoRA ' if lora else ''}runs"
    weak = {m: r for m, r in rhos.items() if not (r >= TRUST_SPEARMAN)}
    disagree = {k: v for k, v in agreement.items() if v < TRUST_AGREEMENT}
    shown = ", ".join(f"{m} {fmt_value(r)}" for m, r in rhos.items())
    if n < MIN_CANDIDATES:
        trusted = False
        verdict = f"too few candidates ({n}) to judge the ranking: calibrate at least {MIN_CANDIDATES} (--trials)"
    elif not rhos and not agreement:
        trusted = False
        verdict = "nothing to compare: no candidate has both a recorded probe value and a long-run outcome"
    elif not weak and not disagree:
        trusted = True
        agrees = "feasibility agrees on " + ", ".join(f"{v:.0%} ({k})" for k, v in agreement.items())
        if rhos:
            verdict = (
                f"the probe ranks your candidates as {runs} do (Spearman {shown} over {n} candidates{_ties_text(ties)})"
            )
            verdict += f"; {agrees}" if agreement else ""
        else:
            verdict = f"the probe's verdicts agree with {runs} ({agrees}, over {n} candidates)"
        if lora:
            verdict += (
                "; the long runs train LoRA adapters as the probe does, and a full-update RL run may wear down "
                'more of what the model knew (docs/probe.md, "Full or LoRA, and how adapters reach vLLM")'
            )
    else:
        trusted = False
        parts = [f"Spearman {fmt_value(r)} for probe/{m}{_ties_text(ties, only=m)}" for m, r in weak.items()]
        parts += [f"feasibility agrees on only {v:.0%} for {k}" for k, v in disagree.items()]
        verdict = (
            f"do not trust the front's stability axis: the probe does not rank your candidates as {runs} do "
            f"({'; '.join(parts)}; targets: Spearman >= {TRUST_SPEARMAN}, agreement >= {TRUST_AGREEMENT:.0%}). "
            "Try more probe steps, or a probe setting closer to your RL run (docs/probe.md, Calibration)"
        )
    return Calibration(
        reward_shapes=summarize_shapes(candidates),
        study=spec.name,
        long_steps=long_steps,
        probe_steps=probe_steps,
        seeds=list(seeds),
        candidates=candidates,
        spearman=rhos,
        agreement=agreement,
        trusted=trusted,
        verdict=verdict,
        wall_s=wall_s,
        ties=ties,
    )


def dip_threshold(run: dict[str, Any]) -> float | None:
    """The dip a long run must exceed to count: its simulated null, or twice its own
    bootstrap half-width where that is larger (sweep.run.longrun.reward_shape)."""
    from evals.probe.baseline import fall_threshold

    if run.get("dip_null") is None:
        return None
    return fall_threshold(run["dip_null"], run.get("dip_noise"))


def describe_reward(run: dict[str, Any]) -> str:
    """One long run's reward shape in words: 'hockey stick: 0.44 under its start at step 9
    (null 0.14), back at step 40'."""
    shape = run.get("reward_shape")
    if shape is None or shape == "diverged":
        return shape or "n/a"
    dip, null = run["dip"], dip_threshold(run)
    if shape == "no dip":
        return f"no dip beyond its null ({dip:.2f}, null {null:.2f})"
    where = f"{dip:.2f} under its start at step {run['low_step']} (null {null:.2f})"
    if shape == "hockey stick":
        return f"hockey stick: {where}, back at step {run['back_step']}"
    return f"fell: {where}, not back in {run['steps']} steps"


def summarize_shapes(candidates: Sequence[Candidate]) -> str:
    """'hockey stick on trial 0; fell on trial 3; no dip beyond its null on trials 5 and 7'
    (a trial per long-run seed when there are several seeds)."""
    by_shape: dict[str, list[str]] = {}
    for c in candidates:
        for run in c.long:
            if run.get("reward_shape"):
                name = f"{c.number}" if len(c.long) == 1 else f"{c.number} (seed {run.get('seed')})"
                by_shape.setdefault(run["reward_shape"], []).append(name)
    words = {"hockey stick": "hockey stick", "fell": "fell and not back", "no dip": "no dip beyond its null"}
    parts = []
    for shape, names in by_shape.items():
        trials = f"trial {names[0]}" if len(names) == 1 else f"trials {', '.join(names[:-1])} and {names[-1]}"
        parts.append(f"{words.get(shape, shape)} on {trials}")
    return "; ".join(parts)


def _ties_text(ties: dict[str, list[list[int]]], only: str | None = None) -> str:
    """'; trials 4 and 5 tied: ...' for the noise ties of every ranked metric (or `only` one)."""
    groups = [g for metric, gs in ties.items() if only in (None, metric) for g in gs]
    if not groups:
        return ""
    shown = "; ".join(f"trials {', '.join(map(str, g[:-1]))} and {g[-1]}" for g in groups)
    return f"; {shown} tied: within the probe's noise band, the probe does not order them"


def save_calibration(study_dir: Path, calibration: Calibration) -> Path:
    path = Path(study_dir) / CALIBRATION_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(calibration.to_json(), indent=1, allow_nan=True) + "\n")
    tmp.replace(path)
    return path


def load_calibration(study_dir: Path) -> Calibration | None:
    path = Path(study_dir) / CALIBRATION_FILE
    return Calibration.from_json(json.loads(path.read_text())) if path.exists() else None


def _section(calibration: Calibration) -> tuple[str, str, list[str], list[list[str]]]:
    """The report's calibration section as plain text: (title, facts line, table header, rows).
    The markdown and HTML renderings escape what they need from these."""
    c = calibration
    # every probe metric that steers: the ranked ones (spearman) and those only a constraint uses
    metrics = list(dict.fromkeys([*c.spearman, *(m for cand in c.candidates for m in cand.probe)]))
    title = f"Calibration: the probe ({c.probe_steps} steps) against {c.long_steps}-step runs"
    facts = (
        f"{len(c.candidates)} candidates, long-run seeds {', '.join(map(str, c.seeds))}, {c.wall_s:.0f} s "
        "(`sweep calibrate`; docs/probe.md)"
    )
    header = ["trial", "chosen as", *(f"probe/{m}" for m in metrics)]
    header += ["final length", "min length", "final reward", "dip", "feasible (probe)", "long-run reward"]
    rows = []
    for cand in c.candidates:
        cells = [str(cand.number), cand.why] + [fmt_value(cand.probe.get(m)) for m in metrics]
        cells += [fmt_value(cand.outcome(k)) for k in ("final_length", "min_length", "final_reward", "dip")]
        cells.append({True: "yes", False: "no", None: "-"}[cand.feasible])
        cells.append("; ".join(describe_reward(run) for run in cand.long) or "n/a")
        rows.append(cells)
    return title, facts, header, rows


def markdown(calibration: Calibration, escape: Callable[[Any], str] = str) -> list[str]:
    """The report's calibration section, as markdown lines (user strings through `escape`)."""
    title, facts, header, rows = _section(calibration)
    n_metrics = len(header) - 8
    out = [
        f"## {title}",
        "",
        f"- **Verdict:** {escape(calibration.verdict)}",
    ]
    if calibration.reward_shapes:
        out.append(f"- **Long-run reward:** {escape(calibration.reward_shapes)}")
    out += [
        f"- {facts}",
        "",
        "| " + " | ".join(header[:2] + [escape(h) for h in header[2 : 2 + n_metrics]] + header[2 + n_metrics :]) + " |",
        "|---:|---|" + "---:|" * n_metrics + "---:|---:|---:|---:|---|---|",
    ]
    for cells in rows:
        out.append("| " + " | ".join([cells[0], escape(cells[1]), *cells[2:]]) + " |")
    return out


def html(calibration: Calibration, escape: Callable[[Any], str]) -> str:
    """The report's calibration section, as HTML (every string through `escape`)."""
    title, facts, header, rows = _section(calibration)
    head = "".join(f"<th>{escape(c)}</th>" for c in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    status = "ok" if calibration.trusted else "warning"
    shapes = calibration.reward_shapes
    return (
        f"<h2>{escape(title)}</h2>"
        f'<p class="{status}"><b>Verdict:</b> {escape(calibration.verdict)}</p>'
        + (f"<p><b>Long-run reward:</b> {escape(shapes)}</p>" if shapes else "")
        + f'<p class="muted">{escape(facts)}</p>'
        f'<div class="scroll"><table id="calibration"><tr>{head}</tr>{body}</table></div>'
    )


def fmt_value(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
