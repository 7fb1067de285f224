"""The probe's settings: the spec's `evals.probe` section and what `run_probe` takes.

One pydantic model serves both: the spec embeds `ProbeConfig` (a typo fails at load with
the field's path), and a config built outside a spec (`ProbeConfig(...)`, `from_dict`,
as a Ray worker does from JSON) raises EvalError naming every bad field. Backend and
reward-rule names come from `evals.plugins`, so plug-ins registered there are usable at
once. Nothing here imports torch.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import ConfigDict, Field, field_validator, model_validator

from core.config import RaisesUserError, Section, registered
from evals.errors import EvalError
from evals.plugins import PROBE_BACKENDS, REWARD_RULES

# How the per-token loss becomes one number (verl's loss_agg_mode names; TRL's loss_type in
# brackets). token-mean [dapo, bnpo]: every token of the batch weighs the same.
# seq-mean-token-mean [grpo]: each response's token mean, then the mean over responses, so
# a token of a short response weighs more (the original GRPO's length bias, Dr. GRPO).
# seq-mean-token-sum-norm [dr_grpo]: each response's token sum over a constant, the
# generation budget, times the batch size: no length bias. evals/probe/logprobs.py weighs them.
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]
LOSS_AGGREGATIONS: tuple[str, ...] = get_args(LossAgg)


class _Config(Section, metaclass=RaisesUserError):
    """A frozen section that round-trips through JSON (`to_dict` / `from_dict`)."""

    model_config = ConfigDict(frozen=True)
    user_error: ClassVar[type[EvalError]] = EvalError  # what calling the class raises
    what: ClassVar[str] = "probe config"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Any:
        """From `to_dict()` or a spec section's `model_dump()`. EvalError names each bad field."""
        return cls(**(data or {}))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()


class RewardConfig(_Config):
    """A rule reward (`rule`, from evals.plugins.REWARD_RULES) or a local reward-model
    checkpoint (`model`, an AutoModelForSequenceClassification folder, which wins)."""

    what: ClassVar[str] = "probe reward"

    rule: str | None = "exact_match"
    model: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _model_wins(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") is not None:
            return {**data, "rule": None}
        return data

    @field_validator("rule")
    @classmethod
    def _registered(cls, rule: str | None) -> str | None:
        return rule if rule is None else registered(REWARD_RULES, rule)

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        if self.rule is None and self.model is None:
            raise ValueError("give a reward rule or a reward model path")
        return self


class ProbeConfig(_Config):
    """The probe's settings; the fields are the spec's `evals.probe` keys."""

    backend: str = "builtin"  # a name in evals.plugins.PROBE_BACKENDS
    steps: Annotated[int, Field(ge=2)] = 16  # RL steps; curves have one point per step, step 0 = the candidate
    group_size: Annotated[int, Field(ge=2)] = 4  # completions sampled per prompt (the GRPO group)
    prompts_per_step: Annotated[int, Field(ge=1)] = 4
    # jsonl file: {"prompt": user message, "answer": expected final answer} per line (or demo:probe_prompts)
    prompts: str
    reward: RewardConfig = Field(default_factory=RewardConfig)
    kl_coef: Annotated[float, Field(ge=0)] = 0.05  # weight of the k3 KL to the reference
    # The KL term's reference. None: the candidate itself, frozen at the start (KL 0 there).
    # A checkpoint folder (in a spec also demo:<member>): a fixed model, as RL pipelines use
    # that keep their SFT model as the reference whatever the actor starts from. It must
    # share the candidate's vocabulary; loaded once per process, in the trial's dtype.
    reference: str | None = None
    learning_rate: Annotated[float, Field(gt=0)] = 1e-4  # Adam
    # How the per-token loss is aggregated, as your RL does it (LossAgg above): token-mean |
    # seq-mean-token-mean (the original GRPO) | seq-mean-token-sum-norm (Dr. GRPO).
    loss_agg: LossAgg = "token-mean"
    # Optimizer steps per RL step, as your RL takes them (verl: train_batch_size /
    # ppo_mini_batch_size): the step's groups split into this many mini-batches of whole
    # groups, in order, one Adam step each. After the first the policy is off the sampling
    # policy, so the policy term is PPO's clipped surrogate at clip_ratio (verl's default).
    mini_batches: Annotated[int, Field(ge=1)] = 1
    clip_ratio: Annotated[float, Field(gt=0, lt=1)] = 0.2
    # A step whose batch has no group with reward variance (every advantage 0) takes no
    # update: Adam would take a full-size step on the KL term alone, and over a long run
    # from a candidate that is mostly right those steps wear it down (docs/probe.md).
    skip_flat_batches: bool = True
    max_new_tokens: Annotated[int, Field(ge=1)] = 64  # a completion reaching this without eos is truncated
    # 0: greedy rollouts (a deterministic check; log-probs then at temperature 1)
    temperature: Annotated[float, Field(ge=0)] = 1.0
    seed: int = 0
    window: Annotated[int, Field(ge=1)] = 1  # trailing moving average before the stability metrics
    # Early stop: length below collapse_threshold * initial length for collapse_patience steps.
    collapse_threshold: Annotated[float, Field(gt=0, lt=1)] | None = None
    collapse_patience: Annotated[int, Field(ge=1)] = 3
    # Per-prompt baselines: before the first update, each prompt of the pool is sampled this
    # many times from the starting model; the stability metrics then read per-prompt ratios
    # and differences to it (docs/probe.md). 0: no baseline, metrics from the raw curves.
    baseline_samples: Annotated[int, Field(ge=0)] = 4
    prompt_pool: Annotated[int, Field(ge=1)] | None = 16  # distinct prompts the probe cycles through (None: all)
    noise_samples: Annotated[int, Field(ge=0)] = 200  # bootstrap replicates for each metric's noise band (0: none)
    # Scale settings (docs/scale.md): the probe's update (evals/probe/logprobs.py, lora.py)
    # and the sweep's memory plan read them. generator: who samples the rollouts.
    generator: Literal["hf", "vllm"] = "hf"
    # rollouts per forward/backward, gradients accumulated; None: all
    micro_batch_size: Annotated[int, Field(ge=1)] | None = None
    # response tokens per log-prob/entropy block; None: one block (the full [B, T, V])
    logprob_chunk: Annotated[int, Field(ge=1)] | None = 1024
    activation_checkpointing: bool = False  # recompute each decoder layer in backward
    # full: every weight (fp32 masters) | lora: fp32 adapters, reference = adapters off
    update: Literal["full", "lora"] = "full"
    lora_rank: Annotated[int, Field(ge=1)] = 16
    # generator vllm with update lora: how the adapters reach the engine after each update.
    # merged: W + BA pushed as weights; requests: a LoRA request per step (adapter folder,
    # new id; the engine is built with LoRA on). On CPU merged measured 1.9-3.8x cheaper
    # per step (docs/probe.md, "Full or LoRA, and how adapters reach vLLM").
    vllm_lora: Literal["merged", "requests"] = "merged"

    @field_validator("backend")
    @classmethod
    def _registered(cls, backend: str) -> str:
        return registered(PROBE_BACKENDS, backend)

    def size_text(self) -> str:
        """`16 steps x 8 prompts x 4 samples, at most 64 new tokens`, as `sweep validate`
        and the report print it."""
        return (
            f"{self.steps} steps x {self.prompts_per_step} prompts x {self.group_size} samples, "
            f"at most {self.max_new_tokens} new tokens"
        )

    def update_text(self) -> str:
        """`, seq-mean-token-mean loss, 4 mini-batches a step (clip 0.2)`: the update's
        settings that differ from one token-mean step, as validate and the report append them."""
        text = f", {self.loss_agg} loss" if self.loss_agg != "token-mean" else ""
        if self.mini_batches > 1:
            text += f", {self.mini_batches} mini-batches a step (clip {self.clip_ratio:g})"
        return text

    @model_validator(mode="after")
    def _whole_groups(self) -> ProbeConfig:
        if self.prompts_per_step % self.mini_batches:
            raise ValueError(
                f"mini_batches ({self.mini_batches}) must divide prompts_per_step ({self.prompts_per_step}): "
                "each mini-batch holds whole groups"
            )
        return self

    @model_validator(mode="after")
    def _baseline_of_several(self) -> ProbeConfig:
        if self.baseline_samples == 1:
            raise ValueError(
                "baseline_samples must be 0 (no baseline) or >= 2 (a baseline of one sample is as noisy as a step)"
            )
        return self
