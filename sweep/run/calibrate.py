"""Calibration: does the short probe rank a study's candidates as long RL runs do?

The sweep steers on probe metrics measured in a few RL steps. `calibrate` takes a
handful of a finished study's candidates (the front's extremes, the balanced point and
the complete trials with the lowest and highest steering metric, or the trials named),
runs the same RL from each for `long_steps` steps (8x the probe by default) on seeds the
probe did not use, and compares the probe's recorded metrics with what the long runs
did. Runs in this process (no Ray): one live model rebuilt in place per candidate, as
`sweep report --rescore` does. The result is kept in <study_dir>/calibration.json, and
`sweep report` shows it.

The long run's outcomes come from its curves, normalized per prompt against the
starting model's baseline (evals.probe.baseline), with the probe's trailing window:
- final_length: mean normalized length over the last eighth of the run / baseline;
- min_length: min of the smoothed normalized length / baseline;
- final_reward: mean normalized reward over the last eighth - baseline (reward units);
- dip: baseline reward - min of the smoothed reward (>= 0), and recovery_step: the
  first step after the minimum where the smoothed reward is back at the baseline.

Each steering probe metric stands for one outcome (OUTCOMES): retention and growth for
the final length, the dip for the long run's dip, the final reward for the final reward.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import mean
from typing import Any

from sweep.errors import SweepError

CALIBRATION_FILE = "calibration.json"
TRUST_SPEARMAN = 0.8  # the probe ranks candidates as the long runs do
TRUST_AGREEMENT = 0.9  # the feasibility verdict agrees with the long run's
MIN_CANDIDATES = 4  # below this a rank correlation says little (n=3: rho is one of 4 values)
# probe metric (without "probe/") -> the long-run outcome it stands for
OUTCOMES = {
    "length_retention": "final_length",
    "length_growth": "final_length",
    "reward_dip": "dip",
    "reward_final": "final_reward",
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


def long_outcome(baseline: Sequence[Any], steps: Sequence[Sequence[Any]], *, window: int) -> dict[str, Any]:
    """A long run's outcomes from its per-prompt samples (PromptSamples); see the module doc."""
    from evals.probe.baseline import Baseline, normalized_curves
    from evals.stability import moving_average

    if not baseline or not steps:
        raise SweepError("a long run's outcome needs its baseline and at least one step")
    base = Baseline(baseline)
    length, score, _ = normalized_curves(baseline, steps)
    tail = max(1, len(length) // 8)
    start = min(window, len(length)) - 1  # full windows only, as the probe's metrics read them
    smooth_length = moving_average(length, window)[start:]
    smooth_score = moving_average(score, window)[start:]
    dip = max(0.0, base.pool_score - min(smooth_score))
    recovery = None
    if dip > 0:
        low = smooth_score.index(min(smooth_score))
        recovery = next(
            (start + t for t in range(low + 1, len(smooth_score)) if smooth_score[t] >= base.pool_score), None
        )
    return {
        "final_length": mean(length[-tail:]) / base.pool_length if base.pool_length > 0 else None,
        "min_length": min(smooth_length) / base.pool_length if base.pool_length > 0 else None,
        "final_reward": mean(score[-tail:]) - base.pool_score,
        "dip": dip,
        "recovery_step": recovery,
        "steps": len(length),
    }


@dataclass
class Candidate:
    number: int
    params: dict[str, float]
    why: str  # why it was chosen: "front: best <metric>", "balanced", "lowest <metric>", "--trials"
    probe: dict[str, float | None]  # the study's recorded probe/<name> values that steer
    feasible: bool | None  # the study's feasibility verdict
    long: list[dict[str, Any]] = field(default_factory=list)  # one outcome per long-run seed
    wall_s: float = 0.0

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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Calibration:
        data = dict(data)
        data["candidates"] = [Candidate(**c) for c in data["candidates"]]
        return cls(**data)


def steering_metrics(spec: Any) -> list[str]:
    """Probe metrics (without "probe/") the spec's objectives or constraints use and OUTCOMES maps."""
    names = [o.metric for o in spec.objectives] + [c.metric for c in spec.constraints]
    out = []
    for name in names:
        short = name.removeprefix("probe/")
        if name.startswith("probe/") and short in OUTCOMES and short not in out:
            out.append(short)
    return out


def probe_constraints(spec: Any) -> list[Any]:
    return [c for c in spec.constraints if c.metric.startswith("probe/") and c.metric[6:] in OUTCOMES]


def choose_trials(
    spec: Any, trials: Any, *, numbers: Sequence[int] | None = None, limit: int = 6
) -> list[tuple[int, str]]:
    """(trial number, why) of the candidates to calibrate on. Raises SweepError on bad input."""
    from sweep.report.summary import summarize_spec

    complete = trials[trials["state"] == "COMPLETE"]
    if numbers:
        known = set(int(n) for n in trials["number"])
        done = set(int(n) for n in complete["number"])
        problems = [f"trial {n}: no such trial" for n in numbers if n not in known]
        problems += [f"trial {n}: not COMPLETE" for n in numbers if n in known and n not in done]
        if problems:
            raise SweepError("--trials: " + "; ".join(problems))
        return [(int(n), "--trials") for n in dict.fromkeys(numbers)]
    if complete.empty:
        raise SweepError("the study has no complete trial: nothing to calibrate on (run the sweep first)")
    picks: dict[int, str] = {}
    summary = summarize_spec(trials, spec)
    front = trials[trials["number"].isin(summary.front_numbers)]
    for objective in spec.objectives:
        if not front.empty and objective.metric in front:
            values = front[objective.metric].astype(float)
            best = values.idxmax() if objective.direction == "maximize" else values.idxmin()
            picks.setdefault(int(front.loc[best, "number"]), f"front: best {objective.metric}")
    if summary.balanced is not None:
        picks.setdefault(summary.balanced.number, "balanced")
    steering = steering_metrics(spec)
    if steering:  # span the steering metric: its lowest and highest, then evenly between
        metric = f"probe/{steering[0]}"
        ranked = complete.assign(_v=complete[metric].astype(float)).dropna(subset=["_v"]).sort_values("_v")
        order = [int(n) for n in ranked["number"]]
        if order:
            picks.setdefault(order[0], f"lowest {metric}")
            picks.setdefault(order[-1], f"highest {metric}")
            for q in (0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875):
                if len(picks) >= limit:
                    break
                picks.setdefault(order[round(q * (len(order) - 1))], f"spread on {metric}")
    return list(picks.items())[:limit] if len(picks) > limit else list(picks.items())


def calibrate(
    spec: Any,
    trials: Any,
    chosen: Sequence[tuple[int, str]],
    *,
    long_steps: int | None = None,
    seeds: Sequence[int] | None = None,
    say: Callable[[str], None] = print,
) -> Calibration:
    """Run the long RL from each chosen candidate and compare with the probe's metrics."""
    if spec.evals.probe is None:
        raise SweepError("the study's spec has no evals.probe section: there is no probe to calibrate")
    steering = steering_metrics(spec)
    if not steering:
        raise SweepError(
            "no objective or constraint of the study uses a probe metric that calibrate can check "
            f"(probe/{', probe/'.join(OUTCOMES)})"
        )

    from evals.probe import ProbeConfig, load_prompts
    from evals.probe.backends import get_backend
    from evals.rewards import build_reward
    from sweep.run.trial import build_candidate, load_models
    from sweep.study.fingerprint import trial_spec
    from sweep.study.table import finite_number, trial_params

    config = ProbeConfig.from_dict(spec.evals.probe.model_dump())
    long_steps = long_steps or 8 * config.steps
    if long_steps < config.steps:
        raise SweepError(f"--long-steps {long_steps} is shorter than the probe's {config.steps} steps")
    seeds = list(seeds) if seeds else [config.seed + 1]  # not the probe's seed: the long run is another run
    started = time.perf_counter()
    first = trial_spec(spec, trials, chosen[0][0])
    sources, model, tokenizer, device = load_models(first)
    prompts = load_prompts(config.prompts)
    dtype = next(model.parameters()).dtype
    rule = config.reward.rule if config.reward.model is None else None
    reward = build_reward(rule=rule, model=config.reward.model, device=device, dtype=dtype)
    backend = get_backend(config.backend)
    candidates = []
    for i, (number, why) in enumerate(chosen, 1):
        row = trials[trials["number"] == number].iloc[0]
        params = {k: float(v) for k, v in trial_params(row).items()}
        build_candidate(trial_spec(spec, trials, number), params, model=model, sources=sources)
        probe = {m: finite_number(row.get(f"probe/{m}")) for m in steering}
        feasible = bool(row["feasible"]) if "feasible" in row and row["feasible"] is not None else None
        candidate = Candidate(number=number, params=params, why=why, probe=probe, feasible=feasible)
        t0 = time.perf_counter()
        for seed in seeds:
            long_config = config.model_copy(
                update={"steps": long_steps, "seed": seed, "collapse_threshold": None, "noise_samples": 0}
            )
            run = backend.run(model, tokenizer, config=long_config, prompts=prompts, reward=reward)
            if run.diverged:
                outcome = {"final_length": 0.0, "min_length": 0.0, "final_reward": None, "dip": None}
                outcome |= {"recovery_step": None, "steps": run.curves.steps, "diverged": True}
            else:
                outcome = long_outcome(run.baseline, run.steps, window=config.window)
            candidate.long.append(outcome | {"seed": seed})
        candidate.wall_s = time.perf_counter() - t0
        candidates.append(candidate)
        shown = ", ".join(f"{m} {_fmt(v)}" for m, v in probe.items())
        say(
            f"calibrated {i}/{len(chosen)}: trial {number} ({why}): probe {shown}; {long_steps}-step run: "
            f"final length {_fmt(candidate.outcome('final_length'))}, dip {_fmt(candidate.outcome('dip'))} "
            f"({time.perf_counter() - started:.0f} s)"
        )
    wall_s = time.perf_counter() - started
    return summarize_calibration(
        spec, candidates, long_steps=long_steps, probe_steps=config.steps, seeds=seeds, wall_s=wall_s
    )


def summarize_calibration(
    spec: Any, candidates: list[Candidate], *, long_steps: int, probe_steps: int, seeds: list[int], wall_s: float
) -> Calibration:
    """Rank agreement and feasibility agreement, and the verdict."""
    rhos: dict[str, float] = {}
    for metric in steering_metrics(spec):
        pairs: list[tuple[float, float]] = []
        for c in candidates:
            probe, long = c.probe.get(metric), c.outcome(OUTCOMES[metric])
            if probe is not None and long is not None:
                pairs.append((probe, long))
        rhos[metric] = spearman([p for p, _ in pairs], [o for _, o in pairs]) if pairs else float("nan")
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
    runs = f"{long_steps}-step runs"
    weak = {m: r for m, r in rhos.items() if not (r >= TRUST_SPEARMAN)}
    disagree = {k: v for k, v in agreement.items() if v < TRUST_AGREEMENT}
    shown = ", ".join(f"{m} {_fmt(r)}" for m, r in rhos.items())
    if n < MIN_CANDIDATES:
        trusted = False
        verdict = f"too few candidates ({n}) to judge the ranking: calibrate at least {MIN_CANDIDATES} (--trials)"
    elif not weak and not disagree:
        trusted = True
        verdict = f"the probe ranks your candidates as {runs} do (Spearman {shown} over {n} candidates)"
        if agreement:
            verdict += "; feasibility agrees on " + ", ".join(f"{v:.0%} ({k})" for k, v in agreement.items())
    else:
        trusted = False
        parts = [f"Spearman {_fmt(r)} for probe/{m}" for m, r in weak.items()]
        parts += [f"feasibility agrees on only {v:.0%} for {k}" for k, v in disagree.items()]
        verdict = (
            f"do not trust the front's stability axis: the probe does not rank your candidates as {runs} do "
            f"({'; '.join(parts)}; targets: Spearman >= {TRUST_SPEARMAN}, agreement >= {TRUST_AGREEMENT:.0%}). "
            "Try more probe steps, or a probe setting closer to your RL run (docs/probe.md, Calibration)"
        )
    return Calibration(
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
    )


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
    metrics = list(c.spearman)
    title = f"Calibration: the probe ({c.probe_steps} steps) against {c.long_steps}-step runs"
    facts = (
        f"{len(c.candidates)} candidates, long-run seeds {', '.join(map(str, c.seeds))}, {c.wall_s:.0f} s "
        "(`sweep calibrate`; docs/probe.md)"
    )
    header = ["trial", "chosen as", *(f"probe/{m}" for m in metrics)]
    header += ["final length", "min length", "final reward", "dip", "feasible (probe)"]
    rows = []
    for cand in c.candidates:
        cells = [str(cand.number), cand.why] + [_fmt(cand.probe.get(m)) for m in metrics]
        cells += [_fmt(cand.outcome(k)) for k in ("final_length", "min_length", "final_reward", "dip")]
        cells.append({True: "yes", False: "no", None: "-"}[cand.feasible])
        rows.append(cells)
    return title, facts, header, rows


def markdown(calibration: Calibration, escape: Callable[[Any], str] = str) -> list[str]:
    """The report's calibration section, as markdown lines (user strings through `escape`)."""
    title, facts, header, rows = _section(calibration)
    n_metrics = len(header) - 7
    out = [
        f"## {title}",
        "",
        f"- **Verdict:** {escape(calibration.verdict)}",
        f"- {facts}",
        "",
        "| " + " | ".join(header[:2] + [escape(h) for h in header[2 : 2 + n_metrics]] + header[2 + n_metrics :]) + " |",
        "|---:|---|" + "---:|" * n_metrics + "---:|---:|---:|---:|---|",
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
    return (
        f"<h2>{escape(title)}</h2>"
        f'<p class="{status}"><b>Verdict:</b> {escape(calibration.verdict)}</p>'
        f'<p class="muted">{escape(facts)}</p>'
        f'<div class="scroll"><table id="calibration"><tr>{head}</tr>{body}</table></div>'
    )


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
