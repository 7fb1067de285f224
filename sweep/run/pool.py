"""Work outside Tune on Ray workers with a trial's resources: probe repeats, calibration's long runs.

Each of `budget.concurrent` actors (num_cpus / num_gpus: `resources.cpus_per_trial` /
`gpus_per_trial`, so Ray places them as it places trials) is warmed once (`warm`: for us
sweep.run.trial.warm_worker, which loads the worker state: the three sources, the live
model, the probe's prompts and engine) and then runs job after job. `run_pool` yields each
job's result as it finishes, so the caller can record it at once: a stopped run keeps what
it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sweep.config import SweepSpec, spec_from_json

JobFn = Callable[..., Any]  # fn(spec, *job) -> a JSON-able result, run on a worker
WarmFn = Callable[[SweepSpec], Any]  # warm(spec), run once on each worker before its first job
# the jobs in flight: each with the seconds since it was sent and its progress, (done, total,
# start) as its worker last reported it (report_progress), or None
Running = list[tuple[tuple[Any, ...], float, tuple[int, int, int] | None]]

LOST_RETRIES = 3  # a job whose worker died (its node lost, its process killed) runs again this often


def run_pool(
    spec: SweepSpec,
    jobs: Sequence[tuple[Any, ...]],
    fn: JobFn,
    *,
    warm: WarmFn | None = None,
    timeout_s: float | None = None,
    heartbeat_s: float | None = None,
    on_wait: Callable[[Running], None] | None = None,
    on_lost: Callable[[tuple[Any, ...], str], None] | None = None,
) -> Iterator[tuple[tuple[Any, ...], Any, str | None]]:
    """Run `fn(spec, *job)` for every job on Ray actors, `budget.concurrent` at a time; yield
    (job, result, None), or (job, None, "Type: last line of the error") when it raised, in
    the order they finish. Ray must be initialized; the actors are killed at the end, also
    when the caller stops early.

    - A worker takes jobs once `warm(spec)` has run on it, so `timeout_s` and the times
      `on_wait` is told count from a job's start, not from loading the models. When `warm`
      raises, that worker is dropped; with none left, the jobs still queued fail with its error.
    - A job running longer than `timeout_s` fails ("timed out after N s"): its worker is
      killed (a hung vLLM engine or collective does not free its GPU otherwise) and a new
      one is started in its place.
    - A job whose worker died (RayActorError: its node was lost, its process killed) is not
      an error of the job: it runs again, up to LOST_RETRIES times (`on_lost(job, why)` is
      told each time), as the sweep requeues a trial lost to infrastructure, and a new
      worker is started in the dead one's place. The new worker takes jobs only once it is
      warm: on a cluster that has just lost a node it may wait for a node to join, while
      the jobs go on on the workers left (the pool shrinks, and grows back when it can).
    - With `heartbeat_s`, `on_wait` gets the running jobs (an empty list: none running, a
      worker still starting), each with how long it has run and how far it got
      (report_progress), whenever that long passes with none finishing.
    """
    import ray
    from ray.exceptions import RayActorError

    if not jobs:
        return
    worker_spec = spec.model_copy(update={"storage": None})  # workers never need the storage
    actor_class = ray.remote(num_cpus=spec.resources.cpus_per_trial, num_gpus=spec.resources.gpus_per_trial)(_Worker)
    # where jobs report their progress, when someone reads it (a process of its own: none otherwise)
    board: Any = ray.remote(num_cpus=0)(_Board).remote() if on_wait is not None else None
    starting: dict[Any, Any] = {}  # the ready() call of a worker warming up -> the worker
    starts_left = [LOST_RETRIES * len(jobs)]  # new workers in place of dead ones: never without end

    def start_worker() -> None:
        worker: Any = actor_class.remote(worker_spec.model_dump_json(), fn, warm, board)
        starting[worker.ready.remote()] = worker

    for _ in range(min(spec.budget.concurrent, len(jobs))):
        start_worker()

    def replace_worker() -> None:
        if starts_left[0] > 0:
            starts_left[0] -= 1
            start_worker()

    queue = list(range(len(jobs)))  # positions in `jobs`
    idle: list[Any] = []
    pending: dict[Any, tuple[int, Any, float]] = {}  # a job's call -> (its position, worker, when sent)
    lost: dict[int, int] = {}  # position -> times its worker died under it
    warm_error: str | None = None
    quiet_since = time.monotonic()
    try:
        while queue or pending:
            while queue and idle:
                position, worker = queue.pop(0), idle.pop()
                if board is not None:
                    board.forget.remote(position)  # a job run again starts its progress anew
                pending[worker.call.remote(position, *jobs[position])] = (position, worker, time.monotonic())
            if not pending and not starting:  # no worker left, none coming: the rest cannot run
                why = f"no worker could start ({warm_error})" if warm_error else "no worker left to run it"
                while queue:
                    yield jobs[queue.pop(0)], None, why
                return
            ready, _ = ray.wait(
                [*pending, *starting], num_returns=1, timeout=_wait_s(pending, timeout_s, heartbeat_s, quiet_since)
            )
            now = time.monotonic()
            if not ready:
                for call, (position, worker, sent) in list(pending.items()):
                    if timeout_s is not None and now - sent >= timeout_s:
                        del pending[call]
                        ray.kill(worker)
                        replace_worker()
                        yield jobs[position], None, f"timed out after {timeout_s:g} s (its worker was stopped)"
                if heartbeat_s is not None and now - quiet_since >= heartbeat_s:
                    quiet_since = now
                    if on_wait is not None:
                        done = _progress(board) if board is not None else {}
                        on_wait([(jobs[p], now - sent, done.get(p)) for p, _, sent in pending.values()])
                continue
            quiet_since = now
            if ready[0] in starting:
                worker = starting.pop(ready[0])
                try:
                    ray.get(ready[0])
                except RayActorError as exc:  # lost before it took a job: start another
                    warm_error = _last_line(exc)
                    replace_worker()
                except Exception as exc:  # noqa: BLE001 - warm raised: this worker cannot run jobs
                    warm_error = _described(exc)
                    ray.kill(worker)
                else:
                    idle.append(worker)
                continue
            position, worker, _ = pending.pop(ready[0])
            job = jobs[position]
            try:
                result, error = ray.get(ready[0]), None
            except RayActorError as exc:  # the worker is gone, not the job's fault
                why = _last_line(exc)
                lost[position] = lost.get(position, 0) + 1
                replace_worker()
                if lost[position] <= LOST_RETRIES:
                    queue.insert(0, position)
                    if on_lost is not None:
                        on_lost(job, why)
                    continue
                result, error = None, f"infrastructure: its worker was lost {lost[position]} times ({why})"
            except Exception as exc:  # noqa: BLE001 - the caller decides what a failed job means
                idle.append(worker)
                result, error = None, _described(exc)
            else:
                idle.append(worker)
            yield job, result, error
    finally:
        for worker in [
            *idle,
            *(w for _, w, _ in pending.values()),
            *starting.values(),
            *([board] if board is not None else []),
        ]:
            ray.kill(worker)


def report_progress(done: int, total: int, start: int = 0) -> None:
    """Inside a pool's job, on its worker: `done` of `total` units finished (a long run's RL
    steps), `start` of them before this run of the job (a run resumed from its checkpoint);
    the driver's heartbeat shows it (`on_wait`). Elsewhere, or in a pool nobody watches
    (no `on_wait`), it does nothing."""
    if _REPORTING and _REPORTING[0][0] is not None:
        board, position = _REPORTING[0]
        board.report.remote(position, done, total, start)


_REPORTING: list[tuple[Any, int]] = []  # on a worker, while a job runs: (the pool's board, the job's position)


def _progress(board: Any) -> dict[int, tuple[int, int, int]]:
    """The jobs' last reported progress, {} when the board does not answer in time."""
    import ray

    try:
        return dict(ray.get(board.read.remote(), timeout=30))
    except Exception:  # noqa: BLE001 - progress is a nicety: the heartbeat goes on without it
        return {}


def _wait_s(pending: dict, timeout_s: float | None, heartbeat_s: float | None, quiet_since: float) -> float | None:
    """How long ray.wait may block: until the next heartbeat or the first job's deadline."""
    now = time.monotonic()
    waits = [quiet_since + heartbeat_s - now] if heartbeat_s is not None else []
    if timeout_s is not None and pending:
        waits.append(min(sent for _, _, sent in pending.values()) + timeout_s - now)
    return max(0.0, min(waits)) if waits else None


def _described(exc: BaseException) -> str:
    cause = getattr(exc, "cause", None) or exc  # a RayTaskError's cause: the worker's own exception
    return f"{type(cause).__name__}: {_last_line(cause)}"


def _last_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[-1].strip() if text else type(exc).__name__


def capacity_warning(spec: SweepSpec) -> str | None:
    """A warning when the Ray cluster has, right now, less than one worker's resources (a
    GPU spec on a machine without one): the pool's actors would wait, not fail, until a
    node that has them joins. None when one worker fits. Ray must be initialized."""
    import ray

    have = ray.cluster_resources()
    need = {"CPU": spec.resources.cpus_per_trial, "GPU": spec.resources.gpus_per_trial}
    short = {name: amount for name, amount in need.items() if amount > have.get(name, 0.0)}
    if not short:
        return None
    asked = " and ".join(f"{amount:g} {name}" for name, amount in short.items())
    has = " and ".join(f"{have.get(name, 0.0):g} {name}" for name in short)
    return (
        f"warning: each worker asks for {asked} (resources.cpus_per_trial / gpus_per_trial) and the Ray "
        f"cluster has {has}: nothing runs until a node that has them joins"
    )


class _Worker:
    """One Ray actor per concurrent slot: imports the spec's plugins, warms up, then runs job after job."""

    def __init__(self, spec_json: str, fn: JobFn, warm: WarmFn | None, board: Any):
        self.spec = spec_from_json(spec_json)  # imports the spec's plugins: on this worker first
        self.fn, self.warm, self.board = fn, warm, board

    def ready(self) -> bool:
        if self.warm is not None:
            self.warm(self.spec)
        return True

    def call(self, position: int, *job: Any) -> Any:
        _REPORTING[:] = [(self.board, position)]
        try:
            return json.loads(json.dumps(self.fn(self.spec, *job)))  # plain data back to the driver
        finally:
            _REPORTING.clear()


class _Board:
    """A Ray actor with no resources of its own: each job's last reported progress, by position."""

    def __init__(self) -> None:
        self.done: dict[int, tuple[int, int, int]] = {}

    def report(self, position: int, done: int, total: int, start: int) -> None:
        self.done[position] = (done, total, start)

    def forget(self, position: int) -> None:
        self.done.pop(position, None)

    def read(self) -> dict[int, tuple[int, int, int]]:
        return self.done
