"""Spec drift: a fingerprint of everything that decides a trial's outcome.

The study records it when it is created. A later run whose fingerprint differs would put
trials measured under other settings on one Pareto front, so `check_fingerprint` refuses
it, naming each changed field with its old and new value.

What counts: the model files (each safetensors file's size and a sha256 of its header,
which names every tensor with its dtype, shape and offsets; config.json), the merge
settings, the search evals (lm-eval settings except the held-out report tasks) and the
probe settings (the prompts file by content). Not counted: where files live, the
search space, the budget, resources, the report section, the settings that only change
memory or placement (MEMORY_ONLY) and a clip ratio that never acts.

The recipe is what rebuilds a trial's candidate (models and merge); every trial records
it, and export and held-out rescoring use the trial's recipe, not the latest spec's.
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any

from merge.config import MergeConfig
from sweep.config.schema import MODEL_ROLES, ModelsSpec, SweepSpec
from sweep.errors import SweepError

STUDY_ATTR_FINGERPRINT = "sweep_fingerprint"

# Fields added after studies were recorded, with the value that reproduces the behaviour
# from before they existed. A fingerprint leaves such a field out at that value, so a
# study recorded earlier goes on under a spec that sets it; any other value is a change.
ADDED_FIELDS: dict[str, Any] = {
    "evals.probe.skip_flat_batches": False,
    "evals.probe.reference": None,
    "evals.probe.loss_agg": "token-mean",
    "evals.probe.mini_batches": 1,
    "evals.probe.clip_ratio": 0.2,
}

# Settings that change how a trial fits in memory or where its arithmetic runs, not what it
# measures: the probe's curves are the same to rounding with micro-batches, chunked
# log-probs and activation checkpointing (tests/evals/test_probe.py), and the merge is the
# same arithmetic wherever the sources lie. Left out, so that a study whose trials ran out
# of memory goes on with a smaller micro-batch instead of starting again under a new name.
MEMORY_ONLY = frozenset(
    {
        "merge.device",
        "merge.source_device",
        "evals.probe.micro_batch_size",
        "evals.probe.logprob_chunk",
        "evals.probe.activation_checkpointing",
    }
)

# bytes of a safetensors header read: the length prefix says how long it is; 100 MB is
# far above any real header (a 70B model's is a few MB)
_MAX_HEADER = 100_000_000


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _safetensors_header_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return "short-file"
        (length,) = struct.unpack("<Q", prefix)
        header = handle.read(min(length, _MAX_HEADER))
    return hashlib.sha256(prefix + header).hexdigest()[:16]


def model_digest(folder: str) -> str:
    """sha256 over (name, size, header hash) of each safetensors file and config.json's content."""
    root = Path(folder)
    if not root.is_dir():
        return f"missing:{folder}"
    parts = []
    for path in sorted(root.glob("*.safetensors")):
        parts.append(f"{path.name}:{path.stat().st_size}:{_safetensors_header_digest(path)}")
    config = root / "config.json"
    if config.exists():
        parts.append(f"config.json:{_file_digest(config)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _flatten(value: Any, prefix: str, out: dict[str, Any]) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(value[key], f"{prefix}.{key}" if prefix else str(key), out)
    else:
        out[prefix] = value


def fingerprint(spec: SweepSpec) -> dict[str, Any]:
    """{dotted field: value} of everything that decides a trial's outcome (JSON-able)."""
    data: dict[str, Any] = {}
    for role in MODEL_ROLES:
        data[f"models.{role}"] = model_digest(getattr(spec.models, role))
    merge = spec.merge.model_dump(mode="json")
    evals: dict[str, Any] = {}
    if spec.evals.lm_eval is not None:
        evals["lm_eval"] = spec.evals.lm_eval.model_dump(mode="json", exclude={"report_tasks", "include_paths"})
    if spec.evals.probe is not None:
        probe = spec.evals.probe.model_dump(mode="json")
        prompts = Path(probe["prompts"])
        probe["prompts"] = _file_digest(prompts) if prompts.is_file() else f"missing:{prompts}"
        if probe.get("reference") is not None:  # the weights decide, not where they lie
            probe["reference"] = model_digest(probe["reference"])
        evals["probe"] = probe
    _flatten({"merge": merge, "evals": evals}, "", data)
    return _comparable({k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()})


def _comparable(values: dict[str, Any]) -> dict[str, Any]:
    """`values` without what does not decide an outcome: the memory-only settings, fields
    added since at the value that reproduces the behaviour from before them, and the clip
    ratio of a probe that takes one update a step (its policy is the sampling one, so the
    ratio is 1 and the clip never acts). Applied to recorded fingerprints too, so a study
    recorded with such a field goes on whatever its value now is."""
    inert = set(MEMORY_ONLY)
    if values.get("evals.probe.mini_batches", ADDED_FIELDS["evals.probe.mini_batches"]) == 1:
        inert.add("evals.probe.clip_ratio")
    return {k: v for k, v in values.items() if k not in inert and not (k in ADDED_FIELDS and _same(v, ADDED_FIELDS[k]))}


def fingerprint_hash(values: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def changed_fields(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'field: old -> new' for each field that differs (added or removed fields included)."""
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in old and key in new and _same(old[key], new[key]):
            continue
        absent = ADDED_FIELDS.get(key, "(absent)")
        lines.append(f"{key}: {_show(old.get(key, absent))} -> {_show(new.get(key, absent))}")
    return lines


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True, default=str) == json.dumps(b, sort_keys=True, default=str)


def _show(value: Any) -> str:
    return json.dumps(value, default=str) if not isinstance(value, str) else value


def check_fingerprint(study, spec: SweepSpec, storage_display: str, *, record: bool = True) -> dict[str, Any]:
    """Record the fingerprint on a new study; refuse a spec whose fingerprint differs (SweepError)."""
    current = fingerprint(spec)
    recorded = study.user_attrs.get(STUDY_ATTR_FINGERPRINT)
    if recorded is None:
        if record:
            study.set_user_attr(STUDY_ATTR_FINGERPRINT, current)
        return current
    changes = changed_fields(_comparable(recorded), current)
    if changes:
        listed = "\n".join(f"  - {line}" for line in changes)
        raise SweepError(
            f"study '{spec.name}' in {storage_display} was run with other settings; "
            f"{len(changes)} field(s) that decide a trial's outcome changed:\n{listed}\n"
            "Trials measured under other settings cannot share one Pareto front. To start a new study, "
            "give the spec a new `name` (or a new `storage`); to go on with this one, restore the old values. "
            "Nothing was changed in the study"
        )
    return current


def recipe(spec: SweepSpec, values: dict[str, Any] | None = None) -> dict[str, Any]:
    """What rebuilds a trial's candidate: the model folders, the merge settings, the fingerprint."""
    return {
        "models": spec.models.model_dump(mode="json"),
        "merge": spec.merge.model_dump(mode="json"),
        "fingerprint": fingerprint_hash(values if values is not None else fingerprint(spec)),
    }


def spec_with_recipe(spec: SweepSpec, trial_recipe: dict[str, Any] | str | None) -> SweepSpec:
    """`spec` with the models and merge a trial ran with (as recorded), else `spec` unchanged."""
    if isinstance(trial_recipe, str):
        trial_recipe = json.loads(trial_recipe) if trial_recipe.strip() else None
    if not trial_recipe:
        return spec
    return spec.model_copy(
        update={
            "models": ModelsSpec.model_validate(trial_recipe["models"]),
            "merge": MergeConfig.model_validate(trial_recipe["merge"]),
        }
    )


def trial_spec(spec: SweepSpec, trials, number: int) -> SweepSpec:
    """`spec` with the recipe (models, merge) that trial `number` recorded in the trials
    table, when it has one (export and held-out rescoring rebuild what the trial ran)."""
    rows = trials[trials["number"] == number]
    value = rows.iloc[0].get("recipe") if "recipe" in trials.columns and not rows.empty else None
    return spec_with_recipe(spec, value if isinstance(value, str) else None)


def precheck_existing_study(spec: SweepSpec) -> None:
    """Before Ray starts: an existing study must match the spec (objectives, fingerprint).
    Creates nothing: a study, database file or journal that is not there is not made."""
    import optuna

    from sweep.study.storage import connect, is_rdb

    url = spec.storage_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///") :]).exists():
        return
    if not is_rdb(url) and not Path(url).exists():
        return
    if is_rdb(url) and not url.startswith("sqlite:"):
        import sqlalchemy

        engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            if not sqlalchemy.inspect(engine).has_table("studies"):
                return  # a fresh database: Optuna creates its tables later, after Ray is reached
        finally:
            engine.dispose()
    storage = connect(url)
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage)
    except KeyError:  # no such study yet
        return
    from sweep.study.durable import check_objectives

    check_objectives(study, spec)
    check_fingerprint(study, spec, spec.storage_display, record=False)


def candidate_key(spec: Any, params: dict[str, float], *, legacy: bool = False, **settings: Any) -> str:
    """A short hash of a candidate (the spec's models and merge, and `params`) and `settings`:
    what a recorded long run or a probe's checkpoint must match to be taken up. The
    memory-only settings (MEMORY_ONLY, in `merge` and in a `probe` setting) are left out, as
    the fingerprint leaves them out; `legacy`: the key from before they were, for records
    written then."""
    relevant = spec.model_dump(mode="json", include={"models", "merge"}) | {"params": params} | settings
    if not legacy:
        for section, prefix in (("merge", "merge."), ("probe", "evals.probe.")):
            if isinstance(relevant.get(section), dict):
                relevant[section] = {k: v for k, v in relevant[section].items() if prefix + k not in MEMORY_ONLY}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]
