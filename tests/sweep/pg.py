"""A throwaway PostgreSQL server for tests: Debian's `postgresql` binaries, run as the
`postgres` user when we are root (the server refuses root), in a temp data folder, on a
free port of 127.0.0.1, with password authentication for a `sweep` user."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

PASSWORD = "Pg-s3cret-7f3a9c"  # the tests grep everything a sweep wrote for this string


def _bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.initdb, self.pg_ctl, self.psql = _bin("initdb"), _bin("pg_ctl"), _bin("psql")
        if not (self.initdb and self.pg_ctl and self.psql):
            raise RuntimeError("PostgreSQL binaries (initdb, pg_ctl, psql) not found: apt-get install postgresql")
        self.as_root = os.geteuid() == 0
        self.root = Path(tempfile.mkdtemp(prefix="sweep-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.log = self.root / "server.log"
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o755)

    def _run(self, *cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        prefix = ["runuser", "-u", "postgres", "--"] if self.as_root else []
        return subprocess.run(
            [*prefix, *cmd], capture_output=True, text=True, timeout=timeout, check=check, cwd=self.root
        )

    def start(self) -> PostgresServer:
        if not self.data.exists():
            self._run(
                self.initdb,
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                timeout=120,
            )
        opts = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            self.pg_ctl, "-D", str(self.data), "-o", opts, "-l", str(self.log), "-w", "-t", "60", "start", timeout=90
        )
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop", check=False, timeout=90)

    def sql(self, statement: str) -> str:
        out = self._run(
            self.psql,
            "-h",
            str(self.root),
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            statement,
        )
        return out.stdout

    def create_database(self, name: str) -> str:
        """A fresh database owned by user sweep; returns its URL (with the password)."""
        if not self.sql("SELECT 1 FROM pg_roles WHERE rolname = 'sweep'").strip():
            self.sql(f"CREATE ROLE sweep LOGIN PASSWORD '{PASSWORD}'")
        self.sql(f"CREATE DATABASE {name} OWNER sweep")
        return f"postgresql://sweep:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def start_or_skip_reason() -> tuple[PostgresServer | None, str]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return None, "psycopg is not installed (pip install -e '.[postgres]')"
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        return None, str(exc)
    try:
        server.start()
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        server.close()
        return None, f"could not start PostgreSQL: {exc} {detail[-500:]}"
    for _ in range(50):  # -w waits for readiness already; this covers a slow first connection
        try:
            server.sql("SELECT 1")
            break
        except subprocess.CalledProcessError:
            time.sleep(0.2)
    return server, ""
