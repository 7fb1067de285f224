"""Typed records of the probe: its config, prompts, per-step curves and result.

All are frozen dataclasses that round-trip losslessly through JSON (`to_dict` /
`from_dict`). Nothing here imports torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from evals.errors import EvalError
from evals.stability import StabilityMetrics


@dataclass(frozen=True)
class RewardConfig:
    """Rule reward (`rule`) or a local reward-model checkpoint (`model`, which wins)."""

    rule: str | None = "exact_match"
    model: str | None = None

    def __post_init__(self) -> None:
        if self.model is None and self.rule is None:
            raise EvalError("probe reward: give a reward rule or a reward model path")

    @classmethod
    def from_dict(cls, data: dict | None) -> RewardConfig:
        if data is None:
            return cls()
        _no_unknown_keys("probe reward", data, cls)
        model = data.get("model")
        return cls(rule=None if model is not None else data.get("rule", "exact_match"), model=model)


@dataclass(frozen=True)
class ProbeConfig:
    """The probe's settings; fields are exactly the spec's `evals.probe` keys."""

    prompts: str  # jsonl path: {"prompt": user message, "answer": expected final answer} per line
    backend: str = "builtin"
    steps: int = 16  # RL steps; curves have one point per step, step 0 = the candidate itself
    group_size: int = 4  # completions sampled per prompt (the GRPO group)
    prompts_per_step: int = 4
    reward: RewardConfig = field(default_factory=RewardConfig)
    kl_coef: float = 0.05  # weight of the k3 KL to the frozen initial candidate
    learning_rate: float = 1e-4  # Adam
    max_new_tokens: int = 64  # a completion reaching this without eos counts as truncated
    temperature: float = 1.0  # 0: greedy rollouts (a deterministic check; log-probs then at temperature 1)
    seed: int = 0
    window: int = 1  # trailing moving average before the stability metrics
    collapse_threshold: float | None = None  # early stop: length < threshold * length[0] ...
    collapse_patience: int = 3  # ... for this many consecutive steps
    # Per-prompt baselines: before the first update, each prompt of the pool is sampled this
    # many times from the starting model; the stability metrics then read per-prompt ratios
    # and differences to it (docs/probe.md). 0: no baseline, metrics from the raw curves.
    baseline_samples: int = 4
    prompt_pool: int | None = 16  # distinct prompts the probe cycles through (None: all of them)
    noise_samples: int = 200  # bootstrap replicates for each metric's noise band (0: none)
    # Scale settings (docs/scale.md, the memory plan reads them too).
    generator: str = "hf"  # who samples the rollouts: hf (the built-in loop) | vllm
    micro_batch_size: int | None = None  # rollouts per forward/backward, gradients accumulated; None: all
    logprob_chunk: int | None = 1024  # response tokens per log-prob/entropy block; None: one block
    activation_checkpointing: bool = False  # recompute each decoder layer in backward
    update: str = "full"  # full: every weight (fp32 masters) | lora: fp32 adapters, reference = adapters off
    lora_rank: int = 16
    # generator vllm with update lora: how the adapters reach the engine after each update.
    # merged: W + BA pushed as weights; requests: a LoRA request per step (adapter folder,
    # new id; the engine is built with LoRA on). On CPU merged measured 1.9-3.8x cheaper
    # per step (docs/probe.md, "Full or LoRA, and how adapters reach vLLM").
    vllm_lora: str = "merged"

    def __post_init__(self) -> None:
        if isinstance(self.reward, dict):  # ProbeConfig(reward={"rule": ...}) as in the spec
            object.__setattr__(self, "reward", RewardConfig.from_dict(self.reward))
        problems = []
        for name, low in (
            ("steps", 2),
            ("group_size", 2),
            ("prompts_per_step", 1),
            ("max_new_tokens", 1),
            ("window", 1),
            ("collapse_patience", 1),
            ("baseline_samples", 0),
            ("noise_samples", 0),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                problems.append(f"{name} must be a whole number >= {low}, got {value!r}")
        if not self.learning_rate > 0:
            problems.append(f"learning_rate must be > 0, got {self.learning_rate!r}")
        if not self.temperature >= 0:
            problems.append(f"temperature must be >= 0 (0: greedy), got {self.temperature!r}")
        if not self.kl_coef >= 0:
            problems.append(f"kl_coef must be >= 0, got {self.kl_coef!r}")
        if self.prompt_pool is not None and (
            not isinstance(self.prompt_pool, int) or isinstance(self.prompt_pool, bool) or self.prompt_pool < 1
        ):
            problems.append(f"prompt_pool must be a whole number >= 1 or null (all prompts), got {self.prompt_pool!r}")
        for name in ("micro_batch_size", "logprob_chunk"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                problems.append(f"{name} must be a whole number >= 1 or null, got {value!r}")
        if not isinstance(self.lora_rank, int) or isinstance(self.lora_rank, bool) or self.lora_rank < 1:
            problems.append(f"lora_rank must be a whole number >= 1, got {self.lora_rank!r}")
        if self.generator not in ("hf", "vllm"):
            problems.append(f"generator must be hf or vllm, got {self.generator!r}")
        if self.update not in ("full", "lora"):
            problems.append(f"update must be full or lora, got {self.update!r}")
        if self.vllm_lora not in ("requests", "merged"):
            problems.append(f"vllm_lora must be requests or merged, got {self.vllm_lora!r}")
        if not isinstance(self.activation_checkpointing, bool):
            problems.append(f"activation_checkpointing must be true or false, got {self.activation_checkpointing!r}")
        if self.baseline_samples == 1:
            problems.append(
                "baseline_samples must be 0 (no baseline) or >= 2 (a baseline of one sample is as noisy as a step)"
            )
        if self.collapse_threshold is not None and not 0 < self.collapse_threshold < 1:
            problems.append(f"collapse_threshold must be between 0 and 1, got {self.collapse_threshold!r}")
        from evals.rewards import RULES  # light; rules registered by users count too

        if self.reward.model is None and self.reward.rule not in RULES:
            problems.append(f"reward.rule {self.reward.rule!r} is not one of {', '.join(sorted(RULES))}")
        if problems:
            raise EvalError("probe config: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeConfig:
        """From `spec.evals.probe.model_dump()` or `to_dict()`. EvalError on unknown keys."""
        _no_unknown_keys("probe config", data, cls)
        if "prompts" not in data:
            raise EvalError("probe config: 'prompts' (a jsonl file) is required")
        values = dict(data)
        values["reward"] = RewardConfig.from_dict(data.get("reward"))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _no_unknown_keys(what: str, data: dict, cls: type) -> None:
    unknown = sorted(set(data) - {f.name for f in fields(cls)})
    if unknown:
        raise EvalError(f"{what}: unknown keys {', '.join(unknown)}; known: {', '.join(f.name for f in fields(cls))}")


@dataclass(frozen=True)
class Prompt:
    prompt: str  # the user message (the chat template is applied by the probe)
    answer: str | None = None  # expected final answer, for rule rewards


def load_prompts(path: str | Path) -> list[Prompt]:
    """Read a jsonl prompts file. EvalError names the file and line of any problem."""
    path = Path(path)
    if str(path).startswith("demo:"):
        raise EvalError(
            f"prompts {path}: demo references are resolved by sweep (load the spec with sweep.config.spec.load_spec)"
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
    "actor/grad_norm": "grad_norm",  # before clipping
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
    "response_length/normalized",
    "critic/score/normalized",
    "actor/entropy/normalized",
    "response_length/normalized/noise",
    "critic/score/normalized/noise",
)


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
        )
