"""Work outside Tune on Ray workers with a trial's resources: probe repeats, calibration's long runs.

Each of `budget.concurrent` actors (num_cpus / num_gpus: `resources.cpus_per_trial` /
`gpus_per_trial`, so Ray places them as it places trials) builds the worker state once
(sweep.run.trial.worker_state: the three sources, the live model, the probe's prompts and
engine) and then runs job after job. `run_pool` yields each job's result as it finishes,
so the caller can record it at once: a stopped run keeps what it measured.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from sweep.config import SweepSpec, spec_from_json

JobFn = Callable[..., Any]  # fn(spec, *job) -> a JSON-able result, run on a worker


LOST_RETRIES = 3  # a job whose worker died (its node lost, its process killed) runs again this often


def run_pool(
    spec: SweepSpec,
    jobs: Sequence[tuple[Any, ...]],
    fn: JobFn,
    *,
    heartbeat_s: float | None = None,
    on_wait: Callable[[list[tuple[tuple[Any, ...], float]]], None] | None = None,
    on_lost: Callable[[tuple[Any, ...], str], None] | None = None,
) -> Iterator[tuple[tuple[Any, ...], Any, str | None]]:
    """Run `fn(spec, *job)` for every job on Ray actors, `budget.concurrent` at a time; yield
    (job, result, None), or (job, None, "Type: last line of the error") when it raised, in
    the order they finish. A job whose worker died (RayActorError: its node was lost, its
    process killed) is not an error of the job: it runs again on a worker still alive, up
    to LOST_RETRIES times (`on_lost(job, why)` is told each time), as the sweep requeues a
    trial lost to infrastructure. The dead worker is not replaced while others live (a
    replacement the shrunken cluster cannot place would hold its job forever); when none
    is left, one new worker is started. With `heartbeat_s`, `on_wait` gets
    the running jobs, each with the seconds since it was sent, whenever that long passes
    with none finishing (a long job is not silent for hours). Ray must be initialized. The
    actors are killed at the end, also when the caller stops early."""
    import ray
    from ray.exceptions import RayActorError

    if not jobs:
        return
    worker_spec = spec.model_copy(update={"storage": None})  # workers never need the storage
    actor_class = ray.remote(num_cpus=spec.resources.cpus_per_trial, num_gpus=spec.resources.gpus_per_trial)(_Worker)

    def new_worker() -> Any:
        return actor_class.remote(worker_spec.model_dump_json(), fn)

    workers: list[Any] = [new_worker() for _ in range(min(spec.budget.concurrent, len(jobs)))]
    queue = list(jobs)
    idle = list(workers)
    pending: dict[Any, tuple[tuple[Any, ...], Any, float]] = {}
    lost: dict[int, int] = {}  # id(job) -> times its worker died under it
    try:
        while queue or pending:
            while queue and idle:
                job, worker = queue.pop(0), idle.pop()
                pending[worker.call.remote(*job)] = (job, worker, time.monotonic())
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=heartbeat_s)
            if not ready:
                if on_wait is not None:
                    now = time.monotonic()
                    on_wait([(job, now - sent) for job, _, sent in pending.values()])
                continue
            job, worker, _ = pending.pop(ready[0])
            try:
                result, error = ray.get(ready[0]), None
            except RayActorError as exc:  # the worker is gone, not the job's fault
                why = _last_line(exc)
                lost[id(job)] = lost.get(id(job), 0) + 1
                workers.remove(worker)
                if not workers:  # the last one: a new worker, placed where Ray can
                    workers.append(new_worker())
                    idle.append(workers[-1])
                if lost[id(job)] <= LOST_RETRIES:
                    queue.insert(0, job)
                    if on_lost is not None:
                        on_lost(job, why)
                    continue
                result, error = None, f"infrastructure: its worker was lost {lost[id(job)]} times ({why})"
            except Exception as exc:  # noqa: BLE001 - the caller decides what a failed job means
                idle.append(worker)
                cause = getattr(exc, "cause", None) or exc  # a RayTaskError's cause: the worker's own exception
                result, error = None, f"{type(cause).__name__}: {_last_line(cause)}"
            else:
                idle.append(worker)
            yield job, result, error
    finally:
        for worker in workers:
            ray.kill(worker)


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
    """One Ray actor per concurrent slot: imports the spec's plugins, then runs job after job."""

    def __init__(self, spec_json: str, fn: JobFn):
        self.spec = spec_from_json(spec_json)  # imports the spec's plugins: on this worker first
        self.fn = fn

    def call(self, *job: Any) -> Any:
        return json.loads(json.dumps(self.fn(self.spec, *job)))  # plain data back to the driver
