"""Probe speed with the demo's default settings (search_spaces/demo.yaml, evals.probe).

    python bench/probe_bench.py              # the shipped demo family
    python bench/probe_bench.py --random     # a random model of the demo's shape, no build
    python bench/probe_bench.py --trl        # trends against TRL 1.16's GRPOTrainer (needs trl)
    python bench/probe_bench.py --stability [--seeds 0 1 2]   # each metric: null spread vs training shift

Prints, per model, seconds per step, the share of a step spent sampling, the whole
probe's wall time, and its ratio to the 60 s budget (issue 6: at most 60 s on 2 cores).
Ratios are measured within one run: the machine is shared, absolute times are noisy.
A random model almost never emits eos, so every completion runs to max_new_tokens:
an upper bound on the demo models' cost.

--stability: for the reasoning member, the balanced merge (alpha 0.5, beta 0.75) and the
instruct member, runs the demo spec's probe at its learning rate and at 1e-12 (the null
control) for each seed, and prints per stability metric the null control's mean and
spread across seeds, the mean bootstrap noise band the probe recorded, the trained
mean, and the shift (trained - null) in units of the null spread. It ends with the
README's table (trained / null, mean ± sd over seeds), the per-seed length_retention
(trained / null) and the baseline's cost.
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
    from sweep.config import load_spec

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
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=352,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
        max_position_embeddings=256,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
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


def _text(completion) -> str:
    # TRL passes conversational completions as [{"role": "assistant", "content": ...}]
    return completion[0]["content"] if isinstance(completion, list) else completion


def digit_share(*, prompts, completions, answers=None, **_):
    """Learnable, length-independent: the share of digits in the completion."""
    return [sum(ch.isdigit() for ch in _text(c)) / max(1, len(_text(c))) for c in completions]


def brevity(*, prompts, completions, answers=None, **_):
    """Rewards short completions (in characters): drives the length down."""
    return [-len(_text(c)) / 64 for c in completions]


def trl_curves(path: Path, prompts: list[str], *, config, reward, workdir: Path) -> dict[str, list[float]]:
    """TRL 1.16 GRPOTrainer with the probe's settings: length and reward per step."""
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    batch = config.prompts_per_step * config.group_size
    args = GRPOConfig(
        output_dir=str(workdir),
        use_cpu=True,
        bf16=False,
        report_to=[],
        save_strategy="no",
        per_device_train_batch_size=batch,
        num_generations=config.group_size,
        max_completion_length=config.max_new_tokens,
        learning_rate=config.learning_rate,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch",
        beta=config.kl_coef,
        temperature=config.temperature,
        max_steps=config.steps,
        logging_steps=1,
        loss_type="dapo",
        scale_rewards="group",
        seed=config.seed,
        disable_tqdm=True,
    )
    data = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])
    model = AutoModelForCausalLM.from_pretrained(path, dtype="float32")
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=data,
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # it prints every step's log dict
    trainer.train()
    logs = [row for row in trainer.state.log_history if "reward" in row]
    return {"length": [row["completions/mean_length"] for row in logs], "reward": [row["reward"] for row in logs]}


def trend(values: list[float]) -> float:
    """Mean of the last quarter minus mean of the first quarter."""
    k = max(1, len(values) // 4)
    return sum(values[-k:]) / k - sum(values[:k]) / k


def cross_check_trl(steps: int) -> None:
    """Same model, prompts, rewards and settings: do our trends go TRL's way?"""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.probe import ProbeConfig, load_prompts, run_probe

    tmp = Path(tempfile.mkdtemp())
    path = random_demo_shape(tmp)
    prompts_file = random_prompts(tmp)
    prompts = [p.prompt for p in load_prompts(prompts_file)]
    config = ProbeConfig(prompts=str(prompts_file), steps=steps, learning_rate=3e-3, kl_coef=0.05, max_new_tokens=32)
    print(
        f"TRL cross-check: random demo-shape model, {steps} steps, lr {config.learning_rate}, "
        f"{config.prompts_per_step}x{config.group_size}, max_new_tokens {config.max_new_tokens}"
    )
    print(f"{'reward':<12}{'runner':<8}{'len0':>7}{'len trend':>10}{'reward0':>9}{'reward trend':>13}{'s/step':>8}")
    for name, reward in (("digit_share", digit_share), ("brevity", brevity)):
        start = time.perf_counter()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        ours = run_probe(model, AutoTokenizer.from_pretrained(path), config=config, reward=reward).curves
        ours_s = (time.perf_counter() - start) / steps
        start = time.perf_counter()
        theirs = trl_curves(path, prompts, config=config, reward=reward, workdir=tmp / f"trl-{name}")
        trl_s = (time.perf_counter() - start) / steps
        for runner, length, score, per_step in (
            ("ours", list(ours.response_length_mean), list(ours.score_mean), ours_s),
            ("trl", theirs["length"], theirs["reward"], trl_s),
        ):
            print(
                f"{name:<12}{runner:<8}{length[0]:>7.1f}{trend(length):>+10.1f}{score[0]:>9.3f}{trend(score):>+13.3f}{per_step:>8.3f}"
            )


def stability_table(seeds: list[int], steps: int | None) -> None:
    """Null spread vs training shift per metric, across seeds (see the module doc)."""
    from statistics import mean

    from sweep.demo.build import active_family
    from sweep.run.demo_stability import (
        NAMED_POINTS,
        TABLE_METRICS,
        demo_probe_settings,
        markdown_table,
        per_seed_table,
        probe_runs,
        summarize,
    )

    family = active_family()
    settings = demo_probe_settings(**({"steps": steps} if steps else {}))
    print(
        f"settings: {settings['steps']} steps, {settings['prompts_per_step']} prompts x {settings['group_size']} samples, "
        f"pool {settings['prompt_pool']}, baseline {settings['baseline_samples']} samples/prompt, window {settings['window']}, "
        f"temperature {settings['temperature']:g}, reward {settings['reward']['rule']}, lr {settings['learning_rate']:g} "
        f"(null 1e-12), seeds {seeds}"
    )
    names = {v: k for k, v in NAMED_POINTS.items()}
    runs = probe_runs(
        family,
        points=[NAMED_POINTS[n] for n in ("reasoning", "balanced", "instruct")],
        seeds=seeds,
        settings=settings,
        progress=lambda r: print(
            f"  {names[(r.alpha, r.beta)]:<9} seed {r.seed} lr {r.learning_rate:<7g} "
            f"retention {r.metrics['probe/length_retention']:.3f} growth {r.metrics['probe/length_growth']:.3f} "
            f"dip {r.metrics['probe/reward_dip']:.3f} ({r.wall_s:.1f} s, baseline {r.baseline_s:.1f} s)",
            flush=True,
        ),
    )
    print(
        f"\n{'member':<10}{'metric':<18}{'null mean':>10}{'null sd':>9}{'band':>7}{'trained':>9}{'shift':>8}{'shift/sd':>9}"
    )
    for member in ("reasoning", "balanced", "instruct"):
        at = [r for r in runs if (r.alpha, r.beta) == NAMED_POINTS[member]]
        for metric in TABLE_METRICS:
            key = f"probe/{metric}"
            null_mean, null_sd = summarize([r.metrics[key] for r in at if r.null])
            trained, _ = summarize([r.metrics[key] for r in at if not r.null])
            bands = [r.metrics.get(f"{key}_noise") for r in at if r.null]
            band = mean(bands) if all(b is not None for b in bands) else float("nan")
            ratio = (trained - null_mean) / null_sd if null_sd > 1e-9 else float("inf")
            print(
                f"{member:<10}{metric:<18}{null_mean:>10.3f}{null_sd:>9.3f}{band:>7.3f}{trained:>9.3f}{trained - null_mean:>+8.3f}{ratio:>9.1f}"
            )
    print()
    print(markdown_table(runs))
    print()
    print(per_seed_table(runs))
    base = [r.baseline_s for r in runs]
    wall = [r.wall_s for r in runs]
    print(f"\nbaseline: {mean(base):.2f} s per probe (of {mean(wall):.2f} s per probe, {mean(base) / mean(wall):.0%})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--stability", action="store_true", help="null-control spread vs training shift of each stability metric"
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=[0, 1, 2], help="probe seeds for --stability (default 0 1 2)"
    )
    parser.add_argument(
        "--random", action="store_true", help="a random model of the demo's shape instead of the demo family"
    )
    parser.add_argument("--steps", type=int, help="override the demo's probe steps")
    parser.add_argument("--trl", action="store_true", help="cross-check trends against TRL's GRPOTrainer (needs trl)")
    args = parser.parse_args()
    if args.stability:
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        torch.set_num_threads(1)
        stability_table(args.seeds, args.steps)
        return 0
    if args.trl:
        import torch

        torch.set_num_threads(1)
        cross_check_trl(args.steps or 30)
        return 0

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
        from sweep.demo.build import active_family

        family = active_family()
        models = {"instruct": Path(family.instruct), "reasoning": Path(family.reasoning)}
        settings["prompts"] = str(family.probe_prompts)
    config = ProbeConfig.from_dict(settings)
    print(
        f"settings: steps {config.steps}, {config.prompts_per_step} prompts x {config.group_size} samples, "
        f"max_new_tokens {config.max_new_tokens}, reward {config.reward.rule or config.reward.model}, 1 torch thread"
    )
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
        print(
            f"{name:<22}{n_params:>7.2f}M{curves.response_length_mean[0]:>7.1f}{curves.response_length_mean[-1]:>7.1f}"
            f"{result.step_s_mean:>8.3f}{gen_share:>10.2f}{wall:>9.1f}{wall / BUDGET_S:>8.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
