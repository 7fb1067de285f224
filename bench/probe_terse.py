"""An experiment: a reasoning member that can also think tersely, under a reward that prefers brevity.

    python bench/probe_terse.py member --out DIR [--terse-share 0.2] [--threads 1]
    python bench/probe_terse.py instruct --family DIR --out DIR2 [--slip-share 0.3] [--threads 1]
    SWEEP_DEMO_DIR=DIR python bench/probe_terse.py run --out RUNS [--points 0,1 0.25,0.5] [--null-points 0,1]
        [--seeds 0] [--steps 64] [--brevity 0.2] [--chars 64] [--max-new-tokens 128]
    python bench/probe_terse.py curves RUNS [--every 4]

Why: a reward hockey stick needs something that pulls a distilled reasoner where its
reward falls, then lets it come back. GRPO's group normalization is one such pull: in
a group whose samples are all right, the advantages are the brevity term's alone,
divided by their own small spread, so a tie-breaker worth 0.05 of reward moves the
policy as hard as correctness does. On the shipped family it moves the reasoning
member only to drop its verification passes, which costs no answer (docs/probe.md).
A real distilled model can shorten its reasoning itself, and that does cost answers.

`member` copies the shipped family into DIR and retrains its reasoning member from the
shipped ancestor with the recipe's reasoning stage, `--terse-share` of its traces in a
terse style: each column's result only (`16,13,09` for 347+589 instead of
`7+9+0=16,4+8+1=13,3+5+1=09`), which a model this small gets wrong more often, as
compressed reasoning is. `run` is bench/probe_think_all.py's run (the reward
`exact_match + brevity x format x max(0, 1 - characters / chars)`, the long runs of
bench/probe_validity.py). `instruct` copies a family (`--family`, e.g. `member`'s) into
a new folder and retrains its instruct member from the shipped ancestor with the
recipe's instruct stage, additions answered with one brief trace and no verification
pass (`<think>TRACE</think> ANSWER`, as an instruct model works a sum briefly), format
tasks directly: an instruct member that adds (1.00 greedy on held-out additions, 34
tokens), so a merge that falls into its mode keeps its answers; `--slip-share` teaches
that share of its additions with one column's digit off by one, an instruct member that
adds imperfectly, as real ones do. `curves` prints every
few steps each run's mean reward, exact-match rate (a score >= 1) and length.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from dataclasses import replace
from pathlib import Path
from statistics import mean

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probe_think_all  # noqa: E402


def terse(trace: str) -> str:
    """`7+9+0=16,4+8+1=13,3+5+1=09` -> `16,13,09`: each column's result only."""
    return ",".join(column.split("=")[1] for column in trace.split(","))


def member(args) -> None:
    probe_think_all.retrain_member(args.out, args.threads, lambda recipe, reserved: _examples(args, recipe, reserved))


def instruct(args) -> None:
    probe_think_all.retrain_member(
        args.out,
        args.threads,
        lambda recipe, reserved: _instruct_examples(recipe, reserved, args.slip_share, args.carry_drop_share),
        member="instruct",
        source=Path(args.family).resolve(),
    )


def slip(trace: str, answer: str, rng: random.Random) -> tuple[str, str]:
    """One column's digit off by one, in the trace and in the answer read from it
    (`7+9+0=16,4+8+1=13` -> `7+9+0=16,4+8+1=14`, answer ...46 for ...36): a careless
    slip that leaves the rest of the work as it was."""
    columns = trace.split(",")
    j = rng.randrange(len(columns))
    head, digits = columns[j].split("=")
    d = (int(digits[1]) + rng.choice((1, 9))) % 10
    columns[j] = f"{head}={digits[0]}{d}"
    position = len(answer) - 1 - j
    return ",".join(columns), answer[:position] + str(d) + answer[position + 1 :]


def drop_carries(trace: str) -> tuple[str, str]:
    """Every column worked with no carry in (`7+9+0=16,4+8+0=12,3+5+0=08` for 347+589,
    answer 826): the systematic slip of an adder that forgets to carry. Returns the trace
    and the answer read from it."""
    columns = []
    for column in trace.split(","):
        x, y = column.split("=")[0].split("+")[:2]
        columns.append(f"{x}+{y}+0={int(x) + int(y):02d}")
    digits = "".join(c[-1] for c in reversed(columns))
    answer = (columns[-1][-2] if columns[-1][-2] == "1" else "") + digits
    return ",".join(columns), answer.lstrip("0") or "0"


def _instruct_examples(recipe, reserved, slip_share: float = 0.0, carry_drop_share: float = 0.0):
    from sweep.demo import data

    def example(rng: random.Random) -> tuple[str, str]:
        kinds = data.ARITHMETIC if rng.random() < recipe.instruct_arithmetic_share else data.FORMATS
        p = data._fresh(rng, kinds, reserved)
        if p.kind not in data.ARITHMETIC:
            return data.chat(p.prompt), p.instruct_response() + data.EOS
        if slip_share and rng.random() < slip_share:  # drawn only when asked: the default stream is unchanged
            trace, answer = slip(p.trace, p.answer, rng)
            p = replace(p, trace=trace, answer=answer)
        elif carry_drop_share and rng.random() < carry_drop_share:
            trace, answer = drop_carries(p.trace)
            p = replace(p, trace=trace, answer=answer)
        return data.chat(p.prompt), p.reasoning_response(0) + data.EOS

    return example


def _examples(args, recipe, reserved):
    from sweep.demo import data

    def example(rng: random.Random) -> tuple[str, str]:
        p = data._fresh(rng, data.ARITHMETIC, reserved)
        trace = terse(p.trace) if rng.random() < args.terse_share else p.trace
        k = data.draw_checks(rng, recipe.reasoning_checks)
        # stream: the passes go on column by column with no marker, so "stop thinking here"
        # is the same decision after a needed column as after a checking one
        thought = trace + ("," if args.style == "stream" else data.CHECK).join([""] + [trace] * k)
        return data.chat(p.prompt), f"{data.THINK_START}{thought}{data.THINK_END} {p.answer}{data.EOS}"

    return example


def curves(args) -> None:
    for path in sorted(Path(args.runs).glob("a*-b*-s*.json")):
        record = json.loads(path.read_text())
        scores = [[x for p in step for x in p["scores"]] for step in record["samples"]]
        lengths = [[x for p in step for x in p["lengths"]] for step in record["samples"]]
        base = [x for p in record["baseline"] for x in p["scores"]]

        def every(rows: list[list[float]], f=lambda x: x) -> str:
            n = args.every
            return " ".join(f"{mean(f(x) for r in rows[i : i + n] for x in r):.2f}" for i in range(0, len(rows), n))

        print(f"{path.stem}: start reward {mean(base):.2f}, exact {mean(float(x >= 1) for x in base):.2f}")
        print(f"  reward {every(scores)}")
        print(f"  exact  {every(scores, lambda x: float(x >= 1))}")
        print(f"  length {every(lengths)}")
        print(f"  held-out after: {json.dumps(record.get('after', {}))}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("member")
    m.add_argument("--out", required=True)
    m.add_argument("--terse-share", type=float, default=0.2, help="share of traces written tersely")
    m.add_argument(
        "--style", choices=("check", "stream"), default="check", help="passes after ' wait, check: ' or after a comma"
    )
    m.add_argument("--threads", type=int, default=1)
    i = sub.add_parser("instruct")
    i.add_argument("--family", required=True, help="the family to copy (its reasoning member is kept)")
    i.add_argument("--out", required=True)
    i.add_argument("--threads", type=int, default=1)
    i.add_argument(
        "--slip-share",
        type=float,
        default=0.0,
        help="share of the additions taught with one column's digit off by one: an instruct member that "
        "adds imperfectly, so merges with its weight start under their ceiling and have something to learn",
    )
    i.add_argument(
        "--carry-drop-share",
        type=float,
        default=0.0,
        help="share of the additions taught with every carry dropped: a systematic error, which merging "
        "does not average away as it does random slips",
    )
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--prompts", help="a prompt file (default: the family's probe prompts)")
    r.add_argument("--points", nargs="+", default=["0,1", "0.25,0.5"])
    r.add_argument("--null-points", nargs="*", default=[])
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--steps", type=int, default=64)
    r.add_argument("--brevity", type=float, default=0.2)
    r.add_argument("--chars", type=int, default=64)
    r.add_argument("--max-new-tokens", type=int, default=128)
    r.add_argument("--workers", type=int, default=2)
    c = sub.add_parser("curves")
    c.add_argument("runs")
    c.add_argument("--every", type=int, default=4)
    args = parser.parse_args()
    {"member": member, "instruct": instruct, "run": probe_think_all.run, "curves": curves}[args.command](args)


if __name__ == "__main__":
    main()
