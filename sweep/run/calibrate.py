"""Calibration: does the short probe rank a study's candidates as long RL runs do?

The sweep steers on probe metrics measured in a few RL steps. `calibrate` takes a
handful of a finished study's candidates (the front's extremes, the balanced point and
the complete trials with the lowest and highest steering metric, or the trials named),
runs the same RL from each for `long_steps` steps (8x the probe by default) on seeds the
probe did not use, and compares the probe's recorded metrics with what the long runs
did. The long runs go to Ray workers with a trial's resources (`budget.concurrent` at a
time, each building its candidates in place as a trial does, and sampling as the trial's
probe does: through vLLM with generator vllm). Every finished run is appended to
<study_dir>/calibration-runs.jsonl, so a stopped calibration goes on where it stopped. The
result is kept in <study_dir>/calibration.json, and `sweep report` shows it.

The long run's outcomes come from its curves, normalized per prompt against the
starting model's baseline (evals.probe.baseline), with the probe's trailing window:
- final_length: mean normalized length over the last eighth of the run / baseline;
- min_length: min of the smoothed normalized length / baseline;
- final_reward: mean normalized reward over the last eighth - baseline (reward units):
  what the run added, the outcome probe/reward_gain stands for;
- final_score: mean normalized reward over the last eighth (probe/reward_final's outcome);
- dip: baseline reward - min of the smoothed reward (>= 0), and recovery_step: the
  first step after the minimum where the smoothed reward is back at the baseline.
- reward_shape and fall (with `replicates`): the dip held against its null, the dip a run that
  never left its starting model reads with the same prompts and draws
  (evals.probe.baseline.null_reward, 99th percentile) and against twice its own
  bootstrap half-width (the floor where the null cannot vary: a candidate at its ceiling).
  "hockey stick": beyond both, and the smoothed reward later comes back to where a
  no-learning run's points lie 95% of the time (back_step); "fell": beyond both and never
  back; "no dip": within them.
  A long run of the paper's reasoning member is the first kind; one a user would stop is
  the second. low_step is the step of the minimum.

Each steering probe metric stands for one outcome (OUTCOMES): retention and growth for
the final length, the dip for the long run's dip, the gain for the reward the run added,
the final reward for the final score. A metric an objective uses is judged by its rank
agreement (Spearman); one used only in a constraint by its verdicts' agreement.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from evals.metric_names import NOISE_SUFFIX
from sweep.errors import SweepError
from sweep.report.calibration import (
    MIN_CANDIDATES,
    OUTCOMES,
    Calibration,
    Candidate,
    describe_reward,
    fmt_value,
    steering_metrics,
    summarize_calibration,
)
from sweep.run.progress import duration

SHAPE_REPLICATES = 200  # simulated null runs and bootstrap replicates per long run (~2.7 s at 128 steps)
SHAPES = ("hockey stick", "fell", "no dip")


def long_outcome(
    baseline: Sequence[Any], steps: Sequence[Sequence[Any]], *, window: int, replicates: int = 0
) -> dict[str, Any]:
    """A long run's outcomes from its per-prompt samples (PromptSamples); see the module doc.
    With `replicates` (>= 2) also the reward's shape against its simulated null."""
    from evals.probe.baseline import Baseline, bootstrap_noise, normalized_curves, null_reward
    from evals.stability import moving_average

    if not baseline or not steps:
        raise SweepError("a long run's outcome needs its baseline and at least one step")
    base = Baseline(baseline)
    length, score, _ = normalized_curves(baseline, steps)
    tail = max(1, len(length) // 8)
    start = min(window, len(length)) - 1  # full windows only, as the probe's metrics read them
    smooth_length = moving_average(length, window)[start:]
    smooth_score = moving_average(score, window)[start:]
    dip = max(0.0, base.pool_score - min(smooth_score))
    recovery = None
    if dip > 0:
        low = smooth_score.index(min(smooth_score))
        recovery = next(
            (start + t for t in range(low + 1, len(smooth_score)) if smooth_score[t] >= base.pool_score), None
        )
    out = {
        "final_length": mean(length[-tail:]) / base.pool_length if base.pool_length > 0 else None,
        "min_length": min(smooth_length) / base.pool_length if base.pool_length > 0 else None,
        "final_reward": mean(score[-tail:]) - base.pool_score,
        "final_score": mean(score[-tail:]),
        "dip": dip,
        "recovery_step": recovery,
        "steps": len(length),
    }
    if replicates >= 2:
        null = null_reward(baseline, steps, window=window, replicates=replicates)
        noise, _ = bootstrap_noise(baseline, steps, window=window, planned_steps=len(steps), replicates=replicates)
        out |= reward_shape(smooth_score, base.pool_score, start=start, null=null, noise=noise.get("reward_dip"))
    return out


def reward_shape(
    smooth_score: Sequence[float],
    baseline: float,
    *,
    start: int,
    null: tuple[float, float] | None,
    noise: float | None,
) -> dict[str, Any]:
    """The smoothed reward's shape against its null (see the module doc): reward_shape,
    dip_null (the simulated null's dip), dip_noise (the dip's bootstrap half-width), fall
    (the dip beyond both: probe/reward_fall's outcome), low_step and back_step (None when
    it never came back, or did not dip beyond)."""
    from evals.probe.baseline import reward_fall

    low = min(range(len(smooth_score)), key=smooth_score.__getitem__)
    dip = max(0.0, baseline - smooth_score[low])
    out: dict[str, Any] = {"dip_noise": noise, "low_step": start + low, "back_step": None}
    if null is None:
        return out | {"dip_null": None, "fall": None, "reward_shape": None}
    null_dip, null_point = null
    fall = reward_fall(dip, null_dip, noise)
    out |= {"dip_null": null_dip, "fall": fall}
    if fall == 0:
        return out | {"reward_shape": "no dip"}
    back = next((t for t in range(low + 1, len(smooth_score)) if smooth_score[t] >= baseline - null_point), None)
    if back is None:
        return out | {"reward_shape": "fell"}
    return out | {"reward_shape": "hockey stick", "back_step": start + back}


SPREAD = (0.5, 0.25, 0.75, 0.125, 0.375, 0.625, 0.875)  # where, between lowest and highest, to pick


def _spread(picks: dict[int, str], complete: Any, metric: str, limit: int) -> None:
    """Add to `picks` the trials that span `metric`: its lowest and highest, then the trial
    nearest each value evenly between, skipping one within the noise band (probe/<name>_noise,
    when recorded) of a trial already picked: candidates the probe cannot tell apart add
    noise to the rank correlation, not information. Such trials only fill up to
    MIN_CANDIDATES, nearest the spread values first."""
    if metric not in complete:
        return
    values = complete[metric].astype(float)
    noise_column = f"{metric}{NOISE_SUFFIX}"
    noise = complete[noise_column].astype(float).fillna(0.0) if noise_column in complete else values * 0.0
    rows = [(int(n), v, w) for n, v, w in zip(complete["number"], values, noise, strict=True) if math.isfinite(v)]
    if not rows:
        return
    by_number = {n: (v, w) for n, v, w in rows}
    rows.sort(key=lambda r: r[1])
    low, high = rows[0][1], rows[-1][1]

    def distinct(n: int) -> bool:
        v, w = by_number[n]
        return all(abs(v - by_number[p][0]) > max(w, by_number[p][1]) for p in picks if p in by_number)

    picks.setdefault(rows[0][0], f"lowest {metric}")
    picks.setdefault(rows[-1][0], f"highest {metric}")

    def nearest(q: float) -> list[int]:
        target = low + q * (high - low)
        return [n for _, n in sorted((abs(v - target), n) for n, v, _ in rows if n not in picks)]

    for q in SPREAD:
        if len(picks) >= limit:
            return
        chosen = next((n for n in nearest(q) if distinct(n)), None)
        if chosen is not None:
            picks[chosen] = f"spread on {metric}"
    # too few the probe can tell apart: fill up to MIN_CANDIDATES, nearest the spread values
    while len(picks) < min(limit, MIN_CANDIDATES, len(rows)):
        for q in SPREAD:
            if len(picks) >= min(limit, MIN_CANDIDATES) or not (left := nearest(q)):
                break
            picks[left[0]] = f"spread on {metric} (within the noise of a trial already picked)"


def choose_trials(
    spec: Any, trials: Any, *, numbers: Sequence[int] | None = None, limit: int = 6
) -> list[tuple[int, str]]:
    """(trial number, why) of the candidates to calibrate on. Raises SweepError on bad input."""
    from sweep.report.summary import summarize_spec

    complete = trials[trials["state"] == "COMPLETE"]
    if numbers:
        known = set(int(n) for n in trials["number"])
        done = set(int(n) for n in complete["number"])
        problems = [f"trial {n}: no such trial" for n in numbers if n not in known]
        problems += [f"trial {n}: not COMPLETE" for n in numbers if n in known and n not in done]
        if problems:
            raise SweepError("--trials: " + "; ".join(problems))
        return [(int(n), "--trials") for n in dict.fromkeys(numbers)]
    if complete.empty:
        raise SweepError("the study has no complete trial: nothing to calibrate on (run the sweep first)")
    picks: dict[int, str] = {}
    summary = summarize_spec(trials, spec)
    front = trials[trials["number"].isin(summary.front_numbers)]
    for objective in spec.objectives:
        if not front.empty and objective.metric in front:
            values = front[objective.metric].astype(float)
            best = values.idxmax() if objective.direction == "maximize" else values.idxmin()
            picks.setdefault(int(front.loc[best, "number"]), f"front: best {objective.metric}")
    if summary.balanced is not None:
        picks.setdefault(summary.balanced.number, "balanced")
    steering = steering_metrics(spec)
    if steering:
        _spread(picks, complete, f"probe/{steering[0]}", limit)
    return list(picks.items())[:limit] if len(picks) > limit else list(picks.items())


RUNS_FILE = "calibration-runs.jsonl"  # one finished long run per line, kept across calibrations
# what a long run sets in the probe's config: its steps and seed, no early stop, no noise band
LONG_RUN_SETS: dict[str, Any] = {"steps": None, "seed": None, "collapse_threshold": None, "noise_samples": 0}
HEARTBEAT_S = 600.0  # a "still running" line when no long run has finished for this long


def long_run_at(spec: Any, params: dict[str, float], seed: int, long_steps: int) -> dict[str, Any]:
    """On a worker: the candidate at `params` built in place, the probe's RL run from it for
    `long_steps` steps at `seed` (sampling as the trial's probe does: the vLLM engine with
    generator vllm), and its outcome (long_outcome, with the reward's shape)."""
    from sweep.run.pool import report_progress
    from sweep.run.trial import build_candidate, probe_on_worker, worker_state

    state = worker_state(spec)  # cached per worker: the sources, the live model, the prompts, the engine
    if state.probe_config is None:
        raise SweepError("the spec has no evals.probe section: there is no RL to run")
    build_candidate(spec, params, model=state.model, sources=state.sources)
    config = state.probe_config.model_copy(update=LONG_RUN_SETS | {"steps": long_steps, "seed": seed})
    t0 = time.perf_counter()
    run = probe_on_worker(state, config, on_step=report_progress)  # the heartbeat shows the step
    if run.diverged:
        outcome = dict.fromkeys(("final_reward", "final_score", "dip", "recovery_step"))
        outcome |= {"final_length": 0.0, "min_length": 0.0, "steps": run.curves.steps, "diverged": True}
        outcome |= {"reward_shape": "diverged"}
    else:
        outcome = long_outcome(run.baseline, run.steps, window=config.window, replicates=SHAPE_REPLICATES)
    return outcome | {"seed": seed, "wall_s": round(time.perf_counter() - t0, 3)}


def run_key(spec: Any, params: dict[str, float], seed: int, long_steps: int) -> str:
    """What a recorded long run must match to be reused: the candidate (its models, merge
    and params), the probe's settings that the long run uses (not the probe's own steps,
    seed, stopping rule or noise replicates: long_run_at sets those), the seed and the steps."""
    probe = spec.evals.probe.model_dump(mode="json", exclude=set(LONG_RUN_SETS))
    relevant = spec.model_dump(mode="json", include={"models", "merge"})
    relevant |= {"probe": probe, "params": params, "seed": seed}
    relevant |= {"long_steps": long_steps}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def recorded_runs(study_dir: Path) -> dict[str, dict[str, Any]]:
    """The long runs calibration-runs.jsonl holds, by run_key (a line cut short by a crash is skipped)."""
    path = Path(study_dir) / RUNS_FILE
    runs: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                runs[record["key"]] = record["outcome"]
            except (ValueError, KeyError, TypeError):
                continue
    return runs


def calibrate(
    spec: Any,
    trials: Any,
    chosen: Sequence[tuple[int, str]],
    *,
    long_steps: int | None = None,
    seeds: Sequence[int] | None = None,
    say: Callable[[str], None] = print,
    run_fn: Callable[..., dict[str, Any]] | None = None,
    address: str | None = None,
    heartbeat_s: float = HEARTBEAT_S,
    timeout_s: float | None = None,
) -> Calibration:
    """Run the long RL from each chosen candidate and compare with the probe's metrics.

    The long runs go to Ray workers with a trial's resources, `budget.concurrent` at a
    time (sweep.run.pool, on the Ray at `address`, started only when a run is left to
    do). Each finished run is appended to <study_dir>/calibration-runs.jsonl at once, and
    a run recorded there with the same candidate, probe settings, seed and steps is
    reused, not run again: a calibration stopped part-way goes on where it stopped. When
    none finishes for `heartbeat_s`, a "still running" line names the runs in flight and
    how long each has run. A run past `timeout_s` (default: long_run_timeout) is stopped,
    its worker with it. A run that fails is a SweepError (exit 1) after the others have
    finished and been recorded."""
    if spec.evals.probe is None:
        raise SweepError("the study's spec has no evals.probe section: there is no probe to calibrate")
    steering = steering_metrics(spec)
    if not steering:
        raise SweepError(
            "no objective or constraint of the study uses a probe metric that calibrate can check "
            f"(probe/{', probe/'.join(OUTCOMES)})"
        )

    from evals.probe import ProbeConfig
    from evals.probe.backends import check_reference_support, get_backend
    from sweep.study.fingerprint import trial_spec
    from sweep.study.table import finite_number, trial_params

    config = ProbeConfig.from_dict(spec.evals.probe.model_dump())
    long_steps = long_steps or 8 * config.steps
    if long_steps < config.steps:
        raise SweepError(f"--long-steps {long_steps} is shorter than the probe's {config.steps} steps")
    if config.baseline_samples == 0:
        raise SweepError(
            "evals.probe.baseline_samples is 0: calibrate reads each long run against the starting model's "
            "per-prompt baseline; set it to 2 or more (the default is 4)"
        )
    seeds = list(seeds) if seeds else [config.seed + 1]  # not the probe's seed: the long run is another run
    check_reference_support(get_backend(config.backend), config)  # before any model loads
    started = time.perf_counter()
    candidates = []
    for number, why in chosen:
        row = trials[trials["number"] == number].iloc[0]
        probe = {m: finite_number(row.get(f"probe/{m}")) for m in steering}
        noise = {m: finite_number(row.get(f"probe/{m}{NOISE_SUFFIX}")) for m in steering}
        feasible = bool(row["feasible"]) if "feasible" in row and row["feasible"] is not None else None
        params = {k: float(v) for k, v in trial_params(row).items()}
        candidates.append(Candidate(number=number, params=params, why=why, probe=probe, feasible=feasible, noise=noise))
    specs = {c.number: trial_spec(spec, trials, c.number) for c in candidates}
    runs: dict[tuple[int, int], dict[str, Any]] = {}
    recorded = recorded_runs(spec.study_dir)
    jobs = []
    for c in candidates:
        for seed in seeds:
            key = run_key(specs[c.number], c.params, seed, long_steps)
            if key in recorded:
                runs[c.number, seed] = recorded[key]
            else:
                jobs.append((c.number, seed, key))
    total = len(candidates) * len(seeds)
    if runs:
        say(f"reusing {len(runs)} of the {total} long runs, recorded in {spec.study_dir / RUNS_FILE}")
    by_number = {c.number: c for c in candidates}
    failed, reused = [], len(runs)
    timeout_s = timeout_s or long_run_timeout(spec, long_steps)
    run = (long_steps, run_fn or long_run_at, run_fn is None, timeout_s)  # a run_fn of one's own: no warm-up
    pooled = _pooled(spec, specs, by_number, jobs, run, address, say, heartbeat_s)
    for (number, seed, key), outcome, error in pooled:
        c = by_number[number]
        if error is not None:
            failed.append(f"trial {number} seed {seed}: {error}")
            say(f"long run {len(runs) + len(failed)}/{total}: trial {number} ({c.why}) seed {seed}: FAILED {error}")
            continue
        runs[number, seed] = outcome
        _record(spec.study_dir, key, number, outcome)
        ended, left, spent = len(runs) + len(failed), total - len(runs) - len(failed), time.perf_counter() - started
        eta = f", about {duration(spent / (ended - reused) * left)} left" if left else ""  # at this pace
        say(
            f"long run {ended}/{total}: trial {number} ({c.why}) seed {seed}: {_described(c, outcome, steering)} "
            f"({duration(outcome.get('wall_s') or 0.0)}; {duration(spent)} in all{eta})"
        )
    if failed:
        error = SweepError(
            f"{len(failed)} of {total} long runs failed ({'; '.join(failed)}); the {len(runs)} that finished are "
            f"kept in {spec.study_dir / RUNS_FILE}, and a rerun runs only the rest"
        )
        error.exit_code = 1
        raise error
    for c in candidates:
        c.long = [runs[c.number, seed] for seed in seeds]
        c.wall_s = sum(run.get("wall_s") or 0.0 for run in c.long)
    wall_s = time.perf_counter() - started
    return summarize_calibration(
        spec, candidates, long_steps=long_steps, probe_steps=config.steps, seeds=seeds, wall_s=wall_s
    )


def long_run_timeout(spec: Any, long_steps: int) -> float | None:
    """A long run's time limit: budget.trial_timeout_s scaled by its steps over the probe's
    (a trial is one probe and its evals), None when the spec sets no trial timeout."""
    timeout = spec.budget.trial_timeout_s
    return None if timeout is None else timeout * max(1.0, long_steps / spec.evals.probe.steps)


def _pooled(spec, specs, by_number, jobs, run, address, say, heartbeat_s):
    """(job, outcome, error) as each long run finishes: one pool per recipe (a trial may have
    recorded models or a merge other than the spec's), each job (number, seed, key);
    `run`: (long_steps, the function each worker runs, whether to warm workers, the timeout)."""
    if not jobs:
        return
    from sweep.run.pool import Running, capacity_warning, run_pool
    from sweep.run.progress import so_far
    from sweep.run.raysetup import choose_local_auth_mode, init_ray
    from sweep.run.trial import warm_worker

    long_steps, run_fn, warm, timeout_s = run
    work = {job: (by_number[job[0]].params, job[1], long_steps) for job in jobs}
    job_of = {id(w): job for job, w in work.items()}  # run_pool hands back the very tuples

    def waiting(running: Running) -> None:
        shown = ", ".join(f"trial {job_of[id(w)][0]} seed {w[1]} for {so_far(t, done)}" for w, t, done in running)
        say(f"still running: {shown}" if running else "still waiting for a worker to start and load its models")

    def lost(w: tuple[Any, ...], why: str) -> None:
        say(f"the long run of trial {job_of[id(w)][0]} seed {w[1]} was lost with its worker ({why}): running it again")

    choose_local_auth_mode(spec, address)  # before Ray is imported
    started, _ = init_ray(spec, address)  # SweepError when the cluster refuses us
    warning = capacity_warning(spec)
    if warning:
        say(warning)
    try:
        for recipe in dict.fromkeys(specs[number].model_dump_json() for number, _, _ in jobs):
            mine = [work[job] for job in jobs if specs[job[0]].model_dump_json() == recipe]
            recipe_spec = specs[job_of[id(mine[0])][0]]
            pool = run_pool(
                recipe_spec,
                mine,
                run_fn,
                warm=warm_worker if warm else None,
                timeout_s=timeout_s,
                heartbeat_s=heartbeat_s,
                on_wait=waiting,
                on_lost=lost,
            )
            for done, outcome, error in pool:
                yield job_of[id(done)], outcome, error
    finally:
        if started:
            import ray

            ray.shutdown()


def _record(study_dir: Path, key: str, number: int, outcome: dict[str, Any]) -> None:
    with open(Path(study_dir) / RUNS_FILE, "a") as handle:
        handle.write(json.dumps({"key": key, "number": number, "outcome": outcome}) + "\n")


def _described(c: Candidate, outcome: dict[str, Any], steering: Sequence[str]) -> str:
    shown = ", ".join(f"{m} {fmt_value(v)}" for m, v in c.probe.items())
    outcomes = dict.fromkeys(OUTCOMES[m] for m in steering)  # what each steering metric stands for
    ended = ", ".join(f"{o.replace('_', ' ')} {fmt_value(outcome.get(o))}" for o in outcomes)
    return f"probe {shown}; {outcome.get('steps')}-step run: {ended}; reward: {describe_reward(outcome)}"
