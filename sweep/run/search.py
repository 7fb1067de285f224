"""`StudySearcher`: Ray Tune's public `Searcher` interface over Optuna's ask/tell.

Tune runs the trials; the study decides what to run and holds every outcome.

- `suggest` asks the study for the next point (enqueued fixed points first) through
  `ask_tagged`, which tags the trial with this driver's id before it is RUNNING (in the
  same storage write for a new trial), and returns None (ask again later) or FINISHED by the
  budget that all drivers of the study share: complete + running, over all drivers,
  never exceeds `budget.trials`. A proposal equal to a running or finished trial (two
  drivers racing, or a discrete space) is not run: it is closed PRUNED with a note.
  A grid that has every point done or running ends the run cleanly.
- `on_trial_complete` hands the outcome to the Recorder (spool, then the study). A trial
  lost to infrastructure (its node or actor died) is recorded FAIL with a reason that
  says so, and its params are queued again without counting against this run.
- Orphans of drivers whose lease expired are recovered while waiting for capacity.
- A trial that is RUNNING but was never launched (a proposal cut off by a storage error
  half-way through the ask, so no Tune trial holds it) is closed PRUNED "not run: ...", its
  fixed point queued again: not a failure, not counted (`close_unlaunched`).

Tune pickles the searcher into its experiment state: `__getstate__` keeps nothing live.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray.tune.search import Searcher

from sweep.config import SweepSpec
from sweep.run.asking import ask_tagged, close_unlaunched, unlaunched
from sweep.run.samplers import grid_points, needs_grid
from sweep.study import optuna_compat
from sweep.study.durable import enqueue_points, same_params
from sweep.study.records import ATTR_DRIVER, ATTR_ERROR, ATTR_FAILURE_KIND, TrialResult

log = logging.getLogger("sweep")

RESULT_KEY = "sweep_result"
# seconds: a RUNNING trial of this driver that no Tune trial holds is closed as never run once
# it is this old. A queued point whose pop broke off here may have been popped by another
# driver instead, untagged for the milliseconds until that driver tags it: wait that out.
OWN_STRAY_GRACE_S = 5.0

# Words in a Tune trial error that mean the node, actor or worker process went away (not
# the trial's own code raising: our trainable catches that and reports it as a result).
_INFRA_WORDS = (
    "NodeDiedError",
    "ActorDiedError",
    "ActorUnavailableError",
    "RayActorError",
    "WorkerCrashedError",
    "OwnerDiedError",
    "ObjectLostError",
    "RaySystemError",
    "node",
    "Node",
    "Socket closed",
    "preempt",
    "unavailable",
    "connection",
    "Connection",
)
# A point lost to infrastructure this many times is not queued again (a point that kills its node).
MAX_INFRA_REQUEUES = 3


def is_infrastructure_error(text: str) -> bool:
    return "OutOfMemoryError" not in text and any(word in text for word in _INFRA_WORDS)


class StudySearcher(Searcher):
    def __init__(
        self,
        *,
        spec: SweepSpec,
        study,
        distributions: dict,
        driver: str,
        recorder,
        launch_cap: int,
        is_orphan: Callable[[Any], bool],
        on_record: Callable[..., None],
        recipe: dict | None = None,
        trial_objects: dict | None = None,
        poll_s: float = 1.0,
        grace_s: float = 60.0,
        own_stray_grace_s: float = OWN_STRAY_GRACE_S,
        storage=None,
    ):
        super().__init__(metric=None, mode=None)
        self.spec = spec
        self.study = study
        self.storage = storage if storage is not None else optuna_compat.storage_of(study)
        self.distributions = distributions
        self.driver = driver
        self.recorder = recorder
        self.launch_cap = launch_cap
        self.is_orphan = is_orphan
        self.on_record = on_record
        self.recipe = recipe
        self.trial_objects = trial_objects if trial_objects is not None else {}
        self.poll_s = poll_s
        self.grace_s = grace_s  # seconds: an untagged RUNNING trial younger than this may be tagged yet
        self.own_stray_grace_s = own_stray_grace_s
        self.unsent: set[int] = set()  # trials whose outcome stayed in the spool (storage down)
        self.popping: set[int] = set()  # numbers of queued trials whose pop broke off (see ask_tagged)
        self.live: dict[str, tuple[int, dict]] = {}  # Tune trial id -> (study trial number, params)
        self.launched = 0  # counted against launch_cap (infrastructure losses are not)
        self.stopping = False
        self.grid_exhausted = False
        self.recovered: list[int] = []
        self._next_poll = 0.0
        self._grid = grid_points(spec) if needs_grid(spec) else None

    # ------------------------------------------------------------ Tune's interface

    # Ray types suggest() as Optional[Dict] but documents returning Searcher.FINISHED (a str) to end the search
    def suggest(self, trial_id: str) -> dict | str | None:  # type: ignore[override]
        if self.stopping:
            return Searcher.FINISHED
        if self.launched >= self.launch_cap:
            # Finished once nothing of ours is in flight: a trial lost to its node gives its
            # launch back (and Tune never asks again after FINISHED).
            return None if self.live else Searcher.FINISHED
        now = time.monotonic()
        if now < self._next_poll:
            return None
        try:
            return self._suggest(trial_id)
        except Exception as exc:  # noqa: BLE001 - storage down: ask again shortly, never crash the run
            from sweep.study.recording import storage_errors

            if not isinstance(exc, storage_errors()):
                raise
            log.warning(
                "cannot ask the study for a new trial (storage unreachable?): %s",
                self.recorder.redact(str(exc).splitlines()[0]),
            )
            self._next_poll = now + 5.0
            return None

    def _suggest(self, trial_id: str) -> dict | str | None:
        from optuna.trial import TrialState

        trials = self.study.get_trials(deepcopy=False)
        if self.close_unlaunched(trials):
            trials = self.study.get_trials(deepcopy=False)
        complete = sum(t.state == TrialState.COMPLETE for t in trials)
        running = [t for t in trials if t.state == TrialState.RUNNING]
        if complete >= self.spec.budget.trials:
            return Searcher.FINISHED
        if self._grid is not None and self._grid_done(self._grid, trials):
            if running:  # wait: one of them may fail and leave its point to redo
                self._wait()
                return None
            self.grid_exhausted = True
            return Searcher.FINISHED
        if complete + len(running) >= self.spec.budget.trials:
            # The rest of the budget is running (here or on another driver). Recover the
            # trials of dead drivers; otherwise wait: one of them may fail.
            orphans = [t for t in running if self.is_orphan(t)]
            if orphans:
                from sweep.study.durable import recover_orphans

                self.recovered += recover_orphans(
                    self.study,
                    is_orphan=self.is_orphan,
                    failure_limit=self.spec.budget.point_failure_limit,
                    storage=self.storage,
                    space=self.distributions,
                )
                return None
            self._wait()
            return None
        for _ in range(20):
            trial = ask_tagged(self.study, self.distributions, self.driver, popping=self.popping, storage=self.storage)
            params = dict(trial.params)
            duplicate = self._duplicate_of(trial.number, params)
            if duplicate is None:
                break
            self._skip(trial, f"not run: the same params as trial {duplicate}")
        else:
            log.warning("the sampler proposed only points already run or running; waiting")
            self._wait()
            return None
        # Two drivers may have asked for the last slot at once: the earlier trial number keeps it.
        now = self.study.get_trials(deepcopy=False)
        taken = sum(
            t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and t.number < trial.number) for t in now
        )
        if taken >= self.spec.budget.trials:
            self._skip(trial, "not run: the budget was taken meanwhile by trials of other drivers")
            if trial.system_attrs.get("fixed_params"):
                enqueue_points(self.study, [params])  # a fixed point stays queued for a later slot
            self._wait()
            return None
        self.live[trial_id] = (trial.number, params)
        self.launched += 1
        return dict(params)

    def in_flight(self) -> set[int]:
        """Numbers of this driver's trials that ran: launched and not yet told, or told but kept in the spool."""
        return {number for number, _ in self.live.values()} | self.unsent

    def close_unlaunched(self, trials, *, final: bool = False) -> list[int]:
        """Close RUNNING trials that no driver launched (see `unlaunched`). Returns their numbers.

        `final`: the run is over, so every RUNNING trial of this driver that is not in flight
        was never launched, however young."""
        from optuna.trial import TrialState

        from sweep.study.lease import leases

        untagged = any(t.state == TrialState.RUNNING and ATTR_DRIVER not in t.user_attrs for t in trials)
        known = leases(self.study) if untagged else {}
        closed = []
        for trial in trials:
            if unlaunched(
                trial,
                me=self.driver,
                in_flight=self.in_flight(),
                popping=self.popping,
                leases=known,
                own_grace_s=0.0 if final else self.own_stray_grace_s,
                grace_s=self.grace_s,
            ) and close_unlaunched(
                self.study, trial, failure_limit=self.spec.budget.point_failure_limit, storage=self.storage
            ):
                closed.append(trial.number)
        running = {t.number for t in trials if t.state == TrialState.RUNNING}
        self.popping &= running  # a pop that did not happen, or that was closed: nothing to watch
        if closed:
            log.warning(
                "trial(s) %s were proposed but never launched (storage error mid-ask): closed as not run", closed
            )
        return closed

    def _wait(self) -> None:
        """Ask the study again only after poll_s (the caller then tells Tune: nothing yet)."""
        self._next_poll = time.monotonic() + self.poll_s

    def _grid_done(self, grid: list[dict[str, float]], trials) -> bool:
        from optuna.trial import TrialState

        taken = [t.params for t in trials if t.state in (TrialState.COMPLETE, TrialState.RUNNING) and t.params]
        failed_out = [t.params for t in trials if t.state == TrialState.FAIL and t.params]
        for point in grid:
            if any(same_params(point, p) for p in taken):
                continue
            if sum(same_params(point, p) for p in failed_out) >= self.spec.budget.point_failure_limit:
                continue
            return False
        return True

    def _duplicate_of(self, number: int, params: dict) -> int | None:
        """The number of an earlier COMPLETE or RUNNING trial with these params, if any; also
        a point that already failed point_failure_limit times counts as taken."""
        from optuna.trial import TrialState

        for other in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if (
                other.number != number
                and same_params(other.params, params)
                and (other.state == TrialState.COMPLETE or other.number < number)
            ):
                return other.number
        from sweep.study.durable import error_failures

        if error_failures(self.study, params) >= self.spec.budget.point_failure_limit:
            return -1
        return None

    def _skip(self, trial, note: str) -> None:
        from optuna.trial import TrialState

        if note.endswith("trial -1"):
            note = f"not run: these params already failed {self.spec.budget.point_failure_limit} times"
        trial.set_user_attr(ATTR_ERROR, note)
        trial.set_user_attr(ATTR_FAILURE_KIND, "skipped")
        self.study.tell(trial, state=TrialState.PRUNED)
        log.info("trial %d %s", trial.number, note)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id not in self.live:
            return
        number, params = self.live.pop(trial_id)
        payload = (result or {}).get(RESULT_KEY)
        report = _parse(payload)
        kind = None
        trial_result = None
        message = None
        retries = report.get("retries") or []
        if report.get("result") and not error:
            trial_result = TrialResult.from_dict(report["result"])
        elif report.get("error") and not error:
            message = report["error"]
            kind = report.get("kind") or "error"
            if report.get("traceback"):
                log.error("trial %d raised:\n%s", number, report["traceback"])
        else:
            trial = self.trial_objects.get(trial_id)
            text = error_text(trial) if trial is not None else None
            if text is None:
                # No result, no error reported by the worker and no error text from Tune: nothing
                # raised in the trial, its worker vanished (a node lost a moment before Ray noticed).
                # Requeues of such points are bounded by MAX_INFRA_REQUEUES.
                kind = "infrastructure"
                message = (
                    "infrastructure: the Ray node or worker running this trial was lost "
                    "(it ended without a result or an error; see sweep.log)"
                )
            elif is_infrastructure_error(text):
                kind = "infrastructure"
                message = f"infrastructure: the Ray node or worker running this trial was lost ({text})"
            else:
                kind = "error"
                message = text
        state = self.recorder.record(
            number=number,
            params=params,
            result=trial_result,
            error=message,
            ray_trial_id=trial_id,
            kind=kind,
            retries=retries,
            recipe=self.recipe,
        )
        if state is None:
            self.unsent.add(number)  # it ran: in the spool, never to be closed as not run
        requeued = False
        if kind == "infrastructure":
            self.launched -= 1  # lost to the cluster, not to the trial: this run tries again
            requeued = self._requeue_after_infra(params)
        self.on_record(number, params=params, state=state, result=trial_result, error=message, requeued=requeued)

    def _requeue_after_infra(self, params: dict) -> bool:
        from optuna.trial import TrialState

        lost = sum(
            1
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.user_attrs.get(ATTR_FAILURE_KIND) == "infrastructure" and same_params(t.params, params)
        )
        if lost > MAX_INFRA_REQUEUES:
            log.warning("params %s were lost to infrastructure %d times: not queued again", params, lost)
            return False
        return enqueue_points(self.study, [params]) > 0

    # ------------------------------------------------------------ no state of our own

    def __getstate__(self) -> dict:
        return {"_metric": None, "_mode": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)

    def save(self, checkpoint_path: str) -> None:  # the study is the truth
        pass

    def restore(self, checkpoint_path: str) -> None:
        pass

    def save_to_dir(self, checkpoint_dir: str, session_str: str = "default") -> None:
        pass

    def restore_from_dir(self, checkpoint_dir: str) -> None:
        pass


def _parse(payload: Any) -> dict:
    import json

    if not payload:
        return {}
    try:
        return json.loads(payload) if isinstance(payload, str) else dict(payload)
    except (TypeError, ValueError):
        return {}


def error_text(trial) -> str | None:
    """The last line of a Tune trial's error (e.g. 'ActorDiedError: ...'), or None when Tune
    holds no error text for it (no error file, no error object, or only blank lines)."""
    text = ""
    try:  # Tune writes the error text locally before telling the searcher; storage may lag
        if trial.error_file and Path(trial.error_file).exists():
            text = Path(trial.error_file).read_text(errors="replace")
        else:
            text = str(trial.get_error() or "")
    except Exception:  # noqa: BLE001 - the message is informative only
        pass
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    if not lines:
        return None
    # The exception line names the class; keep it and the last line (the detail).
    named = [line for line in lines if "Error" in line.split(":", 1)[0]]
    head = named[0] if named else lines[-1]
    return (head if head == lines[-1] else f"{head} ... {lines[-1]}")[:2000]
