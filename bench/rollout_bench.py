"""Probe rollouts: the HF per-token loop (evals/probe/sampling.py `sample_hf`) vs vLLM, one run.

    .venv-vllm/bin/python bench/rollout_bench.py [--hidden 512] [--layers 8] [--rollouts 16] [--new-tokens 256]

Runs in the vLLM venv (both generators are there). A random fp32 Llama (head_dim 64) is
built in a temp folder; both generators sample --rollouts completions of 4 prompts at
temperature 1 for up to --new-tokens tokens; the figure is generated tokens per second
(eos ends a row early in either), and the ratio vLLM / HF. The engine's start-up and
a weight push are timed separately: a worker pays the start-up once, a push per update.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--rollouts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    import torch
    from _llama import random_llama

    from evals.probe.sampling import sample_hf as _sample
    from evals.probe.vllm_rollout import VllmRollouts

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("VLLM_CACHE_ROOT", str(Path(tmp) / "vc"))
        path = Path(tmp) / "m"
        model, tok = random_llama(path, hidden=args.hidden, layers=args.layers, vocab=args.vocab, tie=False)
        params = sum(p.numel() for p in model.parameters())
        groups = args.rollouts // 4
        prompts = [tok.encode(t) for t in ("3+4=", "reverse abc =", "8+8=", "upper xyz =")]
        rows = [p for p in prompts for _ in range(groups)]
        eos = {tok.eos_token_id}

        start = time.perf_counter()
        batch = _sample(
            model,
            rows,
            config=SimpleNamespace(max_new_tokens=args.new_tokens, temperature=1.0),
            eos_ids=eos,
            pad_id=tok.pad_token_id,
            generator=torch.Generator().manual_seed(0),
        )
        hf_s = time.perf_counter() - start
        hf_tokens = int(batch.lengths.sum())

        start = time.perf_counter()
        engine = VllmRollouts.build(path, dtype="float32", max_model_len=1024)
        startup_s = time.perf_counter() - start
        start = time.perf_counter()
        engine.push_weights(model)
        push_s = time.perf_counter() - start
        engine.sample(
            prompts, group_size=groups, max_new_tokens=8, temperature=1.0, seed=1, eos_ids=eos, pad_id=tok.pad_token_id
        )
        start = time.perf_counter()
        out = engine.sample(
            prompts,
            group_size=groups,
            max_new_tokens=args.new_tokens,
            temperature=1.0,
            seed=0,
            eos_ids=eos,
            pad_id=tok.pad_token_id,
        )
        vllm_s = time.perf_counter() - start
        vllm_tokens = int(out.lengths.sum())
    hf_rate, vllm_rate = hf_tokens / hf_s, vllm_tokens / vllm_s
    print(
        f"fp32 Llama {params / 1e6:.1f}M params, {args.rollouts} rollouts x <= {args.new_tokens} new tokens, {args.threads} thread(s)"
    )
    print(f"HF loop : {hf_tokens:6d} tokens in {hf_s:7.2f} s = {hf_rate:8.1f} tok/s")
    print(
        f"vLLM    : {vllm_tokens:6d} tokens in {vllm_s:7.2f} s = {vllm_rate:8.1f} tok/s "
        f"(engine start-up {startup_s:.1f} s once per worker, weight push {push_s * 1000:.0f} ms per update)"
    )
    print(f"vLLM / HF tokens per second = {vllm_rate / hf_rate:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
