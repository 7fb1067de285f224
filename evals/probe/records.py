"""Typed records of the probe: its prompts, per-step curves and result (the config is
evals.probe.config).

All are frozen dataclasses that round-trip losslessly through JSON (`to_dict` /
`from_dict`). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from evals.errors import EvalError
from evals.stability import StabilityMetrics


@dataclass(frozen=True)
class Prompt:
    prompt: str  # the user message (the chat template is applied by the probe)
    answer: str | None = None  # expected final answer, for rule rewards


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read a jsonl prompts file. EvalError names the file and line of any problem."""
    path = Path(path)
    if str(path).startswith("demo:"):
        raise EvalError(
            f"prompts {path}: demo references are resolved by sweep (load the spec with sweep.config.load_spec)"
        )
    if not path.is_file():
        raise EvalError(f"prompts file {path}: not found")
    prompts: list[Prompt] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise EvalError(f"prompts file {path}, line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"]:
            raise EvalError(f'prompts file {path}, line {number}: expected {{"prompt": "<text>", "answer": "<text>"}}')
        answer = row.get("answer")
        prompts.append(Prompt(prompt=row["prompt"], answer=None if answer is None else str(answer)))
    if not prompts:
        raise EvalError(f"prompts file {path}: no prompts")
    return prompts


# verl's metric names (where verl has one) -> field names.
CURVE_KEYS = {
    "response_length/mean": "response_length_mean",  # tokens per completion, eos included
    "response_length/min": "response_length_min",
    "response_length/max": "response_length_max",
    "response_length/clip_ratio": "response_length_clip_ratio",  # share truncated at max_new_tokens
    "critic/score/mean": "score_mean",  # raw reward, before KL
    "critic/score/std": "score_std",
    "actor/kl": "kl",  # k3 estimate of KL(policy || initial), mean per response token
    "actor/entropy": "entropy",  # nats per response token, at the sampling temperature
    "actor/grad_norm": "grad_norm",  # before clipping, mean over the step's updates (0: none)
    # 1: the step updated the policy; 0: a flat batch (no group's reward varied) skipped
    # under skip_flat_batches; with mini_batches > 1 the share of mini-batches updated.
    # Empty in records from backends that do not report it.
    "actor/updated": "updated",
    # Over the mini-batches after a step's first (mini_batches > 1; 0 with one): the share of
    # tokens where PPO's clip binds, and the token mean of log p_sampling - log p_now.
    "actor/pg_clipfrac": "pg_clipfrac",
    "actor/ppo_kl": "ppo_kl",
    "timing/step_s": "step_s",  # seconds: sampling, reward, update (and the weight push, generator: vllm)
    "timing/gen_s": "gen_s",  # seconds of the step spent sampling
    # Per-prompt normalized curves (empty without a baseline): the mean over the step's
    # prompts of each prompt's value relative to its own baseline, in the pool's units:
    # length: pool baseline mean x mean_i(L_i / B_i); score and entropy: pool baseline
    # mean + mean_i(x_i - B_i). A step's draw of prompts does not move them.
    "response_length/normalized": "response_length_normalized",
    "critic/score/normalized": "score_normalized",
    "actor/entropy/normalized": "entropy_normalized",
    # Half-width of the bootstrap noise band of the normalized length and score per step.
    "response_length/normalized/noise": "response_length_normalized_noise",
    "critic/score/normalized/noise": "score_normalized_noise",
}
# Curves a backend may leave empty (no baseline measured, no noise band).
OPTIONAL_CURVES = (
    "actor/updated",
    "actor/pg_clipfrac",
    "actor/ppo_kl",
    "response_length/normalized",
    "critic/score/normalized",
    "actor/entropy/normalized",
    "response_length/normalized/noise",
    "critic/score/normalized/noise",
)


def curve_row(
    batch: Any,
    scores: Any,
    *,
    kl: float,
    entropy: float,
    grad_norm: float,
    gen_s: float,
    step_s: float,
    updated: float = 1.0,
    pg_clipfrac: float = 0.0,
    ppo_kl: float = 0.0,
) -> dict[str, float]:
    """One step's point of every raw curve (keys as ProbeCurves.append reads them), from the
    step's rollouts (evals.probe.sampling.Batch), their raw scores and the update's figures."""
    lengths = batch.lengths.float()
    return {
        "response_length/mean": lengths.mean().item(),
        "response_length/min": lengths.min().item(),
        "response_length/max": lengths.max().item(),
        "response_length/clip_ratio": batch.truncated.float().mean().item(),
        "critic/score/mean": scores.mean().item(),
        "critic/score/std": scores.std(unbiased=False).item(),
        "actor/kl": kl,
        "actor/entropy": entropy,
        "actor/grad_norm": grad_norm,
        "actor/updated": updated,
        "actor/pg_clipfrac": pg_clipfrac,
        "actor/ppo_kl": ppo_kl,
        "timing/gen_s": gen_s,
        "timing/step_s": step_s,
    }


@dataclass(frozen=True)
class ProbeCurves:
    """Per-step curves; point t is measured on the completions sampled at step t
    (so point 0 is the candidate before any update)."""

    response_length_mean: tuple[float, ...] = ()
    response_length_min: tuple[float, ...] = ()
    response_length_max: tuple[float, ...] = ()
    response_length_clip_ratio: tuple[float, ...] = ()
    score_mean: tuple[float, ...] = ()
    score_std: tuple[float, ...] = ()
    kl: tuple[float, ...] = ()
    entropy: tuple[float, ...] = ()
    grad_norm: tuple[float, ...] = ()
    updated: tuple[float, ...] = ()
    pg_clipfrac: tuple[float, ...] = ()
    ppo_kl: tuple[float, ...] = ()
    step_s: tuple[float, ...] = ()
    gen_s: tuple[float, ...] = ()
    response_length_normalized: tuple[float, ...] = ()
    score_normalized: tuple[float, ...] = ()
    entropy_normalized: tuple[float, ...] = ()
    response_length_normalized_noise: tuple[float, ...] = ()
    score_normalized_noise: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        optional = {CURVE_KEYS[k] for k in OPTIONAL_CURVES}
        lengths = {len(getattr(self, f.name)) for f in fields(self) if f.name not in optional}
        lengths |= {len(getattr(self, name)) for name in optional if getattr(self, name)}
        if len(lengths) > 1:
            raise ValueError(f"probe curves have different lengths: {sorted(lengths)}")
        for f in fields(self):  # lists from JSON become tuples: the record stays immutable
            object.__setattr__(self, f.name, tuple(float(v) for v in getattr(self, f.name)))

    @property
    def steps(self) -> int:
        return len(self.response_length_mean)

    def __getitem__(self, key: str) -> tuple[float, ...]:
        """A curve by its verl-style key, e.g. curves["critic/score/mean"]."""
        return getattr(self, CURVE_KEYS[key])

    def to_dict(self) -> dict[str, list[float]]:
        return {key: list(getattr(self, name)) for key, name in CURVE_KEYS.items()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> ProbeCurves:
        unknown = sorted(set(data) - set(CURVE_KEYS))
        if unknown:
            raise ValueError(f"unknown curve keys: {', '.join(unknown)}")
        return cls(**{CURVE_KEYS[key]: tuple(values) for key, values in data.items()})

    @property
    def normalized(self) -> bool:
        """Whether the per-prompt normalized curves were measured (a baseline was taken)."""
        return bool(self.response_length_normalized)

    def append(self, row: dict[str, float]) -> ProbeCurves:
        """A new record with one more step; `row` is keyed like to_dict() (the optional
        normalized curves may be left out)."""
        required = set(CURVE_KEYS) - set(OPTIONAL_CURVES)
        if not required <= set(row) <= set(CURVE_KEYS):
            raise ValueError(
                f"a curve row needs the keys {', '.join(sorted(required))} (and may have {', '.join(OPTIONAL_CURVES)})"
            )
        return ProbeCurves(
            **{
                name: getattr(self, name) + ((float(row[key]),) if key in row else ())
                for key, name in CURVE_KEYS.items()
            }
        )


@dataclass(frozen=True)
class PromptSamples:
    """The completions of one prompt in one measurement: lengths (tokens, eos included),
    raw rewards and mean token entropies (nats), one entry per completion."""

    prompt: int  # index into the probe's prompts
    lengths: tuple[float, ...]
    scores: tuple[float, ...]
    entropies: tuple[float, ...]

    def __post_init__(self) -> None:
        for name in ("lengths", "scores", "entropies"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if not len(self.lengths) == len(self.scores) == len(self.entropies) >= 1:
            raise ValueError("prompt samples need one length, score and entropy per completion")

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "lengths": list(self.lengths),
            "scores": list(self.scores),
            "entropies": list(self.entropies),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptSamples:
        return cls(int(data["prompt"]), tuple(data["lengths"]), tuple(data["scores"]), tuple(data["entropies"]))


@dataclass(frozen=True)
class BackendRun:
    """What a probe backend returns; run_probe adds the stability metrics.

    baseline: the starting model on each pool prompt (several samples each), measured
    before the first update; steps: per step, the samples of each prompt drawn. Both
    empty when the backend took no baseline (then the metrics read the raw curves).
    """

    curves: ProbeCurves
    stopped_early: bool = False
    stop_reason: str | None = None  # why it stopped early, for people
    setup_s: float = 0.0  # seconds before the first step (reference copy, reward model)
    diverged: bool = False  # loss, gradient, KL or logits went non-finite; curves hold the steps before
    baseline: tuple[PromptSamples, ...] = ()
    steps: tuple[tuple[PromptSamples, ...], ...] = ()
    baseline_s: float = 0.0  # seconds spent measuring the baseline


@dataclass(frozen=True)
class ProbeResult:
    curves: ProbeCurves
    metrics: StabilityMetrics
    stopped_early: bool
    stop_reason: str | None
    backend: str
    setup_s: float  # seconds before the first step (the baseline included)
    wall_s: float  # seconds for the whole probe, setup included
    diverged: bool = False
    baseline_s: float = 0.0  # seconds spent sampling the per-prompt baselines
    baseline: tuple[PromptSamples, ...] = ()  # the starting model's samples per pool prompt
    # per step, the samples of each prompt drawn (BackendRun.steps): what a long run's
    # outcome and its reward shape are read from (sweep.run.calibrate)
    steps: tuple[tuple[PromptSamples, ...], ...] = ()

    @property
    def step_s_mean(self) -> float:
        return sum(self.curves.step_s) / len(self.curves.step_s) if self.curves.steps else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "curves": self.curves.to_dict(),
            "metrics": self.metrics.to_dict(),
            "stopped_early": self.stopped_early,
            "stop_reason": self.stop_reason,
            "backend": self.backend,
            "setup_s": self.setup_s,
            "wall_s": self.wall_s,
            "diverged": self.diverged,
            "baseline_s": self.baseline_s,
            "baseline": [b.to_dict() for b in self.baseline],
            "steps": [[p.to_dict() for p in step] for step in self.steps],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeResult:
        return cls(
            curves=ProbeCurves.from_dict(data["curves"]),
            metrics=StabilityMetrics.from_dict(data["metrics"]),
            stopped_early=bool(data["stopped_early"]),
            stop_reason=data["stop_reason"],
            backend=data["backend"],
            setup_s=float(data["setup_s"]),
            wall_s=float(data["wall_s"]),
            diverged=bool(data.get("diverged", False)),
            baseline_s=float(data.get("baseline_s", 0.0)),
            baseline=tuple(PromptSamples.from_dict(b) for b in data.get("baseline", ())),
            steps=tuple(tuple(PromptSamples.from_dict(p) for p in step) for step in data.get("steps", ())),
        )
