"""The mergekit recipe (YAML text) that reproduces one of our merges.

Most users share merges as mergekit YAML, so every export carries one. The mapping was
measured against mergekit 0.1.5 on tiny trios (tests/merge/test_mergekit_roundtrip.py):

- both stages linear: ONE mergekit `linear` pass over (instruct, reasoning, pretrained)
  with our fused weights and `normalize: false`;
- anything else: TWO chained merges for `mergekit-multi`: stage 1 is written in float32
  under the name `bai-stage1`, stage 2 merges it with pretrained (an intermediate rounded
  to bf16 would not match our single rounding);
- stage-1 `slerp` is mergekit's slerp with `base_model: <instruct>` and `t = 1 - alpha`
  (stage 2: `base_model: bai-stage1`, `t = 1 - beta`);
- `ties` needs `normalize: true`; `dare` is `dare_linear` / `dare_ties` with
  `rescale: false, lambda: 1/density` (mergekit's default rescale matches the L1 norm per
  tensor instead), and dare-ties also `normalize: true` (its default is a plain sum);
- mergekit computes the task-vector methods in the load dtype (`dtype`; under bfloat16 a
  weight of 0.3 becomes 0.30078125), we accumulate in float32: every recipe loads in
  float32 and casts once through `out_dtype`.

Where mergekit has no exact equivalent (DARE's random masks, a slerp `eps` other than
mergekit's fixed 5e-4, a vocabulary policy) the recipe says so in a comment and gives the
closest one. A method's mapping is a `StageWriter` in `WRITERS`, or a plug-in's own, given
as `mergekit=` when it registers (`@METHODS.register("name", mergekit=writer)`); a method
with neither cannot be exported: MergeError names it. Pure text in, text out: no file access.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from merge.errors import MergeError
from merge.plan import ROLES, MergePlan
from merge.plugins import METHODS

MERGEKIT_VERSION = "0.1.5"  # the version the mapping was measured against
STAGE1_NAME = "bai-stage1"  # mergekit-multi's name for the float32 stage-1 result
FILE_NAME = "mergekit.yaml"  # written beside an exported checkpoint
OUT_DTYPES = ("float32", "bfloat16", "float16")
SLERP_EPS = 5e-4  # mergekit's slerp: dot_threshold 0.9995 = 1 - eps, not configurable
# safetensors dtype tag -> mergekit dtype name
TAG_DTYPES = {"F32": "float32", "BF16": "bfloat16", "F16": "float16"}

# One stage as a mergekit document body: (models, weights, base, params, stage, notes) -> the
# merge_method, base_model, models and parameters keys. `models` are the stage's inputs
# (paths, or STAGE1_NAME), `weights` their weights, `base` the pretrained path (the
# task-vector base), `stage` "stage 1"/"stage 2" for notes; append what mergekit does
# differently to `notes`.
StageWriter = Callable[[list[str], list[float], str, dict[str, Any], str, list[str]], dict[str, Any]]


def mergekit_recipe(plan: MergePlan, *, out_dtype: str) -> str:
    """mergekit YAML text reproducing `plan` (its models, vocabulary policy and tokenizer
    source included) into `out_dtype`.

    One document for `mergekit-yaml` when both stages are linear, else two for
    `mergekit-multi` (stage 1 named `bai-stage1`, kept in float32). The leading comments
    say how to run it and how exact the match is. Raises MergeError naming a method that
    has no mergekit mapping, ValueError for an out_dtype that is not float32, bfloat16 or
    float16 (resolve "auto" first: `inputs_out_dtype`) or a plan without its models.
    """
    if out_dtype not in OUT_DTYPES:
        raise ValueError(f"out_dtype must be one of {', '.join(OUT_DTYPES)} (resolve 'auto' first), got {out_dtype!r}")
    sources = plan.models
    missing = [r for r in ROLES if r not in sources]
    if missing:
        raise ValueError(f"the plan's models lack {', '.join(missing)}")
    if problems := mergekit_problems(plan):
        raise MergeError.collected("cannot write the mergekit recipe", problems)
    notes: list[str] = []
    if plan.fused_weights is not None:
        documents = [_linear_doc(plan, sources, out_dtype)]
        run = "mergekit-yaml mergekit.yaml OUT"
    else:
        documents = [_stage1_doc(plan, sources, notes), _stage2_doc(plan, sources, out_dtype, notes)]
        run = f"mergekit-multi mergekit.yaml --intermediate-dir TMP --out-path OUT  (stage 1 lands in TMP/{STAGE1_NAME}, float32)"
    if plan.vocab != "strict":
        notes.append(
            f"vocabulary policy {plan.vocab!r}: no exact mergekit equivalent (mergekit refuses different "
            "vocabulary sizes unless told `tokenizer_source: base` or `union`, which rebuild the "
            "embedding rows its own way); the recipe assumes equal sizes"
        )
    donor = _tokenizer_donor(documents[0], sources)
    if plan.tokenizer_source != donor:
        notes.append(
            f"tokenizer and config: ours come from {plan.tokenizer_source}, mergekit's from {donor}; copy them over mergekit's output"
        )
    header = [
        f"# mergekit {MERGEKIT_VERSION} recipe for this Balanced Actor Initialization merge (written by sweep)",
        f"#   stage 1: {_describe(plan.stage1.method, plan.stage1.params)} of instruct and reasoning at alpha = {plan.alpha:g}",
        f"#   stage 2: {_describe(plan.stage2.method, plan.stage2.params)} of that and pretrained at beta = {plan.beta:g}",
        f"# run: {run}",
        f"# match: {match_statement(plan, out_dtype)}",
    ]
    header += [f"# note: {line}" for note in notes for line in _wrap(note)]
    body = "---\n".join(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False) for doc in documents)
    return "\n".join(header) + "\n" + body


def mergekit_problems(plan: MergePlan) -> list[str]:
    """One line per stage whose method mergekit cannot express (empty: the recipe can be written)."""
    if plan.fused_weights is not None:
        return []
    return [
        f"{stage}: merge method {method!r} has no mergekit equivalent, so no mergekit recipe can be written for it"
        for stage, method in (("stage 1", plan.stage1.method), ("stage 2", plan.stage2.method))
        if writer_for(method) is None
    ]


def writer_for(method: str) -> StageWriter | None:
    """The mergekit mapping of a method: a plug-in's own (`mergekit=` metadata), else the
    built-in one, else None."""
    own = METHODS.meta(method).get("mergekit") if method in METHODS else None
    return own or WRITERS.get(method)


def _tokenizer_donor(first: dict[str, Any], sources: dict[str, str]) -> str:
    """The role whose tokenizer mergekit copies: its base model's, else its first model's."""
    path = first.get("base_model") or first["models"][0]["model"]
    return next((role for role in ROLES if sources[role] == path), "instruct")


def match_statement(plan: MergePlan, out_dtype: str) -> str:
    """How closely mergekit's output equals ours for this plan, as measured (one line)."""
    s1, s2 = plan.stage1.method, plan.stage2.method
    if s1 == "dare":
        return "statistics only: mergekit draws its own random DARE masks (same density and scale, other entries)"
    if plan.fused_weights is not None:
        return "bit-identical"
    if s1 == "ties" and s2 == "linear":
        return (
            "bit-identical, except where task-vector magnitudes tie at the trim cut (frequent with bf16 "
            "sources) or density * numel is not whole"
        )
    if out_dtype == "float32":
        return "equal to float32 rounding (a few ulp of the sources' magnitude)"
    return (
        "within one "
        + ("bf16" if out_dtype == "bfloat16" else "fp16")
        + " ulp (the two float32 results differ by rounding)"
    )


def inputs_out_dtype(tags: list[str]) -> str:
    """Our "auto" output dtype from the sources' floating-point safetensors tags: their
    common dtype, float32 where they differ."""
    names = {TAG_DTYPES[t] for t in tags if t in TAG_DTYPES}
    return names.pop() if len(names) == 1 else "float32"


# ---------------------------------------------------------------- documents


def _model(path: str, **parameters: Any) -> dict[str, Any]:
    return {"model": path, "parameters": parameters} if parameters else {"model": path}


def _linear_doc(plan: MergePlan, sources: dict[str, str], out_dtype: str) -> dict[str, Any]:
    weights = plan.fused_weights
    assert weights is not None
    return {
        "merge_method": "linear",
        "models": [
            _model(sources[role], weight=w)
            for role, w in zip(("instruct", "reasoning", "pretrained"), weights, strict=True)
        ],
        "parameters": {"normalize": False},
        "dtype": "float32",
        "out_dtype": out_dtype,
    }


def _stage1_doc(plan: MergePlan, sources: dict[str, str], notes: list[str]) -> dict[str, Any]:
    writer = writer_for(plan.stage1.method)
    assert writer is not None  # mergekit_problems ran first
    models = [sources["instruct"], sources["reasoning"]]
    weights = [plan.alpha, 1.0 - plan.alpha]
    doc = {"name": STAGE1_NAME} | writer(models, weights, sources["pretrained"], plan.stage1.params, "stage 1", notes)
    return doc | {"dtype": "float32", "out_dtype": "float32"}


def _stage2_doc(plan: MergePlan, sources: dict[str, str], out_dtype: str, notes: list[str]) -> dict[str, Any]:
    writer = writer_for(plan.stage2.method)
    assert writer is not None  # mergekit_problems ran first
    models = [STAGE1_NAME, sources["pretrained"]]
    weights = [plan.beta, 1.0 - plan.beta]
    doc = writer(models, weights, sources["pretrained"], plan.stage2.params, "stage 2", notes)
    return doc | {"dtype": "float32", "out_dtype": out_dtype}


# ---------------------------------------------------------------- each method's mapping


def _weighted(models: list[str], weights: list[float], **parameters: Any) -> list[dict[str, Any]]:
    return [_model(m, weight=w, **parameters) for m, w in zip(models, weights, strict=True)]


def _linear(
    models: list[str], weights: list[float], base: str, params: dict[str, Any], stage: str, notes: list[str]
) -> dict[str, Any]:
    return {"merge_method": "linear", "models": _weighted(models, weights), "parameters": {"normalize": False}}


def _task_arithmetic(
    models: list[str], weights: list[float], base: str, params: dict[str, Any], stage: str, notes: list[str]
) -> dict[str, Any]:
    return {
        "merge_method": "task_arithmetic",
        "base_model": base,
        "models": _weighted(models, weights),
        "parameters": {"normalize": False},
    }


def _ties(
    models: list[str], weights: list[float], base: str, params: dict[str, Any], stage: str, notes: list[str]
) -> dict[str, Any]:
    notes.append(
        "TIES trim: mergekit keeps int(density * numel) entries per tensor, we keep round(density * numel): "
        "the same where density * numel is whole; entries tied at the cut may be chosen differently"
    )
    return {
        "merge_method": "ties",
        "base_model": base,
        "models": _weighted(models, weights, density=params["density"]),
        "parameters": {"normalize": True},
    }


def _dare(
    models: list[str], weights: list[float], base: str, params: dict[str, Any], stage: str, notes: list[str]
) -> dict[str, Any]:
    density = params["density"]
    variant = params.get("variant", "linear")
    notes.append(
        f"DARE has no exact mergekit equivalent: our masks come from torch.Generator seeded per tensor (seed {params.get('seed', 0)}), "
        "mergekit draws its own; this is the closest recipe (same keep rate, same 1/density rescale, same combination), "
        "so the two agree in distribution, not entry by entry"
    )
    return {
        "merge_method": "dare_ties" if variant == "ties" else "dare_linear",
        "base_model": base,
        "models": _weighted(models, weights, density=density),
        "parameters": {"normalize": True, "rescale": False, "lambda": 1.0 / density}
        if variant == "ties"
        else {"rescale": False, "lambda": 1.0 / density},
    }


def _slerp(
    models: list[str], weights: list[float], base: str, params: dict[str, Any], stage: str, notes: list[str]
) -> dict[str, Any]:
    _slerp_eps_note(params, stage, notes)
    # mergekit's t runs from its base model (t = 0) to the other; ours weights [1 - t, t]
    return {
        "merge_method": "slerp",
        "base_model": models[0],
        "models": [_model(m) for m in models],
        "parameters": {"t": weights[1]},
    }


WRITERS: dict[str, StageWriter] = {
    "linear": _linear,
    "task_arithmetic": _task_arithmetic,
    "ties": _ties,
    "dare": _dare,
    "slerp": _slerp,
}


def _slerp_eps_note(params: dict[str, Any], stage: str, notes: list[str]) -> None:
    eps = params.get("eps", SLERP_EPS)
    if eps != SLERP_EPS:
        notes.append(
            f"{stage} slerp eps = {eps:g}: mergekit's linear fallback threshold is fixed at |cos| > 0.9995 (eps 5e-4); "
            "tensors whose |cos| lies between the two thresholds are interpolated differently"
        )


def _describe(method: str, params: dict[str, Any]) -> str:
    shown = ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in params.items())
    return f"{method} ({shown})" if shown else method


def _wrap(text: str, width: int = 92) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split():
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = "  " + word
        else:
            line = f"{line} {word}" if line else word
    return lines + ([line] if line else [])


# ---------------------------------------------------------------- from files


def recipe_for_sources(plan: MergePlan, *, infos: dict[str, Any]) -> str:
    """`mergekit_recipe` for sources already inspected (`merge.checkpoint.CheckpointInfo`
    by role, headers only): their absolute paths stand for the plan's models, and dtype
    "auto" becomes the inputs' dtype, as our merge does."""
    out_dtype = (
        plan.dtype
        if plan.dtype != "auto"
        else inputs_out_dtype([t.dtype for info in infos.values() for t in info.tensors.values()])
    )
    sources = {role: str(Path(info.path).absolute()) for role, info in infos.items()}
    return mergekit_recipe(replace(plan, models=sources), out_dtype=out_dtype)


def recipe_for_merged(folder: Any) -> str:
    """The recipe for a checkpoint our disk merge wrote: read from its merge_recipe.json,
    the output dtype from its safetensors headers."""
    import json

    from merge.checkpoint import inspect_checkpoint
    from merge.disk import RECORD_NAME, MergeRecord

    folder = Path(folder)
    record = MergeRecord.from_dict(json.loads((folder / RECORD_NAME).read_text()))
    out_dtype = record.dtype
    if out_dtype == "auto":
        out_dtype = inputs_out_dtype([t.dtype for t in inspect_checkpoint(folder).tensors.values()])
    return mergekit_recipe(record.plan, out_dtype=out_dtype)
