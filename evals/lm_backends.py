"""lm-eval backends: what gives lm-eval an `LM` that scores a live model's current weights.

A backend is an `LmBackend` subclass built from the LmEvalConfig, registered in
`evals.plugins.LM_BACKENDS` under the name the config's `backend` gives:

    @LM_BACKENDS.register("mine")
    class MyBackend(LmBackend):
        def __init__(self, config): ...
        def lm_for(self, model, tokenizer): ...   # an lm_eval.api.model.LM

Built in: "hf" (`HfBackend`, here) and "vllm" (`evals.vllm_backend.VllmBackend`).
`make_backend(config)` asks the registry. Importing this module is cheap (lm-eval loads
when the first LM is built).
"""

from __future__ import annotations

import weakref
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from core.registry import UnknownName
from evals.answers import think_end_token
from evals.errors import EvalError
from evals.plugins import LM_BACKENDS

if TYPE_CHECKING:
    from evals.lmeval_config import LmEvalConfig


class LmBackend(ABC):
    """Gives lm-eval an LM that scores a live model's current weights.

    Built from an LmEvalConfig (`Backend(config)`); raises EvalError there for settings
    it cannot use, before any model is loaded.
    """

    @abstractmethod
    def lm_for(self, model: Any, tokenizer: Any) -> Any:
        """An lm-eval `LM` for this model; reused while the same objects come back."""

    @property
    def engine(self) -> Any:
        """The inference engine behind this backend's LM, for others in the same worker to
        share (the probe samples its rollouts with it), or None when there is none to share.

        hf: None (HFLM runs the live model object itself). vllm: the `vllm.LLM`, once
        the first `lm_for` built it (None before).
        """
        return None

    def engine_for(self, model: Any, tokenizer: Any) -> Any:
        """`engine`, built first (on this model and tokenizer) where the backend has one
        and has not built it yet; None for a backend without an engine."""
        return self.engine


class HfBackend(LmBackend):
    """lm-eval's HFLM wrapped around the live model (nothing written to disk).

    One HFLM per (model, tokenizer) object pair: when the same model object comes back
    with new weights in place, the same HFLM scores them (it keeps a reference to the
    model, not a copy of its weights).
    """

    def __init__(self, config: LmEvalConfig):
        self.config = config
        self._key: tuple[weakref.ref, weakref.ref] | None = None
        self._lm: Any = None
        self.builds = 0  # HFLM objects built so far (one per model object)

    def lm_for(self, model: Any, tokenizer: Any) -> Any:
        if self._key is not None and self._key[0]() is model and self._key[1]() is tokenizer:
            return self._lm
        from lm_eval.models.huggingface import HFLM

        self._lm = HFLM(
            pretrained=model,
            tokenizer=tokenizer,
            batch_size=self.config.batch_size,
            think_end_token=think_end_token(tokenizer, self.config.think_end, backend="hf"),
        )
        self._key = (weakref.ref(model), weakref.ref(tokenizer))
        self.builds += 1
        return self._lm


def make_backend(config: LmEvalConfig) -> LmBackend:
    """The backend `config.backend` names, built from `config`. EvalError for a name no
    one registered (the message lists the registered ones)."""
    try:
        backend = LM_BACKENDS.get(config.backend)
    except UnknownName as exc:
        raise EvalError(str(exc)) from None
    return backend(config)
