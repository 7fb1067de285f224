"""Does the short probe predict the long RL run? Ground truth on the shipped demo family.

    python bench/probe_validity.py run   [--seeds 0 1 2] [--long-steps 128] [--workers 2] [--out DIR] [--set KEY=VALUE ...]
    python bench/probe_validity.py table [--out DIR] [--probe-steps 4 8 16 32] [--repeats R] [--json]
    python bench/probe_validity.py cross --probe DIR --long DIR [--probe-steps 16]

`run` trains, for each candidate (alpha, beta) and seed, one long RL run with the demo
spec's probe settings (search_spaces/demo.yaml, evals.probe) and `--long-steps` steps,
and, for `--null-points`, the same run at a learning rate of 1e-12 (the null control:
same sampling, same prompts, weights that cannot move). After the last step it scores
the trained policy greedily on the held-out problems of both tasks (the lm-eval tasks'
`exact_match,final`, as the gate measures them). Each run is one JSON file in --out
(per-prompt samples of every step, the KL curve, the held-out scores), so a run that
was interrupted resumes where it stopped and `table` can be recomputed at will.

A probe of N steps is exactly the first N steps of the long run with the same seed (the
prompt order and the sampler's random stream do not depend on the number of steps;
`run` checks this on its first job against `run_probe` itself). So `table` reads the
probe's metrics at each N from the long runs' prefixes, and compares the probe of seed s
with the long runs of the *other* seeds: the probe never sees the run it predicts.

The long run's outcomes (normalized curves, per-prompt against the starting model's
baseline, trailing window of the spec):
- final length: mean normalized length over the last eighth of the run / baseline;
- minimum length: min of the smoothed normalized length / baseline;
- final reward: mean normalized reward over the last eighth - baseline (reward units):
  what the run added (probe/reward_gain stands for it);
- final score: mean normalized reward over the last eighth (probe/reward_final's outcome);
- dip: baseline - min of the smoothed reward (>= 0) and whether (and when) the smoothed
  reward is back at the baseline afterwards;
- held-out accuracy and greedy length after the run.

The table prints, per probe length, Spearman's rank correlation between each probe
metric and the long-run outcome it stands for (per probe seed), and how often the
spec's constraint (probe/length_retention >= 0.5) agrees with "the long run kept at least
half its length".

`cross` reads the probe from one folder's runs and the long runs from another's (say a
probe under one `loss_agg` against long runs under another): per probe seed, Spearman of
each probe metric against the mean outcome of the other seeds' long runs.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path
from statistics import mean, pstdev

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# The demo square (alpha x beta in {0, 0.25, 0.5} x {1, 0.75, 0.5}) and the instruct member:
# both members at beta 1, the stage-1 line, and the stage-2 merges the gate measures.
POINTS = [(a, b) for b in (1.0, 0.75, 0.5) for a in (0.0, 0.25, 0.5)] + [(1.0, 1.0)]
NULL_POINTS = [(0.0, 1.0), (0.25, 0.5), (1.0, 1.0)]
NULL_LR = 1e-12
CONSTRAINT = 0.5  # the demo spec's probe/length_retention >= 0.5
THRESHOLDS = (0.5, 0.6, 0.7, 0.8)  # the verdict's agreement is also tabulated at these


def _name(alpha: float, beta: float, seed: int, null: bool) -> str:
    return f"a{alpha:g}-b{beta:g}-s{seed}" + ("-null" if null else "") + ".json"


def _jobs(points, seeds, null_points) -> list[tuple[float, float, int, bool]]:
    jobs = [(a, b, s, False) for s in seeds for a, b in points]
    jobs += [(a, b, s, True) for s in seeds for a, b in null_points]
    return jobs


def _held_out(family, n: int):
    from sweep.demo.data import Problem

    def problems(task: str):
        lines = (family.tasks / "data" / f"toy_{task}_heldout.jsonl").read_text().splitlines()[:n]
        return [Problem(kind=d["kind"], prompt=d["prompt"], answer=d["answer"]) for d in map(json.loads, lines)]

    return problems("reasoning"), problems("instruct")


def _worker(jobs, out: str, long_steps: int, n_eval: int, check_prefix: bool, overrides: dict) -> None:
    import torch

    torch.set_num_threads(1)
    from evals.probe import ProbeConfig, load_prompts, run_probe
    from evals.probe.backends import get_backend
    from evals.rewards import build_reward
    from sweep.demo.build import active_family
    from sweep.demo.measure import build, load_family_models, score
    from sweep.run.demo_stability import demo_probe_settings

    family = active_family()
    settings = demo_probe_settings(prompts=str(family.probe_prompts), noise_samples=0) | overrides
    prompts = load_prompts(settings["prompts"])
    reasoning, instruct = _held_out(family, n_eval)
    sources, model, tokenizer = load_family_models(family)
    reward = build_reward(rule=settings["reward"]["rule"], model=None)
    backend = get_backend("builtin")
    for alpha, beta, seed, null in jobs:
        path = Path(out) / _name(alpha, beta, seed, null)
        if path.exists():
            continue
        build(model, sources, alpha, beta)
        lr = NULL_LR if null else settings["learning_rate"]
        config = ProbeConfig.from_dict(settings | {"steps": long_steps, "seed": seed, "learning_rate": lr})
        after: dict = {}

        def on_trained(trained, after=after):
            with torch.no_grad():
                for task, problems in (("reasoning", reasoning), ("instruct", instruct)):
                    s = score(trained, tokenizer, problems)
                    after[task] = {"accuracy": s.accuracy, "length": s.mean_length}

        t0 = time.perf_counter()
        run = backend.run(model, tokenizer, config=config, prompts=prompts, reward=reward, on_trained=on_trained)
        wall_s = time.perf_counter() - t0
        record = {
            "alpha": alpha,
            "beta": beta,
            "seed": seed,
            "null": null,
            "learning_rate": lr,
            "steps": long_steps,
            "settings": config.to_dict(),
            "wall_s": wall_s,
            "diverged": run.diverged,
            "stopped_early": run.stopped_early,
            "kl": list(run.curves.kl),
            "updated": list(run.curves.updated),
            "pg_clipfrac": list(run.curves.pg_clipfrac),
            "raw_length": list(run.curves.response_length_mean),
            "raw_score": list(run.curves.score_mean),
            "baseline": [p.to_dict() for p in run.baseline],
            "samples": [[p.to_dict() for p in step] for step in run.steps],
            "after": after,
        }
        if check_prefix and not null:  # the probe of N steps is the long run's prefix
            from evals.probe.baseline import normalized_metrics

            probe = run_probe(
                model, tokenizer, config=ProbeConfig.from_dict(settings | {"seed": seed}), prompts=prompts
            )
            n = probe.metrics.steps
            prefix = normalized_metrics(
                run.baseline, run.steps[:n], kl=run.curves.kl[:n], window=config.window, planned_steps=n
            )
            record["prefix_check"] = {
                "probe": probe.metrics.length_retention,
                "prefix": prefix.length_retention,
                "equal": probe.metrics.length_retention == prefix.length_retention,
            }
            check_prefix = False
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(path)
        print(
            f"{path.name}: {wall_s:.0f} s, held-out reasoning {after.get('reasoning', {}).get('accuracy')}"
            + (f", prefix check {record['prefix_check']}" if "prefix_check" in record else ""),
            flush=True,
        )


def _overrides(pairs: list[str]) -> dict:
    """--set key=value (YAML values) over the demo spec's probe settings; a bad key stops here."""
    import yaml

    from evals.probe import ProbeConfig

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or key not in ProbeConfig.model_fields:
            raise SystemExit(f"--set {pair!r}: expected KEY=VALUE with KEY a probe setting (evals.probe)")
        try:
            out[key] = float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:  # not a number: YAML (true, null, a string); YAML reads 5e-4 as a string
            out[key] = yaml.safe_load(value)
    return out


def parse_points(values: list[str]) -> list[tuple[float, ...]]:
    """`["0,1", "0.25,0.5"]` -> `[(0.0, 1.0), (0.25, 0.5)]`: the --points flags."""
    return [tuple(map(float, p.split(","))) for p in values]


def pending(out: str, points, seeds, null_points) -> tuple[Path, list[tuple[float, float, int, bool]]]:
    """The output folder (made if missing) and the jobs whose record is not in it yet, so an
    interrupted run resumes where it stopped."""
    folder = Path(out).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return folder, [j for j in _jobs(points, seeds, null_points) if not (folder / _name(*j)).exists()]


def window_means(values: list[float], n: int) -> str:
    """Means of consecutive windows of `n` values, two decimals, space-separated."""
    return " ".join(f"{mean(values[i : i + n]):.2f}" for i in range(0, len(values), n))


def run(args) -> None:
    points = parse_points(args.points) if args.points is not None else POINTS
    null_points = parse_points(args.null_points) if args.null_points is not None else NULL_POINTS
    overrides = _overrides(args.set)
    out, jobs = pending(args.out, points, args.seeds, null_points)
    print(f"{len(jobs)} runs to do in {out} on {args.workers} workers", flush=True)
    spawn(
        jobs,
        args.workers,
        lambda i, share: (_worker, (share, str(out), args.long_steps, args.n_eval, i == 0, overrides)),
    )


def spawn(jobs: list, workers: int, process) -> None:
    """Deal `jobs` round-robin to `workers` spawned processes and wait for them all;
    `process(i, share)` gives worker i's (target, args). Exits when a worker failed."""
    ctx = multiprocessing.get_context("spawn")
    procs = []
    for i in range(workers):
        if share := jobs[i::workers]:
            target, target_args = process(i, share)
            procs.append(ctx.Process(target=target, args=target_args))
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    failed = [p.exitcode for p in procs if p.exitcode]
    if failed:
        raise SystemExit(f"a worker failed (exit codes {failed})")


# --- the table -------------------------------------------------------------------------


def _samples(record):
    from evals.probe import PromptSamples

    baseline = [PromptSamples.from_dict(p) for p in record["baseline"]]
    steps = [tuple(PromptSamples.from_dict(p) for p in step) for step in record["samples"]]
    return baseline, steps


def long_outcome(record, window: int, replicates: int = 0) -> dict:
    """The long run's outcomes (sweep.run.longrun.long_outcome; its reward shape against the
    simulated null with `replicates`) and its held-out scores."""
    from sweep.run.longrun import long_outcome as outcome

    baseline, steps = _samples(record)
    after = record["after"]
    return outcome(baseline, steps, window=window, replicates=replicates) | {
        "heldout_reasoning": after.get("reasoning", {}).get("accuracy"),
        "heldout_instruct": after.get("instruct", {}).get("accuracy"),
        "heldout_length": after.get("reasoning", {}).get("length"),
    }


def probe_metrics(record, steps: int, window: int) -> dict:
    """The probe's metrics at `steps` steps: the long run's prefix, scored as run_probe scores it."""
    from evals.probe.baseline import normalized_metrics

    baseline, samples = _samples(record)
    m = normalized_metrics(baseline, samples[:steps], kl=record["kl"][:steps], window=window, planned_steps=steps)
    return {
        "length_retention": m.length_retention,
        "length_growth": m.length_growth,
        "reward_dip": m.reward_dip,
        "reward_final": m.reward_final,
        "reward_gain": m.reward_gain,
    }


def load(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("a*-b*-s*.json"))]


# probe metric -> (long-run outcome it stands for, sign: +1 when a higher metric means a higher outcome)
PAIRS = {
    "length_retention": ("final_length", +1),
    "length_growth": ("final_length", +1),
    "reward_dip": ("dip", +1),
    "reward_final": ("final_score", +1),
    "reward_gain": ("final_reward", +1),
}


def against_other_seeds(
    probe_of, outcomes: dict, *, points, probe_seeds, seeds, metric: str, outcome: str
) -> tuple[list[float], list[float]]:
    """Per probe seed s: Spearman of the probe's `metric` (`probe_of(a, b, s)`: its metrics,
    None without that run) against the mean `outcome` of the long runs of the other `seeds`,
    and for length_retention how often the spec's verdict agrees with theirs."""
    from sweep.report.calibration import spearman

    rhos, agreements = [], []
    for s in probe_seeds:
        others = [t for t in seeds if t != s] or [s]
        xs, ys, agree = [], [], []
        for a, b in points:
            read = probe_of(a, b, s)
            truth = [outcomes[(a, b, t)][outcome] for t in others if (a, b, t) in outcomes]
            if read is None or read[metric] is None or not truth:
                continue
            xs.append(read[metric])
            ys.append(mean(truth))
            if metric == "length_retention":
                agree.append((read[metric] >= CONSTRAINT) == (mean(truth) >= CONSTRAINT))
        rhos.append(spearman(xs, ys))
        if agree:
            agreements.append(sum(agree) / len(agree))
    return rhos, agreements


def table(args) -> dict:
    from sweep.report.calibration import spearman

    out = Path(args.out).resolve()
    records = load(out)
    trained = [r for r in records if not r["null"]]
    nulls = [r for r in records if r["null"]]
    if not trained:
        raise SystemExit(f"no runs in {out}; run `python bench/probe_validity.py run` first")
    window = trained[0]["settings"]["window"]
    points = sorted({(r["alpha"], r["beta"]) for r in trained}, key=lambda p: (-p[1], p[0]))
    seeds = sorted({r["seed"] for r in trained})
    reps = args.shape_replicates

    def read(runs: list[dict], done: int) -> dict:
        out = {}
        for i, r in enumerate(runs, done + 1):
            out[(r["alpha"], r["beta"], r["seed"])] = long_outcome(r, window, reps)
            if reps >= 2 and i % 10 == 0:  # ~2.7 s a 128-step run: say where it is
                print(f"reward shapes: {i}/{len(records)} runs read", file=sys.stderr, flush=True)
        return out

    outcomes = read(trained, 0)
    null_outcomes = read(nulls, len(trained))
    by_key = {(r["alpha"], r["beta"], r["seed"]): r for r in trained}
    scored: dict = {}

    def probe_at(record, n: int) -> dict:
        """probe_metrics of one run's first n steps, computed once: every table below reads them."""
        key = (record["alpha"], record["beta"], record["seed"], record["null"], n)
        if key not in scored:
            scored[key] = probe_metrics(record, n, window)
        return scored[key]

    long_steps = trained[0]["steps"]
    lines = [f"## Long runs ({long_steps} steps, seeds {seeds}): outcome mean ± sd over seeds\n"]
    header = "| alpha | beta | final length | min length | final reward | dip | recovered | held-out add acc | held-out fmt acc | held-out length |"
    lines += [header, "|" + "---:|" * (header.count("|") - 1)]

    def ms(values):
        values = [v for v in values if v is not None]
        return f"{mean(values):.2f} ± {pstdev(values):.2f}" if values else "n/a"

    for a, b in points:
        o = [outcomes[(a, b, s)] for s in seeds if (a, b, s) in outcomes]
        recovered = sum(1 for x in o if x["dip"] > 0 and x["recovery_step"] is not None)
        lines.append(
            f"| {a:g} | {b:g} | {ms([x['final_length'] for x in o])} | {ms([x['min_length'] for x in o])} "
            f"| {ms([x['final_reward'] for x in o])} | {ms([x['dip'] for x in o])} | {recovered}/{len(o)} "
            f"| {ms([x['heldout_reasoning'] for x in o])} | {ms([x['heldout_instruct'] for x in o])} "
            f"| {ms([x['heldout_length'] for x in o])} |"
        )
    if null_outcomes:
        lines += ["", "Null controls (learning rate 1e-12), same outcomes:", "", header, lines[2]]
        for a, b in sorted({(k[0], k[1]) for k in null_outcomes}, key=lambda p: (-p[1], p[0])):
            o = [v for k, v in null_outcomes.items() if (k[0], k[1]) == (a, b)]
            lines.append(
                f"| {a:g} | {b:g} | {ms([x['final_length'] for x in o])} | {ms([x['min_length'] for x in o])} "
                f"| {ms([x['final_reward'] for x in o])} | {ms([x['dip'] for x in o])} | - "
                f"| {ms([x['heldout_reasoning'] for x in o])} | {ms([x['heldout_instruct'] for x in o])} "
                f"| {ms([x['heldout_length'] for x in o])} |"
            )

    if reps >= 2:  # the reward's shape against the null simulated from each run's own baseline
        from sweep.report.calibration import dip_threshold, fmt_value
        from sweep.run.longrun import SHAPES

        lines += ["", "Reward shape against the simulated null (sweep.run.longrun.reward_shape), runs per shape:", ""]
        lines += ["| alpha | beta | runs | hockey stick | fell | no dip | dip beyond the null (each run) |"]
        lines += ["|---:|---:|---|---:|---:|---:|---|"]
        for kind, table_of in (("", outcomes), (" (null)", null_outcomes)):
            for a, b in sorted({(k[0], k[1]) for k in table_of}, key=lambda p: (-p[1], p[0])):
                o = [v for k, v in sorted(table_of.items()) if (k[0], k[1]) == (a, b)]
                counts = [sum(x["reward_shape"] == shape for x in o) for shape in SHAPES]
                beyond = " ".join(f"{x['dip']:.2f}/{fmt_value(dip_threshold(x))}" for x in o)
                lines.append(f"| {a:g} | {b:g} | {len(o)}{kind} | {' | '.join(map(str, counts))} | {beyond} |")

    # predictive power: probe of seed s (prefix) against the long runs of the other seeds
    summary: dict = {"long_steps": long_steps, "seeds": seeds, "points": points, "by_steps": {}}
    lines += ["", "## Predictive power: probe at N steps (seed s) against the long runs of the other seeds", ""]
    lines += [
        "| probe steps | metric | long-run outcome | Spearman per probe seed | min | feasibility agreement per seed |",
        "|---:|---|---|---|---:|---|",
    ]
    for n in args.probe_steps:
        per_metric = {}
        for metric, (outcome, _sign) in PAIRS.items():
            rhos, agreements = against_other_seeds(
                lambda a, b, s, n=n: probe_at(by_key[(a, b, s)], n) if (a, b, s) in by_key else None,
                outcomes,
                points=points,
                probe_seeds=seeds,
                seeds=seeds,
                metric=metric,
                outcome=outcome,
            )
            per_metric[metric] = {"spearman": rhos, "agreement": agreements}
            agreement = " ".join(f"{x:.0%}" for x in agreements) if agreements else "-"
            lines.append(
                f"| {n} | {metric} | {outcome} | {' '.join(f'{r:.2f}' for r in rhos)} | {min(rhos):.2f} | {agreement} |"
            )
        summary["by_steps"][n] = per_metric

    # the RL-free control: does the starting reward alone (0 steps: a low start leaves more to
    # gain) rank the long runs' gains? If it did, the probe's steps would add nothing.
    from evals.probe.baseline import Baseline

    rhos = []
    for s in seeds:
        others = [t for t in seeds if t != s] or [s]
        keys = [(a, b) for a, b in points if (a, b, s) in by_key]
        xs = [-Baseline(_samples(by_key[(a, b, s)])[0]).pool_score for a, b in keys]
        ys = [mean(outcomes[(a, b, t)]["final_reward"] for t in others if (a, b, t) in outcomes) for a, b in keys]
        rhos.append(spearman(xs, ys))
    summary["control_baseline"] = rhos
    lines.append(
        f"| 0 | -(baseline reward) (control) | final_reward | {' '.join(f'{r:.2f}' for r in rhos)} | {min(rhos):.2f} | - |"
    )

    # several probe seeds per candidate (as budget.repeats would run them): the mean of the
    # probe over a group of R seeds against the mean long run of the seeds outside the group
    if args.repeats > 1 and len(seeds) >= 2 * args.repeats:
        r = args.repeats
        groups = [seeds[i : i + r] for i in range(0, len(seeds) - r + 1, r)]
        lines += ["", f"## The probe averaged over {r} seeds against the long runs of the other seeds", ""]
        lines += [
            "| probe steps | metric | long-run outcome | Spearman per seed group | min |",
            "|---:|---|---|---|---:|",
        ]
        summary["repeats"] = {"r": r, "groups": groups, "by_steps": {}}
        for n in args.probe_steps:
            for metric, (outcome, _sign) in PAIRS.items():
                rhos = []
                for group in groups:
                    others = [t for t in seeds if t not in group]
                    xs, ys = [], []
                    for a, b in points:
                        probes = [probe_at(by_key[(a, b, s)], n)[metric] for s in group if (a, b, s) in by_key]
                        truth = [outcomes[(a, b, t)][outcome] for t in others if (a, b, t) in outcomes]
                        probes = [p for p in probes if p is not None]
                        if probes and truth:
                            xs.append(mean(probes))
                            ys.append(mean(truth))
                    rhos.append(spearman(xs, ys))
                summary["repeats"]["by_steps"][f"{n}/{metric}"] = rhos
                lines.append(f"| {n} | {metric} | {outcome} | {' '.join(f'{x:.2f}' for x in rhos)} | {min(rhos):.2f} |")

    # the verdict at other thresholds: on this family no long run keeps less than half its
    # length, so 0.5 mostly agrees on "feasible"; stricter gates split the candidates
    lines += ["", "## Feasibility at other thresholds: probe/length_retention >= x against final length >= x", ""]
    lines += ["| probe steps | x | long runs below x | agreement per probe seed | min |", "|---:|---:|---:|---|---:|"]
    summary["thresholds"] = {}
    for n in args.probe_steps:
        for x in THRESHOLDS:
            below = sum(1 for k in outcomes if outcomes[k]["final_length"] < x)
            rates = []
            for s in seeds:
                others = [t for t in seeds if t != s] or [s]
                agree = []
                for a, b in points:
                    truth = [outcomes[(a, b, t)]["final_length"] for t in others if (a, b, t) in outcomes]
                    p = probe_at(by_key[(a, b, s)], n)["length_retention"] if (a, b, s) in by_key else None
                    if p is not None and truth:
                        agree.append((p >= x) == (mean(truth) >= x))
                rates.append(sum(agree) / len(agree))
            summary["thresholds"][f"{n}/{x}"] = rates
            lines.append(
                f"| {n} | {x:g} | {below}/{len(outcomes)} | {' '.join(f'{r:.0%}' for r in rates)} | {min(rates):.0%} |"
            )

    # the probe's own noise: each candidate's probe metrics across seeds, trained and null
    steer = args.probe_steps[len(args.probe_steps) // 2] if 16 not in args.probe_steps else 16
    names = list(PAIRS)
    lines += ["", f"## The probe at {steer} steps per candidate: mean ± sd over seeds (null: learning rate 1e-12)", ""]
    lines += ["| alpha | beta | runs | " + " | ".join(names) + " |", "|---:|---:|---|" + "---:|" * len(names)]
    null_by_point: dict = {}
    for r in nulls:
        null_by_point.setdefault((r["alpha"], r["beta"]), []).append(r)
    for a, b in points:
        groups = [("trained", [by_key[(a, b, s)] for s in seeds if (a, b, s) in by_key])]
        groups += [("null", null_by_point[(a, b)])] if (a, b) in null_by_point else []
        for kind, runs in groups:
            ms_ = [probe_at(r, steer) for r in runs]
            cells = " | ".join(ms([m[n] for m in ms_]) for n in names)
            lines.append(f"| {a:g} | {b:g} | {kind} ({len(runs)}) | {cells} |")

    # the ceiling: how well one long run ranks the candidates as the other seeds' runs do
    lines += ["", "## The ground truth's own noise: long run of seed s against the long runs of the other seeds", ""]
    lines += ["| long-run outcome | Spearman per seed | min |", "|---|---|---:|"]
    summary["ceiling"] = {}
    for outcome in ("final_length", "min_length", "final_reward", "final_score", "dip"):
        rhos = []
        for s in seeds:
            others = [t for t in seeds if t != s]
            keys = [(a, b) for a, b in points if (a, b, s) in outcomes and others]
            xs = [outcomes[(a, b, s)][outcome] for a, b in keys]
            ys = [mean(outcomes[(a, b, t)][outcome] for t in others if (a, b, t) in outcomes) for a, b in keys]
            rhos.append(spearman(xs, ys))
        summary["ceiling"][outcome] = rhos
        lines.append(f"| {outcome} | {' '.join(f'{r:.2f}' for r in rhos)} | {min(rhos):.2f} |")

    # the same run: does a probe's prefix rank the candidates as the run it starts ends?
    lines += ["", "## Same seed: the probe (the run's first N steps) against the end of that run", ""]
    lines += ["| probe steps | metric | long-run outcome | Spearman per seed | min |", "|---:|---|---|---|---:|"]
    summary["same_seed"] = {}
    for n in args.probe_steps:
        for metric, (outcome, _sign) in PAIRS.items():
            rhos = []
            for s in seeds:
                keys = [(a, b) for a, b in points if (a, b, s) in by_key]
                xs = [probe_at(by_key[(a, b, s)], n)[metric] for a, b in keys]
                ys = [outcomes[(a, b, s)][outcome] for a, b in keys]
                pairs = [(x, y) for x, y in zip(xs, ys, strict=True) if x is not None and y is not None]
                rhos.append(spearman([x for x, _ in pairs], [y for _, y in pairs]))
            summary["same_seed"][f"{n}/{metric}"] = rhos
            lines.append(f"| {n} | {metric} | {outcome} | {' '.join(f'{r:.2f}' for r in rhos)} | {min(rhos):.2f} |")
    text = "\n".join(lines)
    print(text)
    if args.json:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def cross(args) -> dict:
    """The probe from `args.probe`'s runs against the long runs of `args.long` (the
    candidates and seeds both have), as `table` pairs them: the probe of seed s against
    the mean outcome of the other seeds' long runs."""

    def runs(folder: str) -> dict:
        return {(r["alpha"], r["beta"], r["seed"]): r for r in load(Path(folder).resolve()) if not r["null"]}

    probes, longs = runs(args.probe), runs(args.long)
    if not probes or not longs:
        raise SystemExit(f"no runs in {args.probe if not probes else args.long}")
    window = next(iter(longs.values()))["settings"]["window"]
    seeds = sorted({s for *_, s in longs})
    points = sorted({(a, b) for a, b, _ in longs}, key=lambda p: (-p[1], p[0]))
    outcomes = {k: long_outcome(r, window) for k, r in longs.items()}
    # the seeds the probe folder has for at least 3 of the long runs' candidates
    probe_seeds = [s for s in seeds if sum((a, b, s) in probes for a, b in points) >= 3]
    rhos: dict = {}
    print(
        "| probe steps | metric | long-run outcome | Spearman per probe seed | min | feasibility agreement per seed |\n"
        "|---:|---|---|---|---:|---|"
    )
    for n in args.probe_steps:
        for metric, (outcome, _sign) in PAIRS.items():
            row, agreements = against_other_seeds(
                lambda a, b, s, n=n: probe_metrics(probes[(a, b, s)], n, window) if (a, b, s) in probes else None,
                outcomes,
                points=points,
                probe_seeds=probe_seeds,
                seeds=seeds,
                metric=metric,
                outcome=outcome,
            )
            rhos[f"{n}/{metric}"] = row
            agreement = " ".join(f"{x:.0%}" for x in agreements) if agreements else "-"
            if row:
                print(
                    f"| {n} | {metric} | {outcome} | {' '.join(f'{r:.2f}' for r in row)} | {min(row):.2f} | {agreement} |"
                )
    return rhos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument(
        "--points", nargs="*", help="alpha,beta pairs (default: the 3x3 square and instruct; none: only the null runs)"
    )
    r.add_argument(
        "--null-points", nargs="*", help="alpha,beta pairs that also get a null run (none: --null-points with no value)"
    )
    r.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    r.add_argument("--long-steps", type=int, default=128)
    r.add_argument("--workers", type=int, default=2)
    r.add_argument("--n-eval", type=int, default=50)
    r.add_argument("--out", default=str(ROOT / "results" / "probe-validity"))
    r.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="override a probe setting of the demo spec, e.g. learning_rate=5e-4 (use its own --out)",
    )
    t = sub.add_parser("table")
    t.add_argument("--out", default=str(ROOT / "results" / "probe-validity"))
    t.add_argument("--probe-steps", nargs="+", type=int, default=[4, 8, 16, 32])
    t.add_argument("--repeats", type=int, default=1, help="also average the probe over groups of this many seeds")
    t.add_argument(
        "--shape-replicates",
        type=int,
        default=200,
        help="simulated null runs per long run for the reward-shape table (0: leave the table out; ~2 s a run)",
    )
    t.add_argument("--json", action="store_true")
    c = sub.add_parser("cross")
    c.add_argument("--probe", required=True, help="folder whose runs' first N steps are the probe")
    c.add_argument("--long", required=True, help="folder whose runs are the long runs")
    c.add_argument("--probe-steps", nargs="+", type=int, default=[16])
    args = parser.parse_args()
    if args.command == "cross":
        cross(args)
    elif args.command == "run":
        t0 = time.perf_counter()
        run(args)
        print(f"done in {time.perf_counter() - t0:.0f} s")
    else:
        table(args)


if __name__ == "__main__":
    main()
