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

Each long run's outcomes (its final and lowest length, its reward's gain, dip and shape
against its null) are read in sweep.run.longrun, which also keeps its record and checkpoint.

Each steering probe metric stands for one outcome (OUTCOMES): retention and growth for
the final length, the dip for the long run's dip, the gain for the reward the run added,
the final reward for the final score. A metric an objective uses is judged by its rank
agreement (Spearman); one used only in a constraint by its verdicts' agreement.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
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
from sweep.run.longrun import (
    CHECKPOINT_EVERY_S,
    RUNS_FILE,
    checkpoint_path,
    long_run_at,
    long_run_timeout,
    record_run,
    recorded_runs,
    run_key,
)
from sweep.run.progress import duration

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


HEARTBEAT_S = 600.0  # a "still running" line when no long run has finished for this long


@dataclass(frozen=True)
class _LongRuns:
    """How the long runs run: their steps, the function a worker runs (long_run_at, or a
    caller's own, which gets no warm-up and no checkpoint argument) and their time limit."""

    steps: int
    fn: Callable[..., dict[str, Any]]
    builtin: bool
    timeout_s: float | None
    checkpoint_every_s: float | None  # None: no checkpoints

    def job(self, params: dict[str, float], seed: int) -> tuple[Any, ...]:
        """The arguments after the spec: long_run_at also takes how often to checkpoint."""
        return (params, seed, self.steps) + ((self.checkpoint_every_s,) if self.builtin else ())


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
    checkpoint_every_s: float | None = CHECKPOINT_EVERY_S,
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
    finished and been recorded. A run in flight saves its state every `checkpoint_every_s`
    (sweep.run.longrun; None: never): run again, by the pool after its worker was lost or by a rerun
    after the driver stopped, it goes on from there."""
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
            earlier = recorded.get(key) or recorded.get(
                run_key(specs[c.number], c.params, seed, long_steps, legacy=True)
            )
            if earlier is not None:
                runs[c.number, seed] = earlier
            else:
                jobs.append((c.number, seed, key))
    total = len(candidates) * len(seeds)
    if runs:
        say(f"reusing {len(runs)} of the {total} long runs, recorded in {spec.study_dir / RUNS_FILE}")
    by_number = {c.number: c for c in candidates}
    failed, reused = [], len(runs)
    _say_resumed(spec.study_dir, jobs, say)
    timeout_s = timeout_s or long_run_timeout(spec, long_steps)
    run = _LongRuns(long_steps, run_fn or long_run_at, run_fn is None, timeout_s, checkpoint_every_s)
    pooled = _pooled(spec, specs, by_number, jobs, run, address, say, heartbeat_s)
    for (number, seed, key), outcome, error in pooled:
        c = by_number[number]
        if error is not None:
            failed.append(f"trial {number} seed {seed}: {error}")
            say(f"long run {len(runs) + len(failed)}/{total}: trial {number} ({c.why}) seed {seed}: FAILED {error}")
            continue
        runs[number, seed] = outcome
        record_run(spec.study_dir, key, number, outcome)
        ended, left, spent = len(runs) + len(failed), total - len(runs) - len(failed), time.perf_counter() - started
        eta = f", about {duration(spent / (ended - reused) * left)} left" if left else ""  # at this pace
        say(
            f"long run {ended}/{total}: trial {number} ({c.why}) seed {seed}: {_described(c, outcome, steering)} "
            f"({duration(outcome.get('wall_s') or 0.0)}{_resumed_text(outcome)}; {duration(spent)} in all{eta})"
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


def _pooled(spec, specs, by_number, jobs, run, address, say, heartbeat_s):
    """(job, outcome, error) as each long run finishes: one pool per recipe (a trial may have
    recorded models or a merge other than the spec's), each job (number, seed, key)."""
    if not jobs:
        return
    from sweep.run.pool import Running, capacity_warning, run_pool
    from sweep.run.progress import so_far
    from sweep.run.raysetup import choose_local_auth_mode, init_ray, inputs_problem, unshared_warning
    from sweep.run.trial import warm_worker

    work = {job: run.job(by_number[job[0]].params, job[1]) for job in jobs}
    job_of = {id(w): job for job, w in work.items()}  # run_pool hands back the very tuples

    def waiting(running: Running) -> None:
        shown = ", ".join(f"trial {job_of[id(w)][0]} seed {w[1]} for {so_far(t, done)}" for w, t, done in running)
        say(f"still running: {shown}" if running else "still waiting for a worker to start and load its models")

    def lost(w: tuple[Any, ...], why: str) -> None:
        say(f"the long run of trial {job_of[id(w)][0]} seed {w[1]} was lost with its worker ({why}): running it again")

    choose_local_auth_mode(spec, address)  # before Ray is imported
    started, _ = init_ray(spec, address)  # SweepError when the cluster refuses us
    try:
        if problem := inputs_problem(spec):
            raise SweepError(problem)
        for warning in (
            capacity_warning(spec),
            unshared_warning(spec, what="a long run") if run.checkpoint_every_s is not None else None,
        ):
            if warning:
                say(warning)
        for recipe in dict.fromkeys(specs[number].model_dump_json() for number, _, _ in jobs):
            mine = [work[job] for job in jobs if specs[job[0]].model_dump_json() == recipe]
            recipe_spec = specs[job_of[id(mine[0])][0]]
            pool = run_pool(
                recipe_spec,
                mine,
                run.fn,
                warm=warm_worker if run.builtin else None,
                timeout_s=run.timeout_s,
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


def _say_resumed(study_dir: Any, jobs: Sequence[tuple[int, int, str]], say: Callable[[str], None]) -> None:
    """A line for each run that will go on from its checkpoint, with how far it got and when."""
    from evals.probe.resume import read_info

    for number, seed, key in jobs:
        info = read_info(checkpoint_path(study_dir, key))
        if info is not None and info.get("tag") == key:
            ago = duration(max(0.0, time.time() - float(info.get("saved", time.time()))))
            say(
                f"trial {number} seed {seed} goes on from its checkpoint: step {info.get('done')}/{info.get('planned')}, "
                f"saved {ago} ago"
            )


def _resumed_text(outcome: dict[str, Any]) -> str:
    resumed_at = outcome.get("resumed_at")
    return f", from step {resumed_at} on" if resumed_at else ""


def _described(c: Candidate, outcome: dict[str, Any], steering: Sequence[str]) -> str:
    shown = ", ".join(f"{m} {fmt_value(v)}" for m, v in c.probe.items())
    outcomes = dict.fromkeys(OUTCOMES[m] for m in steering)  # what each steering metric stands for
    ended = ", ".join(f"{o.replace('_', ' ')} {fmt_value(outcome.get(o))}" for o in outcomes)
    return f"probe {shown}; {outcome.get('steps')}-step run: {ended}; reward: {describe_reward(outcome)}"
