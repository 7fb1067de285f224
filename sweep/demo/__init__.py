"""The demo model family: three tiny checkpoints sharing one pretrained ancestor.

Specs refer to members as `demo:<member>`; `resolve_ref` turns them into paths,
building the family on first use (cached afterwards).
"""

from __future__ import annotations

import os
from pathlib import Path

from sweep.errors import ConfigError

MEMBERS = ("pretrained", "instruct", "reasoning", "tasks", "probe_prompts")


def cache_root() -> Path:
    """Where the family is cached: $SWEEP_DEMO_DIR, else ~/.cache/sweep/demo."""
    env = os.environ.get("SWEEP_DEMO_DIR")
    return Path(env).expanduser().resolve() if env else Path.home() / ".cache" / "sweep" / "demo"


def resolve_ref(ref: str, *, field: str) -> str:
    member = ref.split(":", 1)[1]
    if member not in MEMBERS:
        raise ConfigError([f"{field}: unknown demo member '{member}'; known: {', '.join(MEMBERS)}"])
    from sweep.demo.build import ensure_family

    family = ensure_family()
    return str(getattr(family, member))
