"""`sweep run`: Optuna proposes, Ray Tune workers merge, evaluate and probe, the study records.

Wiring only. The parts:
- sweep.study.storage: reaching the storage (one clear error before anything is created);
- sweep.run.raysetup: reaching Ray (token errors explained), the workers' environment, --quiet;
- sweep.study.durable, sweep.study.fingerprint: the durable study, refusing one run under other settings;
- sweep.study.lease: this driver's heartbeat in the study, so several drivers can share it;
- sweep.run.search.StudySearcher: Tune's public Searcher over Optuna ask/tell;
- sweep.study.recording: spool, then tell the study, retrying while it is unreachable;
- sweep.run.progress: one line per finished trial, and sweep.log;
- `_trainable` (here): runs `sweep.run.trial.run_trial` on a worker and reports one result.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any

from core.errors import UserError
from sweep.config import SweepSpec, redact
from sweep.errors import SweepError

# Kept importable from here (tests and older callers).
from sweep.run.progress import Progress
from sweep.run.progress import clock as _clock
from sweep.run.raysetup import init_ray, worker_env  # noqa: F401
from sweep.run.search import RESULT_KEY, StudySearcher, grid_points
from sweep.study import table
from sweep.study.durable import (
    count_states,
    enqueue_points,
    open_study,
    recover_orphans,
    save_spec_snapshot,
    study_lock,
)
from sweep.study.recording import MISSING_CONSTRAINT_VIOLATION, record_trial  # noqa: F401
from sweep.study.records import TrialResult

log = logging.getLogger("sweep")

TrialFn = Callable[[SweepSpec, dict], TrialResult]


@dataclass
class RunSummary:
    study_dir: Any
    budget: int
    complete: int
    failed_this_run: int  # trials that failed in this run; interrupted ones are not counted
    launched: int
    recovered: list[int]
    elapsed_s: float
    front: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)  # trials in flight when a signal stopped the run
    grid_exhausted: bool = False  # sampler grid: every grid point is done
    signalled: bool = False

    @property
    def exit_code(self) -> int:
        """0: the study holds its budget of complete trials (or its whole grid); 1: short of
        it (rerun to top up); 130: stopped by a signal (Ctrl-C), the trials in flight queued again."""
        if self.signalled:
            return 130
        return 0 if self.complete >= self.budget or (self.grid_exhausted and not self.failed_this_run) else 1


# ---------------------------------------------------------------- samplers and space


def make_sampler(spec: SweepSpec, *, trials_so_far: int = 0, salt: int = 0):
    """The spec's sampler. Its seed is offset by the trials already in the study (a resumed
    run does not replay the first run's proposals) and by `salt` (distinct per driver when
    several drivers share the study)."""
    import optuna

    seed = spec.sampler.seed + trials_so_far + salt
    name = spec.sampler.name
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed)  # constant_liar is on by default in Optuna 5
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, min(20, spec.budget.trials // 2)))
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        return _grid_sampler(spec, seed)
    raise SweepError(f"sampler.name: unknown sampler {name}")


def grid_space(spec: SweepSpec) -> dict[str, list[float]]:
    space = {"alpha": spec.space.alpha.grid(), "beta": spec.space.beta.grid()}
    space.update({k: r.grid() for k, r in spec.space.params.items()})
    return space


def _grid_sampler(spec: SweepSpec, seed: int):
    import optuna

    class StudyGridSampler(optuna.samplers.GridSampler):
        """GridSampler without its end-of-grid `study.stop()` (which raises outside
        `optimize`): StudySearcher ends the run when every grid point is done."""

        def after_trial(self, study, trial, state, values) -> None:
            return None

    return StudyGridSampler(grid_space(spec), seed=seed)


# ---------------------------------------------------------------- worker side


def _deterministic_errors() -> tuple[type[BaseException], ...]:
    """Errors a retry cannot fix: a timeout, bad input. Not retried under max_failures."""
    from sweep.run.trial import TrialTimeout

    return (TrialTimeout, UserError)


def _trainable(config: dict, spec_json: str, trial_fn: TrialFn | None = None) -> None:
    """One trial on a Ray worker. A raising trial is retried up to budget.max_failures
    times (not a timeout or bad input), and its outcome always comes back as a result:
    only a lost node or worker makes Tune see an error."""
    import json

    from ray import tune

    from sweep.run.trial import run_trial

    spec = SweepSpec.model_validate_json(spec_json)
    params = {k: float(v) for k, v in config.items()}
    retries: list[str] = []
    report: dict[str, Any] = {}
    deterministic = _deterministic_errors()
    for attempt in range(spec.budget.max_failures + 1):
        try:
            result = (trial_fn or run_trial)(spec, params)
            report = {"result": result.to_dict(), "retries": retries}
            break
        except Exception as exc:  # noqa: BLE001 - every error is recorded with its reason
            text = f"{type(exc).__name__}: {exc}".strip()
            if isinstance(exc, deterministic) or attempt == spec.budget.max_failures:
                if retries:
                    text += f" (after {len(retries)} retr{'y' if len(retries) == 1 else 'ies'})"
                report = {
                    "error": text[:4000],
                    "retries": retries,
                    "traceback": traceback.format_exc()[-8000:],
                    "kind": "error",
                }
                break
            retries.append(text[:2000])
    tune.report({RESULT_KEY: json.dumps(report, allow_nan=False, default=float)})


# ---------------------------------------------------------------- the run


def run_sweep(
    spec: SweepSpec,
    *,
    address: str | None = None,
    trials: int | None = None,
    quiet: bool = False,
    trial_fn: TrialFn | None = None,
    stream=None,
) -> RunSummary:
    """Top the study up to its budget of complete trials. Returns what happened.

    Storage and Ray are reached first: when either cannot be, SweepError (exit 2) and
    nothing is created (no results folder, no study).
    """
    from sweep.run.raysetup import move_console_log, quiet_console
    from sweep.study.storage import check_storage

    if trials is not None:
        spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"trials": trials})})
    started = time.monotonic()
    check_storage(spec)
    from sweep.study.fingerprint import precheck_existing_study

    precheck_existing_study(spec)  # a changed spec is refused before Ray starts
    try:
        with quiet_console(quiet) as (out, err):
            return _run_with_ray(
                spec,
                address=address,
                quiet=quiet,
                trial_fn=trial_fn,
                stream=stream if not quiet else out,
                err=err,
                started=started,
            )
    finally:
        move_console_log(spec.study_dir / "sweep.log")


def _run_with_ray(spec: SweepSpec, *, address, quiet, trial_fn, stream, err, started) -> RunSummary:
    from sweep.run.progress import setup_logging, teardown_logging

    started_ray, ray_chatter = init_ray(spec, address)  # SweepError (exit 2) before anything is created
    handler = None
    try:
        handler = setup_logging(spec.study_dir, spec.secrets())
        if ray_chatter.strip():
            log.info("Ray, while connecting:\n%s", ray_chatter.strip())
        with study_lock(spec.study_dir):
            return _run_locked(spec, quiet=quiet, trial_fn=trial_fn, stream=stream, err=err, started=started)
    finally:
        if handler is not None:
            teardown_logging(handler)
        if started_ray:
            import ray

            ray.shutdown()


def _is_orphan_fn(study, me: str, grace_s: float):
    """is_orphan(trial): a RUNNING trial whose driver's lease expired (never one of `me`'s)."""
    from sweep.study.lease import leases

    cache: dict[str, Any] = {"at": -1.0, "leases": {}}

    def is_orphan(trial) -> bool:
        if time.monotonic() - cache["at"] > 1.0:
            cache["leases"], cache["at"] = leases(study), time.monotonic()
        driver = trial.user_attrs.get("driver")
        if driver == me:
            return False
        info = cache["leases"].get(driver) if driver else None
        if info is not None:
            return info.expired()
        # No lease: a trial of a driver from before leases (orphaned once older than the
        # grace period), or one whose driver's ask broke off before it was tagged: never
        # launched, so no failure (StudySearcher.close_unlaunched closes it as not run).
        from datetime import datetime

        start = trial.datetime_start
        if start is None:
            return True
        if start.tzinfo is None:
            start = start.astimezone(UTC)
        if not driver and any(lease.started <= start.timestamp() for lease in cache["leases"].values()):
            return False
        return (datetime.now(UTC) - start).total_seconds() > grace_s

    return is_orphan


def _run_locked(spec: SweepSpec, *, quiet, trial_fn, stream, err, started) -> RunSummary:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/TB files
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna

    from sweep.study.durable import space_distributions
    from sweep.study.fingerprint import check_fingerprint, recipe
    from sweep.study.lease import Lease, live_drivers
    from sweep.study.recording import Recorder
    from sweep.study.spool import Spool
    from sweep.study.storage import connect

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    secrets = spec.secrets()
    display = spec.storage_display
    storage = connect(spec.storage_url)
    study = open_study(spec, storage=storage)
    values = check_fingerprint(study, spec, display)
    trial_recipe = recipe(spec, values)
    save_spec_snapshot(spec)
    progress = Progress(spec=spec, study=study, launched=0, quiet=quiet, stream=stream, err=err)
    recorder = Recorder(study, spec, Spool(spec.study_dir), redact=lambda text: redact(text, secrets))
    replayed = recorder.replay()  # results an earlier run finished but could not tell the study
    if replayed:
        progress.say(
            f"sent {len(replayed)} result(s) an earlier run had kept in its spool: trials {replayed}", problem=True
        )

    lease = Lease(study).start()
    signalled: list[int] = []
    searcher: StudySearcher | None = None  # once made: which of our trials are in flight
    leftover: list[int] = []
    failed = launch = 0
    recovered: list[int] = []
    grid_exhausted = clean = False
    try:
        others = [d for d in live_drivers(study) if d != lease.driver]
        trials_so_far = len(study.get_trials(deepcopy=False))
        # Another driver is running this study: a seed of our own, or both propose the same points.
        salt = (int(lease.driver.encode().hex()[-12:], 16) % 1_000_003) if others else 0
        study = optuna.load_study(
            study_name=spec.name, storage=storage, sampler=make_sampler(spec, trials_so_far=trials_so_far, salt=salt)
        )
        recorder.study = progress.study = study
        is_orphan = _is_orphan_fn(study, lease.driver, grace_s=lease.ttl_s)
        limit = spec.budget.point_failure_limit
        recovered = recover_orphans(study, is_orphan=is_orphan, failure_limit=limit)
        if spec.warm_start_from:  # first: a nightly compares last night's front with its re-measurement
            from sweep.run.warmstart import warm_start_points

            enqueue_points(study, warm_start_points(spec), failure_limit=limit)
        enqueue_points(study, [dict(p) for p in spec.space.points], failure_limit=limit)
        if recovered:
            progress.say(
                f"marked {len(recovered)} trial(s) orphaned by an earlier driver FAIL and queued their params again: {recovered}",
                problem=True,
            )
        complete = count_states(study).get("COMPLETE", 0)
        launch = spec.budget.trials - complete
        _write_table(study, spec)
        if launch <= 0:
            progress.say(
                f"study '{spec.name}' already has {complete} complete trials (budget {spec.budget.trials}): nothing to run"
            )
            clean = True
            return RunSummary(
                spec.study_dir, spec.budget.trials, complete, 0, 0, recovered, time.monotonic() - started, _front(study)
            )
        progress.launched = launch
        progress.say(
            f"sweep '{spec.name}': {complete} complete, launching up to {launch} trial(s), {spec.budget.concurrent} at a time "
            f"(sampler {spec.sampler.name}, storage {display}"
            + (f", {len(others)} other driver(s) on this study" if others else "")
            + ")"
        )
        searcher = StudySearcher(
            spec=spec,
            study=study,
            distributions=space_distributions(spec),
            driver=lease.driver,
            recorder=recorder,
            launch_cap=launch,
            is_orphan=is_orphan,
            on_record=_on_record_fn(study, spec, progress),
            recipe=trial_recipe,
            grace_s=lease.ttl_s,
        )
        _fit(spec, searcher, trial_fn, signalled)
        recovered += searcher.recovered
        grid_exhausted = searcher.grid_exhausted
        failed = progress.failed_this_run
        clean = not signalled
    finally:
        # This driver's trials still RUNNING: a signal stopped the run (interrupted), or
        # the run broke off (an error). Either way: FAIL with the reason, queued again.
        reason, kind = (
            ("interrupted: the run was stopped (Ctrl-C or a signal) before this trial finished", "interrupted")
            if signalled
            else ("orphaned: the run ended with an error before this trial finished", "orphaned")
        )
        try:
            launched: set[int] | None = None  # None: broke off before Tune started, so all of ours
            if searcher is not None:
                # Ours but never launched (an ask broke off mid-outage): not run, not a failure.
                searcher.close_unlaunched(study.get_trials(deepcopy=False), final=True)
                # Still in Tune's hands; those kept in the spool stay RUNNING for the replay.
                launched = {number for number, _ in searcher.live.values()}

            def mine(trial) -> bool:
                return trial.user_attrs.get("driver") == lease.driver and (launched is None or trial.number in launched)

            leftover = recover_orphans(
                study,
                reason=reason,
                kind=kind,
                is_orphan=mine,
                failure_limit=spec.budget.point_failure_limit,
            )
        except Exception as exc:  # noqa: BLE001 - storage down: the lease expiry recovers them later
            log.warning("could not mark this run's unfinished trials: %s", redact(str(exc), secrets))
        lease.end()
        recorder.spool.compact()  # gone when every result reached the study
        _write_table(study, spec)
        if clean and not leftover:
            shutil.rmtree(spec.study_dir / "ray", ignore_errors=True)  # Tune's state: the study is the truth
    counts = count_states(study)
    summary = RunSummary(
        spec.study_dir,
        spec.budget.trials,
        counts.get("COMPLETE", 0),
        failed,  # interrupted trials are not failures: they are in `interrupted`, queued again
        launch,
        recovered,
        time.monotonic() - started,
        _front(study),
        leftover if signalled else [],
        grid_exhausted,
        bool(signalled),
    )
    short = summary.complete < summary.budget and not (grid_exhausted and not failed)
    if leftover:
        if signalled:
            progress.say(
                f"interrupted: trial(s) {leftover} were in flight; they are recorded as interrupted (not failed) "
                "and queued again: run the same command to resume",
                problem=True,
            )
        else:
            progress.say(f"trial(s) {leftover} did not finish; they are marked FAIL and queued again", problem=True)
    if grid_exhausted:
        progress.say(f"the grid is exhausted: all {len(grid_points(spec))} grid points are done")
    progress.say(
        f"done: {summary.complete}/{summary.budget} complete, {summary.failed_this_run} failed this run, "
        + (f"{len(summary.interrupted)} interrupted (queued again), " if summary.interrupted else "")
        + f"Pareto front {len(summary.front)} trial(s) {summary.front}, {_clock(summary.elapsed_s)}. "
        f"Results in {spec.study_dir}",
        problem=short or summary.failed_this_run > 0,
    )
    if short and not signalled:
        progress.say(
            f"the study is {summary.budget - summary.complete} short of its budget: run the same command again to top it up",
            problem=True,
        )
    return summary


def _write_table(study, spec: SweepSpec) -> None:
    try:
        table.write(study, spec)
    except Exception as exc:  # noqa: BLE001 - storage down: the next write catches up
        log.warning(
            "could not write the trials table now: %s",
            redact(str(exc).splitlines()[0] if str(exc) else "", spec.secrets()),
        )


def _front(study) -> list[int]:
    try:
        return sorted(t.number for t in study.best_trials)
    except Exception:  # noqa: BLE001 - no complete trials yet, or the storage is down
        return []


class _Signals:
    """SIGINT/SIGTERM: remember the signal and stop Tune gracefully (through its SIGUSR1
    handler); a second Ctrl-C raises KeyboardInterrupt as usual."""

    def __init__(self, signalled: list[int], searcher):
        self.signalled = signalled
        self.searcher = searcher
        self.saved: dict[int, Any] = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.saved[sig] = signal.signal(sig, self.handle)
        return self

    def handle(self, signum, frame) -> None:
        if self.signalled and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self.signalled.append(signum)
        self.searcher.stopping = True
        log.warning("received signal %d: stopping the run", signum)
        os.kill(os.getpid(), signal.SIGUSR1)  # Tune ends its run loop on SIGUSR1

    def __exit__(self, *exc) -> None:
        for sig, handler in self.saved.items():
            signal.signal(sig, handler)


def _on_record_fn(study, spec: SweepSpec, progress: Progress):
    """The searcher's on_record: rewrite the trials table, then print the trial's line."""

    def on_record(number: int, *, params, state, result, error, requeued) -> None:
        _write_table(study, spec)  # persisted before the next trial is counted
        values = [result.metrics.get(n) for n in spec.objective_names] if result is not None else None
        progress.trial_recorded(
            number,
            params=params,
            state=state,
            values=values,
            metrics=result.metrics if result is not None else {},
            error=error,
            requeued=requeued,
        )

    return on_record


def _fit(spec: SweepSpec, searcher: StudySearcher, trial_fn, signalled: list[int]) -> None:
    """Run Tune with `searcher` until it says FINISHED (or a signal stops it)."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    class TrialRegistry(tune.Callback):
        """Lets the searcher read a lost trial's error message."""

        def on_trial_start(self, iteration, trials, trial, **info):
            searcher.trial_objects[trial.trial_id] = trial

    worker_spec = spec.model_copy(update={"storage": None})  # workers never need the storage (or its password)
    trainable = tune.with_parameters(_trainable, spec_json=worker_spec.model_dump_json(), trial_fn=trial_fn)
    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # ours (below) records the signal, then stops Tune
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=-1,  # the searcher says when to stop (shared budget, grid, launch cap)
            max_concurrent_trials=spec.budget.concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
            storage_path=str((spec.study_dir / "ray").resolve()),
            verbose=0,
            failure_config=tune.FailureConfig(
                max_failures=0
            ),  # retries happen in _trainable; node loss in the searcher
            # Tune reads each trial's result.json when fit() ends (ExperimentAnalysis) and
            # warns for every trial without one; TUNE_DISABLE_AUTO_CALLBACK_LOGGERS drops the
            # CSV and TensorBoard files but keeps this logger (Tune's folder is removed after
            # a clean run).
            callbacks=[TrialRegistry(), JsonLoggerCallback()],
        ),
    )
    with _Signals(signalled, searcher):
        tuner.fit()
