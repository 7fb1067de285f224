"""`python -m sweep validate SPEC`: schema and file checks, never the weights."""

from __future__ import annotations

import argparse

HELP = "check a spec: schema, model compatibility (headers only), metric names"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", help="path to the sweep spec (YAML)")


def run(args: argparse.Namespace) -> int:
    from sweep.config import load_spec
    from sweep.config.checks import spec_problems, unvalidated_file_problems
    from sweep.errors import ConfigError
    from sweep.run.memory_plan import plan_trial
    from sweep.run.work_plan import work_plan
    from sweep.study.storage import storage_problems

    try:
        spec = load_spec(args.spec)
    except ConfigError as exc:
        # Schema problems: report the file checks of the sections that passed in the same round.
        extra = [p for p in unvalidated_file_problems(args.spec) if p not in exc.problems]
        if not extra:
            raise
        raise ConfigError(exc.problems + extra, source=exc.source) from None
    infos, problems = spec_problems(spec)
    problems += storage_problems(spec)
    if problems:
        raise ConfigError(problems, source=args.spec)
    plan = plan_trial(spec, infos)
    if not plan.fits:
        raise ConfigError([plan.refusal()], source=args.spec)
    print(summary(spec, infos))
    work = work_plan(spec, plan.settings, plan.shape.params).line()
    if work:
        print(work)
    print(plan.table())
    return 0


def summary(spec, infos) -> str:
    from sweep.run.memory_plan import param_count

    ref = infos["pretrained"]
    n_params = sum(_numel(t.shape) for t in ref.tensors.values())
    dtypes = ",".join(sorted({t.dtype for t in ref.tensors.values()}))
    s = spec.space
    lines = [
        f"spec OK: {spec.name}",
        f"  models     {ref.architecture}, {param_count(n_params)} params, {dtypes}, vocab {ref.vocab_size}",
        f"  merge      stage1 {spec.merge.stage1.method}, stage2 {spec.merge.stage2.method}, dtype {spec.merge.dtype}",
        f"  space      alpha [{s.alpha.low}, {s.alpha.high}], beta [{s.beta.low}, {s.beta.high}]"
        + (f", {len(s.points)} fixed points" if s.points else ""),
        f"  sampler    {spec.sampler.name} (seed {spec.sampler.seed}), {spec.budget.trials} trials, {spec.budget.concurrent} at a time",
        "  objectives " + "; ".join(f"{o.direction} {o.metric}" for o in spec.objectives),
    ]
    if spec.constraints:
        lines.append("  constraints " + "; ".join(str(c) for c in spec.constraints))
    lines += _probe_lines(spec)
    lines.append(f"  storage    {spec.storage_display}")  # the password masked
    return "\n".join(lines)


def _probe_lines(spec) -> list[str]:
    """The probe's size, and a note when it generates fewer tokens than the evals: a budget
    below the answers' length presses them shorter (docs/probe.md, "Signal against noise"),
    a pressure the long RL run has only if its own budget is as short."""
    probe, lm_eval = spec.evals.probe, spec.evals.lm_eval
    if probe is None:
        return []
    line = f"  probe      {probe.size_text()}"
    line += f", KL against {probe.reference}" if probe.reference is not None else ""
    line += probe.update_text()
    lines = [line]
    evals_budget = lm_eval.max_gen_toks if lm_eval is not None else None
    if evals_budget is not None and probe.max_new_tokens < evals_budget:
        lines.append(
            f"  note       the probe generates at most {probe.max_new_tokens} tokens, the evals {evals_budget}: "
            "the probe measures length collapse under that budget; set evals.probe.max_new_tokens "
            "to your RL run's budget unless the shorter one is meant"
        )
    return lines


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
