"""Peak memory and time of the probe's update step, old vs new vs LoRA, on a bf16 ~160M Llama: one run.

    .venv/bin/python bench/probe_memory_bench.py [--rollouts 8] [--new-tokens 512] [--micro-batch 1] [--lora-rank 16]

old:  the plain update the chunked one is measured against (`old_update` below): full logits for
      the response positions, an fp32 log-softmax over [B, T, V] kept for backward,
      policy and reference, no micro-batches; fp32 master weights (MasterAdam) and a
      deep-copied reference, as the probe had them.
full: evals/probe/update.py `grpo_step` as the probe runs it with update: full
      (micro-batches with gradient accumulation, log-probs in --chunk-token blocks,
      activation checkpointing; MasterAdam, deep-copied reference).
lora: the same `grpo_step` with update: lora (fp32 adapters of --lora-rank on every
      linear layer via evals/probe/lora.py; the reference is the model with its
      adapters off, no copy).
Each runs two steps on the same batch (responses of exactly --new-tokens tokens: the
worst case) in its own child process; the figure is its peak RSS (ru_maxrss). Prints the
peaks, their ratios to old (target for full: < 0.5), step times, and the KL/entropy of
each (old and full compute the same loss: they agree to bf16 rounding).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPE = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_key_value_heads=12,
    intermediate_size=3072,
    vocab_size=32000,
    tie_word_embeddings=False,
)


def old_update(
    model, reference, optimizer, input_ids, mask, response_ids, response_mask, advantages, kl_coef, temperature=1.0
):
    """The plain update, without evals/probe/logprobs.py: one fp32 log-softmax over [B, T, V]."""
    import torch

    positions = (mask.cumsum(1) - 1).clamp(min=0)
    response_len = response_ids.shape[1]
    token_mask = response_mask.float()
    n_tokens = token_mask.sum().clamp(min=1)

    def token_logprobs(module):
        logits = module(
            input_ids=input_ids, attention_mask=mask, position_ids=positions, logits_to_keep=response_len + 1
        ).logits
        logp_all = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
        return logp_all.gather(-1, response_ids[..., None]).squeeze(-1), logp_all

    with torch.no_grad():
        ref_logp, _ = token_logprobs(reference)
    logp, logp_all = token_logprobs(model)
    log_ratio_ref = ref_logp - logp
    k3 = torch.exp(log_ratio_ref) - log_ratio_ref - 1
    policy_loss = -advantages[:, None] * torch.exp(logp - logp.detach())
    loss = ((policy_loss + kl_coef * k3) * token_mask).sum() / n_tokens
    optimizer.zero_grad()
    loss.backward()
    grad_norm = optimizer.step(1.0)  # MasterAdam: clip, step on the fp32 masters
    with torch.no_grad():
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return {
            "kl": float((k3.detach() * token_mask).sum() / n_tokens),
            "entropy": float((entropy * token_mask).sum() / n_tokens),
            "grad_norm": grad_norm,
        }


def child(variant: str, args: dict) -> dict:
    import copy

    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from evals.probe.config import ProbeConfig
    from evals.probe.lora import LoraAdapters
    from evals.probe.sampling import Batch as _Batch
    from evals.probe.update import MasterAdam
    from evals.probe.update import grpo_step as _update

    torch.set_num_threads(args["threads"])
    torch.manual_seed(0)
    model = (
        AutoModelForCausalLM.from_config(LlamaConfig(**SHAPE, max_position_embeddings=1024)).to(torch.bfloat16).eval()
    )
    params = sum(p.numel() for p in model.parameters())
    adapters = None
    if variant == "lora":
        adapters = LoraAdapters(model, rank=args["lora_rank"])
        reference, optimizer = adapters.disabled, MasterAdam(adapters.parameters, lr=1e-4)
    else:
        reference = copy.deepcopy(model).requires_grad_(False)
        model.requires_grad_(True)
        optimizer = MasterAdam(list(model.parameters()), lr=1e-5)
    trainable = sum(p.numel() for p in (adapters.parameters if adapters else model.parameters()))
    R, P, N = args["rollouts"], args["prompt_tokens"], args["new_tokens"]
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(3, SHAPE["vocab_size"], (R, P + N), generator=gen)
    mask = torch.ones_like(ids)
    response, response_mask = ids[:, P:], torch.ones(R, N, dtype=torch.long)
    advantages = torch.linspace(-1, 1, R)
    config = ProbeConfig(
        prompts="unused.jsonl",
        kl_coef=0.05,
        micro_batch_size=args["micro_batch"],
        logprob_chunk=args["chunk"],
        activation_checkpointing=True,
        update="lora" if variant == "lora" else "full",
    )
    batch = _Batch(
        ids[:, :P],
        mask[:, :P],
        response,
        response_mask,
        [],
        response_mask.sum(1),
        torch.zeros(R, dtype=torch.bool),
        torch.zeros(R),
    )
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    times, out = [], {}
    for _ in range(2):
        start = time.perf_counter()
        if variant == "old":
            out = old_update(model, reference, optimizer, ids, mask, response, response_mask, advantages, 0.05)
        else:
            out = _update(model, reference, optimizer, batch, advantages, config=config)
        times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "params": params,
        "trainable": trainable,
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "rss_before_step": base_rss,
        "step_s": times,
        **{k: out[k] for k in ("kl", "entropy")},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rollouts", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--chunk", type=int, default=1024, help="tokens per log-prob chunk (new)")
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    settings = {
        "rollouts": args.rollouts,
        "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens,
        "micro_batch": args.micro_batch,
        "threads": args.threads,
        "chunk": args.chunk,
        "lora_rank": args.lora_rank,
    }
    if args.child:
        print(json.dumps(child(args.child, settings)))
        return 0
    results = {}
    for variant in ("old", "full", "lora"):
        subprocess.run(["sync"], check=False)
        done = subprocess.run(
            [sys.executable, __file__, "--child", variant, *sys.argv[1:]], capture_output=True, text=True
        )
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    old = results["old"]
    summary = {
        "settings": settings,
        **results,
        **{f"{v}_peak_ratio": results[v]["peak_rss"] / old["peak_rss"] for v in ("full", "lora")},
        **{f"{v}_step_time_ratio": results[v]["step_s"][-1] / old["step_s"][-1] for v in ("full", "lora")},
    }
    if args.json:
        print(json.dumps(summary))
        return 0
    print(
        f"bf16 Llama, {old['params'] / 1e6:.0f}M params, {args.rollouts} rollouts x ({args.prompt_tokens} + {args.new_tokens}) tokens, "
        f"vocab {SHAPE['vocab_size']}, {args.threads} thread(s); micro-batch {args.micro_batch}, chunk {args.chunk}, "
        f"activation checkpointing on (full, lora), LoRA rank {args.lora_rank}"
    )
    print(
        f"{'variant':<8}{'trainable M':>12}{'peak RSS GB':>12}{'before step GB':>16}{'step s':>9}{'peak/old':>10}{'time/old':>10}{'kl':>12}{'entropy':>10}"
    )
    for r in results.values():
        print(
            f"{r['variant']:<8}{r['trainable'] / 1e6:>12.1f}{r['peak_rss'] / 1e9:>12.2f}{r['rss_before_step'] / 1e9:>16.2f}{r['step_s'][-1]:>9.1f}"
            f"{r['peak_rss'] / old['peak_rss']:>10.3f}{r['step_s'][-1] / old['step_s'][-1]:>10.2f}{r['kl']:>12.3e}{r['entropy']:>10.4f}"
        )
    print(
        f"full/old peak = {summary['full_peak_ratio']:.3f} (target < 0.5); lora/old peak = {summary['lora_peak_ratio']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
