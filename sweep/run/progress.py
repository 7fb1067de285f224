"""What a running sweep prints: one line per finished trial (counts, Pareto front, best
values, elapsed, ETA), and the same lines in sweep.log.

With quiet (cron), only problems print, on stderr: failed trials, orphans, the summary
of a short or interrupted run. A clean run prints nothing, so cron mails nothing.
"""

from __future__ import annotations

import logging
import math
import sys
import time

from sweep.config import SweepSpec, redact
from sweep.study.durable import INTERRUPTED, count_states

log = logging.getLogger("sweep")


class Progress:
    def __init__(self, *, spec: SweepSpec, study, launched: int, quiet: bool, stream=None, err=None):
        self.spec = spec
        self.study = study
        self.launched = launched
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self.err = err or sys.stderr
        self.started = time.monotonic()
        self.finished_this_run = 0
        self.failed_this_run = 0
        self.secrets = spec.secrets()

    def say(self, line: str, *, problem: bool = False) -> None:
        """Log and print a line. With quiet, only problems print (to stderr)."""
        line = redact(line, self.secrets)
        (log.warning if problem else log.info)(line)
        if not self.quiet:
            print(line, file=self.stream, flush=True)
        elif problem:
            print(line, file=self.err, flush=True)

    def trial_recorded(
        self,
        number: int,
        *,
        params: dict,
        state: str | None,
        values: list | None,
        metrics: dict,
        error: str | None,
        requeued: bool = False,
    ) -> None:
        """A trial ended; `state` is what the study was told (None: kept in the spool for now)."""
        self.finished_this_run += 1
        shown = " ".join(f"{k}={v:.3f}" for k, v in params.items())
        if state == "COMPLETE" and values is not None:
            short = ", ".join(
                f"{short_name(n)} {v:.3g}" for n, v in zip(self.spec.objective_names, values, strict=True)
            )
            broken = [str(c) for c in self.spec.constraints if (v := c.violation_in(metrics)) is None or v > 0]
            outcome = short + (f" (infeasible: {'; '.join(broken)})" if broken else "")
        elif state is None:
            outcome = "finished, but the storage is unreachable: kept in the spool, sent by the next run"
        else:
            self.failed_this_run += 0 if requeued else 1
            outcome = f"FAILED: {error or 'unknown error'}" + ("; its params are queued again" if requeued else "")
        elapsed = time.monotonic() - self.started
        remaining = max(0, self.launched - self.finished_this_run)
        eta = elapsed / self.finished_this_run * remaining if self.finished_this_run else float("nan")
        try:
            counts = count_states(self.study)
            front = self.front()
            status = (
                f"[{counts.get('COMPLETE', 0)}/{self.spec.budget.trials}] trial {number} {shown} -> {outcome}"
                f" | running {counts.get('RUNNING', 0)}, failed {counts.get('FAIL', 0)}"
                + (f", interrupted {counts[INTERRUPTED]} (queued again)" if counts.get(INTERRUPTED) else "")
                + f", front {len(front)}{self.best(front)}"
            )
        except Exception:  # noqa: BLE001 - the storage may be down: the line still says what ended
            status = f"[?/{self.spec.budget.trials}] trial {number} {shown} -> {outcome} | storage unreachable"
        self.say(f"{status} | {clock(elapsed)} elapsed, ETA {clock(eta)}", problem=state != "COMPLETE")

    def best(self, front: list) -> str:
        """Best value of each objective among the front (feasible, complete) trials."""
        if not front:
            return ""
        best = []
        for i, objective in enumerate(self.spec.objectives):
            pick = max if objective.direction == "maximize" else min
            best.append(f"{short_name(objective.metric)} {pick(t.values[i] for t in front):.3g}")
        return " (best " + ", ".join(best) + ")"

    def front(self) -> list:
        try:
            return self.study.best_trials
        except ValueError:  # no complete trial yet
            return []


def short_name(metric: str) -> str:
    """lm_eval/toy_reasoning/exact_match,final -> toy_reasoning; probe/length_retention -> length_retention."""
    parts = metric.split("/")
    return parts[1] if parts[0] == "lm_eval" and len(parts) > 1 else parts[-1]


def clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
        if seconds >= 3600
        else f"{seconds // 60}:{seconds % 60:02d}"
    )


def duration(seconds: float) -> str:
    """A long job's time in words: seconds under 10 minutes (`5 s`, `119 s`: a minute
    rounded down would hide half of it), then minutes (`59 min`), then `2:10 h`."""
    minutes = int(seconds // 60)
    if minutes >= 60:
        return f"{minutes // 60}:{minutes % 60:02d} h"
    return f"{minutes} min" if minutes >= 10 else f"{seconds:.0f} s"


def so_far(seconds: float, done: tuple[int, ...] | None) -> str:
    """How long a long run has run, and (when its worker said) its step and the time left.
    `done`: (step, steps) or (step, steps, start): a run resumed at step `start` took
    `seconds` for its steps after `start`, and its pace is read from those."""
    if not done or not done[0]:
        return duration(seconds)
    step, steps, *rest = done
    start = rest[0] if rest else 0
    if step <= start:  # resumed, no step of its own yet
        return f"{duration(seconds)} (step {step}/{steps})"
    left = seconds * (steps - step) / (step - start)
    return f"{duration(seconds)} (step {step}/{steps}, about {duration(left)} left)"


class RedactFilter(logging.Filter):
    """Masks secrets (the storage password) in every record written to sweep.log."""

    def __init__(self, secrets: list[str]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = redact(record.getMessage(), self.secrets)
            record.args = None
        return True


def setup_logging(study_dir, secrets: list[str]) -> logging.Handler:
    study_dir.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(study_dir / "sweep.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactFilter(secrets))
    for name in ("sweep", "ray.tune", "ray"):
        logging.getLogger(name).addHandler(handler)
    log.setLevel(logging.INFO)
    # Tune's own console output (trial tracebacks, result-fetch warnings) goes to sweep.log
    # only: the progress lines already say which trial failed and why.
    logging.getLogger("ray.tune").propagate = False
    return handler


def teardown_logging(handler: logging.Handler) -> None:
    for name in ("sweep", "ray.tune", "ray"):
        logging.getLogger(name).removeHandler(handler)
    handler.close()
