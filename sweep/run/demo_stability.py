"""The probe on demo merges against its no-learning control: the BAI phenomena, measured.

For each (alpha, beta) and seed, the demo spec's probe runs twice on the merge built by
`merge.build_in_place`: at the spec's learning rate, and at 1e-12 (the null control: the
same sampling, the same prompts, weights that cannot move). A metric's shift under
training is only a finding when it is well outside the control's spread.

    rows = probe_rows(family, points=((0.0, 1.0), (0.25, 0.5)), seeds=(0, 1, 2))
    print(markdown_table(rows))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from statistics import mean, pstdev
from typing import Any

NULL_LEARNING_RATE = 1e-12  # Adam's step is ~lr per weight: nothing moves at this rate
DEMO_SPEC = Path(__file__).resolve().parents[2] / "search_spaces" / "demo.yaml"
# balanced: the shipped family's stage-2 merge that thinks once (~34 tokens, inside the
# probe's 64) and adds (1.00 held out; docs/demo-family.md). (0.25, 0.75) adds at 0.76 and
# keeps less of its length under the probe (retention 0.75-0.82 against 0.82-0.87 on seeds
# 0-5); (0.5, 0.75) thinks as briefly but cannot add.
NAMED_POINTS = {"instruct": (1.0, 1.0), "reasoning": (0.0, 1.0), "balanced": (0.25, 0.5)}
TABLE_METRICS = ("length_retention", "length_growth", "reward_dip", "entropy_drop", "kl_final")


def demo_probe_settings(**changes: Any) -> dict:
    """The demo spec's `evals.probe` section (prompts left as `demo:probe_prompts`), with changes."""
    from sweep.config import load_spec

    probe = load_spec(DEMO_SPEC, resolve_demo=False).evals.probe
    if probe is None:
        raise ValueError(f"{DEMO_SPEC} has no evals.probe section")
    return probe.model_dump() | changes


@dataclass(frozen=True)
class ProbeRun:
    alpha: float
    beta: float
    seed: int
    learning_rate: float
    metrics: dict[str, float | None]  # probe/<name> -> value, noise bands included
    baseline_s: float  # seconds sampling the per-prompt baselines
    wall_s: float  # seconds for the whole probe

    @property
    def null(self) -> bool:
        return self.learning_rate <= NULL_LEARNING_RATE


def probe_runs(
    family,
    *,
    points: Sequence[tuple[float, float]],
    seeds: Sequence[int],
    settings: dict | None = None,
    dtype: str = "float32",
    null: bool = True,
    progress=None,
) -> list[ProbeRun]:
    """The demo spec's probe on each merge and seed, trained and (with `null`) at 1e-12."""
    import torch

    from evals.probe import ProbeConfig, load_prompts, run_probe
    from sweep.demo.measure import build, load_family_models

    settings = dict(settings or demo_probe_settings())
    settings["prompts"] = str(family.probe_prompts)
    prompts = load_prompts(settings["prompts"])
    sources, model, tokenizer = load_family_models(family)
    runs = []
    for alpha, beta in points:
        build(model, sources, alpha, beta)
        live = model.to(getattr(torch, dtype))
        for seed in seeds:
            for lr in [settings["learning_rate"], NULL_LEARNING_RATE] if null else [settings["learning_rate"]]:
                config = ProbeConfig.from_dict(settings | {"learning_rate": lr, "seed": seed})
                result = run_probe(live, tokenizer, config=config, prompts=prompts)
                run = ProbeRun(alpha, beta, seed, lr, result.metrics.as_metrics(), result.baseline_s, result.wall_s)
                runs.append(run)
                if progress:
                    progress(run)
        model = live.to(torch.float32)
    return runs


def summarize(values: Sequence[float]) -> tuple[float, float]:
    """(mean, population standard deviation)."""
    return mean(values), pstdev(values) if len(values) > 1 else 0.0


def _recorded(runs: Sequence[ProbeRun], metric: str, *, null: bool) -> list[float]:
    """probe/<metric> of the trained (null=False) or null-control runs; a None (not computable) is left out."""
    return [v for r in runs if r.null == null and (v := r.metrics[f"probe/{metric}"]) is not None]


def markdown_table(
    runs: Sequence[ProbeRun], metrics: Sequence[str] = ("length_retention", "length_growth", "reward_dip")
) -> str:
    """One row per (alpha, beta): each metric trained, then its null control, as mean ± sd over seeds."""
    points = sorted({(r.alpha, r.beta) for r in runs}, key=lambda p: (-p[1], p[0]))
    header = ["alpha", "beta", "seeds"] + [f"{m} (trained / null)" for m in metrics]
    lines = ["| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    for alpha, beta in points:
        at = [r for r in runs if (r.alpha, r.beta) == (alpha, beta)]
        cells = [f"{alpha:g}", f"{beta:g}", str(len({r.seed for r in at}))]
        for m in metrics:
            values = _recorded(at, m, null=False)
            control = _recorded(at, m, null=True)
            trained = summarize(values) if values else None
            text = f"{trained[0]:.2f} ± {trained[1]:.2f}" if trained else "n/a"
            if control:
                c = summarize(control)
                text += f" / {c[0]:.2f} ± {c[1]:.2f}"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def per_seed_table(runs: Sequence[ProbeRun], metric: str = "length_retention") -> str:
    """One row per seed: `metric` trained / null for each (alpha, beta), as the runs hold them."""
    points = sorted({(r.alpha, r.beta) for r in runs}, key=lambda p: (-p[1], p[0]))
    lines = [
        "| seed | " + " | ".join(f"alpha {a:g}, beta {b:g}: {metric} (trained / null)" for a, b in points) + " |",
        "|---:|" + "---:|" * len(points),
    ]
    for seed in sorted({r.seed for r in runs}):
        cells = [str(seed)]
        for point in points:
            at = [r for r in runs if (r.alpha, r.beta) == point and r.seed == seed]
            values = [_recorded(at, metric, null=False), _recorded(at, metric, null=True)]
            cells.append(" / ".join(f"{v[0]:.3f}" if v else "n/a" for v in values))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
