"""An experiment: a reasoning member that thinks on every prompt, under a reward that prefers brevity.

    python bench/probe_think_all.py member --out DIR [--format-share 0.3] [--threads 1]
    python bench/probe_think_all.py prompts --out FILE
    [SWEEP_DEMO_DIR=DIR] python bench/probe_think_all.py run --out RUNS [--prompts FILE] [--points 0,1 0.25,0.5]
        [--null-points 0,1] [--seeds 0] [--steps 64] [--brevity 0.5] [--chars 64] [--max-new-tokens 128]
    python bench/probe_think_all.py kinds RUNS [--prompts FILE]

Why: the paper's reward hockey stick comes with its length collapse, in RLHF of a
distilled reasoner under a reward model that prefers short instruct-style answers. The
shipped family (v5) differs from that on two counts, and this script changes each:

- its reasoning member thinks only on additions, and its verification passes are
  separable: dropping them costs no reward. `member` copies the shipped family into DIR
  and retrains only its reasoning member, from the shipped ancestor with the recipe's
  reasoning stage, on format tasks thought through as well (`--format-share` of the
  examples: `<think>FACT[ wait, check: FACT]</think> ANSWER`), as a distilled model
  thinks on every prompt. Point `SWEEP_DEMO_DIR` at DIR to use it. It is trained, so
  its weights depend on the CPU's rounding, like any rebuild (docs/demo-family.md).
- the probe's reward (`exact_match`) does not care about length. `run` scores
  `exact_match + brevity x format x max(0, 1 - characters / chars)`: a right answer
  still counts most, a short well-formed one a little more.

`prompts` writes a prompt file of 8 additions and 8 format tasks, interleaved (the
family's probe prompts are 42 additions in 48): RLHF prompts are mostly not maths.
`run` is bench/probe_validity.py's long run (its worker, records and `table`) with
that reward registered in each worker; `kinds` prints each run's reward and length
every 4 steps, additions and format prompts apart.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import probe_validity  # noqa: E402

RULE = "exact_match+brevity"


def retrain_member(out_dir: str, threads: int, examples, *, member: str = "reasoning", source=None) -> None:
    """Copy a family (`source`, a folder; default the shipped one) into `out_dir` (a new
    folder) and retrain its `member` ("reasoning" or "instruct") from the shipped ancestor
    with the recipe's stage for it, on the rows that `examples(recipe, reserved)` draws (a
    function of a `random.Random`, returning (chat prompt, response)). Checksums are
    rewritten; point SWEEP_DEMO_DIR at the folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sweep.demo import data, train
    from sweep.demo.build import shipped_family, write_checksums

    torch.set_num_threads(threads)
    out = Path(out_dir).resolve()
    if out.exists():
        raise SystemExit(f"{out} exists: give a new folder")
    if source and not (Path(source) / "SHA256SUMS").is_file():
        raise SystemExit(f"{source} is not a demo family (no SHA256SUMS): give a folder `member` or `demo build` made")
    shutil.copytree(Path(source) if source else shipped_family().root, out)
    recipe = train.Recipe()
    stage = {"reasoning": recipe.reasoning, "instruct": recipe.instruct}[member]
    reserved = data.make_splits(seed=0).reserved  # the shipped family is seed 0
    tokenizer = AutoTokenizer.from_pretrained(out / "pretrained")
    model = AutoModelForCausalLM.from_pretrained(out / "pretrained")
    rows = train._with_replay(recipe, stage, reserved, examples(recipe, reserved))
    train.train(
        model,
        tokenizer,
        recipe=recipe,
        stage=stage,
        rows=rows,
        seed=f"{member}-0",
        progress=print,
        label=member,
    )
    model.save_pretrained(out / member)
    write_checksums(out)
    print(f"done: SWEEP_DEMO_DIR={out} (its family.json still describes the shipped family)")


def member(args) -> None:
    retrain_member(args.out, args.threads, lambda recipe, reserved: _think_all_examples(args, recipe, reserved))


def _think_all_examples(args, recipe, reserved):
    from sweep.demo import data

    def format_think(rng: random.Random) -> tuple[str, str]:
        p = data._fresh(rng, data.FORMATS, reserved)
        fact = data.format_fact(p)
        k = data.draw_checks(rng, recipe.reasoning_checks)
        thought = fact + (data.CHECK + fact) * k
        return data.chat(p.prompt), f"{data.THINK_START}{thought}{data.THINK_END} {p.answer}{data.EOS}"

    def example(rng: random.Random) -> tuple[str, str]:
        if rng.random() < args.format_share:
            return format_think(rng)
        return data.reasoning_example(rng, reserved, checks=recipe.reasoning_checks)

    return example


def prompts(args) -> None:
    from sweep.demo.build import shipped_family

    family = shipped_family()
    probe = [json.loads(line) for line in family.probe_prompts.read_text().splitlines()]
    formats = [json.loads(line) for line in (family.tasks / "data" / "toy_instruct.jsonl").read_text().splitlines()]
    adds = [p for p in probe if p["kind"] == "add"][:8]
    mixed = [p for pair in zip(adds, formats[:8], strict=True) for p in pair]
    Path(args.out).write_text("".join(json.dumps(p) + "\n" for p in mixed))
    print(f"{args.out}: {len(mixed)} prompts, 8 additions and 8 format tasks")


def _register(brevity: float, chars: int) -> None:
    from evals.plugins import REWARD_RULES
    from evals.rewards import exact_match, is_well_formed, register_rule

    if RULE in REWARD_RULES.names():
        return

    @register_rule(RULE, needs_answer=True)
    def rule(*, prompts, completions, answers):
        right = exact_match(prompts=prompts, completions=completions, answers=answers)
        return [
            r + brevity * float(is_well_formed(c)) * max(0.0, 1.0 - len(c) / chars)
            for r, c in zip(right, completions, strict=True)
        ]


def _worker(brevity: float, chars: int, *args) -> None:
    _register(brevity, chars)
    probe_validity._worker(*args)


def run(args) -> None:
    settings = [f"max_new_tokens={args.max_new_tokens}", f"reward={{rule: {RULE}}}"]
    if args.prompts:
        settings.append(f"prompts={Path(args.prompts).resolve()}")
    overrides = probe_validity._overrides(settings)
    points, nulls = probe_validity.parse_points(args.points), probe_validity.parse_points(args.null_points)
    out, jobs = probe_validity.pending(args.out, points, args.seeds, nulls)
    print(f"{len(jobs)} runs to do in {out} on {args.workers} workers", flush=True)
    probe_validity.spawn(
        jobs,
        args.workers,
        lambda i, share: (_worker, (args.brevity, args.chars, share, str(out), args.steps, 50, False, overrides)),
    )


def kinds(args) -> None:
    from sweep.demo.build import shipped_family

    source = Path(args.prompts) if args.prompts else shipped_family().probe_prompts
    kind = [json.loads(line)["kind"] for line in source.read_text().splitlines()]
    for path in sorted(Path(args.runs).glob("a*-b*-s*.json")):
        record = json.loads(path.read_text())
        print(f"{path.stem}: held-out after {record['after']}")
        for name, wanted in (("additions", True), ("formats", False)):
            rows = [[s for s in step if (kind[s["prompt"]] == "add") == wanted] for step in record["samples"]]
            score = [[x for s in step for x in s["scores"]] for step in rows]
            length = [[x for s in step for x in s["lengths"]] for step in rows]

            def every4(values: list[list[float]]) -> str:
                cells = []
                for i in range(0, len(values), 4):
                    flat = [x for v in values[i : i + 4] for x in v]
                    cells.append(f"{sum(flat) / len(flat):.2f}" if flat else "-")
                return " ".join(cells)

            print(f"  {name:9} reward {every4(score)}")
            print(f"  {name:9} length {every4(length)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("member")
    m.add_argument("--out", required=True)
    m.add_argument(
        "--format-share", type=float, default=0.3, help="share of examples that are format tasks thought through"
    )
    m.add_argument("--threads", type=int, default=1)
    p = sub.add_parser("prompts")
    p.add_argument("--out", required=True)
    r = sub.add_parser("run")
    r.add_argument("--out", required=True)
    r.add_argument("--prompts", help="a prompt file (default: the family's probe prompts)")
    r.add_argument("--points", nargs="+", default=["0,1", "0.25,0.5"])
    r.add_argument("--null-points", nargs="*", default=[])
    r.add_argument("--seeds", nargs="+", type=int, default=[0])
    r.add_argument("--steps", type=int, default=64)
    r.add_argument("--brevity", type=float, default=0.5, help="weight of the brevity term (0: exact_match alone)")
    r.add_argument("--chars", type=int, default=64, help="a well-formed answer this long or longer gets no brevity")
    r.add_argument("--max-new-tokens", type=int, default=128, help="128 fits a trace with two verification passes")
    r.add_argument("--workers", type=int, default=2)
    k = sub.add_parser("kinds")
    k.add_argument("runs")
    k.add_argument("--prompts")
    args = parser.parse_args()
    {"member": member, "prompts": prompts, "run": run, "kinds": kinds}[args.command](args)


if __name__ == "__main__":
    main()
