"""The memory plan (sweep/run/memory_plan.py) against a measured peak: one CPU trial step, one run.

    .venv/bin/python bench/memory_plan_check.py [--root DIR] [--layers 12] [--update full|lora] [--json]

Builds (or reuses under --root) a fp32 Llama trio of ~110M parameters (hidden 768,
12 layers, vocabulary 32k), then in a fresh child process does what a trial holds at
its peak: the source cache, the live model built in place, HF sampling of the probe's
rollouts, the update's state and two micro-batched GRPO updates with Adam
(evals.probe.logprobs): for `--update full` a reference copy and Adam on every weight,
for `--update lora` rank-16 fp32 adapters (evals.probe.lora), the reference being the
model with its adapters off, and Adam on the adapters. It prints the plan's host estimate by part, the child's peak
RSS, and their ratio. On a GPU machine, `--device cuda` compares GPU parts with
torch.cuda.max_memory_allocated instead (bench/gpu_check.py runs that).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SETTINGS = dict(rollouts=8, prompt_tokens=32, new_tokens=128, micro_batch_size=4, logprob_chunk=1024)


def build_trio(root: Path, *, layers: int, hidden: int = 768, vocab: int = 32000) -> dict[str, Path]:
    """pretrained + two noisy fine-tunes, fp32, tied embeddings (reused when present)."""
    import torch

    from bench._llama import random_llama_model

    paths = {role: root / role for role in ("pretrained", "instruct", "reasoning")}
    if all((p / "config.json").is_file() for p in paths.values()):
        return paths
    model, tokenizer = random_llama_model(hidden=hidden, layers=layers, vocab=vocab, tie=True, max_positions=512)
    for i, path in enumerate(paths.values()):
        if i:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 0.01)
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return paths


def plan_for(paths: dict[str, Path], settings: dict):
    from merge.checkpoint import inspect_checkpoint
    from sweep.run.memory_plan import MemoryPlan, ModelShape, TrialSettings, plan_parts

    shape = ModelShape.from_info(inspect_checkpoint(paths["pretrained"]))
    s = TrialSettings(device="cpu", dtype_bytes=4, **settings)
    return MemoryPlan(parts=plan_parts(shape, s), settings=s, shape=shape)


def child(paths: dict[str, str], settings: dict) -> dict:
    """One trial's held state plus two probe updates; returns peak RSS (bytes) and timings."""
    import copy

    import lm_eval.models.huggingface  # noqa: F401  (a worker has lm-eval loaded)
    import torch
    from transformers import AutoModelForCausalLM

    import merge
    from evals.probe.logprobs import grpo_update

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    sources = merge.SourceCache.load(
        pretrained=paths["pretrained"], instruct=paths["instruct"], reasoning=paths["reasoning"]
    )
    model = AutoModelForCausalLM.from_pretrained(paths["instruct"], dtype=torch.float32).eval()
    merge.build_in_place(model, sources, alpha=0.5, beta=0.8)
    R, P, N = settings["rollouts"], settings["prompt_tokens"], settings["new_tokens"]
    gen = torch.Generator().manual_seed(0)
    prompts = torch.randint(3, model.config.vocab_size, (R, P), generator=gen)
    with torch.no_grad():
        out = model.generate(
            prompts,
            attention_mask=torch.ones_like(prompts),
            do_sample=True,
            max_new_tokens=N,
            min_new_tokens=N,
            pad_token_id=0,
        )
    t_gen = time.perf_counter()
    response = out[:, P:]
    if settings.get("update", "full") == "lora":
        from evals.probe.lora import LoraAdapters

        adapters = LoraAdapters(model, rank=settings.get("lora_rank", 16))
        reference: Any = adapters.disabled
        optimizer = torch.optim.Adam(adapters.parameters, lr=1e-6)
    else:
        reference = copy.deepcopy(model).requires_grad_(False)
        model.requires_grad_(True)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)
    mask = torch.ones_like(response)
    for _ in range(2):  # the second step holds Adam's moments while activations live
        grpo_update(
            model,
            reference,
            optimizer,
            input_ids=out,
            attention_mask=torch.ones_like(out),
            response_ids=response,
            response_mask=mask,
            advantages=torch.linspace(-1, 1, R),
            kl_coef=0.05,
            micro_batch_size=settings.get("micro_batch_size"),
            chunk=settings.get("logprob_chunk"),
            checkpoint_activations=settings.get("activation_checkpointing", False),
        )
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "gen_s": t_gen - t0,
        "total_s": time.perf_counter() - t0,
    }


def measure(paths: dict[str, Path], settings: dict) -> dict:
    payload = json.dumps({"paths": {k: str(v) for k, v in paths.items()}, "settings": settings})
    done = subprocess.run([sys.executable, __file__, "--child", payload], capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=None, help="where the trio is built (default: a temp folder)")
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--update", choices=["full", "lora"], default="full", help="the probe's update (default full)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        data = json.loads(args.child)
        print(json.dumps(child(data["paths"], data["settings"])))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp)
        paths = build_trio(root, layers=args.layers)
        settings = SETTINGS | {"update": args.update, "lora_rank": 16}
        plan = plan_for(paths, settings)
        measured = measure(paths, settings)
        result = {
            "params": plan.shape.params,
            "update": args.update,
            "planned_host": plan.host_bytes,
            "measured_peak_rss": measured["peak_rss"],
            "ratio": plan.host_bytes / measured["peak_rss"],
            "parts": {p.name: p.host for p in plan.parts},
            **measured,
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(plan.table())
            print(
                f"measured peak RSS {measured['peak_rss'] / 1e9:.2f} GB; plan/measured = {result['ratio']:.3f} "
                f"({measured['total_s']:.0f} s)"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
