"""The spec: its schema, cross-field rules, loading and the checks against the files it names.

    from sweep.config import load_spec
    spec = load_spec("space.yaml")      # a SweepSpec, or one ConfigError listing every problem

Modules: schema (SweepSpec and the sweep-only sections; the merge and evals sections are
their libraries' models), rules (rules spanning sections), loading (YAML with line
numbers, `plugins:`), paths (relative paths and demo references), secrets (the storage
password), plugins (importing the spec's plug-in modules), checks (the files a spec names).
The names below are imported on first use, so `import sweep.config` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sweep.config.loading import expand_name, load_spec, parse_spec
    from sweep.config.paths import DEMO_PREFIX, resolve_demo_ref
    from sweep.config.plugins import import_plugins, spec_from_json
    from sweep.config.schema import MODEL_ROLES, ConstraintSpec, SweepSpec
    from sweep.config.secrets import mask_url, redact, url_secrets

_HOMES = {
    "load_spec": "loading",
    "parse_spec": "loading",
    "expand_name": "loading",
    "DEMO_PREFIX": "paths",
    "resolve_demo_ref": "paths",
    "import_plugins": "plugins",
    "spec_from_json": "plugins",
    "MODEL_ROLES": "schema",
    "ConstraintSpec": "schema",
    "SweepSpec": "schema",
    "mask_url": "secrets",
    "redact": "secrets",
    "url_secrets": "secrets",
}
__all__ = [
    "ConstraintSpec",
    "DEMO_PREFIX",
    "MODEL_ROLES",
    "SweepSpec",
    "expand_name",
    "import_plugins",
    "load_spec",
    "mask_url",
    "parse_spec",
    "redact",
    "resolve_demo_ref",
    "spec_from_json",
    "url_secrets",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'sweep.config' has no attribute {name!r}")
    return getattr(importlib.import_module(f"sweep.config.{home}"), name)
