"""What the built-in probe backend puts on the model for a run and takes off after it
(evals/probe/grpo.py): the reference (a frozen copy, the adapters-off context, or
`config.reference`'s model), LoRA adapters, the optimizer, the engine's weights, and the
model's modes and flags. Tear-down always runs and undoes whatever set-up got done."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from evals.probe.config import ProbeConfig
from evals.probe.lora import LoraAdapters
from evals.probe.reference import load_reference
from evals.probe.update import MasterAdam


@dataclass
class Policy:
    """What set-up puts on the model and tear-down takes off."""

    # the frozen starting model (full), the adapters-off context (LoRA), or config.reference's model
    reference: Any = None
    start: list[torch.Tensor] | None = None  # full update with config.reference: the starting weights, in host memory
    adapters: LoraAdapters | None = None
    optimizer: MasterAdam | None = None
    as_requests: bool = False  # LoRA adapters reach the vLLM engine as LoRA requests


def set_up(policy: Policy, model: Any, *, config: ProbeConfig, rollouts: Any) -> None:
    """Eval mode, the engine (`rollouts`, or None) on the starting weights, the reference
    and the optimizer. Fills `policy` as it goes, so that tear-down undoes whatever was done."""
    model.eval()  # no dropout: sampling and the update see the same policy
    fixed = load_reference(config.reference, like=model) if config.reference is not None else None
    if rollouts is not None:  # the engine may hold another candidate (or the eval's): start from this one
        rollouts.clear_adapter()
        rollouts.push_weights(model)
    if config.update == "lora":  # fp32 adapters on the live model; reference = adapters off
        policy.adapters = LoraAdapters(model, rank=config.lora_rank, seed=config.seed)
        # the engine samples the adapted policy through LoRA requests where it can
        # (its base weights stay the candidate's), else through merged-weight pushes
        policy.as_requests = (
            rollouts is not None and config.vllm_lora == "requests" and rollouts.takes_lora(config.lora_rank)
        )
        policy.reference = fixed if fixed is not None else policy.adapters.disabled
        trainable = policy.adapters.parameters
    else:  # every weight trains; the reference is the frozen initial candidate, or config.reference's
        if fixed is None:
            policy.reference = copy.deepcopy(model).eval().requires_grad_(False)
        else:  # the starting weights wait in host memory for the restore
            policy.start = [p.detach().to("cpu", copy=True) for p in model.parameters()]
            policy.reference = fixed
        model.requires_grad_(True)
        trainable = list(model.parameters())
    policy.optimizer = MasterAdam(trainable, lr=config.learning_rate)


def tear_down(policy: Policy, model: Any, saved: ModuleState, *, rollouts: Any) -> None:
    """Give the model (and the engine) back as they came, whatever set-up got done."""
    if policy.optimizer is not None:
        policy.optimizer.clear()
    model.zero_grad(set_to_none=True)
    if policy.adapters is not None:  # the base weights never trained: drop the adapters
        policy.adapters.remove()
    elif policy.start is not None or isinstance(policy.reference, torch.nn.Module):
        given = policy.start if policy.start is not None else policy.reference.parameters()
        with torch.no_grad():  # the caller gets back the weights it gave
            for param, value in zip(model.parameters(), given, strict=True):
                param.copy_(value)
    saved.restore(model)
    policy.reference = policy.start = None  # frees the frozen copy before the engine takes the weights
    if policy.as_requests:  # the engine's weights never changed: drop the adapter
        rollouts.clear_adapter()
    elif rollouts is not None:  # the engine holds the given weights again
        rollouts.push_weights(model)


class ModuleState:
    """train/eval mode of every submodule and requires_grad of every parameter."""

    def __init__(self, training: list[bool], requires_grad: list[bool]):
        self.training, self.requires_grad = training, requires_grad

    @classmethod
    def capture(cls, model: torch.nn.Module) -> ModuleState:
        return cls([m.training for m in model.modules()], [p.requires_grad for p in model.parameters()])

    def restore(self, model: torch.nn.Module) -> None:
        for module, training in zip(model.modules(), self.training, strict=True):
            module.training = training
        for param, flag in zip(model.parameters(), self.requires_grad, strict=True):
            param.requires_grad_(flag)
