"""The spec's `plugins:` list: Python modules imported so that the plug-ins they register
(merge methods, samplers, lm-eval and probe backends, reward and balanced rules) are known.

A registry entry exists only in the process that imported its module, so the modules are
imported where the spec loads and again on each Ray worker before it builds anything.
"""

from __future__ import annotations

import importlib
import json
from typing import TYPE_CHECKING, Any

from sweep.errors import ConfigError

if TYPE_CHECKING:
    from sweep.config.schema import SweepSpec


def import_plugins(modules: list[str]) -> list[str]:
    """Import each module (a dotted name on the Python path). Returns one problem line per
    module that cannot be imported, naming it and the error; [] when all imported."""
    problems = []
    for module in modules:
        try:
            importlib.import_module(module)
        except Exception as exc:  # any failure of the user's module is a problem of the spec
            problems.append(f"cannot import plug-in module {module!r}: {type(exc).__name__}: {exc}")
    return problems


def spec_from_json(data: str | dict[str, Any]) -> SweepSpec:
    """A SweepSpec from its JSON (a worker's copy, a study's spec.json), after importing its
    `plugins:` modules: the plug-in names it uses validate only once they are registered in
    this process. ConfigError when a module cannot be imported here."""
    from sweep.config.schema import SweepSpec

    values = json.loads(data) if isinstance(data, str) else data
    problems = import_plugins(list(values.get("plugins") or []))
    if problems:
        raise ConfigError(problems, source="spec plugins")
    return SweepSpec.model_validate(values)
