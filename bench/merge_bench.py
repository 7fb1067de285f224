"""Merge benchmark: our streaming merge vs a naive torch merge vs mergekit, and the in-place build.

    python bench/merge_bench.py                       # 374M bf16 Llama trio under /tmp (~2.3 GB, deleted after)
    python bench/merge_bench.py --mergekit /tmp/mkvenv/bin/mergekit-yaml
    python bench/merge_bench.py --tiny                # seconds; checks the script itself

It generates a Llama-shaped bf16 trio (pretrained + two noisy "fine-tunes") from a config,
reads every file once so each variant starts from a warm page cache, then runs each
variant in its own process, measured in one run:

- ours:          merge.merge_checkpoints (linear, alpha 0.5, beta 0.8), disk to disk, default
                 kernel ("auto": the native C kernel, built once per machine);
- ours_eager:    the same with the chunked-torch kernel (what runs where no C compiler is);
- ours_compiled: the same with the torch.compile kernel (compiled before timing);
- naive:         safetensors load_file of three full state dicts, fp32 weighted sum, save_file;
- mergekit:      `mergekit-yaml` linear with normalize: false (same weights), if found;
- in-place:      merge.build_in_place into a live bf16 model vs a plain `copy_` of the same bytes
                 (`--methods all`: also the build with each non-linear stage-1 method).

Every run writes into a fresh folder and starts after an `os.sync()`: without it, the
dirty pages of the previous variant's output were still being flushed and slowed the
next variant's writes (seen: write() of 0.75 GB taking 0.17 s or 1.7 s depending on what
ran before), and one variant paid for deleting its previous output (~0.16 s).

Throughput is bytes read plus written per second. "work" times exclude the process start
and imports, "wall" times include them (mergekit only has wall). Peak RSS comes from
wait4 for each child process. Ratios are the figures to compare: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ALPHA, BETA = 0.5, 0.8
WEIGHTS = (ALPHA * BETA, (1 - ALPHA) * BETA, 1 - BETA)  # instruct, reasoning, pretrained
ROLES = ("instruct", "reasoning", "pretrained")

# 374M parameters: 24 layers x 12.85M + 2 x 32.8M (untied embedding and head).
FULL = dict(hidden=1024, layers=24, intermediate=2816, heads=16, kv_heads=16, vocab=32000)
TINY = dict(hidden=64, layers=2, intermediate=128, heads=4, kv_heads=4, vocab=512)


# ---------------------------------------------------------------- the trio


def llama_config(shape: dict) -> dict:
    from transformers import LlamaConfig

    config = LlamaConfig(
        vocab_size=shape["vocab"],
        hidden_size=shape["hidden"],
        intermediate_size=shape["intermediate"],
        num_hidden_layers=shape["layers"],
        num_attention_heads=shape["heads"],
        num_key_value_heads=shape["kv_heads"],
        max_position_embeddings=2048,
        tie_word_embeddings=False,
    ).to_dict()
    config["architectures"] = ["LlamaForCausalLM"]  # mergekit needs it
    config["dtype"] = "bfloat16"
    return config


def tensor_shapes(shape: dict) -> dict[str, tuple[int, ...]]:
    h, f, v = shape["hidden"], shape["intermediate"], shape["vocab"]
    kv = h * shape["kv_heads"] // shape["heads"]
    shapes = {"model.embed_tokens.weight": (v, h), "model.norm.weight": (h,), "lm_head.weight": (v, h)}
    for i in range(shape["layers"]):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (h, h),
            p + "self_attn.k_proj.weight": (kv, h),
            p + "self_attn.v_proj.weight": (kv, h),
            p + "self_attn.o_proj.weight": (h, h),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
            p + "input_layernorm.weight": (h,),
            p + "post_attention_layernorm.weight": (h,),
        }
    return shapes


def build_trio(root: Path, shape: dict, shard_bytes: int) -> dict[str, Path]:
    """Write pretrained, then instruct/reasoning = pretrained + seeded noise, as bf16 shards."""
    import torch
    from safetensors.torch import save_file

    from sweep.demo.tokenizer import build_char_tokenizer

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    shapes = tensor_shapes(shape)
    config = llama_config(shape)
    tokenizer = build_char_tokenizer()
    paths = {}
    for role in ("pretrained", "instruct", "reasoning"):
        folder = root / role
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(config, indent=2))
        tokenizer.save_pretrained(folder)
        paths[role] = folder
    groups, current, size = [], [], 0
    for name, s in shapes.items():
        n = 2 * _numel(s)
        if current and size + n > shard_bytes:
            groups.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    groups.append(current)
    files = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    for file, group in zip(files, groups, strict=True):
        gen = torch.Generator().manual_seed(len(file) + len(group))
        base = {
            n: (
                torch.randn(shapes[n], generator=gen) * 0.02 if not n.endswith("norm.weight") else torch.ones(shapes[n])
            )
            for n in group
        }
        save_file(
            {n: t.to(torch.bfloat16) for n, t in base.items()},
            str(paths["pretrained"] / file),
            metadata={"format": "pt"},
        )
        for seed, role in ((1, "instruct"), (2, "reasoning")):
            gen_role = torch.Generator().manual_seed(1000 * seed + len(group))
            tuned = {
                n: (t + torch.randn(t.shape, generator=gen_role) * 0.002).to(torch.bfloat16) for n, t in base.items()
            }
            save_file(tuned, str(paths[role] / file), metadata={"format": "pt"})
        del base
    for role in paths:
        index = {
            "metadata": {"total_size": sum(2 * _numel(s) for s in shapes.values())},
            "weight_map": {n: f for f, g in zip(files, groups, strict=True) for n in g},
        }
        (paths[role] / "model.safetensors.index.json").write_text(json.dumps(index))
    return paths


def warm_cache(folders) -> None:
    """Read every weight file once: every variant then starts from the same warm page cache."""
    for folder in folders:
        for file in sorted(Path(folder).glob("*.safetensors")):
            with open(file, "rb") as fh:
                while fh.read(64 << 20):
                    pass


def weights_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors"))


# ---------------------------------------------------------------- children (one process each)


def child_ours(args) -> dict:
    import torch

    import merge

    trio = _trio(args)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    merge.merge_checkpoints(**trio, alpha=ALPHA, beta=BETA, out=args.out, force=True, threads=args.threads)
    return {"work_s": time.perf_counter() - started, "kernel": _kernel_used()}


def _kernel_used() -> str:
    from merge import kernels, native

    mode = kernels.get_kernel()
    if mode == "auto":
        return "native" if native.available() else "torch (no native kernel: " + str(native.unavailable_reason()) + ")"
    return mode


def child_ours_eager(args) -> dict:
    """Ours with the chunked-torch kernel: the fallback where no C compiler exists."""
    from merge import kernels

    kernels.set_kernel("eager")
    return child_ours(args)


def child_naive(args) -> dict:
    import torch
    from safetensors.torch import load_file, save_file

    trio = _trio(args)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    states = {role: {} for role in ROLES}
    for role in ROLES:
        for file in sorted(trio[role].glob("*.safetensors")):
            states[role].update(load_file(str(file)))
    merged = {}
    for name in states["pretrained"]:
        a, b, c = (states[role][name] for role in ROLES)
        merged[name] = (a.float() * WEIGHTS[0] + b.float() * WEIGHTS[1] + c.float() * WEIGHTS[2]).to(a.dtype)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(merged, str(out / "model.safetensors"), metadata={"format": "pt"})
    return {"work_s": time.perf_counter() - started}


def child_inplace(args) -> dict:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    import merge
    from merge import kernels

    trio = _trio(args)
    torch.set_num_threads(args.inplace_threads)
    sources = merge.SourceCache.load(**trio)
    config = AutoConfig.from_pretrained(trio["instruct"])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.to_empty(device="cpu")
    params = [(n, p.data) for n, p in model.named_parameters()]
    out_bytes = sum(p.numel() * p.element_size() for _, p in params)

    def copy_all():
        for name, p in params:
            p.copy_(sources.tensors[name][0])

    def build():
        merge.build_in_place(model, sources, alpha=ALPHA, beta=BETA)

    started = time.perf_counter()
    build()  # the first call loads (or, once per machine, builds) the kernel
    first = time.perf_counter() - started
    result = {"first_build_s": first, "out_bytes": out_bytes, "kernel": _kernel_used()}
    result["build_s"] = _best(build, args.repeats)
    result["copy_s"] = _best(copy_all, args.repeats)
    kernels.set_kernel("eager")
    result["eager_build_s"] = _best(build, max(1, args.repeats - 1))
    kernels.set_kernel("auto")
    result["methods"] = {}
    for method, params in _methods(args.methods):  # the non-fused stage-1 methods: fp32 torch ops per tensor
        started = time.perf_counter()
        merge.build_in_place(model, sources, alpha=ALPHA, beta=BETA, stage1_method=method, stage1_params=params)
        result["methods"][method + "".join(f" {k}={v}" for k, v in params.items())] = time.perf_counter() - started
    return result


METHODS = {
    "task_arithmetic": {},
    "ties": {"density": 0.5},
    "dare": {"density": 0.5},
    "dare-ties": {"density": 0.5, "variant": "ties"},
    "slerp": {},
}


def _methods(names: str | None) -> list[tuple[str, dict]]:
    if not names:
        return []
    chosen = list(METHODS) if names == "all" else [n.strip() for n in names.split(",")]
    unknown = [n for n in chosen if n not in METHODS]
    if unknown:
        raise SystemExit(f"--methods: unknown {unknown}; choose from {', '.join(METHODS)} or all")
    return [(n.split("-")[0], METHODS[n]) for n in chosen]


def _trio(args) -> dict[str, Path]:
    return {role: Path(args.workdir) / role for role in ("pretrained", "instruct", "reasoning")}


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def child_build(args) -> dict:
    build_trio(Path(args.workdir), TINY if args.tiny else FULL, args.shard_mb * 10**6)
    return {}


def child_diff(args) -> dict:
    worst, fraction = difference(Path(args.workdir) / "out_ours", Path(args.out))
    return {"worst": worst, "fraction": fraction}


def child_ours_compiled(args) -> dict:
    """Ours with the torch.compile kernel (what CUDA merges of large models use)."""
    import torch

    from merge import kernels

    kernels.set_kernel("compiled")
    started = time.perf_counter()
    x = torch.zeros(1 << 20, dtype=torch.bfloat16)
    kernels.weighted_sum_into(torch.empty_like(x), [x, x, x], list(WEIGHTS))  # compile before timing
    return child_ours(args) | {"compile_s": time.perf_counter() - started}


CHILDREN = {
    "build": child_build,
    "ours": child_ours,
    "ours_eager": child_ours_eager,
    "ours_compiled": child_ours_compiled,
    "naive": child_naive,
    "inplace": child_inplace,
    "diff": child_diff,
}


# ---------------------------------------------------------------- parent


def run_measured(cmd: list[str], env: dict) -> tuple[dict, float, int]:
    """Run a command; return (its last JSON line or {}, wall seconds, peak RSS bytes from wait4)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd[:4])} failed with exit code {proc.returncode}")
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    return (json.loads(lines[-1]) if lines else {}), wall, usage.ru_maxrss * 1024  # KiB on Linux


# Run in mergekit's own interpreter: times run_merge only (no start-up, no imports).
MERGEKIT_TIMED = """
import json, time, yaml
from mergekit.config import MergeConfiguration
from mergekit.merge import run_merge
from mergekit.options import MergeOptions
config = MergeConfiguration.model_validate(yaml.safe_load(open({config!r})))
options = MergeOptions(quiet=True, write_model_card=False, num_threads={threads})
started = time.perf_counter()
run_merge(config, {out!r}, options=options)
print(json.dumps({{"work_s": time.perf_counter() - started}}))
"""


def find_mergekit(path: str | None) -> str | None:
    if path:
        return path if Path(path).exists() else None
    return shutil.which("mergekit-yaml")


def mergekit_config(trio: dict[str, Path], file: Path) -> None:
    lines = ["merge_method: linear", "dtype: bfloat16", "parameters:", "  normalize: false", "models:"]
    for role, weight in zip(ROLES, WEIGHTS, strict=True):
        lines += [f"  - model: {trio[role]}", "    parameters:", f"      weight: {weight}"]
    file.write_text("\n".join(lines) + "\n")


def difference(a: Path, b: Path, names: int = 12) -> tuple[float, float]:
    """(largest |a - b| relative to the tensor's largest entry, fraction of elements that differ)
    over the first `names` tensors of two merged checkpoints."""
    from safetensors import safe_open

    def files(folder):
        out = {}
        for file in sorted(Path(folder).glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as fh:
                out.update({name: file for name in fh.keys()})
        return out

    fa, fb = files(a), files(b)
    worst, differing, total = 0.0, 0, 0
    for name in sorted(fa)[:names]:
        with safe_open(str(fa[name]), framework="pt") as ha, safe_open(str(fb[name]), framework="pt") as hb:
            x, y = ha.get_tensor(name).double(), hb.get_tensor(name).double()
        worst = max(worst, float((x - y).abs().max() / y.abs().max().clamp_min(1e-30)))
        differing += int((x != y).sum())
        total += x.numel()
    return worst, differing / max(total, 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--workdir", default="/tmp/merge_bench", help="where the trio and outputs go (deleted after unless --keep)"
    )
    parser.add_argument("--tiny", action="store_true", help="a tiny trio: checks the script in seconds")
    parser.add_argument("--mergekit", default=None, help="path to mergekit-yaml (default: found on PATH)")
    # Each kind of merge timed (disk-to-disk, in place): its threads, and its runs (best kept).
    for threads_flag, threads_help, repeats_flag, repeats, repeats_help in (
        (
            "--threads",
            "threads for the disk merges, every variant (on a busy 2-core box, 2 made all slower)",
            "--disk-repeats",
            2,
            "runs of each disk variant, interleaved (best kept)",
        ),
        (
            "--inplace-threads",
            "torch threads for the in-place build and its copy_ (a sweep worker uses 1)",
            "--repeats",
            3,
            "timed repeats of the in-place build and copy_ (best kept)",
        ),
    ):
        parser.add_argument(threads_flag, type=int, default=1, help=threads_help)
        parser.add_argument(repeats_flag, type=int, default=repeats, help=repeats_help)
    parser.add_argument(
        "--methods",
        default=None,
        help="also time the in-place build with these stage-1 methods, once each: all, or a comma list of "
        + ", ".join(METHODS),
    )
    parser.add_argument("--shard-mb", type=int, default=400, help="input shard size in MB")
    parser.add_argument("--keep", action="store_true", help="keep the generated trio and outputs")
    parser.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(CHILDREN[args.child](args)))
        return 0

    _methods(args.methods)  # a bad --methods fails now, not after the trio is built
    workdir = Path(args.workdir)
    shape = TINY if args.tiny else FULL
    env = dict(
        os.environ,
        OMP_NUM_THREADS=str(args.threads),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        PYTHONPATH=str(ROOT),
    )
    if workdir.exists():
        shutil.rmtree(workdir)
    try:
        started = time.perf_counter()
        # The parent never imports torch: a forked child's peak RSS starts from its parent's.
        run_measured(
            [
                sys.executable,
                str(Path(__file__).resolve()),
                "--workdir",
                str(workdir),
                "--shard-mb",
                str(args.shard_mb),
                "--child",
                "build",
            ]
            + (["--tiny"] if args.tiny else []),
            env,
        )
        trio = {role: workdir / role for role in ("pretrained", "instruct", "reasoning")}
        n_params = sum(_numel(s) for s in tensor_shapes(shape).values())
        print(
            f"trio: {n_params / 1e6:.0f}M params each, bf16, {weights_bytes(trio['pretrained']) / 1e9:.2f} GB each, built in {time.perf_counter() - started:.0f} s under {workdir}"
        )
        warm_cache(trio.values())
        read = sum(weights_bytes(p) for p in trio.values())
        me = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--workdir",
            str(workdir),
            "--threads",
            str(args.threads),
            "--inplace-threads",
            str(args.inplace_threads),
            "--repeats",
            str(args.repeats),
        ] + (["--methods", args.methods] if args.methods else [])
        commands = {
            name: me + ["--child", name, "--out", str(workdir / f"out_{name}")]
            for name in ("ours", "ours_eager", "ours_compiled", "naive")
        }
        mergekit = find_mergekit(args.mergekit)
        mergekit_note = None
        if mergekit:
            config = workdir / "mergekit.yaml"
            mergekit_config(trio, config)
            commands["mergekit"] = [
                mergekit,
                str(config),
                str(workdir / "out_mergekit"),
                "--quiet",
                "--no-write-model-card",
                "-j",
                str(args.threads),
            ]
            mergekit_python = Path(mergekit).parent / "python"
            if mergekit_python.exists():  # also time mergekit's run_merge alone, as "work"
                code = MERGEKIT_TIMED.format(
                    config=str(config), out=str(workdir / "out_mergekit_api"), threads=args.threads
                )
                commands["mergekit_api"] = [str(mergekit_python), "-c", code]
        else:
            mergekit_note = "mergekit: skipped (no mergekit-yaml on PATH; pass --mergekit PATH)"
        best: dict[str, tuple] = {}
        results: dict[str, dict] = {}
        for _ in range(args.disk_repeats):  # interleaved, best of N each: the machine is shared
            for name, cmd in commands.items():
                # Every variant writes into a fresh folder: deleting the previous run's 0.75 GB
                # output costs ~0.16 s on ext4, which must not land inside one variant's timing.
                shutil.rmtree(workdir / f"out_{name}", ignore_errors=True)
                os.sync()  # no dirty pages left from the previous variant to slow this one's writes
                result, wall, rss = run_measured(cmd, env)
                moved = read + weights_bytes(workdir / f"out_{name}")
                row = (name, moved, result.get("work_s"), wall, rss)
                results[name] = result
                if name not in best or wall < best[name][3]:
                    best[name] = row
        if "mergekit_api" in best:  # one mergekit row: wall from the CLI, work from run_merge
            api = best.pop("mergekit_api")
            best["mergekit"] = best["mergekit"][:2] + (api[2],) + best["mergekit"][3:]
        rows = list(best.values())

        print(
            f"\ndisk-to-disk linear merge, alpha={ALPHA} beta={BETA}, {args.threads} threads (GB/s = bytes read + written per second)"
        )
        print(
            f"{'variant':<15}{'GB moved':>10}{'work s':>9}{'work GB/s':>11}{'wall s':>9}{'wall GB/s':>11}{'peak RSS GB':>13}"
        )
        for name, moved, work, wall, rss in rows:
            work_s = f"{work:9.2f}" if work else f"{'-':>9}"
            work_rate = f"{moved / work / 1e9:11.2f}" if work else f"{'-':>11}"
            print(
                f"{name:<15}{moved / 1e9:10.2f}{work_s}{work_rate}{wall:9.2f}{moved / wall / 1e9:11.2f}{rss / 1e9:13.2f}"
            )
        if mergekit_note:
            print(mergekit_note)
        kernel = next((r.get("kernel") for n, r in results.items() if n == "ours"), None)
        print(f"ours ran the {kernel} kernel")
        by = {r[0]: r for r in rows}
        ours_wall = by["ours"][3]
        print(
            f"\nours vs naive: {by['naive'][2] / by['ours'][2]:.1f}x (work), {by['naive'][3] / ours_wall:.1f}x (wall)"
        )
        if "mergekit" in by:
            mk = by["mergekit"]
            print(
                f"ours vs mergekit: {mk[3] / ours_wall:.1f}x (wall: process start-up and imports included)"
                + (f", {mk[2] / by['ours'][2]:.1f}x (work)" if mk[2] else "")
            )
            if mk[2]:
                print(f"ours_eager (no C compiler) vs mergekit: {mk[2] / by['ours_eager'][2]:.1f}x (work)")
            print(
                f"ours_compiled (torch.compile) vs mergekit: {mk[3] / by['ours_compiled'][3]:.1f}x (wall, the compile included)"
                + (f", {mk[2] / by['ours_compiled'][2]:.1f}x (work, compiled beforehand)" if mk[2] else "")
            )
        for other in [n for n in ("naive", "mergekit") if n in by]:
            diff, _, _ = run_measured(me + ["--child", "diff", "--out", str(workdir / f"out_{other}")], env)
            worst, fraction = diff["worst"], diff["fraction"]
            print(
                f"ours vs {other}: {fraction:.3%} of elements differ (fp32 summation order), by at most {worst:.1e} x the tensor's largest entry"
            )

        result, wall, rss = run_measured(me + ["--child", "inplace"], env)
        gb = result["out_bytes"] / 1e9
        print(
            f"\nin-place build ({args.inplace_threads} thread(s), {gb:.2f} GB of bf16 parameters, kernel {result['kernel']}):"
        )
        print(
            f"  copy_ of the same bytes  {result['copy_s'] * 1e3:8.1f} ms  ({gb / result['copy_s']:.1f} GB/s written)"
        )
        print(
            f"  build_in_place           {result['build_s'] * 1e3:8.1f} ms  = {result['build_s'] / result['copy_s']:.2f}x copy_ (target <= 3x)"
        )
        print(
            f"  eager kernel (fallback)  {result['eager_build_s'] * 1e3:8.1f} ms  = {result['eager_build_s'] / result['copy_s']:.2f}x copy_"
        )
        for label, seconds in result.get("methods", {}).items():
            print(f"  stage 1 {label:<28} {seconds:6.2f} s  = {seconds / result['build_s']:.0f}x the linear build")
        print(
            f"  first build                {result['first_build_s']:8.2f} s  (first touch of the model's fresh pages; loads the kernel);  peak RSS {rss / 1e9:.2f} GB (cache of three models + the live model)"
        )
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


if __name__ == "__main__":
    sys.exit(main())
