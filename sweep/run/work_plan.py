"""How much work one trial is, at most: tokens generated and trained, and the update's FLOPs.

Arithmetic on the spec and the checkpoints' headers, like the memory plan
(sweep/run/memory_plan.py), so `sweep validate` prints it before anything loads.
Time per trial is this work over your hardware's rates: generation is bound by memory
bandwidth (tokens/s of your engine at the probe's batch), the update by compute
(FLOP/s at your utilization); docs/scale.md has the figures for the 7B spec.

Upper bounds: every completion runs to its token budget (`max_new_tokens`, the evals'
`max_gen_toks`), every probe step runs and updates (an early stop only shortens it; a
flat batch skipped under `skip_flat_batches` has no backward), and prompts are
as long as the memory plan assumes. FLOPs per token are the usual 2 per parameter for a
forward pass and 4 for a backward one (a LoRA update's backward still takes the
activations' gradients through the frozen weights, 2, and skips theirs, ~0); attention's
own FLOPs are left out (under 10% at these lengths for 7B shapes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class WorkPlan:
    params: int
    steps: int  # probe steps (0: no probe)
    rollouts: int  # completions per step
    prompt_tokens: int
    new_tokens: int
    update: str  # full | lora
    checkpointing: bool
    reward_params: int = 0  # a reward model scores every rollout
    reference_params: int = 0  # evals.probe.reference's parameters; 0: the reference is the candidate
    mini_batches: int = 1  # optimizer steps per probe step; after the first, the sampling policy's log-probs
    eval_tokens: int | None = None  # None: not known from the spec (no limit, or a fraction)
    eval_note: str = ""

    @property
    def rollout_tokens(self) -> int:
        return self.steps * self.rollouts * self.new_tokens

    @property
    def trained_tokens(self) -> int:
        return self.steps * self.rollouts * (self.prompt_tokens + self.new_tokens)

    @property
    def update_flops_per_token(self) -> int:
        """Multiples of the parameter count: policy forward 2, backward 4 (full) or 2 (LoRA),
        the reference's forward 2, and 2 more to recompute checkpointed activations."""
        return 2 + (4 if self.update == "full" else 2) + 2 + (2 if self.checkpointing else 0)

    @property
    def update_flops(self) -> float:
        """The reference's forward counts at its own size (evals.probe.reference), else the
        candidate's; mini-batches after the first add a no-grad forward for their sampling
        log-probs ((M - 1) / M of the trained tokens)."""
        reference = self.reference_params or self.params
        policy = self.params * (self.update_flops_per_token - 2)
        old = 2.0 * self.params * (self.mini_batches - 1) / self.mini_batches
        return float(self.trained_tokens) * (policy + 2 * reference + old)

    @property
    def generate_flops(self) -> float:
        tokens = self.rollout_tokens + (self.eval_tokens or 0)
        return 2.0 * self.params * tokens + 2.0 * self.reward_params * self.trained_tokens

    def line(self) -> str:
        parts = []
        if self.steps:
            parts.append(
                f"probe {_tokens(self.rollout_tokens)} tokens sampled ({self.steps} steps x {self.rollouts} x "
                f"{self.new_tokens}), {_tokens(self.trained_tokens)} trained (update ~{_flops(self.update_flops)}, "
                f"{self.update}{', checkpointed' if self.checkpointing else ''}"
                f"{f', {self.mini_batches} mini-batches' if self.mini_batches > 1 else ''})"
            )
        if self.eval_tokens is not None:
            parts.append(f"evals {_tokens(self.eval_tokens)} tokens ({self.eval_note})")
        elif self.eval_note:
            parts.append(f"evals {self.eval_note}")
        if not parts:
            return ""
        return (
            "  work       per trial at most: "
            + "; ".join(parts)
            + f"; sampling ~{_flops(self.generate_flops)} (docs/scale.md)"
        )


def work_plan(spec: Any, settings: Any, params: int) -> WorkPlan:
    """The work of one trial of `spec`; `settings` is the memory plan's TrialSettings
    (its prompt length and probe settings), `params` the model's parameter count."""
    probe, lm = spec.evals.probe, spec.evals.lm_eval
    eval_tokens, eval_note = None, ""
    if lm is not None and lm.search_tasks:
        n = len(lm.search_tasks)
        budget = lm.max_gen_toks
        if lm.limit is not None and lm.limit >= 1 and budget is not None:
            eval_tokens = n * int(lm.limit) * budget
            eval_note = f"{n} task{'s' if n > 1 else ''} x {int(lm.limit)} docs x {budget}"
        else:
            eval_note = "not bounded by the spec (set evals.lm_eval.limit and max_gen_toks to bound it)"
    return WorkPlan(
        params=params,
        steps=probe.steps if probe is not None else 0,
        rollouts=settings.rollouts,
        prompt_tokens=settings.prompt_tokens,
        new_tokens=settings.new_tokens,
        update=settings.update,
        checkpointing=settings.activation_checkpointing,
        reward_params=settings.reward_params,
        reference_params=settings.reference_params,
        mini_batches=settings.mini_batches,
        eval_tokens=eval_tokens,
        eval_note=eval_note,
    )


def _tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n:,}"


def _flops(x: float) -> str:
    for unit, scale in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if x >= scale:
            return f"{x / scale:.1f} {unit}"
    return f"{x:.0f} FLOP"
