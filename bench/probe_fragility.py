"""Which demo candidate does a random weight step of Adam's size damage most?

    python bench/probe_fragility.py [--points 0,1 0.25,0.5 ...] [--sizes 3e-4 1e-3 2e-3 4e-3] [--seeds 0 1 2]

Why: under gradient flow the expected reward of a fixed reward function cannot fall
below its start (the policy gradient ascends it, and a KL term only subtracts from
what it ascends), so a reward hockey stick needs steps that are not small. Adam's
first steps are: with bias correction its first update is `lr x sign(gradient)` on
every parameter, whatever the gradient's size, and its steps shrink only as the
moment estimates average the noise out (about 4x over the first ~10 steps for a
parameter whose gradient is noise). A dip that then recovers needs a candidate that
such a step damages. The paper's ordering (the reasoning member dips, a balanced
merge less) needs the reasoning member to be the more fragile one, as a long chain
of thought would be if each token can break the answer.

This measures it without RL: each candidate (the linear BAI merge, as a trial builds
it) gets a random sign step of size `s` on every weight (`s x sign(N(0,1))`, the
shape of Adam's first step on a gradient that is all noise), and is scored greedily on
the held-out problems of both tasks with the probe's token budget. It prints accuracy
and mean length per candidate and step size, mean ± spread over the noise seeds.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from statistics import mean, pstdev

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import probe_validity  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--points", nargs="+", default=["0,1", "0,0.75", "0.25,0.75", "0.25,0.5", "0.5,0.75", "1,1"])
    parser.add_argument("--sizes", nargs="+", type=float, default=[3e-4, 1e-3, 2e-3, 4e-3])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--n-eval", type=int, default=50)
    parser.add_argument("--max-new-tokens", type=int, default=64, help="the demo probe's budget")
    args = parser.parse_args()

    import torch

    from sweep.demo.build import active_family
    from sweep.demo.measure import build, load_family_models, score

    torch.set_num_threads(1)
    family = active_family()
    reasoning, instruct = probe_validity._held_out(family, args.n_eval)
    sources, model, tokenizer = load_family_models(family)
    print("candidate    step      reasoning acc    length   instruct acc", flush=True)
    for point in args.points:
        alpha, beta = map(float, point.split(","))
        for size in [0.0, *args.sizes]:
            rows = []
            for seed in args.seeds if size else [0]:
                build(model, sources, alpha, beta)
                if size:
                    g = torch.Generator().manual_seed(seed)
                    with torch.no_grad():
                        for p in model.parameters():
                            p.add_(size * torch.randn(p.shape, generator=g).sign())
                r = score(model, tokenizer, reasoning, max_new_tokens=args.max_new_tokens)
                i = score(model, tokenizer, instruct, max_new_tokens=args.max_new_tokens)
                rows.append((r.accuracy, r.mean_length, i.accuracy))

            def ms(k: int, rows=rows) -> str:
                values = [row[k] for row in rows]
                return f"{mean(values):.2f} ± {pstdev(values):.2f}"

            print(
                f"({alpha:g}, {beta:g})".ljust(12), f"{size:<8g}", ms(0).ljust(16), ms(1).ljust(14), ms(2), flush=True
            )


if __name__ == "__main__":
    main()
