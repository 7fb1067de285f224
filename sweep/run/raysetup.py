"""Ray for a sweep: connecting (with a clear error when the cluster refuses us), the
workers' environment, whether every node sees the results folder, and keeping Ray's own
chatter out of the console with --quiet.

Ray's core (raylets, the GCS client) writes straight to the process's file descriptors
1 and 2, not through Python logging, so `quiet_console` redirects those descriptors into
sweep.log for the run and gives the progress display copies of the real ones.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sweep.config import SweepSpec
from sweep.errors import SweepError

log = logging.getLogger("sweep")

_AUTH_WORDS = ("InvalidAuthToken", "AuthenticationError", "authentication token", "Unauthenticated", "UNAUTHENTICATED")


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


def resolve_address(spec: SweepSpec, address: str | None) -> str:
    return address or spec.resources.address or os.environ.get("RAY_ADDRESS") or "local"


def choose_local_auth_mode(spec: SweepSpec, address: str | None) -> None:
    """Say RAY_AUTH_MODE=token for a local Ray this driver will start, before Ray is imported.

    Ray 2.60 turns token authentication on for a new local cluster and then warns that it
    did (in every sweep.log), unless RAY_AUTH_MODE is set: setting it to the same secure
    default keeps the warning away at its source. Ray reads the variable once, when it is
    imported, so this runs before the runner (which imports Ray) and does nothing once Ray
    is imported; a mode the user set, or a cluster being joined, is left alone."""
    if resolve_address(spec, address) == "local" and "ray" not in sys.modules:
        os.environ.setdefault("RAY_AUTH_MODE", "token")


@contextmanager
def _captured_fds() -> Iterator[Path]:
    """Descriptors 1 and 2 go to a temp file meanwhile (Ray's C++ warnings land there)."""
    sys.stdout.flush()
    sys.stderr.flush()
    handle = tempfile.NamedTemporaryFile(prefix="sweep-ray-init-", suffix=".log", delete=False)
    saved = os.dup(1), os.dup(2)
    try:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
        yield Path(handle.name)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        handle.close()


def init_ray(spec: SweepSpec, address: str | None) -> tuple[bool, str]:
    """Connect to (or start) Ray. Returns (whether this call started it and should stop it,
    what Ray printed while connecting). Raises SweepError, with the fix, when it cannot."""
    import ray

    if ray.is_initialized():
        return False, ""
    address = resolve_address(spec, address)
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": worker_env(spec)},
        "log_to_driver": False,  # worker chatter goes to Ray's logs, not the progress display
        "logging_level": logging.WARNING,
        "configure_logging": True,
    }
    if address == "local":
        kwargs.update(include_dashboard=False, dashboard_host="127.0.0.1")
    problem: BaseException | None = None
    with _captured_fds() as captured:
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # noqa: BLE001 - ConnectionError, AuthenticationError, RuntimeError...
            problem = exc
    chatter = captured.read_text(errors="replace")
    captured.unlink(missing_ok=True)
    if problem is not None:
        text = f"{type(problem).__name__}: {problem}\n{chatter}"
        if any(word in text for word in _AUTH_WORDS):
            raise SweepError(
                f"the Ray cluster at {address} refused this driver's authentication token (InvalidAuthToken). "
                "Ray 2.60 starts clusters with token authentication on: run the driver with RAY_AUTH_MODE=token "
                "and the cluster's token (the head node's ~/.ray/auth_token copied to this machine, or "
                "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH), or start the cluster with RAY_AUTH_MODE=disabled on a "
                "trusted network. Nothing was created"
            ) from None
        first = str(problem).strip().splitlines()[0] if str(problem).strip() else type(problem).__name__
        raise SweepError(f"cannot reach the Ray cluster at {address}: {first}. Nothing was created") from None
    return True, chatter


@contextmanager
def quiet_console(enabled: bool) -> Iterator[tuple[Any, Any]]:
    """(stdout, stderr) streams for our own lines. When enabled, descriptors 1 and 2 go to a
    temp file meanwhile (Ray's raylet and core-worker output included); `move_console_log`
    then appends it to sweep.log (which may not exist before Ray is reached)."""
    if not enabled:
        yield sys.stdout, sys.stderr
        return
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    out = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    err = os.fdopen(os.dup(saved[1]), "w", buffering=1)
    target = tempfile.NamedTemporaryFile("a", prefix="sweep-console-", suffix=".log", delete=False, buffering=1)
    os.dup2(target.fileno(), 1)
    os.dup2(target.fileno(), 2)
    try:
        yield out, err
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)
        for stream in (out, err, target):
            stream.close()
        CONSOLE_LOGS.append(Path(target.name))


CONSOLE_LOGS: list[Path] = []


def move_console_log(log_file: Path) -> None:
    """Append what --quiet kept off the console to `log_file` (or drop it when there is none)."""
    while CONSOLE_LOGS:
        path = CONSOLE_LOGS.pop()
        try:
            text = path.read_text(errors="replace")
            if text.strip() and log_file.parent.is_dir():
                with open(log_file, "a") as handle:
                    handle.write("---- console output of Ray (kept off stdout/stderr by --quiet)\n" + text)
        finally:
            path.unlink(missing_ok=True)


def _missing(paths: list[str]) -> list[str]:
    return [path for path in paths if not os.path.exists(path)]


def blind_nodes(spec: SweepSpec, paths: list[str], *, timeout_s: float = 60.0) -> dict[str, list[str]]:
    """{node: the `paths` it does not see} over the Ray nodes, other than the driver's own,
    whose resources hold one trial (`resources.cpus_per_trial`, `gpus_per_trial`): one
    zero-CPU task pinned to each. A node that does not answer within `timeout_s`, or is
    lost meanwhile, is left out. {} on a one-node cluster. Ray must be initialized."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    if not paths:
        return {}
    here = ray.get_runtime_context().get_node_id()
    need = {"CPU": spec.resources.cpus_per_trial, "GPU": spec.resources.gpus_per_trial}
    nodes = [
        n
        for n in ray.nodes()
        if n.get("Alive")
        and n["NodeID"] != here
        and all(n["Resources"].get(name, 0.0) >= amount for name, amount in need.items())
    ]
    if not nodes:
        return {}
    missing = ray.remote(num_cpus=0)(_missing)
    asked = {
        missing.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(paths): n
        for n in nodes
    }
    done, late = ray.wait(list(asked), num_returns=len(asked), timeout=timeout_s)
    for ref in late:  # a busy or dying node: not known, not waited for
        ray.cancel(ref)
    blind = {}
    for ref in done:
        try:
            unseen = ray.get(ref)
        except Exception:  # noqa: BLE001 - RayError of a node or worker lost meanwhile: no answer
            continue
        if unseen:
            node = asked[ref]
            blind[f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"] = unseen
    return dict(sorted(blind.items()))


def inputs_problem(spec: SweepSpec) -> str | None:
    """The message refusing a run when a node that can hold a trial does not see a model or
    file the spec names that this driver sees: every trial placed there would fail. A path
    this driver does not see either is `sweep validate`'s to report, not asked here."""
    from sweep.config.checks import worker_inputs

    here = {field: path for field, path in worker_inputs(spec).items() if os.path.exists(path)}
    blind = blind_nodes(spec, sorted(set(here.values())))
    if not blind:
        return None
    fields: dict[str, list[str]] = {}
    for field, path in here.items():
        fields.setdefault(path, []).append(field)
    listed = "; ".join(
        f"{node} does not see " + ", ".join(f"{' and '.join(fields[p])} {p}" for p in unseen)
        for node, unseen in blind.items()
    )
    return (
        f"Ray node(s) that can run trials do not see what the spec names: {listed}. Every trial placed there "
        "would fail: put the models and the spec's files on a file system every node sees, or at the same "
        "paths on each node. Nothing was run"
    )


def unshared_warning(spec: SweepSpec, *, what: str, timeout_s: float = 60.0) -> str | None:
    """A warning when some node of the Ray cluster that can hold a trial's resources does not
    see the study folder (a node-local disk, not a shared file system): what a run there
    checkpoints is on that node's disk, so a run lost with the node starts over elsewhere
    instead of going on. None when every such node sees it (blind_nodes). `what` names what
    would start over. The study folder must exist."""
    import uuid

    marker = Path(spec.study_dir).resolve() / f".sweep-visible-{uuid.uuid4().hex}"
    marker.write_text("written by the sweep driver to see which Ray nodes share this folder\n")
    try:
        blind = blind_nodes(spec, [str(marker)], timeout_s=timeout_s)
    finally:
        marker.unlink(missing_ok=True)
    if not blind:
        return None
    return (
        f"warning: {spec.study_dir} is not on a file system that the Ray node(s) at {', '.join(blind)} see: "
        f"{what} lost with such a node starts over instead of going on from its checkpoint. Put the "
        'results folder on a shared file system (docs/cluster.md, "Node loss")'
    )
