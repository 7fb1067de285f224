"""A real two-node Ray cluster on 127.0.0.1 for tests: `ray start --head` plus a second
`ray start --address`, each node with one CPU. Stopped by killing exactly the processes
whose command line names this cluster's temp folder (never `ray stop`, which would stop
every Ray on the machine)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, *, private: tuple[Path, ...] = ()):
        """`private`: folders the worker node sees as empty disks of its own (a tmpfs mounted
        over each in a mount namespace of its own), as a node-local results folder is."""
        self.private = private
        self.temp = Path(tempfile.mkdtemp(prefix="sweep-ray-"))
        self.port = _free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Token authentication, as `ray start --head` turns it on by default in Ray 2.60: a
        # joining node or a driver needs RAY_AUTH_MODE=token to send the token (~/.ray/auth_token).
        self.env = os.environ | {
            "RAY_USAGE_STATS_ENABLED": "0",
            "OMP_NUM_THREADS": "1",
            "RAY_AUTH_MODE": "token",
            "SWEEP_TEST_TRIAL_S": "3",
        }  # workers take the node's environment, not the driver's

    def _ray(self, *args: str, wrap: tuple[str, ...] = (), timeout: float = 120) -> str:
        proc = subprocess.run([*wrap, RAY, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(
                f"ray {' '.join(args)} failed ({proc.returncode}): {proc.stdout[-2000:]} {proc.stderr[-2000:]}"
            )
        return proc.stdout + proc.stderr

    def start(self) -> LocalCluster:
        self._ray(
            "start",
            "--head",
            "--node-ip-address=127.0.0.1",
            f"--port={self.port}",
            "--num-cpus=1",
            "--resources",
            json.dumps({"head_node": 1}),
            "--include-dashboard=false",
            f"--temp-dir={self.temp}",
            "--disable-usage-stats",
        )
        self.start_worker()
        return self

    def start_worker(self) -> None:
        """A worker node (one CPU, resource worker_node) joins the head: at start, or again
        after a test killed it."""
        wrap: tuple[str, ...] = ()
        if self.private:  # `unshare` runs the node in a mount namespace of its own
            mounts = " && ".join(f"mount -t tmpfs none {shlex.quote(str(p))}" for p in self.private)
            wrap = ("unshare", "--mount", "--map-root-user", "sh", "-c", f'{mounts} && exec "$@"', "sh")
        self._ray(
            "start",
            f"--address={self.address}",
            "--node-ip-address=127.0.0.1",
            "--num-cpus=1",
            "--resources",
            json.dumps({"worker_node": 1}),
            "--disable-usage-stats",
            wrap=wrap,
        )

    def pids(self, *words: str) -> list[int]:
        """Processes of this cluster (their command line names its temp folder, or its port)."""
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if (str(self.temp) in cmdline or f":{self.port}" in cmdline) and all(w in cmdline for w in words):
                found.append(int(proc.name))
        return [p for p in found if p != os.getpid()]

    def worker_raylet(self) -> int:
        """The pid of the worker node's raylet (the one whose resources name worker_node)."""
        pids = [p for p in self.pids("raylet/raylet") if "worker_node" in _cmdline(p)]
        if len(pids) != 1:
            raise RuntimeError(f"expected one worker raylet, found {pids}")
        return pids[0]

    def stop(self) -> None:
        for _ in range(3):
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        shutil.rmtree(self.temp, ignore_errors=True)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
