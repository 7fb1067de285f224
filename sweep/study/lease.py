"""Driver leases: several `sweep run` drivers on one study, each knowing which work is alive.

Each driver holds a lease in the study itself (a study user attribute
`sweep_driver:<id>` holding host, pid, start and heartbeat times, in UTC seconds) and
renews it every `ttl_s / 6` from a background thread. Every trial a driver launches is
tagged with the driver's id (trial user attribute `driver`).

A lease is expired when its heartbeat is older than its ttl, when its driver ended
(clean exit), or, on the same host, as soon as its pid is gone (a kill -9 is seen at
once by the next run on that machine). Orphan recovery (sweep.study.durable.recover_orphans)
touches only RUNNING trials whose driver's lease expired: a live driver's work is
never marked FAIL.

Clocks: heartbeats compare wall-clock time across hosts; keep the hosts' clocks within
a few seconds (NTP) of each other, far below the ttl.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger("sweep")

LEASE_PREFIX = "sweep_driver:"
# seconds: a driver silent this long is dead (6 missed heartbeats)
DEFAULT_TTL_S = float(os.environ.get("SWEEP_LEASE_TTL_S", "60"))


@dataclass(frozen=True)
class LeaseInfo:
    driver: str
    host: str
    pid: int
    started: float
    heartbeat: float
    ttl_s: float
    ended: bool = False

    def expired(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.ended or now - self.heartbeat > self.ttl_s:
            return True
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return True
        return False

    def describe(self) -> str:
        return f"driver {self.driver} ({self.host} pid {self.pid})"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leases(study) -> dict[str, LeaseInfo]:
    """Every lease ever recorded on the study, by driver id."""
    found = {}
    for key, value in study.user_attrs.items():
        if key.startswith(LEASE_PREFIX) and isinstance(value, dict):
            try:
                found[key[len(LEASE_PREFIX) :]] = LeaseInfo(**value)
            except TypeError:
                continue
    return found


def live_drivers(study, *, now: float | None = None) -> dict[str, LeaseInfo]:
    return {d: info for d, info in leases(study).items() if not info.expired(now)}


def is_orphan_fn(study, me: str, grace_s: float):
    """is_orphan(trial): a RUNNING trial whose driver's lease expired (never one of `me`'s)."""
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
        start = trial.datetime_start
        if start is None:
            return True
        if start.tzinfo is None:
            start = start.astimezone(UTC)
        if not driver and any(lease.started <= start.timestamp() for lease in cache["leases"].values()):
            return False
        return (datetime.now(UTC) - start).total_seconds() > grace_s

    return is_orphan


class Lease:
    """This driver's lease: `start()` records it and starts the heartbeat, `end()` releases it."""

    def __init__(self, study, *, ttl_s: float = DEFAULT_TTL_S, driver: str | None = None):
        self.study = study
        self.ttl_s = float(ttl_s)
        self.driver = driver or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_beat_ok = True

    @property
    def key(self) -> str:
        return LEASE_PREFIX + self.driver

    def _record(self, *, ended: bool = False) -> None:
        info: dict[str, Any] = {
            "driver": self.driver,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "heartbeat": time.time(),
            "ttl_s": self.ttl_s,
            "ended": ended,
        }
        self.study.set_user_attr(self.key, info)

    def start(self) -> Lease:
        self._record()
        self._thread = threading.Thread(target=self._beat, name="sweep-lease", daemon=True)
        self._thread.start()
        return self

    def _beat(self) -> None:
        interval = max(0.5, self.ttl_s / 6)
        while not self._stop.wait(interval):
            try:
                self._record()
                if not self.last_beat_ok:
                    log.info("lease heartbeat reaches the storage again")
                self.last_beat_ok = True
            except Exception as exc:  # noqa: BLE001 - the storage may be down for a while: keep trying
                if self.last_beat_ok:
                    log.warning("lease heartbeat failed (storage unreachable?): %s", exc)
                self.last_beat_ok = False

    def end(self) -> None:
        """Stop the heartbeat and mark the lease ended (its leftover trials are orphans at once)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self._record(ended=True)
        except Exception as exc:  # noqa: BLE001 - the lease then expires by its ttl
            log.warning("could not release the lease (it expires in %.0f s): %s", self.ttl_s, exc)
