"""LoRA adapters into a vLLM engine: LoRA requests vs merged-weight pushes, per probe step, one run.

    .venv-vllm/bin/python bench/lora_delivery_bench.py [--hidden 768] [--layers 12] [--rank 16]
    python bench/lora_delivery_bench.py --dtype bfloat16 --gpu-memory-utilization 0.3   # on a GPU

Runs in the vLLM venv. A random fp32 Llama (head_dim 64, --vocab) is built in a temp
folder, with rank --rank LoRA adapters (evals/probe/lora.py) given random values. Two
engines on it: one plain, one with LoRA on (evals.probe.vllm_rollout.lora_engine_args).
Per probe step (--steps, medians printed) it times what generator: vllm pays after an
update, then the next step's sampling (--rollouts completions, temperature 1, --new-tokens):
  merged:   LoraAdapters.merged_weights() + push_weights (reload_weights, prefix-cache reset),
            then sampling on the plain engine;
  requests: set_adapter (peft-format folder under /dev/shm, new id), then sampling with the
            LoRA request on the LoRA engine (vLLM loads the adapter at that call).
It prints each phase's seconds and the ratio requests / merged of a whole step's cost.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--dtype", default="float32", help="model and engine dtype (default float32)")
    parser.add_argument(
        "--gpu-memory-utilization", type=float, default=None, help="per engine, on a GPU (two engines run)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import torch
    from _llama import random_llama

    from evals.probe.lora import LoraAdapters
    from evals.probe.vllm_rollout import VllmRollouts, lora_engine_args

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tmp) / "vc"))
        path = Path(tmp) / "m"
        model, tok = random_llama(
            path, hidden=args.hidden, layers=args.layers, vocab=args.vocab, tie=True, dtype=args.dtype
        )
        if torch.cuda.is_available():
            model = model.to("cuda")  # as in a GPU worker: the live model on the device
        params = sum(p.numel() for p in model.parameters())
        engine_args: dict = dict(dtype=args.dtype, max_model_len=512)
        if args.gpu_memory_utilization is not None:
            engine_args["gpu_memory_utilization"] = args.gpu_memory_utilization
        t0 = time.perf_counter()
        plain = VllmRollouts.build(path, **engine_args)
        start_plain = time.perf_counter() - t0
        t0 = time.perf_counter()
        lora = VllmRollouts.build(path, **engine_args, **lora_engine_args(args.rank))
        start_lora = time.perf_counter() - t0
        adapters = LoraAdapters(model, rank=args.rank)
        prompts = [tok.encode(f"{a}+{b}=") for a, b in [(1, 2), (3, 4), (5, 6), (7, 8)]]
        group = max(1, args.rollouts // len(prompts))
        sample = dict(
            group_size=group,
            max_new_tokens=args.new_tokens,
            temperature=1.0,
            eos_ids={tok.eos_token_id},
            pad_id=tok.pad_token_id,
        )
        rows: dict[str, list[float]] = {k: [] for k in ("merge_push", "merged_sample", "set_adapter", "lora_sample")}
        tokens = {"merged": 0, "requests": 0}
        for step in range(args.steps + 1):  # step 0 warms both engines up, not counted
            with torch.no_grad():
                for p in adapters.parameters:
                    p.copy_(torch.randn_like(p) * 0.02)
            t0 = time.perf_counter()
            plain.push_weights(model, weights=adapters.merged_weights())
            t1 = time.perf_counter()
            got = plain.sample(prompts, seed=step, **sample)
            t2 = time.perf_counter()
            lora.set_adapter(adapters)
            t3 = time.perf_counter()
            got_lora = lora.sample(prompts, seed=step, **sample)
            t4 = time.perf_counter()
            if step:
                for key, value in zip(rows, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    rows[key].append(value)
                tokens["merged"] += int(got.lengths.sum())
                tokens["requests"] += int(got_lora.lengths.sum())
        lora.clear_adapter()
        med = {k: statistics.median(v) for k, v in rows.items()}
        merged_step = med["merge_push"] + med["merged_sample"]
        request_step = med["set_adapter"] + med["lora_sample"]
        result = {
            "params": params,
            "rank": args.rank,
            "adapter_params": sum(p.numel() for p in adapters.parameters),
            "rollouts": group * len(prompts),
            "new_tokens": args.new_tokens,
            "engine_start_s": {"plain": start_plain, "lora": start_lora},
            "median_s": med,
            "tokens": tokens,
            "merged_step_s": merged_step,
            "requests_step_s": request_step,
            "requests_over_merged": request_step / merged_step,
            "sampling_requests_over_merged": med["lora_sample"] / med["merged_sample"],
        }
        adapters.remove()
    if args.json:
        print(json.dumps(result))
        return 0
    print(
        f"{params / 1e6:.0f}M params, rank {args.rank} ({result['adapter_params'] / 1e6:.2f}M adapter params), "
        f"{result['rollouts']} rollouts x {args.new_tokens} tokens, median of {args.steps} steps"
    )
    print(f"  engine start: plain {start_plain:.1f} s, LoRA on {start_lora:.1f} s")
    print(
        f"  merged:   merge+push {med['merge_push']:.3f} s, sample {med['merged_sample']:.3f} s  = {merged_step:.3f} s"
    )
    print(
        f"  requests: set_adapter {med['set_adapter']:.3f} s, sample {med['lora_sample']:.3f} s  = {request_step:.3f} s"
    )
    print(
        f"  requests / merged: step {result['requests_over_merged']:.2f}, sampling alone "
        f"{result['sampling_requests_over_merged']:.2f} (tokens sampled {tokens})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
