"""`sweep run`: Optuna proposes, Ray Tune workers merge, evaluate and probe, the study records.

Wiring only. The pieces:
- `open_study` / `recover_orphans` / `enqueue_points` (sweep.study): the durable study;
- `StudySearch`: Ray Tune's OptunaSearch, telling the study every objective, constraint
  and user attribute itself (Ray's version drops constraints and leaves trials with a
  missing objective RUNNING);
- `_trainable`: runs `sweep.trial.run_trial` on a worker and reports one final result;
- `Progress`: one line per finished trial (counts, Pareto front, ETA), and sweep.log.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sweep.errors import SweepError
from sweep.records import TrialResult
from sweep.spec import SweepSpec
from sweep.study import (
    ATTR_CURVES,
    ATTR_ERROR,
    ATTR_FINISHED,
    ATTR_METRICS,
    ATTR_NOTES,
    ATTR_RAY_TRIAL_ID,
    ATTR_TIMINGS,
    ATTR_WORKER,
    count_states,
    enqueue_points,
    make_storage,
    open_study,
    save_spec_snapshot,
    recover_orphans,
    study_lock,
    write_table,
)

log = logging.getLogger("sweep")

# Constraint value recorded when the constrained metric is missing: clearly infeasible.
MISSING_CONSTRAINT_VIOLATION = 1e6
RESULT_KEY = "sweep_result"

TrialFn = Callable[[SweepSpec, dict], TrialResult]


@dataclass
class RunSummary:
    study_dir: Path
    budget: int
    complete: int
    failed_this_run: int
    launched: int
    recovered: list[int]
    elapsed_s: float
    front: list[int] = field(default_factory=list)
    interrupted: list[int] = field(default_factory=list)  # trials in flight when the run stopped early

    @property
    def exit_code(self) -> int:
        """0: the study holds its budget of complete trials; 1: short of it (rerun to top up);
        130: interrupted (Ctrl-C), with the trials in flight queued again."""
        if self.interrupted:
            return 130
        return 0 if self.complete >= self.budget else 1


# ---------------------------------------------------------------- samplers and space


def make_sampler(spec: SweepSpec, *, trials_so_far: int = 0):
    """The spec's sampler. Its seed is offset by the trials already in the study, so a
    resumed run does not replay the first run's random proposals (duplicates)."""
    import optuna

    seed = spec.sampler.seed + trials_so_far
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
        return optuna.samplers.GridSampler(grid_space(spec), seed=seed)
    raise SweepError(f"sampler.name: unknown sampler {name}")


def grid_space(spec: SweepSpec) -> dict[str, list[float]]:
    space = {"alpha": spec.space.alpha.grid(), "beta": spec.space.beta.grid()}
    space.update({k: r.grid() for k, r in spec.space.params.items()})
    return space


def define_space(spec: SweepSpec) -> Callable:
    """Optuna define-by-run space: alpha, beta, then any searched method parameters."""
    ranges = {"alpha": spec.space.alpha, "beta": spec.space.beta} | dict(spec.space.params)

    def define(trial) -> None:
        for name, rng in ranges.items():
            trial.suggest_float(name, rng.low, rng.high, step=rng.step)

    return define


# ---------------------------------------------------------------- recording


def record_trial(study, ot_trial, spec: SweepSpec, result: TrialResult | None, *, error: str | None, ray_trial_id: str | None) -> None:
    """Tell the study how the trial ended, with every metric, curve, timing and constraint."""
    from optuna.trial import TrialState

    from sweep.study import datetime_now_iso

    ot_trial.set_user_attr(ATTR_RAY_TRIAL_ID, ray_trial_id)
    ot_trial.set_user_attr(ATTR_FINISHED, datetime_now_iso())
    if result is None:
        ot_trial.set_user_attr(ATTR_ERROR, error or "the trial ended without a result")
        study.tell(ot_trial, state=TrialState.FAIL)
        return
    ot_trial.set_user_attr(ATTR_METRICS, result.metrics)
    ot_trial.set_user_attr(ATTR_CURVES, result.curves)
    ot_trial.set_user_attr(ATTR_TIMINGS, result.timings)
    ot_trial.set_user_attr(ATTR_WORKER, result.worker)
    ot_trial.set_user_attr(ATTR_NOTES, result.notes)
    for constraint in spec.constraints:
        violation = constraint.violation_in(result.metrics)
        ot_trial.set_constraint(str(constraint), MISSING_CONSTRAINT_VIOLATION if violation is None else violation)
    values = [result.metrics.get(name) for name in spec.objective_names]
    missing = [name for name, value in zip(spec.objective_names, values) if value is None]
    if missing:
        ot_trial.set_user_attr(ATTR_ERROR, f"objective(s) not produced: {', '.join(missing)}")
        study.tell(ot_trial, state=TrialState.FAIL)
        return
    study.tell(ot_trial, values)


def _error_text(trial) -> str:
    """The last line of a Tune trial's error (e.g. 'RuntimeError: planted failure')."""
    text = ""
    try:  # Tune writes the error text locally before telling the searcher; storage may lag
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(errors="replace")
        else:
            text = str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - best effort: the message is informative only
        pass
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:2000] if lines else "the trial raised an error (see sweep.log)"


def _study_search_class():
    from ray.tune.search.optuna import OptunaSearch

    class StudySearch(OptunaSearch):
        """OptunaSearch that records constraints, user attributes and error reasons itself."""

        def __init__(self, *, spec: SweepSpec, trial_objects: dict, on_record: Callable[[int], None], **kwargs):
            super().__init__(**kwargs)
            self._spec = spec
            self._trial_objects = trial_objects
            self._on_record = on_record

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return
            self._completed_trials.add(trial_id)
            ot_trial = self._ot_trials[trial_id]
            payload = (result or {}).get(RESULT_KEY)
            trial_result = TrialResult.from_json(payload) if payload and not error else None
            message = None
            if trial_result is None:
                trial = self._trial_objects.get(trial_id)
                message = _error_text(trial) if (error and trial is not None) else None
            try:
                record_trial(self._ot_study, ot_trial, self._spec, trial_result, error=message, ray_trial_id=trial_id)
            except Exception as exc:  # noqa: BLE001 - never lose the run over one record
                log.exception("could not record trial %s: %s", ot_trial.number, exc)
            self._on_record(ot_trial.number)

        def __getstate__(self) -> dict:
            # Tune pickles the searcher into its experiment state; the progress hook and the
            # trial registry hold streams and live objects, and are not needed there.
            state = dict(self.__dict__)
            state.pop("_on_record", None)
            state.pop("_trial_objects", None)
            return state

        # The study is the source of truth: nothing to checkpoint here (and RDB storages
        # do not pickle). Tune calls these when it saves experiment state.
        def save(self, checkpoint_path: str) -> None:
            pass

        def restore(self, checkpoint_path: str) -> None:
            pass

        def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
            pass

        def restore_from_dir(self, checkpoint_dir: str) -> None:
            pass

    return StudySearch


# ---------------------------------------------------------------- worker side


def _trainable(config: dict, spec_json: str, trial_fn: TrialFn | None = None) -> None:
    from ray import tune

    from sweep.trial import run_trial

    spec = SweepSpec.model_validate_json(spec_json)
    params = {k: float(v) for k, v in config.items()}
    result = (trial_fn or run_trial)(spec, params)
    report = {RESULT_KEY: result.to_json()}
    for i, name in enumerate(spec.objective_names):  # Tune checks that the searcher's metrics are present
        value = result.metrics.get(name)
        report[f"objective_{i}"] = float("nan") if value is None else float(value)
    tune.report(report)


# ---------------------------------------------------------------- progress


class Progress:
    """One line per finished trial: counts, front size, best values, elapsed, ETA."""

    def __init__(self, *, spec: SweepSpec, study, launched: int, quiet: bool, stream=None):
        self.spec = spec
        self.study = study
        self.launched = launched
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.started = time.monotonic()
        self.finished_this_run = 0
        self.failed_this_run = 0

    def say(self, line: str, *, problem: bool = False) -> None:
        """Log and print a line. With quiet, only problems print (to stderr): cron mails nothing on a clean run."""
        (log.warning if problem else log.info)(line)
        if not self.quiet:
            print(line, file=self.stream, flush=True)
        elif problem:
            print(line, file=sys.stderr, flush=True)

    def trial_recorded(self, number: int) -> None:
        trial = self.study._storage.get_trial(self.study._storage.get_trial_id_from_study_id_trial_number(self.study._study_id, number))
        self.finished_this_run += 1
        counts = count_states(self.study)
        params = " ".join(f"{k}={v:.3f}" for k, v in trial.params.items())
        if trial.state.name == "COMPLETE":
            short = ", ".join(f"{_short(n)} {v:.3g}" for n, v in zip(self.spec.objective_names, trial.values))
            metrics = trial.user_attrs.get(ATTR_METRICS, {})
            broken = [str(c) for c in self.spec.constraints if (v := c.violation_in(metrics)) is None or v > 0]
            outcome = short + (f" (infeasible: {'; '.join(broken)})" if broken else "")
        else:
            self.failed_this_run += 1
            outcome = f"FAILED: {trial.user_attrs.get(ATTR_ERROR, 'unknown error')}"
        elapsed = time.monotonic() - self.started
        remaining = self.launched - self.finished_this_run
        eta = elapsed / self.finished_this_run * remaining if self.finished_this_run else float("nan")
        running = counts.get("RUNNING", 0)
        front = self.front()
        self.say(
            f"[{counts.get('COMPLETE', 0)}/{self.spec.budget.trials}] trial {number} {params} -> {outcome}"
            f" | running {running}, failed {counts.get('FAIL', 0)}, front {len(front)}{self.best(front)}"
            f" | {_clock(elapsed)} elapsed, ETA {_clock(eta)}",
            problem=trial.state.name != "COMPLETE",
        )

    def best(self, front: list) -> str:
        """Best value of each objective among the front (feasible, complete) trials."""
        if not front:
            return ""
        best = []
        for i, objective in enumerate(self.spec.objectives):
            pick = max if objective.direction == "maximize" else min
            best.append(f"{_short(objective.metric)} {pick(t.values[i] for t in front):.3g}")
        return " (best " + ", ".join(best) + ")"

    def front(self) -> list:
        try:
            return self.study.best_trials
        except Exception:  # noqa: BLE001 - no complete trial yet
            return []


def _short(metric: str) -> str:
    """lm_eval/toy_reasoning/exact_match,final -> toy_reasoning; probe/length_retention -> length_retention."""
    parts = metric.split("/")
    return parts[1] if parts[0] == "lm_eval" and len(parts) > 1 else parts[-1]


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


# ---------------------------------------------------------------- ray


def worker_env(spec: SweepSpec) -> dict[str, str]:
    """Environment for Ray workers: one torch thread, offline hubs when the driver is offline."""
    threads = str(spec.resources.torch_threads)
    env = {
        "OMP_NUM_THREADS": threads,
        "MKL_NUM_THREADS": threads,
        "TOKENIZERS_PARALLELISM": "false",
        "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    }
    for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HOME", "SWEEP_DEMO_DIR", "PYTHONPATH"):
        if key in os.environ:
            env[key] = os.environ[key]
    return env


def init_ray(spec: SweepSpec, address: str | None) -> bool:
    """Connect to (or start) Ray. Returns True when this call started it (and should stop it)."""
    import ray

    if ray.is_initialized():
        return False
    address = address or spec.resources.address or os.environ.get("RAY_ADDRESS") or "local"
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env(spec)},
        "log_to_driver": False,  # worker chatter goes to Ray's logs, not the progress display
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if address == "local":
        kwargs.update(include_dashboard=False, dashboard_host="127.0.0.1")
    try:
        ray.init(address=address, **kwargs)
    except ConnectionError as exc:
        raise SweepError(f"cannot reach the Ray cluster at {address}: {exc}") from None
    return True


def _setup_logging(study_dir: Path) -> logging.Handler:
    study_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(study_dir / "sweep.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for name in ("sweep", "ray.tune"):
        logging.getLogger(name).addHandler(handler)
    log.setLevel(logging.INFO)
    # Tune's own console output (trial tracebacks, result-fetch warnings) goes to sweep.log
    # only: the progress lines already say which trial failed and why.
    logging.getLogger("ray.tune").propagate = False
    return handler


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
    """Top the study up to its budget of complete trials. Returns what happened."""
    if trials is not None:
        spec = spec.model_copy(update={"budget": spec.budget.model_copy(update={"trials": trials})})
    study_dir = spec.study_dir
    handler = _setup_logging(study_dir)
    started = time.monotonic()
    try:
        with study_lock(study_dir):
            return _run_locked(spec, address=address, quiet=quiet, trial_fn=trial_fn, stream=stream, started=started)
    finally:
        for name in ("sweep", "ray.tune"):
            logging.getLogger(name).removeHandler(handler)
        handler.close()


def _run_locked(spec: SweepSpec, *, address, quiet, trial_fn, stream, started) -> RunSummary:
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")  # no per-trial CSV/TB files
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(spec.storage_url)
    study = open_study(spec, storage=storage)
    sampler = make_sampler(spec, trials_so_far=len(study.get_trials(deepcopy=False)))
    save_spec_snapshot(spec)
    recovered = recover_orphans(study)
    enqueue_points(study, [dict(p) for p in spec.space.points])
    if spec.warm_start_from:
        from sweep.warmstart import warm_start_points

        enqueue_points(study, warm_start_points(spec))
    complete = count_states(study).get("COMPLETE", 0)
    launch = spec.budget.trials - complete
    out = stream or sys.stdout
    if recovered:
        message = f"marked {len(recovered)} trial(s) orphaned by an earlier driver FAIL and queued their params again: {recovered}"
        log.warning(message)
        print(message, file=out if not quiet else sys.stderr)  # a crashed earlier run: worth a cron mail
    write_table(study, spec)
    if launch <= 0:
        message = f"study '{spec.name}' already has {complete} complete trials (budget {spec.budget.trials}): nothing to run"
        log.info(message)
        if not quiet:
            print(message, file=out)
        return RunSummary(spec.study_dir, spec.budget.trials, complete, 0, 0, recovered, time.monotonic() - started, _front(study))

    progress = Progress(spec=spec, study=study, launched=launch, quiet=quiet, stream=out)
    progress.say(
        f"sweep '{spec.name}': {complete} complete, launching {launch} trial(s), {spec.budget.concurrent} at a time "
        f"(sampler {spec.sampler.name}, storage {spec.storage_url})"
    )
    started_ray = init_ray(spec, address)
    try:
        _fit(spec, study, storage, sampler, launch, progress, trial_fn)
    finally:
        # Trials this run asked for but never finished (Ctrl-C): FAIL now and queue again.
        leftover = recover_orphans(study, reason="interrupted: the run stopped before this trial finished")
        write_table(study, spec)
        if started_ray:
            import ray

            ray.shutdown()
    counts = count_states(study)
    summary = RunSummary(
        spec.study_dir,
        spec.budget.trials,
        counts.get("COMPLETE", 0),
        progress.failed_this_run + len(leftover),
        launch,
        recovered,
        time.monotonic() - started,
        _front(study),
        leftover,
    )
    short = summary.complete < summary.budget
    if leftover:
        progress.say(f"interrupted: trial(s) {leftover} were in flight; they are marked FAIL and queued again", problem=True)
    progress.say(
        f"done: {summary.complete}/{summary.budget} complete, {summary.failed_this_run} failed this run, "
        f"Pareto front {len(summary.front)} trial(s) {summary.front}, {_clock(summary.elapsed_s)}. "
        f"Results in {spec.study_dir}",
        problem=short or summary.failed_this_run > 0,
    )
    if short:
        progress.say(f"the study is {summary.budget - summary.complete} short of its budget: run the same command again to top it up", problem=True)
    return summary


def _front(study) -> list[int]:
    try:
        return sorted(t.number for t in study.best_trials)
    except Exception:  # noqa: BLE001 - no complete trials yet
        return []


def _fit(spec: SweepSpec, study, storage, sampler, launch: int, progress: Progress, trial_fn) -> None:
    from ray import tune

    trial_objects: dict[str, Any] = {}

    class TrialRegistry(tune.Callback):
        """Lets the searcher read a failed trial's error message."""

        def on_trial_start(self, iteration, trials, trial, **info):
            trial_objects[trial.trial_id] = trial

    def on_record(number: int) -> None:
        write_table(study, spec)  # persisted before the next trial is counted
        progress.trial_recorded(number)

    searcher = _study_search_class()(
        spec=spec,
        trial_objects=trial_objects,
        on_record=on_record,
        space=define_space(spec),
        metric=[f"objective_{i}" for i in range(len(spec.objectives))],
        mode=["max" if d == "maximize" else "min" for d in spec.directions],
        sampler=sampler,
        storage=storage,
        study_name=spec.name,
    )
    trainable = tune.with_parameters(_trainable, spec_json=spec.model_dump_json(), trial_fn=trial_fn)
    resources = {"cpu": spec.resources.cpus_per_trial, "gpu": spec.resources.gpus_per_trial}
    tuner = tune.Tuner(
        tune.with_resources(trainable, resources),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=launch,
            max_concurrent_trials=spec.budget.concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"run-{time.strftime('%Y%m%d-%H%M%S')}",
            storage_path=str((spec.study_dir / "ray").resolve()),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.budget.max_failures),
            callbacks=[TrialRegistry()],
        ),
    )
    tuner.fit()
