"""One long RL run of `sweep calibrate`: what it ran, what it made, its record and checkpoint.

`long_run_at` runs on a Ray worker (sweep.run.pool): the candidate built in place, the
probe's RL from it for `long_steps` steps at a seed, and the outcome below. Each finished
run is appended to <study_dir>/calibration-runs.jsonl under its `run_key`, so a
calibration stopped part-way reuses it. While it runs, the run's state is checkpointed to
<study_dir>/calibration-checkpoints/<key>.pt every `checkpoint_every_s` (evals/probe/resume.py):
a run lost with its node, stopped at its time limit, or cut short with its driver (Ctrl-C,
a lost head node) goes on from there the next time it starts, on any node that sees the
study folder. The checkpoint is deleted once the run ends.

The long run's outcomes come from its curves, normalized per prompt against the
starting model's baseline (evals.probe.baseline), with the probe's trailing window:
- final_length: mean normalized length over the last eighth of the run / baseline;
- min_length: min of the smoothed normalized length / baseline;
- final_reward: mean normalized reward over the last eighth - baseline (reward units):
  what the run added, the outcome probe/reward_gain stands for;
- final_score: mean normalized reward over the last eighth (probe/reward_final's outcome);
- dip: baseline reward - min of the smoothed reward (>= 0), and recovery_step: the
  first step after the minimum where the smoothed reward is back at the baseline.
- reward_shape and fall (with `replicates`): the dip held against its null, the dip a run that
  never left its starting model reads with the same prompts and draws
  (evals.probe.baseline.null_reward, 99th percentile) and against twice its own
  bootstrap half-width (the floor where the null cannot vary: a candidate at its ceiling).
  "hockey stick": beyond both, and the smoothed reward later comes back to where a
  no-learning run's points lie 95% of the time (back_step); "fell": beyond both and never
  back; "no dip": within them.
  A long run of the paper's reasoning member is the first kind; one a user would stop is
  the second. low_step is the step of the minimum.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from statistics import mean
from typing import Any

from sweep.config.schema import BudgetSpec
from sweep.errors import SweepError
from sweep.study.fingerprint import candidate_key

SHAPE_REPLICATES = 200  # simulated null runs and bootstrap replicates per long run (~2.7 s at 128 steps)
SHAPES = ("hockey stick", "fell", "no dip")


def long_outcome(
    baseline: Sequence[Any], steps: Sequence[Sequence[Any]], *, window: int, replicates: int = 0
) -> dict[str, Any]:
    """A long run's outcomes from its per-prompt samples (PromptSamples); see the module doc.
    With `replicates` (>= 2) also the reward's shape against its simulated null."""
    from evals.probe.baseline import Baseline, bootstrap_noise, normalized_curves, null_reward
    from evals.stability import moving_average

    if not baseline or not steps:
        raise SweepError("a long run's outcome needs its baseline and at least one step")
    base = Baseline(baseline)
    length, score, _ = normalized_curves(baseline, steps)
    tail = max(1, len(length) // 8)
    start = min(window, len(length)) - 1  # full windows only, as the probe's metrics read them
    smooth_length = moving_average(length, window)[start:]
    smooth_score = moving_average(score, window)[start:]
    dip = max(0.0, base.pool_score - min(smooth_score))
    recovery = None
    if dip > 0:
        low = smooth_score.index(min(smooth_score))
        recovery = next(
            (start + t for t in range(low + 1, len(smooth_score)) if smooth_score[t] >= base.pool_score), None
        )
    out = {
        "final_length": mean(length[-tail:]) / base.pool_length if base.pool_length > 0 else None,
        "min_length": min(smooth_length) / base.pool_length if base.pool_length > 0 else None,
        "final_reward": mean(score[-tail:]) - base.pool_score,
        "final_score": mean(score[-tail:]),
        "dip": dip,
        "recovery_step": recovery,
        "steps": len(length),
    }
    if replicates >= 2:
        null = null_reward(baseline, steps, window=window, replicates=replicates)
        noise, _ = bootstrap_noise(baseline, steps, window=window, planned_steps=len(steps), replicates=replicates)
        out |= reward_shape(smooth_score, base.pool_score, start=start, null=null, noise=noise.get("reward_dip"))
    return out


def reward_shape(
    smooth_score: Sequence[float],
    baseline: float,
    *,
    start: int,
    null: tuple[float, float] | None,
    noise: float | None,
) -> dict[str, Any]:
    """The smoothed reward's shape against its null (see the module doc): reward_shape,
    dip_null (the simulated null's dip), dip_noise (the dip's bootstrap half-width), fall
    (the dip beyond both: probe/reward_fall's outcome), low_step and back_step (None when
    it never came back, or did not dip beyond)."""
    from evals.probe.baseline import reward_fall

    low = min(range(len(smooth_score)), key=smooth_score.__getitem__)
    dip = max(0.0, baseline - smooth_score[low])
    out: dict[str, Any] = {"dip_noise": noise, "low_step": start + low, "back_step": None}
    if null is None:
        return out | {"dip_null": None, "fall": None, "reward_shape": None}
    null_dip, null_point = null
    fall = reward_fall(dip, null_dip, noise)
    out |= {"dip_null": null_dip, "fall": fall}
    if fall == 0:
        return out | {"reward_shape": "no dip"}
    back = next((t for t in range(low + 1, len(smooth_score)) if smooth_score[t] >= baseline - null_point), None)
    if back is None:
        return out | {"reward_shape": "fell"}
    return out | {"reward_shape": "hockey stick", "back_step": start + back}


RUNS_FILE = "calibration-runs.jsonl"  # one finished long run per line, kept across calibrations
# what a long run sets in the probe's config: its steps and seed, no early stop, no noise band
LONG_RUN_SETS: dict[str, Any] = {"steps": None, "seed": None, "collapse_threshold": None, "noise_samples": 0}
CHECKPOINTS = "calibration-checkpoints"  # <study_dir>/CHECKPOINTS/<key>.pt: a long run's state while it runs
# how often a long run saves its state (at 7B with LoRA: ~0.5 GB a time): the spec's default
CHECKPOINT_EVERY_S: float = BudgetSpec.model_fields["checkpoint_every_s"].default


def long_run_at(
    spec: Any,
    params: dict[str, float],
    seed: int,
    long_steps: int,
    checkpoint_every_s: float | None = CHECKPOINT_EVERY_S,
) -> dict[str, Any]:
    """On a worker: the candidate at `params` built in place, the probe's RL run from it for
    `long_steps` steps at `seed` (sampling as the trial's probe does: the vLLM engine with
    generator vllm), and its outcome (long_outcome, with the reward's shape). The run's
    state is saved to its checkpoint every `checkpoint_every_s` (None: never), and a run that finds its
    checkpoint goes on from it: the outcome's `resumed_at` is the step it went on from
    (None: from the start), and its `wall_s` counts this part only."""
    from evals.probe.resume import checkpointing
    from sweep.run.pool import report_progress
    from sweep.run.trial import build_candidate, probe_on_worker, worker_state

    state = worker_state(spec)  # cached per worker: the sources, the live model, the prompts, the engine
    if state.probe_config is None:
        raise SweepError("the spec has no evals.probe section: there is no RL to run")
    build_candidate(spec, params, model=state.model, sources=state.sources)
    config = state.probe_config.model_copy(update=LONG_RUN_SETS | {"steps": long_steps, "seed": seed})
    key = run_key(spec, params, seed, long_steps)
    checkpoint = checkpointing(checkpoint_path(spec.study_dir, key), checkpoint_every_s, tag=key)

    def resumed_at() -> int | None:
        return checkpoint.resumed_at if checkpoint is not None else None

    def on_step(done: int, planned: int) -> None:  # the heartbeat shows the step, and the pace since the resume
        report_progress(done, planned, resumed_at() or 0)

    t0 = time.perf_counter()
    run = probe_on_worker(state, config, on_step=on_step, checkpoint=checkpoint)
    if run.diverged:
        outcome = dict.fromkeys(("final_reward", "final_score", "dip", "recovery_step"))
        outcome |= {"final_length": 0.0, "min_length": 0.0, "steps": run.curves.steps, "diverged": True}
        outcome |= {"reward_shape": "diverged"}
    else:
        outcome = long_outcome(run.baseline, run.steps, window=config.window, replicates=SHAPE_REPLICATES)
    wall_s = round(time.perf_counter() - t0, 3)
    return outcome | {"seed": seed, "wall_s": wall_s, "resumed_at": resumed_at()}


def run_key(spec: Any, params: dict[str, float], seed: int, long_steps: int, *, legacy: bool = False) -> str:
    """What a recorded long run must match to be reused: the candidate (its models, merge
    and params), the probe's settings that the long run uses (not the probe's own steps,
    seed, stopping rule or noise replicates: long_run_at sets those; not the memory-only
    ones), the seed and the steps. `legacy`: the key of a run recorded before memory-only
    settings were left out."""
    probe = spec.evals.probe.model_dump(mode="json", exclude=set(LONG_RUN_SETS))
    return candidate_key(spec, params, legacy=legacy, probe=probe, seed=seed, long_steps=long_steps)


def recorded_runs(study_dir: Path) -> dict[str, dict[str, Any]]:
    """The long runs calibration-runs.jsonl holds, by run_key (a line cut short by a crash is skipped)."""
    path = Path(study_dir) / RUNS_FILE
    runs: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                runs[record["key"]] = record["outcome"]
            except (ValueError, KeyError, TypeError):
                continue
    return runs


def record_run(study_dir: Path, key: str, number: int, outcome: dict[str, Any]) -> None:
    """Append a finished run to calibration-runs.jsonl and delete its checkpoint."""
    from evals.probe.resume import remove

    with open(Path(study_dir) / RUNS_FILE, "a") as handle:
        handle.write(json.dumps({"key": key, "number": number, "outcome": outcome}) + "\n")
    remove(checkpoint_path(study_dir, key))


def checkpoint_path(study_dir: Path, key: str) -> Path:
    return Path(study_dir) / CHECKPOINTS / f"{key}.pt"


def long_run_timeout(spec: Any, long_steps: int) -> float | None:
    """A long run's time limit: budget.trial_timeout_s scaled by its steps over the probe's
    (a trial is one probe and its evals), None when the spec sets no trial timeout."""
    timeout = spec.budget.trial_timeout_s
    return None if timeout is None else timeout * max(1.0, long_steps / spec.evals.probe.steps)
