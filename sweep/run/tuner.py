"""Ray Tune's side of `sweep run`: the trainable on a worker, the Tuner, and the signals.

- `_trainable`: runs `sweep.run.trial.run_trial` on a worker, retrying a raising trial up
  to budget.max_failures times, and reports one result (or one error) under RESULT_KEY;
- `fit`: runs Tune with the StudySearcher until the searcher says FINISHED;
- `_Signals`: Ctrl-C and SIGTERM stop Tune gracefully; the run then queues its trials again.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from core.errors import UserError
from sweep.config import SweepSpec, spec_from_json
from sweep.run.search import RESULT_KEY, StudySearcher
from sweep.study.records import TrialResult

log = logging.getLogger("sweep")

TrialFn = Callable[[SweepSpec, dict], TrialResult]


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

    spec = spec_from_json(spec_json)  # imports the spec's plugins: on this worker first
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


def fit(spec: SweepSpec, searcher: StudySearcher, trial_fn: TrialFn | None, signalled: list[int]) -> None:
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
