"""LoRA adapters for the probe's `update: lora`, injected into the live model and removed.

    adapters = LoraAdapters(model, rank=16)   # fp32 adapters on every linear layer (not the head)
    with adapters.disabled():                 # the starting model: the KL reference, no copy
        ...
    adapters.save(folder)                     # peft's adapter format: what a vLLM LoRARequest loads
    adapters.remove()                         # the original modules back, weights untouched

peft (a dependency of lm-eval) does the injection in place (`peft.LoraModel`): each
targeted nn.Linear is wrapped with its A/B adapters and unwrapped by `unload()`, which
puts the original module objects back. The base weights are frozen and never stepped, so
the caller gets them back bit for bit. Adapters are kept in fp32 whatever the model's
dtype (peft would otherwise make them bf16 on a bf16 model, where Adam's small steps
round away). B starts at zero, so the adapted model starts as the model.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from evals.errors import EvalError

LORA_ALPHA_PER_RANK = 2  # lora_alpha = 2 x rank: scaling 2, the common choice (peft's default alpha is 8)


class LoraAdapters:
    def __init__(self, model: torch.nn.Module, *, rank: int, seed: int | None = None):
        """Adapters of `rank` on every linear layer of `model`. peft draws A's starting values
        from torch's global RNG: with `seed` they are drawn under that seed (the global RNG
        is left as it was), so the same seed gives the same adapters in any process."""
        try:
            from peft import LoraConfig, LoraModel
        except ImportError:  # pragma: no cover - peft ships with lm-eval
            raise EvalError("probe update: lora needs peft (pip install peft)") from None
        self.model = model
        self._had_peft_config = hasattr(model, "peft_config")
        config = LoraConfig(
            r=rank, lora_alpha=LORA_ALPHA_PER_RANK * rank, lora_dropout=0.0, target_modules="all-linear", bias="none"
        )
        cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            self.tuner = LoraModel(model, config, "default")
        self.parameters: list[torch.nn.Parameter] = []
        for name, param in model.named_parameters():
            if "lora_" in name:
                if param.dtype != torch.float32:
                    param.data = param.data.float()
                param.requires_grad_(True)
                self.parameters.append(param)
            else:
                param.requires_grad_(False)
        if not self.parameters:
            self.remove()
            raise EvalError(f"probe update: lora found no linear layers to adapt in {type(model).__name__}")

    @contextlib.contextmanager
    def disabled(self) -> Iterator[None]:
        """The model without its adapters (the starting model), then with them again."""
        self.tuner.disable_adapter_layers()
        try:
            yield
        finally:
            self.tuner.enable_adapter_layers()

    @torch.no_grad()
    def merged_weights(self) -> list[tuple[str, torch.Tensor]]:
        """(HF name, tensor) of every weight of the adapted model, adapted linears merged
        (W + B A x scaling, in W's dtype), under the model's own names: what a vLLM
        engine takes in place of LoRA requests. Shared tensors are given once, except a
        tied lm_head (see evals.vllm_backend.named_weights)."""
        from peft.tuners.lora import LoraLayer

        merged: dict[str, tuple[str, torch.Tensor]] = {}
        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer):
                base = module.get_base_layer().weight
                delta = module.get_delta_weight("default")  # type: ignore[attr-defined]  # peft defines it on each LoraLayer subclass (Linear, bnb), not the base
                merged[f"{name}.base_layer.weight"] = (f"{name}.weight", (base.float() + delta.float()).to(base.dtype))
        weights, seen = [], set()
        for name, tensor in self.model.state_dict(keep_vars=False).items():
            if "lora_" in name:
                continue
            if name in merged:
                weights.append(merged[name])
                continue
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
            if key in seen and not name.endswith("lm_head.weight"):
                continue
            seen.add(key)
            weights.append((name.replace(".base_layer.", "."), tensor.detach()))
        return weights

    @torch.no_grad()
    def save(self, folder: str | Path) -> Path:
        """Write the adapters in peft's on-disk format (adapter_model.safetensors, fp32, and
        adapter_config.json with the resolved target modules) to `folder`: what peft's
        `PeftModel.from_pretrained` and a vLLM `LoRARequest(name, id, folder)` load. The
        adapter name is dropped from the keys, as `PeftModel.save_pretrained` does."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "base_model.model." + name.replace(".default.", "."): param.detach().float().contiguous().cpu()
            for name, param in self.model.named_parameters()
            if "lora_" in name
        }
        save_file(tensors, str(folder / "adapter_model.safetensors"))
        settings = self.tuner.peft_config["default"].to_dict()
        settings["target_modules"] = sorted(settings["target_modules"])  # "all-linear", resolved by peft at injection
        settings["base_model_name_or_path"] = str(getattr(self.model, "name_or_path", "") or "")
        (folder / "adapter_config.json").write_text(json.dumps(settings, default=str, indent=1))
        return folder

    def remove(self) -> Any:
        """Put every original module back and drop what peft attached to the model."""
        self.tuner.unload()
        if not self._had_peft_config and hasattr(self.model, "peft_config"):
            del self.model.peft_config
        self.parameters = []
        return self.model
