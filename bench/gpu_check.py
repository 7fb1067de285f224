"""One prepared CUDA check (issue 13): run it once where a GPU is lent, paste the JSON into docs/scale.md.

    python bench/gpu_check.py --out gpu_check.json            # main venv with CUDA torch
    .venv-vllm/bin/python bench/gpu_check.py --vllm-only       # a venv with the GPU vllm wheel

Measures, on a ~160M bf16 Llama trio it builds in a temp folder (no downloads):
1. merge: in-place build from an on-device cache vs from a pinned host cache
   (merge.source_device cpu), vs a plain `param.copy_` of one source (the floor);
2. a probe update step, old ([B, T, V] fp32) vs new (micro-batched, chunked,
   checkpointed): step time and torch.cuda.max_memory_allocated;
3. the memory plan's GPU estimate for that update vs max_memory_allocated;
4. with vllm importable: three candidates swapped into one engine, HF vs vLLM greedy
   tokens equal, reload time per swap, and rollouts HF loop vs vLLM (tokens/s).

Never run in this repository's CI (no GPU there); it exits 2 without CUDA. Not yet run:
no device was lent to the issue-13 session (see docs/scale.md).
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _sync():
    import torch

    torch.cuda.synchronize()


def _timed(fn, repeat: int = 3) -> float:
    fn()
    _sync()
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync()
    return (time.perf_counter() - start) / repeat


def check_merge(paths: dict, results: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    import merge

    on_device = merge.SourceCache.load(**paths, device="cuda", dtype="bfloat16")
    host = merge.SourceCache.load(**paths, device="cpu", dtype="bfloat16", pin_memory=True)
    model = AutoModelForCausalLM.from_pretrained(paths["instruct"], dtype=torch.bfloat16).to("cuda")
    params = [p for p in model.parameters()]
    first = {name: triple[0] for name, triple in on_device.tensors.items()}
    named = dict(model.named_parameters())

    def copy_floor():
        with torch.no_grad():
            for name, p in named.items():
                if name in first:
                    p.copy_(first[name])

    results["merge"] = {
        "params": sum(p.numel() for p in params),
        "copy_s": _timed(copy_floor),
        "inplace_on_device_s": _timed(lambda: merge.build_in_place(model, on_device, alpha=0.4, beta=0.8)),
        "inplace_streamed_from_pinned_s": _timed(lambda: merge.build_in_place(model, host, alpha=0.4, beta=0.8)),
    }
    a = {k: v.clone() for k, v in model.state_dict().items()}
    merge.build_in_place(model, on_device, alpha=0.4, beta=0.8)
    results["merge"]["streamed_equals_on_device"] = all(torch.equal(a[k], v) for k, v in model.state_dict().items())


def check_update(results: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from bench.probe_memory_bench import SHAPE, old_update
    from evals.probe.logprobs import grpo_update
    from sweep.run.memory_plan import MemoryPlan, ModelShape, TrialSettings, plan_parts

    R, P, N = 16, 64, 512
    out = {}
    for variant in ("old", "new"):
        torch.cuda.empty_cache()
        torch.manual_seed(0)
        model = (
            AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE, max_position_embeddings=1024))
            .to("cuda", torch.bfloat16)
            .eval()
        )
        reference = copy.deepcopy(model).requires_grad_(False)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-5)
        ids = torch.randint(3, SHAPE["vocab_size"], (R, P + N), device="cuda")
        mask = torch.ones_like(ids)
        resp, resp_mask = ids[:, P:], torch.ones(R, N, dtype=torch.long, device="cuda")
        adv = torch.linspace(-1, 1, R, device="cuda")
        torch.cuda.reset_peak_memory_stats()

        # The step's tensors are bound now (partial), not looked up from the loop when it runs.
        if variant == "old":
            step = functools.partial(old_update, model, reference, optimizer, ids, mask, resp, resp_mask, adv, 0.05)
        else:
            step = functools.partial(
                grpo_update,
                model,
                reference,
                optimizer,
                input_ids=ids,
                attention_mask=mask,
                response_ids=resp,
                response_mask=resp_mask,
                advantages=adv,
                kl_coef=0.05,
                micro_batch_size=4,
                chunk=1024,
                checkpoint_activations=True,
            )

        out[variant] = {"step_s": _timed(step, repeat=2), "max_allocated": torch.cuda.max_memory_allocated()}
        del step
        del model, reference, optimizer
    shape = ModelShape.llama(
        layers=SHAPE["num_hidden_layers"],
        hidden=SHAPE["hidden_size"],
        intermediate=SHAPE["intermediate_size"],
        heads=SHAPE["num_attention_heads"],
        kv_heads=SHAPE["num_key_value_heads"],
        vocab=SHAPE["vocab_size"],
    )
    # the bench keeps bf16 Adam state and no master copy: plan those parts as the bench holds them
    s = TrialSettings(
        device="cuda",
        dtype_bytes=2,
        rollouts=R,
        prompt_tokens=P,
        new_tokens=N,
        micro_batch_size=4,
        logprob_chunk=1024,
        activation_checkpointing=True,
        generator="vllm",
        probe=True,
    )
    plan = MemoryPlan(parts=plan_parts(shape, s), settings=s, shape=shape)
    out["plan_new_gpu_bytes_incl_fp32_master"] = plan.gpu_bytes
    out["peak_ratio_new_over_old"] = out["new"]["max_allocated"] / out["old"]["max_allocated"]
    results["update"] = out


def check_vllm(paths: dict, results: dict) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import merge
    from evals.probe.vllm_rollout import VllmRollouts

    tok = AutoTokenizer.from_pretrained(paths["instruct"])
    model = AutoModelForCausalLM.from_pretrained(paths["instruct"], dtype=torch.bfloat16).to("cuda").eval()
    sources = merge.SourceCache.load(**paths, device="cuda", dtype="bfloat16")
    engine = VllmRollouts.build(paths["pretrained"], dtype="bfloat16", gpu_memory_utilization=0.3, max_model_len=1024)
    prompts = [tok.encode(f"{a}+{b}=") for a, b in [(3, 4), (2, 9), (8, 8), (5, 6)]]
    eos = {tok.eos_token_id}
    swaps, equal = [], []
    for alpha, beta in ((0.0, 1.0), (1.0, 1.0), (0.5, 0.7)):
        merge.build_in_place(model, sources, alpha=alpha, beta=beta)
        start = time.perf_counter()
        engine.push_weights(model)
        swaps.append(time.perf_counter() - start)
        got = engine.sample(
            prompts, group_size=1, max_new_tokens=64, temperature=0.0, seed=0, eos_ids=eos, pad_id=tok.pad_token_id
        )
        hf = [
            model.generate(
                torch.tensor([p], device="cuda"), max_new_tokens=64, do_sample=False, pad_token_id=tok.pad_token_id
            )[0, len(p) :].tolist()
            for p in prompts
        ]
        equal.append(
            all(
                got.response_ids[i, : got.lengths[i]].tolist() == hf[i][: int(got.lengths[i])]
                for i in range(len(prompts))
            )
        )
    many = [tok.encode(f"{i}+{i}=") for i in range(64)]
    start = time.perf_counter()
    batch = engine.sample(
        many, group_size=8, max_new_tokens=256, temperature=1.0, seed=0, eos_ids=eos, pad_id=tok.pad_token_id
    )
    vllm_s = time.perf_counter() - start
    results["vllm"] = {
        "swap_s": swaps,
        "greedy_equal_hf": equal,
        "rollout_tokens": int(batch.lengths.sum()),
        "rollout_tok_per_s": float(batch.lengths.sum()) / vllm_s,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--vllm-only", action="store_true")
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("bench/gpu_check.py: no CUDA device here; run it on a GPU machine", file=sys.stderr)
        return 2
    from bench.memory_plan_check import build_trio

    results: dict = {"device": torch.cuda.get_device_name(0)}
    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: str(v) for k, v in build_trio(Path(tmp), layers=12).items()}
        if not args.vllm_only:
            check_merge(paths, results)
            check_update(results)
        try:
            from evals.vllm_backend import vllm_build

            if vllm_build() is not None:
                check_vllm(paths, results)
        except Exception as exc:  # report, do not lose the other figures
            results["vllm_error"] = f"{type(exc).__name__}: {exc}"
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
