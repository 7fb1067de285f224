"""Paths in a spec: relative ones resolve against the spec file's folder, and
`demo:<member>` references become paths into the demo family.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from sweep.config.schema import MODEL_ROLES, SweepSpec
from sweep.config.secrets import ENV_PREFIX
from sweep.errors import ConfigError

DEMO_PREFIX = "demo:"


def resolve_path(value: str, base_dir: Path) -> str:
    """A path setting made absolute against `base_dir`; URLs and demo references unchanged."""
    if value.startswith(DEMO_PREFIX) or "://" in value:
        return value
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else (base_dir / path).resolve())


def resolve_paths(spec: SweepSpec, base_dir: Path) -> SweepSpec:
    models = spec.models.model_copy(
        update={role: resolve_path(getattr(spec.models, role), base_dir) for role in MODEL_ROLES}
        | (
            {"tokenizer": resolve_path(spec.models.tokenizer, base_dir)}
            if spec.models.tokenizer not in MODEL_ROLES
            else {}
        )
    )
    evals = spec.evals
    if evals.lm_eval is not None:
        evals = evals.model_copy(
            update={
                "lm_eval": evals.lm_eval.model_copy(
                    update={"include_paths": [resolve_path(p, base_dir) for p in evals.lm_eval.include_paths]}
                )
            }
        )
    if evals.probe is not None:
        probe = evals.probe.model_copy(update={"prompts": resolve_path(evals.probe.prompts, base_dir)})
        if probe.reference is not None:
            probe = probe.model_copy(update={"reference": resolve_path(probe.reference, base_dir)})
        if probe.reward.model:
            probe = probe.model_copy(
                update={"reward": probe.reward.model_copy(update={"model": resolve_path(probe.reward.model, base_dir)})}
            )
        evals = evals.model_copy(update={"probe": probe})
    storage = spec.storage
    if storage and storage.startswith(ENV_PREFIX):
        pass  # read when used: the URL (and its password) never enters the spec object
    elif storage and "://" not in storage:
        storage = resolve_path(storage, base_dir)  # a journal file
    elif storage and storage.startswith("sqlite:///") and not storage.startswith("sqlite:////"):
        storage = "sqlite:///" + resolve_path(storage[len("sqlite:///") :], base_dir)
    return spec.model_copy(
        update={
            "models": models,
            "evals": evals,
            "storage": storage,
            "results_dir": resolve_path(spec.results_dir, base_dir),
            "warm_start_from": [resolve_path(p, base_dir) for p in spec.warm_start_from],
        }
    )


def raw_model_problems(text: str, base_dir: Path) -> list[str]:
    """Missing model folders, read from the raw YAML of a spec that failed its schema."""
    try:
        models = (yaml.safe_load(text) or {}).get("models")
    except (yaml.YAMLError, AttributeError):
        return []
    if not isinstance(models, dict):
        return []
    problems = []
    for role in MODEL_ROLES:
        value = models.get(role)
        if (
            isinstance(value, str)
            and not value.startswith(DEMO_PREFIX)
            and not Path(resolve_path(value, base_dir)).is_dir()
        ):
            problems.append(f"models.{role}: {resolve_path(value, base_dir)}: no such checkpoint folder")
    return problems


def uses_demo(spec: SweepSpec) -> bool:
    values = list(spec.models.paths().values()) + [spec.models.tokenizer]
    if spec.evals.lm_eval:
        values += spec.evals.lm_eval.include_paths
    if spec.evals.probe:
        values.append(spec.evals.probe.prompts)
        values += [spec.evals.probe.reference] if spec.evals.probe.reference is not None else []
    return any(v.startswith(DEMO_PREFIX) for v in values)


def resolve_demo_refs(spec: SweepSpec) -> SweepSpec:
    """Replace `demo:<member>` references by real paths into the demo family."""
    if not uses_demo(spec):
        return spec

    def fix(value: str, field: str) -> str:
        return resolve_demo_ref(value, field=field)

    models = spec.models.model_copy(
        update={role: fix(getattr(spec.models, role), f"models.{role}") for role in MODEL_ROLES}
    )
    if models.tokenizer.startswith(DEMO_PREFIX):
        models = models.model_copy(update={"tokenizer": fix(models.tokenizer, "models.tokenizer")})
    evals = spec.evals
    if evals.lm_eval is not None:
        paths = [fix(p, f"evals.lm_eval.include_paths.{i}") for i, p in enumerate(evals.lm_eval.include_paths)]
        evals = evals.model_copy(update={"lm_eval": evals.lm_eval.model_copy(update={"include_paths": paths})})
    if evals.probe is not None:
        update = {"prompts": fix(evals.probe.prompts, "evals.probe.prompts")}
        if evals.probe.reference is not None:
            update["reference"] = resolve_demo_ref(
                evals.probe.reference, field="evals.probe.reference", members=MODEL_ROLES
            )
        evals = evals.model_copy(update={"probe": evals.probe.model_copy(update=update)})
    return spec.model_copy(update={"models": models, "evals": evals})


def resolve_demo_ref(value: str, *, field: str, members: tuple[str, ...] | None = None) -> str:
    """`demo:<member>` -> that member's absolute path in the demo family (the shipped one,
    or the one $SWEEP_DEMO_DIR names; seconds, nothing trained); any other value comes back
    unchanged. `field` names the setting or command-line flag in the ConfigError raised
    for an unknown member; `members` (e.g. the three checkpoints) narrows which members
    the field accepts, checked before the family is opened."""
    if not value.startswith(DEMO_PREFIX):
        return value
    member = value[len(DEMO_PREFIX) :]
    if members is not None and member not in members:
        kind = "checkpoint" if set(members) <= {"pretrained", "instruct", "reasoning"} else "member for this"
        raise ConfigError(
            [f"{field}: {value!r} is not a demo {kind}; use one of {', '.join(DEMO_PREFIX + m for m in members)}"]
        )
    from sweep.demo import resolve_ref

    return resolve_ref(value, field=field)
