"""The demo model family: three tiny checkpoints sharing one pretrained ancestor.

Specs and commands refer to members as `demo:<member>`; `resolve_ref` turns them into
paths into the family shipped with sweep (`sweep/demo/family/`, checked against its
checksums), or into the rebuilt family that `$SWEEP_DEMO_DIR` names. Nothing here trains:
only `python -m sweep demo build --rebuild` does.
"""

from __future__ import annotations

from sweep.errors import ConfigError

MEMBERS = ("pretrained", "instruct", "reasoning", "tasks", "probe_prompts")


def resolve_ref(ref: str, *, field: str) -> str:
    member = ref.split(":", 1)[1]
    if member not in MEMBERS:
        raise ConfigError([f"{field}: unknown demo member '{member}'; known: {', '.join(MEMBERS)}"])
    from sweep.demo.build import active_family

    return str(getattr(active_family(), member))
