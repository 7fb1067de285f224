"""`sweep run`: Optuna proposes, Ray Tune workers merge, evaluate and probe, the study records.

Wiring only. The parts:
- sweep.study.storage: reaching the storage (one clear error before anything is created);
- sweep.run.raysetup: reaching Ray (token errors explained), the workers' environment, --quiet;
- sweep.study.durable, sweep.study.fingerprint: the durable study, refusing one run under other settings;
- sweep.study.lease: this driver's heartbeat in the study, so several drivers can share it;
- sweep.run.search.StudySearcher: Tune's public Searcher over Optuna ask/tell;
- sweep.study.recording: spool, then tell the study, retrying while it is unreachable;
- sweep.run.progress: one line per finished trial, and sweep.log;
- sweep.run.samplers: the samplers, named in sweep.plugins.SAMPLERS;
- sweep.run.tuner: Ray Tune's side (the trainable on a worker, the Tuner, the signals).

A run is four steps under the study folder's lock: `_open` (storage, study, fingerprint,
spool replay, lease), `_recover` (orphans of dead drivers, fixed points, the budget left),
`_launch` (Tune with the searcher), and `_finish` (close this run's unfinished trials, then
the summary).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any

from core.registry import UnknownName
from sweep.config import SweepSpec, redact
from sweep.errors import SweepError
from sweep.plugins import SAMPLERS

# Kept importable from here (tests and older callers).
from sweep.run.progress import Progress
from sweep.run.progress import clock as _clock
from sweep.run.raysetup import init_ray, inputs_problem, unshared_warning, worker_env  # noqa: F401
from sweep.run.samplers import grid_points
from sweep.run.search import StudySearcher
from sweep.run.tuner import TrialFn, fit
from sweep.study import table
from sweep.study.durable import (
    count_states,
    enqueue_points,
    open_study,
    recover_orphans,
    save_spec_snapshot,
    space_distributions,
    study_lock,
)
from sweep.study.recording import MISSING_CONSTRAINT_VIOLATION, record_trial  # noqa: F401

log = logging.getLogger("sweep")


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


# ---------------------------------------------------------------- the sampler


def make_sampler(spec: SweepSpec, *, trials_so_far: int = 0, salt: int = 0):
    """The spec's sampler, from sweep.plugins.SAMPLERS. Its seed is offset by the trials
    already in the study (a resumed run does not replay the first run's proposals) and by
    `salt` (distinct per driver when several drivers share the study)."""
    seed = spec.sampler.seed + trials_so_far + salt
    try:
        factory = SAMPLERS.get(spec.sampler.name)
    except UnknownName as exc:
        raise SweepError(f"sampler.name: {exc}") from None
    return factory(spec, seed=seed)


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
        if problem := inputs_problem(spec):  # a node that cannot read the models: before anything is created
            raise SweepError(problem)
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


@dataclass
class _Run:
    """One run's parts and what happened to it, shared by its four steps."""

    spec: SweepSpec
    storage: Any
    study: Any
    progress: Progress
    recorder: Any  # sweep.study.recording.Recorder
    recipe: dict
    lease: Any = None  # sweep.study.lease.Lease, once started
    searcher: StudySearcher | None = None  # once made: which of our trials are in flight
    others: list[str] = field(default_factory=list)  # other live drivers of this study
    is_orphan: Any = None  # is_orphan(trial): see sweep.study.lease.is_orphan_fn
    signalled: list[int] = field(default_factory=list)
    recovered: list[int] = field(default_factory=list)
    leftover: list[int] = field(default_factory=list)
    launch: int = 0
    failed: int = 0
    grid_exhausted: bool = False
    clean: bool = False


def _run_locked(spec: SweepSpec, *, quiet, trial_fn, stream, err, started) -> RunSummary:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/TB files
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    run = _open(spec, quiet=quiet, stream=stream, err=err)
    try:
        complete = _recover(run)
        if run.launch <= 0:
            run.progress.say(
                f"study '{spec.name}' already has {complete} complete trials (budget {spec.budget.trials}): nothing to run"
            )
            run.clean = True
            return RunSummary(
                spec.study_dir,
                spec.budget.trials,
                complete,
                0,
                0,
                run.recovered,
                time.monotonic() - started,
                _front(run.study),
            )
        _launch(run, complete, trial_fn)
    finally:
        _close_unfinished(run)
    return _finish(run, started)


def _open(spec: SweepSpec, *, quiet, stream, err) -> _Run:
    """Connect, open the study (refusing one under other settings), snapshot the spec, send
    what an earlier run left in its spool, and start this driver's lease."""
    import optuna

    from sweep.study.fingerprint import check_fingerprint, recipe
    from sweep.study.lease import Lease
    from sweep.study.recording import Recorder
    from sweep.study.spool import Spool
    from sweep.study.storage import connect

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    secrets = spec.secrets()
    storage = connect(spec.storage_url)
    study = open_study(spec, storage=storage)
    values = check_fingerprint(study, spec, spec.storage_display)
    save_spec_snapshot(spec)
    progress = Progress(spec=spec, study=study, launched=0, quiet=quiet, stream=stream, err=err)
    recorder = Recorder(study, spec, Spool(spec.study_dir), redact=lambda text: redact(text, secrets))
    run = _Run(spec, storage, study, progress, recorder, recipe(spec, values))
    replayed = recorder.replay()  # results an earlier run finished but could not tell the study
    if replayed:
        progress.say(
            f"sent {len(replayed)} result(s) an earlier run had kept in its spool: trials {replayed}", problem=True
        )
    run.lease = Lease(study).start()
    return run


def _recover(run: _Run) -> int:
    """Load the study with this driver's sampler, recover the trials of dead drivers, queue
    the fixed points, and set how many trials to launch. Returns the complete trials."""
    import optuna

    from sweep.study.lease import is_orphan_fn, live_drivers

    spec, study = run.spec, run.study
    run.others = [d for d in live_drivers(study) if d != run.lease.driver]
    trials_so_far = len(study.get_trials(deepcopy=False))
    # Another driver is running this study: a seed of our own, or both propose the same points.
    salt = (int(run.lease.driver.encode().hex()[-12:], 16) % 1_000_003) if run.others else 0
    sampler = make_sampler(spec, trials_so_far=trials_so_far, salt=salt)
    study = run.study = optuna.load_study(study_name=spec.name, storage=run.storage, sampler=sampler)
    run.recorder.study = run.progress.study = study
    run.is_orphan = is_orphan_fn(study, run.lease.driver, grace_s=run.lease.ttl_s)
    limit = spec.budget.point_failure_limit
    run.recovered = recover_orphans(
        study, is_orphan=run.is_orphan, failure_limit=limit, space=space_distributions(spec)
    )
    if spec.warm_start_from:  # first: a nightly compares last night's front with its re-measurement
        from sweep.run.warmstart import warm_start_points

        enqueue_points(study, warm_start_points(spec), failure_limit=limit)
    enqueue_points(study, [dict(p) for p in spec.space.points], failure_limit=limit)
    if run.recovered:
        run.progress.say(
            f"marked {len(run.recovered)} trial(s) orphaned by an earlier driver FAIL and queued their params again: {run.recovered}",
            problem=True,
        )
    complete = count_states(study).get("COMPLETE", 0)
    run.launch = spec.budget.trials - complete
    _write_table(study, spec)
    return complete


def _launch(run: _Run, complete: int, trial_fn: TrialFn | None) -> None:
    """Run Tune with a StudySearcher until it has launched `run.launch` trials (or the
    budget, the grid or a signal ends the run)."""
    spec, progress = run.spec, run.progress
    progress.launched = run.launch
    progress.say(
        f"sweep '{spec.name}': {complete} complete, launching up to {run.launch} trial(s), {spec.budget.concurrent} at a time "
        f"(sampler {spec.sampler.name}, storage {spec.storage_display}"
        + (f", {len(run.others)} other driver(s) on this study" if run.others else "")
        + ")"
    )
    if spec.budget.checkpoint_every_s is not None and (warning := unshared_warning(spec, what="a trial's probe")):
        progress.say(warning, problem=True)
    run.searcher = StudySearcher(
        spec=spec,
        study=run.study,
        distributions=space_distributions(spec),
        driver=run.lease.driver,
        recorder=run.recorder,
        launch_cap=run.launch,
        is_orphan=run.is_orphan,
        on_record=_on_record_fn(run.study, spec, progress),
        recipe=run.recipe,
        grace_s=run.lease.ttl_s,
    )
    fit(spec, run.searcher, trial_fn, run.signalled)
    run.recovered += run.searcher.recovered
    run.grid_exhausted = run.searcher.grid_exhausted
    run.failed = progress.failed_this_run
    run.clean = not run.signalled


def _close_unfinished(run: _Run) -> None:
    """This driver's trials still RUNNING: a signal stopped the run (interrupted), or the run
    broke off (an error). Either way: FAIL with the reason, queued again. Then end the
    lease, compact the spool, rewrite the table, and drop Tune's folder after a clean run."""
    spec, study, searcher = run.spec, run.study, run.searcher
    reason, kind = (
        ("interrupted: the run was stopped (Ctrl-C or a signal) before this trial finished", "interrupted")
        if run.signalled
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
            return trial.user_attrs.get("driver") == run.lease.driver and (launched is None or trial.number in launched)

        run.leftover = recover_orphans(
            study,
            reason=reason,
            kind=kind,
            is_orphan=mine,
            failure_limit=spec.budget.point_failure_limit,
            space=space_distributions(spec),
        )
    except Exception as exc:  # noqa: BLE001 - storage down: the lease expiry recovers them later
        log.warning("could not mark this run's unfinished trials: %s", redact(str(exc), spec.secrets()))
    run.lease.end()
    run.recorder.spool.compact()  # gone when every result reached the study
    _write_table(study, spec)
    if run.clean and not run.leftover:
        shutil.rmtree(spec.study_dir / "ray", ignore_errors=True)  # Tune's state: the study is the truth


def _finish(run: _Run, started: float) -> RunSummary:
    """The run's summary, and its closing lines."""
    spec, progress, signalled, leftover = run.spec, run.progress, run.signalled, run.leftover
    counts = count_states(run.study)
    summary = RunSummary(
        spec.study_dir,
        spec.budget.trials,
        counts.get("COMPLETE", 0),
        run.failed,  # interrupted trials are not failures: they are in `interrupted`, queued again
        run.launch,
        run.recovered,
        time.monotonic() - started,
        _front(run.study),
        leftover if signalled else [],
        run.grid_exhausted,
        bool(signalled),
    )
    short = summary.complete < summary.budget and not (run.grid_exhausted and not run.failed)
    if leftover:
        if signalled:
            progress.say(
                f"interrupted: trial(s) {leftover} were in flight; they are recorded as interrupted (not failed) "
                "and queued again: run the same command to resume",
                problem=True,
            )
        else:
            progress.say(f"trial(s) {leftover} did not finish; they are marked FAIL and queued again", problem=True)
    if run.grid_exhausted:
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
