"""Held-out re-scoring: the spec's report tasks on the Pareto front's points only.

The search tasks steered the sweep; scoring the chosen points on held-out tasks shows
whether the ratios were tuned to the search split. Runs in this process (no Ray): one
live model rebuilt in place per point, one lm-eval task dict for all points.
Results are cached in <study_dir>/heldout.parquet (one row per trial number).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sweep.config import SweepSpec
from sweep.errors import SweepError

HELDOUT_FILE = "heldout.parquet"


def rescore_front(spec: SweepSpec, trials, *, say: Callable[[str], None] = print):
    """DataFrame with `number` and one column per held-out metric, for every front point."""
    import pandas as pd

    from sweep.report.front import pareto_front
    from sweep.run.trial import build_candidate, lm_eval_config, load_models
    from sweep.study.table import trial_params

    lm = spec.evals.lm_eval
    if lm is None or not lm.report_tasks:
        raise SweepError("--rescore needs evals.lm_eval.report_tasks (held-out tasks) in the study's spec")
    front = pareto_front(trials, spec.objectives, spec.constraints)
    if front.empty:
        raise SweepError("the study has no complete feasible trial: nothing to re-score")
    from evals.lmeval import LmEvalRunner
    from sweep.study.fingerprint import trial_spec

    started = time.perf_counter()
    # The models and merge the front's trials ran with (recorded per trial), not the latest spec's.
    spec = trial_spec(spec, trials, int(front.iloc[0]["number"]))
    sources, model, tokenizer, _ = load_models(spec)
    runner = LmEvalRunner(lm_eval_config(spec, lm.report_tasks))
    rows = []
    for i, (_, row) in enumerate(front.iterrows(), 1):
        params = {k: float(v) for k, v in trial_params(row).items()}
        build_candidate(trial_spec(spec, trials, int(row["number"])), params, model=model, sources=sources)
        scores = runner.evaluate(model, tokenizer)
        rows.append({"number": int(row["number"])} | {s.name: s.value for s in scores})
        say(
            f"re-scored {i}/{len(front)}: trial {int(row['number'])} on {', '.join(lm.report_tasks)} ({time.perf_counter() - started:.0f} s)"
        )
    return pd.DataFrame(rows)


def save_heldout(study_dir: Path, heldout) -> Path:
    path = Path(study_dir) / HELDOUT_FILE
    heldout.to_parquet(path, index=False)
    return path


def load_heldout(study_dir: Path):
    import pandas as pd

    path = Path(study_dir) / HELDOUT_FILE
    return pd.read_parquet(path) if path.exists() else None
