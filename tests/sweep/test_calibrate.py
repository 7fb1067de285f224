"""Calibration arithmetic: rank correlation, long-run outcomes and the verdict, on known inputs.

The end-to-end `sweep calibrate` on a real demo study is in tests/sweep/test_run.py."""

from __future__ import annotations

import math
import random

import pytest

from evals.probe import ProbeConfig
from evals.probe.records import PromptSamples
from sweep.config import SweepSpec
from sweep.config.schema import EvalsSpec
from sweep.report.calibration import Candidate, spearman, summarize_calibration
from sweep.run.longrun import long_outcome


def test_spearman_matches_known_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ties take their average rank: scipy.stats.spearmanr([1, 2, 2, 3], [1, 3, 2, 4]) = 0.9487
    assert spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(0.9486833, abs=1e-6)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))  # a constant side ranks nothing
    with pytest.raises(ValueError):
        spearman([1, 2], [1])


def _step(length: float, score: float, prompts=("a", "b")) -> tuple[PromptSamples, ...]:
    return tuple(PromptSamples(p, (length, length), (score, score), (0.5, 0.5)) for p in prompts)


def test_long_outcome_reads_a_dip_its_recovery_and_the_final_length():
    baseline = list(_step(40.0, 0.5))
    # reward 0.5 -> 0.1 (steps 2-4) -> back to 0.6; length 40 -> 20 and stays
    scores = [0.5, 0.5, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6, 0.6]
    lengths = [40.0, 40.0] + [20.0] * 14
    out = long_outcome(baseline, [_step(n, r) for n, r in zip(lengths, scores, strict=True)], window=1)
    assert out["final_length"] == pytest.approx(0.5) and out["min_length"] == pytest.approx(0.5)
    assert out["dip"] == pytest.approx(0.4) and out["recovery_step"] == 5
    assert out["final_reward"] == pytest.approx(0.1) and out["steps"] == 16
    assert out["final_score"] == pytest.approx(0.6)  # where the reward ended, not what the run added
    flat = long_outcome(baseline, [_step(40.0, 0.5)] * 8, window=3)
    assert flat["dip"] == 0 and flat["recovery_step"] is None and flat["final_length"] == pytest.approx(1.0)


def _sampled_run(seed: int, rate, *, steps: int = 64, prompts: int = 8, group: int = 4):
    """A baseline of 8 samples per prompt and `steps` steps of 4 drawn prompts x `group`
    completions, each right (1) with probability `rate(step, p)` for a prompt whose
    starting rate is p: drawn afresh, as a run's sampler draws, not from the baseline."""
    rng = random.Random(seed)
    p = [0.3 + 0.4 * i / (prompts - 1) for i in range(prompts)]

    def samples(i: int, n: int, q: float) -> PromptSamples:
        return PromptSamples(i, (30.0,) * n, tuple(float(rng.random() < q) for _ in range(n)), (0.5,) * n)

    baseline = [samples(i, 8, p[i]) for i in range(prompts)]
    run = [tuple(samples(i, group, rate(t, p[i])) for i in rng.sample(range(prompts), 4)) for t in range(steps)]
    return baseline, run


def test_a_run_that_never_left_its_start_reads_no_dip_and_a_dip_beyond_the_null_reads_its_shape():
    """The reward's minimum over many noisy steps lies under the start even when nothing
    changed: its bootstrap band alone would call that a dip. Held against the null simulated
    from the baseline, 12 runs that never left their start read "no dip"; a fall to no right
    answer that comes back reads "hockey stick", one that stays "fell"."""
    nulls = [long_outcome(*_sampled_run(s, lambda t, p: p), window=3, replicates=200) for s in range(12)]
    assert [o["reward_shape"] for o in nulls] == ["no dip"] * 12
    assert [o["fall"] for o in nulls] == [0.0] * 12  # probe/reward_fall's outcome
    assert all(o["dip"] > 0 for o in nulls)  # the minimum of a noisy curve under its start
    assert sum(o["dip"] > o["dip_noise"] for o in nulls) >= 3  # the band alone would flag these
    assert all(0.2 < o["dip_null"] < 0.5 for o in nulls)  # 16 samples a step at rates 0.3-0.7

    def hockey(t, p):
        return 0.0 if 8 <= t < 24 else p

    def fell(t, p):
        return 0.0 if t >= 24 else p

    for s in range(3):
        stick = long_outcome(*_sampled_run(s, hockey), window=3, replicates=200)
        assert stick["reward_shape"] == "hockey stick", stick
        assert 8 <= stick["low_step"] <= 26 and stick["back_step"] > stick["low_step"]
        assert stick["dip"] > stick["dip_null"]
        assert stick["fall"] == pytest.approx(stick["dip"] - max(stick["dip_null"], 2 * stick["dip_noise"]))
        assert stick["fall"] > 0.05
        down = long_outcome(*_sampled_run(s, fell), window=3, replicates=200)
        assert down["reward_shape"] == "fell" and down["back_step"] is None and down["low_step"] >= 24
    assert "reward_shape" not in long_outcome(*_sampled_run(0, hockey), window=3)  # no replicates: no shape


def test_a_candidate_at_its_ceiling_is_held_against_its_own_band():
    """Every baseline sample right: the simulated null cannot vary (0), and a run with one
    wrong sample in 64 steps must not read as a dip; a run that loses half its answers does."""
    baseline = [PromptSamples(i, (30.0,) * 8, (1.0,) * 8, (0.5,) * 8) for i in range(4)]

    def step(t: int, wrong: int) -> tuple[PromptSamples, ...]:
        return tuple(
            PromptSamples(i, (30.0,) * 4, tuple(0.0 if j < wrong else 1.0 for j in range(4)), (0.5,) * 4)
            for i in range(4)
        )

    one = long_outcome(baseline, [step(t, 1 if t == 30 else 0) for t in range(64)], window=3, replicates=200)
    assert one["dip_null"] == 0 and one["dip"] > 0 and one["reward_shape"] == "no dip"
    half = long_outcome(baseline, [step(t, 2 if 10 <= t < 20 else 0) for t in range(64)], window=3, replicates=200)
    assert half["reward_shape"] == "hockey stick" and half["back_step"] == 22


def test_the_long_runs_reward_shapes_are_described_in_words():
    from sweep.report.calibration import describe_reward, summarize_shapes

    stick = {"reward_shape": "hockey stick", "dip": 0.44, "dip_null": 0.12, "dip_noise": 0.07}
    stick |= {"low_step": 9, "back_step": 40, "steps": 128, "seed": 1}
    assert describe_reward(stick) == "hockey stick: 0.44 under its start at step 9 (null 0.14), back at step 40"
    fell = stick | {"reward_shape": "fell", "back_step": None, "dip_noise": 0.01}
    assert describe_reward(fell) == "fell: 0.44 under its start at step 9 (null 0.12), not back in 128 steps"
    flat = stick | {"reward_shape": "no dip", "dip": 0.05}
    assert describe_reward(flat) == "no dip beyond its null (0.05, null 0.14)"
    assert describe_reward({"dip": 0.1}) == "n/a"  # a record from before shapes
    cands = [Candidate(n, {}, "test", {}, None, long=[run]) for n, run in [(0, stick), (3, fell), (5, flat), (7, flat)]]
    assert summarize_shapes(cands) == (
        "hockey stick on trial 0; fell and not back on trial 3; no dip beyond its null on trials 5 and 7"
    )
    two = Candidate(2, {}, "test", {}, None, long=[stick, flat | {"seed": 2}])
    assert summarize_shapes([two]) == "hockey stick on trial 2 (seed 1); no dip beyond its null on trial 2 (seed 2)"


def _spec(constraint: str = "probe/length_retention >= 0.5") -> SweepSpec:
    return SweepSpec.model_validate(
        {
            "name": "t",
            "models": {"pretrained": "/p", "instruct": "/i", "reasoning": "/r"},
            "objectives": [{"metric": "probe/length_retention", "direction": "maximize"}],
            "constraints": [constraint],
            "results_dir": "/tmp",
        }
    )


def _candidate(number: int, probe: float, final: float) -> Candidate:
    return Candidate(
        number,
        {"alpha": 0.1 * number, "beta": 1.0},
        "test",
        {"length_retention": probe},
        probe >= 0.5,
        long=[{"final_length": final, "dip": 0.0}],
    )


def test_verdict_trusts_a_probe_that_ranks_as_the_long_runs_and_warns_otherwise():
    spec = _spec()
    good = [_candidate(i, p, f) for i, (p, f) in enumerate([(0.3, 0.2), (0.6, 0.7), (0.8, 0.9), (1.0, 1.1)])]
    result = summarize_calibration(spec, good, long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert result.trusted and result.spearman["length_retention"] == pytest.approx(1.0)
    assert result.agreement["probe/length_retention >= 0.5"] == 1.0
    assert "ranks your candidates as 128-step runs do (Spearman length_retention 1.00" in result.verdict
    # A LoRA probe's long runs are LoRA too (the spec's probe settings): the verdict says so
    lora = spec.model_copy(update={"evals": EvalsSpec(probe=ProbeConfig(prompts="/p.jsonl", update="lora"))})
    result = summarize_calibration(lora, good, long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert result.trusted and "ranks your candidates as 128-step LoRA runs do" in result.verdict
    assert "a full-update RL run may wear down more of what the model knew" in result.verdict
    bad = [_candidate(i, p, f) for i, (p, f) in enumerate([(0.3, 1.1), (0.6, 0.9), (0.8, 0.2), (1.0, 0.7)])]
    result = summarize_calibration(spec, bad, long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert not result.trusted and result.verdict.startswith("do not trust the front's stability axis")
    assert "feasibility agrees on only 50%" in result.verdict
    few = summarize_calibration(spec, good[:3], long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert not few.trusted and "too few candidates (3)" in few.verdict


def test_candidates_within_the_probes_noise_enter_the_rank_correlation_tied():
    """The demo's calibration: two trials that cannot learn (probe -0.01 and 0.01, each
    inside the other's noise band) end their long runs at 0.00 and -0.00. Their order is
    luck; counted, it read 1.00 one way and 0.80 the other. Tied, it reads the same both
    ways, and the verdict names the tie."""
    spec = _spec()
    rows = [(0.63, 0.12, 0.56), (-0.01, 0.02, 0.001), (0.28, 0.11, 0.33), (0.01, 0.016, -0.001)]

    def candidates(flip: bool, noise: bool):
        out = []
        for i, (probe, band, final) in enumerate(rows):
            final = -final if flip and abs(final) < 0.01 else final
            c = _candidate(i, probe, final)
            out.append(
                Candidate(
                    c.number,
                    c.params,
                    c.why,
                    c.probe,
                    c.feasible,
                    long=c.long,
                    noise={"length_retention": band} if noise else {},
                )
            )
        return out

    def rho(flip: bool, noise: bool):
        return summarize_calibration(
            spec, candidates(flip, noise), long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0
        )

    assert rho(False, False).spearman["length_retention"] == pytest.approx(0.8)  # noise counted as order
    assert rho(True, False).spearman["length_retention"] == pytest.approx(1.0)
    tied, flipped = rho(False, True), rho(True, True)
    assert tied.spearman == flipped.spearman and tied.spearman["length_retention"] == pytest.approx(0.9487, abs=1e-4)
    assert tied.ties == {"length_retention": [[1, 3]]}
    assert (
        "(Spearman length_retention 0.95 over 4 candidates; trials 1 and 3 tied: within the probe's noise band"
        in tied.verdict
    )
    # a band that does not reach the neighbour ties nothing
    narrow = [
        Candidate(c.number, c.params, c.why, c.probe, c.feasible, long=c.long, noise={"length_retention": 0.001})
        for c in candidates(False, False)
    ]
    result = summarize_calibration(spec, narrow, long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert result.ties == {} and result.spearman["length_retention"] == pytest.approx(0.8)
    # a calibration.json written before ties existed still loads
    from sweep.report.calibration import Calibration

    old = tied.to_json()
    del old["ties"]
    for c in old["candidates"]:
        del c["noise"]
    assert Calibration.from_json(old).ties == {}


def test_a_constraint_only_metric_is_judged_by_its_verdicts_and_an_objective_by_its_order():
    # the demo's shape: the front ranks by reward_gain, length_retention only gates feasibility
    spec = SweepSpec.model_validate(
        {
            "name": "t",
            "models": {"pretrained": "/p", "instruct": "/i", "reasoning": "/r"},
            "objectives": [{"metric": "probe/reward_gain", "direction": "maximize"}],
            "constraints": ["probe/length_retention >= 0.5"],
            "results_dir": "/tmp",
        }
    )
    # retention's order disagrees with the final lengths (all kept half), the gain's agrees
    rows = [(0.9, 0.6, 0.1, 0.05), (0.8, 0.9, 0.2, 0.15), (0.7, 1.2, 0.4, 0.3), (0.6, 2.0, 0.6, 0.5)]
    candidates = [
        Candidate(
            i,
            {"alpha": 0.1 * i, "beta": 1.0},
            "test",
            {"length_retention": ret, "reward_gain": gain},
            True,
            long=[{"final_length": final, "final_reward": added, "dip": 0.0}],
        )
        for i, (ret, final, gain, added) in enumerate(rows)
    ]
    result = summarize_calibration(spec, candidates, long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert list(result.spearman) == ["reward_gain"] and result.spearman["reward_gain"] == pytest.approx(1.0)
    assert result.agreement == {"probe/length_retention >= 0.5": 1.0}
    assert result.trusted, result.verdict
    assert "Spearman reward_gain 1.00 over 4 candidates" in result.verdict
    # the report's table shows what gates feasibility beside what ranks, each candidate's value
    from sweep.report.calibration import markdown

    lines = markdown(result)
    header = next(line for line in lines if line.startswith("| trial"))
    assert "probe/reward_gain" in header and "probe/length_retention" in header, header
    assert any(line.startswith("| 3 | test | 0.60 | 0.60 |") for line in lines), lines
    # the same with retention as an objective: its reversed order is what a user must hear about
    ranked = spec.model_copy(
        update={
            "objectives": spec.objectives
            + [type(spec.objectives[0])(metric="probe/length_retention", direction="maximize")]
        }
    )
    result = summarize_calibration(ranked, candidates, long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert not result.trusted and "Spearman -1.00 for probe/length_retention" in result.verdict
    # a constraint-only spec whose candidates recorded no probe value: nothing was compared, nothing trusted
    gated = spec.model_copy(update={"objectives": [type(spec.objectives[0])(metric="x", direction="maximize")]})
    blind = [Candidate(c.number, c.params, c.why, {"length_retention": None}, None, long=c.long) for c in candidates]
    result = summarize_calibration(gated, blind, long_steps=128, probe_steps=16, seeds=[1], wall_s=1.0)
    assert not result.trusted and result.verdict.startswith("nothing to compare"), result.verdict


def _table(values: list[float], noise: list[float]):
    import pandas as pd

    return pd.DataFrame(
        {
            "number": list(range(len(values))),
            "state": ["COMPLETE"] * len(values),
            "params/alpha": [0.1 * i for i in range(len(values))],
            "params/beta": [1.0] * len(values),
            "probe/reward_gain": values,
            "probe/reward_gain_noise": noise,
        }
    )


def test_calibrate_spreads_its_candidates_over_values_the_probe_can_tell_apart():
    from sweep.run.calibrate import choose_trials

    spec = SweepSpec.model_validate(
        {
            "name": "t",
            "models": {"pretrained": "/p", "instruct": "/i", "reasoning": "/r"},
            "objectives": [{"metric": "probe/reward_gain", "direction": "maximize"}],
            "results_dir": "/tmp",
        }
    )
    # the demo sweep's shape: one strong trial, one middling, ten that cannot learn (all ~0 within noise)
    values = [0.63, 0.0, 0.0, 0.0, -0.01, 0.01, 0.0, 0.0, 0.0, 0.0, 0.0, 0.26]
    noise = [0.12, 0.0, 0.0, 0.0, 0.021, 0.016, 0.0, 0.0, 0.0, 0.0, 0.0, 0.10]
    chosen = choose_trials(spec, _table(values, noise))
    numbers = [n for n, _ in chosen]
    assert numbers[:3] == [0, 4, 11], chosen  # the best, the lowest, the middling one (rank spreading missed it)
    # three levels only: one more, marked as within the noise, to reach the 4 a correlation needs
    assert len(chosen) == 4 and "within the noise" in chosen[3][1] and values[numbers[3]] in (0.0, 0.01)
    # only two levels the probe can tell apart (the best is also the highest): still 4 distinct trials
    flat = choose_trials(spec, _table([0.5] + [0.0] * 7, [0.1] + [0.02] * 7), limit=4)
    assert len({n for n, _ in flat}) == 4 and sum("within the noise" in why for _, why in flat) == 2, flat
    assert len(choose_trials(spec, _table([0.5, 0.0, 0.0], [0.1, 0.02, 0.02]), limit=4)) == 3  # all there is
    # values the probe can tell apart fill up to the limit, spread over the range
    spread = choose_trials(spec, _table([0.1 * i for i in range(12)], [0.01] * 12), limit=6)
    assert sorted(n for n, _ in spread) == [0, 1, 3, 5, 8, 11] and all("noise" not in why for _, why in spread)


def test_calibrate_refuses_a_probe_without_a_baseline_before_anything_runs(tmp_path):
    from sweep.errors import SweepError
    from sweep.run.calibrate import calibrate
    from sweep.run.longrun import RUNS_FILE

    spec = SweepSpec.model_validate(
        {
            "name": "t",
            "models": {"pretrained": "/p", "instruct": "/i", "reasoning": "/r"},
            "evals": {"probe": {"prompts": "/none.jsonl", "baseline_samples": 0}},
            "objectives": [{"metric": "probe/reward_gain", "direction": "maximize"}],
            "results_dir": str(tmp_path),
        }
    )
    ran = []
    with pytest.raises(SweepError, match="baseline_samples is 0: calibrate reads each long run against"):
        calibrate(
            spec, _table([0.1 * i for i in range(4)], [0.01] * 4), [(i, "t") for i in range(4)], run_fn=ran.append
        )
    assert not ran and not (spec.study_dir / RUNS_FILE).exists()


def test_a_recorded_long_run_is_reused_only_for_the_same_candidate_settings_seed_and_steps(tmp_path):
    from sweep.run.longrun import RUNS_FILE, record_run, recorded_runs, run_key

    spec = SweepSpec.model_validate(
        {
            "name": "t",
            "models": {"pretrained": "/p", "instruct": "/i", "reasoning": "/r"},
            "evals": {"probe": {"prompts": "/p.jsonl"}},
            "objectives": [{"metric": "probe/reward_gain", "direction": "maximize"}],
            "results_dir": str(tmp_path),
        }
    )
    key = run_key(spec, {"alpha": 0.5, "beta": 1.0}, 1, 128)
    probe = spec.evals.probe
    assert probe is not None
    others = [
        run_key(spec, {"alpha": 0.5, "beta": 0.9}, 1, 128),  # another candidate
        run_key(spec, {"alpha": 0.5, "beta": 1.0}, 2, 128),  # another seed
        run_key(spec, {"alpha": 0.5, "beta": 1.0}, 1, 64),  # other steps
        run_key(
            spec.model_copy(update={"models": spec.models.model_copy(update={"reasoning": "/r2"})}),
            {"alpha": 0.5, "beta": 1.0},
            1,
            128,
        ),
        run_key(
            spec.model_copy(
                update={
                    "evals": spec.evals.model_copy(update={"probe": probe.model_copy(update={"learning_rate": 1e-3})})
                }
            ),
            {"alpha": 0.5, "beta": 1.0},
            1,
            128,
        ),
    ]
    assert len({key, *others}) == 6
    # the probe's own steps, seed, stopping rule and noise replicates are not the long run's: same key
    inert = probe.model_copy(update={"steps": 8, "seed": 5, "collapse_threshold": None, "noise_samples": 50})
    inert_spec = spec.model_copy(update={"evals": spec.evals.model_copy(update={"probe": inert})})
    assert run_key(inert_spec, {"alpha": 0.5, "beta": 1.0}, 1, 128) == key
    # nor are the memory levers: a calibration that ran out of memory goes on with smaller micro-batches
    lean = probe.model_copy(update={"micro_batch_size": 2, "logprob_chunk": 64, "activation_checkpointing": True})
    lean_spec = spec.model_copy(
        update={
            "evals": spec.evals.model_copy(update={"probe": lean}),
            "merge": spec.merge.model_copy(update={"source_device": "cpu", "device": "cpu"}),
        }
    )
    assert run_key(lean_spec, {"alpha": 0.5, "beta": 1.0}, 1, 128) == key
    assert run_key(lean_spec, {"alpha": 0.5, "beta": 1.0}, 1, 128, legacy=True) != run_key(
        spec, {"alpha": 0.5, "beta": 1.0}, 1, 128, legacy=True
    )  # the key runs were recorded under before: calibrate looks both up
    spec.study_dir.mkdir(parents=True)
    record_run(spec.study_dir, key, 3, {"final_length": 0.7, "seed": 1})
    with open(spec.study_dir / RUNS_FILE, "a") as handle:
        handle.write('{"key": "cut short by a cra')  # a crash mid-line: skipped, not an error
    assert recorded_runs(spec.study_dir) == {key: {"final_length": 0.7, "seed": 1}}


def test_the_heartbeat_says_how_long_a_long_run_has_run_and_how_long_it_has_left():
    from sweep.run.progress import duration, so_far

    # 57 of 192 steps in 2:10 h: 135 steps left at 137 s a step
    assert so_far(7800, (57, 192)) == "2:10 h (step 57/192, about 5:07 h left)"
    assert so_far(30, None) == so_far(30, (0, 192)) == "30 s"  # no step reported yet
    # resumed from its checkpoint at step 50: the 7 steps since took the 2:10 h
    assert so_far(7800, (57, 192, 50)) == "2:10 h (step 57/192, about 41:47 h left)"
    assert so_far(7800, (57, 192, 0)) == so_far(7800, (57, 192))
    assert so_far(90, (50, 192, 50)) == "90 s (step 50/192)"  # no step of its own yet: no pace to read

    assert [duration(s) for s in (5.2, 59.9, 125, 599, 600, 3599, 3720, 7 * 3600 + 59 * 60)] == [
        "5 s",
        "60 s",
        "125 s",
        "599 s",
        "10 min",
        "59 min",
        "1:02 h",
        "7:59 h",
    ]
