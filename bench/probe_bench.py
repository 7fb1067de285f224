"""Probe speed with the demo's default settings (search_spaces/demo.yaml, evals.probe).

    python bench/probe_bench.py              # demo family (built on first use, ~3 min)
    python bench/probe_bench.py --random     # a random model of the demo's shape, no build

Prints, per model, seconds per step, the share of a step spent sampling, the whole
probe's wall time, and its ratio to the 60 s budget (issue 6: at most 60 s on 2 cores).
Ratios are measured within one run: the machine is shared, absolute times are noisy.
A random model almost never emits eos, so every completion runs to max_new_tokens:
an upper bound on the demo models' cost.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

BUDGET_S = 60.0  # issue 6: the demo probe on 2 cores


def demo_probe_settings() -> dict:
    from sweep.spec import load_spec

    spec = load_spec(Path(__file__).resolve().parents[1] / "search_spaces" / "demo.yaml", resolve_demo=False)
    return spec.evals.probe.model_dump()


def random_demo_shape(root: Path) -> Path:
    """A random model of the demo family's shape (hidden 128, 4 layers, tied, char vocab)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from sweep.demo.tokenizer import build_char_tokenizer

    tokenizer = build_char_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=352, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True, max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id,
    )
    AutoModelForCausalLM.from_config(config).save_pretrained(root / "random")
    tokenizer.save_pretrained(root / "random")
    return root / "random"


def random_prompts(root: Path) -> Path:
    import json
    import random

    rng = random.Random(0)
    path = root / "prompts.jsonl"
    rows = [(rng.randint(10, 999), rng.randint(10, 999)) for _ in range(32)]
    path.write_text("".join(json.dumps({"prompt": f"{a}+{b}", "answer": str(a + b)}) + "\n" for a, b in rows))
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--random", action="store_true", help="a random model of the demo's shape instead of the demo family")
    parser.add_argument("--steps", type=int, help="override the demo's probe steps")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from evals.probe import ProbeConfig, run_probe

    hf_logging.disable_progress_bar()
    torch.set_num_threads(1)
    settings = demo_probe_settings()
    if args.steps:
        settings["steps"] = args.steps
    tmp = Path(tempfile.mkdtemp())
    if args.random:
        models = {"random (demo shape)": random_demo_shape(tmp)}
        settings["prompts"] = str(random_prompts(tmp))
    else:
        from sweep.demo.build import ensure_family

        family = ensure_family()
        models = {"instruct": Path(family.instruct), "reasoning": Path(family.reasoning)}
        settings["prompts"] = str(family.probe_prompts)
    config = ProbeConfig.from_dict(settings)
    print(f"settings: steps {config.steps}, {config.prompts_per_step} prompts x {config.group_size} samples, "
          f"max_new_tokens {config.max_new_tokens}, reward {config.reward.rule or config.reward.model}, 1 torch thread")
    print(f"{'model':<22}{'params':>8}{'len0':>7}{'lenT':>7}{'s/step':>8}{'gen share':>10}{'probe s':>9}{'/ 60 s':>8}")
    for name, path in models.items():
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(path)
        start = time.perf_counter()
        result = run_probe(model, tokenizer, config=config)
        wall = time.perf_counter() - start
        curves = result.curves
        n_params = sum(p.numel() for p in model.parameters()) / 1e6
        gen_share = sum(curves.gen_s) / sum(curves.step_s)
        print(f"{name:<22}{n_params:>7.2f}M{curves.response_length_mean[0]:>7.1f}{curves.response_length_mean[-1]:>7.1f}"
              f"{result.step_s_mean:>8.3f}{gen_share:>10.2f}{wall:>9.1f}{wall / BUDGET_S:>8.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
