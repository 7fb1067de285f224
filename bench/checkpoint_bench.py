"""What a long run's checkpoint costs at 7B with LoRA: its size, and the time to write and read it.

    .venv/bin/python bench/checkpoint_bench.py [--rank 16] [--out DIR] [--repeats 3]

Builds the state evals/probe/resume.py saves for bai-7b.yaml's long run, at Qwen2.5-7B's
shape (28 layers, hidden 3584, MLP 18944, 28 heads, 4 KV heads): fp32 LoRA adapters of
--rank on every linear of every layer (A and B per linear, as peft makes them), Adam's
two moments after one step, a sampler state, and what 96 of 192 steps measured (a pool
of 64 prompts x 4 baseline samples, 16 prompts x 8 completions a step). Then saves it
(evals.probe.resume.save) and loads it back (load + restore) --repeats times, to --out
(default a temporary folder: point it at the file system your study folder is on, e.g. an
NFS share, to measure that one). Prints the size, the bytes per trainable parameter, the
times, and what the default of one checkpoint every 600 s costs of a run's time.
No GPU: the state is written from host memory, as a CUDA run's is after its copy to host.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

QWEN25_7B = dict(layers=28, hidden=3584, intermediate=18944, heads=28, kv_heads=4, vocab=152064)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--out", type=Path, help="folder to write to (default: a temporary folder)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    from evals.probe.config import ProbeConfig
    from evals.probe.records import ProbeCurves, PromptSamples
    from evals.probe.resume import Checkpointing, load, restore, save
    from evals.probe.update import MasterAdam
    from sweep.run.model_shape import ModelShape

    torch.set_num_threads(1)
    shape = ModelShape.llama(**QWEN25_7B)
    h, i, q, kv = shape.hidden, shape.intermediate, shape.heads * shape.head_dim, shape.kv_heads * shape.head_dim
    linears = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]  # q k v o gate up down: (in, out)
    generator = torch.Generator().manual_seed(0)
    params = []
    for _ in range(shape.layers):
        for fan_in, fan_out in linears:
            params.append(torch.nn.Parameter(torch.randn(args.rank, fan_in, generator=generator) * 0.01))  # A
            params.append(torch.nn.Parameter(torch.zeros(fan_out, args.rank)))  # B
    trainable = sum(p.numel() for p in params)
    assert trainable == shape.lora_params_per_rank * args.rank
    optimizer = MasterAdam(params, lr=1e-5)
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator)
    optimizer.step(1.0)  # the moments exist, as after any step

    def samples(prompt: int, n: int) -> PromptSamples:
        return PromptSamples(prompt, tuple([900.0] * n), tuple([0.5] * n), tuple([0.7] * n))

    done, planned = 96, 192
    row = dict.fromkeys(ProbeCurves().to_dict(), 1.0)
    curves = ProbeCurves()
    for _ in range(done):
        curves = curves.append(row)
    progress = SimpleNamespace(
        step=done - 1,
        baseline=[samples(p, 4) for p in range(64)],
        steps=[tuple(samples(p, 8) for p in range(16)) for _ in range(done)],
        curves=curves,
        baseline_s=600.0,
    )
    config = ProbeConfig(prompts="unused.jsonl", steps=planned, update="lora", lora_rank=args.rank)
    folder = args.out or Path(tempfile.mkdtemp(prefix="checkpoint-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    checkpointing = Checkpointing(folder / "bench.pt", every_s=0, tag="bench")
    saves, loads = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        save(checkpointing, config=config, optimizer=optimizer, generator=generator, calls=0, progress=progress)
        saves.append(time.perf_counter() - t0)
        if checkpointing.broken:
            raise SystemExit(f"could not write to {folder}")
        t0 = time.perf_counter()
        state = load(checkpointing, config=config)
        assert state is not None
        restore(state, optimizer=optimizer, generator=generator, progress=SimpleNamespace())
        loads.append(time.perf_counter() - t0)
    size = checkpointing.path.stat().st_size
    checkpointing.path.unlink()
    checkpointing.info_path.unlink()
    if args.out is None:
        folder.rmdir()
    save_s, load_s = min(saves), min(loads)
    print(f"Qwen2.5-7B, LoRA rank {args.rank}: {trainable / 1e6:.1f}M trainable parameters")
    print(f"checkpoint: {size / 1e9:.2f} GB ({size / trainable:.2f} bytes per trainable parameter) in {folder}")
    print(
        f"save: {save_s:.2f} s ({size / save_s / 1e9:.2f} GB/s; best of {args.repeats}: {', '.join(f'{s:.2f}' for s in saves)})"
    )
    print(f"load and restore: {load_s:.2f} s (best of {args.repeats}: {', '.join(f'{s:.2f}' for s in loads)})")
    print(f"one save every 600 s (the default): {100 * save_s / 600:.2f}% of a long run's time")


if __name__ == "__main__":
    main()
