"""Checks of a loaded spec against the files it names: model compatibility (headers and
config only, never the weights), task names, prompts and storage locations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from evals.probe.config import ProbeConfig
from merge.checkpoint import CheckpointInfo, compatibility_problems, inspect_checkpoint
from merge.config import MergeConfig
from merge.errors import MergeError
from sweep.config.paths import DEMO_PREFIX, resolve_path
from sweep.config.schema import MODEL_ROLES, LmEvalSpec, ModelsSpec, SweepSpec


def inspect_models(spec: SweepSpec) -> tuple[dict[str, CheckpointInfo], list[str]]:
    infos: dict[str, CheckpointInfo] = {}
    problems: list[str] = []
    for role in MODEL_ROLES:
        try:
            infos[role] = inspect_checkpoint(getattr(spec.models, role))
        except MergeError as exc:
            problems.append(f"models.{role}: {exc}")
    if len(infos) == len(MODEL_ROLES):
        problems += [f"models: {p}" for p in compatibility_problems(infos, vocab=spec.merge.vocab)]
    problems += _tokenizer_problems(Path(spec.models.tokenizer_path()))
    return infos, problems


def local_task_names(include_paths: list[str]) -> dict[str, Path]:
    """Task and group names defined by YAML files under the include paths."""
    names: dict[str, Path] = {}
    for root in include_paths:
        for file in sorted(Path(root).rglob("*.yaml")):
            try:
                data = yaml.safe_load(file.read_text())
            except (OSError, yaml.YAMLError):
                continue
            if isinstance(data, dict):
                for key in ("task", "group"):
                    if isinstance(data.get(key), str):
                        names[data[key]] = file
    return names


def file_problems(spec: SweepSpec, infos: dict[str, CheckpointInfo]) -> list[str]:
    """The files the spec names besides the models; `infos`: the models' headers, as
    inspect_models read them (the reference's vocabulary is checked against them)."""
    problems: list[str] = []
    lm = spec.evals.lm_eval
    if lm is not None:
        problems += lm_eval_problems(spec)
    probe = spec.evals.probe
    if probe is not None:
        if not Path(probe.prompts).is_file():
            problems.append(f"evals.probe.prompts: {probe.prompts} is not a file")
        if probe.reward.model and not Path(probe.reward.model).is_dir():
            problems.append(f"evals.probe.reward.model: {probe.reward.model} is not a checkpoint folder")
        if probe.reference is not None:
            problems += reference_problems(probe.reference, infos)
    return problems


def worker_inputs(spec: SweepSpec) -> dict[str, str]:
    """{field: path} of every file or folder a trial's worker reads: the models, the tokenizer,
    the probe's prompts, reference and reward model, and lm-eval's include paths."""
    named = {f"models.{role}": getattr(spec.models, role) for role in MODEL_ROLES}
    named["models.tokenizer"] = spec.models.tokenizer_path()
    probe = spec.evals.probe
    if probe is not None:
        named["evals.probe.prompts"] = probe.prompts
        if probe.reference is not None:
            named["evals.probe.reference"] = probe.reference
        if probe.reward.model is not None:
            named["evals.probe.reward.model"] = probe.reward.model
    if spec.evals.lm_eval is not None:
        named |= {f"evals.lm_eval.include_paths.{i}": p for i, p in enumerate(spec.evals.lm_eval.include_paths)}
    return {field: str(path) for field, path in named.items()}


def reference_problems(reference: str, infos: dict[str, CheckpointInfo]) -> list[str]:
    """evals.probe.reference: a checkpoint folder whose vocabulary is one of the models'
    (headers and config only; `infos` by role, from inspect_models)."""
    if not Path(reference).is_dir():
        return [f"evals.probe.reference: {reference} is not a checkpoint folder"]
    try:
        info = inspect_checkpoint(reference)
    except MergeError as exc:
        return [f"evals.probe.reference: {exc}"]
    if len(infos) < len(MODEL_ROLES):
        return []  # a model that cannot be read is reported under models.<role>
    sizes = {i.vocab_size for i in infos.values()}
    if info.vocab_size not in sizes:
        return [
            f"evals.probe.reference: {reference} has a vocabulary of {info.vocab_size} tokens, the models "
            f"{' / '.join(str(n) for n in sorted(sizes, key=str))}; the KL term compares the reference and the "
            "candidate token by token, so they must share a tokenizer"
        ]
    return []


def lm_eval_problems(spec: SweepSpec) -> list[str]:
    """Include paths, task names, metric names and test splits, from task YAMLs only.

    Cheap when every task is local; a task not found locally makes lm-eval index its
    built-in tasks once (~15 s).
    """
    from evals.lmeval import metric_problems, task_problems, test_split_problems

    lm = spec.evals.lm_eval
    if lm is None:
        return []
    problems = []
    for i, include in enumerate(lm.include_paths):
        if not Path(include).is_dir():
            problems.append(f"evals.lm_eval.include_paths.{i}: {include} is not a folder")
    for field in ("search_tasks", "report_tasks"):
        problems += [f"evals.lm_eval.{field}: {p}" for p in task_problems(getattr(lm, field), lm.include_paths)]
    if problems:
        return problems  # metric and split checks need the tasks
    for i, objective in enumerate(spec.objectives):
        problems += [f"objectives.{i}.metric: {p}" for p in metric_problems([objective.metric], lm.include_paths)]
    for i, constraint in enumerate(spec.constraints):
        problems += [f"constraints.{i}: {p}" for p in metric_problems([constraint.metric], lm.include_paths)]
    if not lm.allow_test_split:
        problems += [f"evals.lm_eval.search_tasks: {p}" for p in test_split_problems(lm.search_tasks, lm.include_paths)]
    return problems


def spec_problems(spec: SweepSpec) -> tuple[dict[str, CheckpointInfo], list[str]]:
    """Everything `sweep validate` checks beyond the schema."""
    infos, problems = inspect_models(spec)
    return infos, problems + file_problems(spec, infos) + environment_problems()


def environment_problems() -> list[str]:
    """Settings read from the environment that every worker would trip on."""
    from merge.errors import MergeError
    from merge.kernels import check_mode

    try:
        check_mode()
    except MergeError as exc:
        return list(exc.problems)
    return []


def unvalidated_file_problems(path: str | Path) -> list[str]:
    """File checks for a spec that failed its schema, section by section: each section that
    passes its own schema gets its file checks, so one round reports both kinds. Skipped
    where the schema problems make them meaningless: a section that fails its schema, a
    model folder that is missing (load_spec reports that already), `demo:` references (only
    a valid spec builds the family), vocabulary checks when `merge` fails, and metric
    names (they need valid objectives).
    """
    from pydantic import ValidationError

    path = Path(path)
    base_dir = path.resolve().parent
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return []
    if not isinstance(raw, dict):
        return []

    def section(model, data):
        try:
            return model.model_validate(data) if isinstance(data, dict) else None
        except ValidationError:
            return None

    def resolved(value: str) -> str | None:
        return None if value.startswith(DEMO_PREFIX) else resolve_path(value, base_dir)

    problems: list[str] = []
    models = section(ModelsSpec, raw.get("models"))
    if models is not None:
        merge_section = section(MergeConfig, raw.get("merge", {}))
        vocab = merge_section.vocab if merge_section is not None else "pad"  # pad: no vocab verdict
        infos: dict[str, CheckpointInfo] = {}
        for role in MODEL_ROLES:
            folder = resolved(getattr(models, role))
            if folder is None or not Path(folder).is_dir():
                continue
            try:
                infos[role] = inspect_checkpoint(folder)
            except MergeError as exc:
                problems.append(f"models.{role}: {exc}")
        if len(infos) == len(MODEL_ROLES):
            problems += [f"models: {p}" for p in compatibility_problems(infos, vocab=vocab)]
        tokenizer_value = models.tokenizer_path()
        tokenizer = resolved(tokenizer_value)
        if tokenizer is not None and (models.tokenizer not in MODEL_ROLES or Path(tokenizer).is_dir()):
            problems += _tokenizer_problems(Path(tokenizer))
    evals_raw = raw.get("evals")
    evals: dict[str, Any] = evals_raw if isinstance(evals_raw, dict) else {}
    lm = section(LmEvalSpec, evals.get("lm_eval"))
    if lm is not None:
        from evals.lmeval import task_problems

        includes = [resolved(p) for p in lm.include_paths]
        bad = [
            f"evals.lm_eval.include_paths.{i}: {p} is not a folder"
            for i, p in enumerate(includes)
            if p is not None and not Path(p).is_dir()
        ]
        problems += bad
        if not bad and None not in includes:
            local = [p for p in includes if p is not None]
            for field in ("search_tasks", "report_tasks"):
                problems += [f"evals.lm_eval.{field}: {p}" for p in task_problems(getattr(lm, field), local)]
    probe = section(ProbeConfig, evals.get("probe"))
    if probe is not None:
        prompts = resolved(probe.prompts)
        if prompts is not None and not Path(prompts).is_file():
            problems.append(f"evals.probe.prompts: {prompts} is not a file")
        reward = resolved(probe.reward.model) if probe.reward.model else None
        if reward is not None and not Path(reward).is_dir():
            problems.append(f"evals.probe.reward.model: {reward} is not a checkpoint folder")
        reference = resolved(probe.reference) if probe.reference else None
        if reference is not None and not Path(reference).is_dir():
            problems.append(f"evals.probe.reference: {reference} is not a checkpoint folder")
    return problems + environment_problems()


def _tokenizer_problems(tokenizer: Path) -> list[str]:
    if not tokenizer.exists():
        return [f"models.tokenizer: {tokenizer} does not exist"]
    if tokenizer.is_dir() and not any(
        (tokenizer / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")
    ):
        return [f"models.tokenizer: {tokenizer} holds no tokenizer files (tokenizer.json / tokenizer_config.json)"]
    return []
