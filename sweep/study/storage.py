"""Connecting to the study's storage: one clear error when it cannot be had, before anything is created.

- `check_storage(spec)` (validate and run call it first): the URL is set (env:VAR), its
  database driver is installed, and an RDB server answers. Raises SweepError naming the
  fix; the password is masked in every message.
- `connect(url)`: the Optuna storage object. RDB URLs give RDBStorage (with connection
  pre-ping, so a restarted server is reconnected to); anything else is a journal file
  (JournalStorage, good on a shared file system). Schema creation is retried when
  several drivers create it at once on a fresh database (PostgreSQL then reports a
  unique violation on its catalog for one of them).
"""

from __future__ import annotations

import random
import time
from pathlib import Path

from sweep.config import SweepSpec, mask_url, redact, url_secrets
from sweep.errors import SweepError

# dialect -> (DB-API module, what to install)
_DRIVERS = {
    "postgresql": ("psycopg", "pip install 'sweep[postgres]'  (psycopg 3)"),
    "postgresql+psycopg": ("psycopg", "pip install 'sweep[postgres]'  (psycopg 3)"),
    "postgresql+psycopg2": (
        "psycopg2",
        "pip install psycopg2-binary, or use postgresql:// with pip install 'sweep[postgres]'",
    ),
    "mysql": ("MySQLdb", "pip install mysqlclient, or use mysql+pymysql:// with pip install pymysql"),
    "mysql+pymysql": ("pymysql", "pip install pymysql"),
}
CONNECT_TIMEOUT_S = 10


def is_rdb(url: str) -> bool:
    return "://" in url


def _scheme(url: str) -> str:
    return url.split("://", 1)[0].lower()


def check_driver(url: str) -> None:
    import importlib.util

    scheme = _scheme(url)
    if scheme in _DRIVERS:
        module, fix = _DRIVERS[scheme]
        if importlib.util.find_spec(module) is None:
            raise SweepError(
                f"storage {mask_url(url)}: the database driver `{module}` is not installed: {fix}. Nothing was created"
            )


def check_storage(spec: SweepSpec) -> None:
    """Raise SweepError (exit 2) when the spec's storage cannot be used; creates nothing."""
    url = spec.storage_url  # raises ConfigError when env:VAR is unset
    file = storage_file(url)
    if file is not None:
        _check_storage_folder(spec, url, file.parent)
        return
    if url.startswith("sqlite:"):
        return  # sqlite://:memory: and the like
    check_driver(url)
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, connect_args=_connect_args(url), poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as connection:
            connection.execute(sqlalchemy.text("SELECT 1"))
    except Exception as exc:  # noqa: BLE001 - any failure to connect is the same user-facing problem
        detail = redact(" ".join(str(getattr(exc, "orig", None) or exc).split()), url_secrets(url))
        raise SweepError(
            f"cannot reach the storage {mask_url(url)}: {detail[:500]}. Check that the server runs and accepts "
            "this user, host and database (the URL, or the variable it comes from). Nothing was created"
        ) from None
    finally:
        engine.dispose()


def storage_file(url: str) -> Path | None:
    """The file of a file storage: a journal path, or the database of a `sqlite:///` URL; None for a server."""
    if not is_rdb(url):
        return Path(url)
    if url.startswith("sqlite:///"):
        return Path(url[len("sqlite:///") :])
    return None


def _check_storage_folder(spec: SweepSpec, url: str, folder: Path) -> None:
    """A file storage's folder must exist, except the study folder, which the run creates.

    Creating any other folder would hide an unmounted share: the study would be written to
    the local disk under the mount point, and the next run (with the share mounted) would
    start from nothing."""
    if folder.is_dir():
        return
    if folder.exists():
        raise SweepError(f"storage {mask_url(url)}: {folder} is not a folder")
    if folder.resolve() == spec.study_dir.resolve():
        return
    raise SweepError(
        f"{mask_url(url)}: the folder {folder} does not exist. If it is on a shared file system, "
        "the share may not be mounted on this machine; otherwise create the folder first (mkdir -p). "
        "Nothing was created"
    )


def storage_problems(spec: SweepSpec) -> list[str]:
    """`check_storage` as a list of problems (for validate and run, with the spec's other problems)."""
    from sweep.errors import ConfigError

    try:
        check_storage(spec)
    except ConfigError as exc:
        return exc.problems
    except SweepError as exc:
        return [f"storage: {exc}"]
    return []


def _connect_args(url: str) -> dict:
    return {"connect_timeout": CONNECT_TIMEOUT_S} if _scheme(url).startswith(("postgresql", "mysql")) else {}


def connect(url: str, *, attempts: int = 6):
    """The Optuna storage object for `url` (Ray needs an object, not a URL)."""
    import optuna

    if not is_rdb(url):
        from optuna.storages.journal import JournalFileBackend

        Path(url).parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(JournalFileBackend(url))
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
        # seconds: wait for the lock instead of failing when two processes write at once
        engine_kwargs: dict = {"connect_args": {"timeout": 60}}
    else:
        check_driver(url)
        engine_kwargs = {"pool_pre_ping": True, "connect_args": _connect_args(url)}
    import sqlalchemy.exc

    for attempt in range(attempts):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, optuna.exceptions.StorageInternalError):
            # Another process is creating the schema right now (PostgreSQL: UniqueViolation on
            # pg_type; SQLite: the alembic_version row); once it is done, loading it works.
            if attempt == attempts - 1:
                raise
            time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))
        except sqlalchemy.exc.OperationalError as exc:
            if url.startswith("sqlite:") and attempt < attempts - 1:
                time.sleep(random.uniform(0.2, 1.0) * (attempt + 1))  # "database is locked" during creation
                continue
            detail = redact(" ".join(str(getattr(exc, "orig", None) or exc).split()), url_secrets(url))
            raise SweepError(f"cannot reach the storage {mask_url(url)}: {detail[:500]}") from None
    raise AssertionError("unreachable")
