"""Long RL runs under a reward that gives partial credit on the digits of a sum.

    python bench/probe_partial.py run    --out DIR [--points 0,1 0.25,0.5] [--null-points 0,1] [--seeds 0]
                                         [--long-steps 96] [--set learning_rate=1e-3 ...]
    python bench/probe_partial.py curves DIR [--every 8]

Why: at a learning rate of 1e-3 the demo's candidates crash (their exact_match reward
falls to ~0) and never recover, because 84-96% of the GRPO groups then carry no reward
variance (docs/probe.md, "Why no hockey stick"). A reward that still grades a wrong
sum, by how many of its digits are right, keeps a gradient on the skill that was lost.
This asks whether a crash then recovers: the reward hockey stick.

The rule `digits`: the final answer (after the last `</think>`) against the expected
one, right-aligned, one point per matching digit, divided by the longer of the two;
0 when the final answer is not all digits. A score of 1.0 is exactly an exact match,
so `curves` reads both the reward and the exact-match rate from the run records of
bench/probe_validity.py (one JSON file per run).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probe_validity  # noqa: E402

RULE = "digits"


def digit_credit(final: str, answer: str) -> float:
    """Right-aligned matching digits over the longer length; 0 unless `final` is all digits."""
    final, answer = final.strip(), answer.strip()
    if not final.isdigit() or not answer:
        return 0.0
    hits = sum(a == b for a, b in zip(reversed(final), reversed(answer), strict=False))
    return hits / max(len(final), len(answer))


def _register() -> None:
    from evals.plugins import REWARD_RULES
    from evals.rewards import final_answer, register_rule

    if RULE in REWARD_RULES.names():
        return

    @register_rule(RULE, needs_answer=True)
    def rule(*, prompts, completions, answers):
        return [digit_credit(final_answer(c), a or "") for c, a in zip(completions, answers, strict=True)]


def _worker(*args) -> None:
    _register()
    probe_validity._worker(*args)


def run(args) -> None:
    overrides = probe_validity._overrides([f"reward={{rule: {RULE}, model: null}}", *args.set])
    points, nulls = probe_validity.parse_points(args.points), probe_validity.parse_points(args.null_points)
    out, jobs = probe_validity.pending(args.out, points, args.seeds, nulls)
    print(f"{len(jobs)} runs to do in {out} on {args.workers} workers", flush=True)
    probe_validity.spawn(
        jobs,
        args.workers,
        lambda i, share: (_worker, (share, str(out), args.long_steps, args.n_eval, False, overrides)),
    )


def curves(args) -> None:
    for path in sorted(Path(args.dir).glob("*.json")):
        record = json.loads(path.read_text())
        steps = record["samples"]
        scores = [[s for p in step for s in p["scores"]] for step in steps]
        base = [s for p in record["baseline"] for s in p["scores"]]

        def means(values: list[float]) -> str:
            return probe_validity.window_means(values, args.every)

        reward = [mean(s) for s in scores]
        exact = [mean(float(v == 1.0) for v in s) for s in scores]
        flat = [mean(float(len(set(p["scores"])) == 1) for p in step) for step in steps]
        after = record.get("after", {})
        print(f"{path.stem}: baseline reward {mean(base):.2f}, exact {mean(float(v == 1.0) for v in base):.2f}")
        print(f"  reward  {means(reward)}")
        print(f"  exact   {means(exact)}")
        print(f"  length  {means(record['raw_length'])}")
        print(f"  no-var  {means(flat)}")
        print(f"  held-out after: {json.dumps(after)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--points", nargs="+", default=["0,1", "0.25,0.5"])
    r.add_argument("--null-points", nargs="*", default=[])
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--long-steps", type=int, default=96)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--n-eval", type=int, default=50)
    r.add_argument("--set", nargs="*", default=[], help="KEY=VALUE probe settings over the demo spec's")
    c = sub.add_parser("curves")
    c.add_argument("dir")
    c.add_argument("--every", type=int, default=8)
    args = parser.parse_args()
    {"run": run, "curves": curves}[args.command](args)


if __name__ == "__main__":
    main()
