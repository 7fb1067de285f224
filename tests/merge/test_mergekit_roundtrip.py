"""The mergekit recipe we write, run by the real mergekit 0.1.5, against our own merge.

For every stage-1 method (and slerp in stage 2) and both output dtypes (plus bf16 sources
for linear and task arithmetic): our disk merge
writes a checkpoint, `recipe_for_merged` gives the recipe `sweep export` writes beside it,
mergekit builds it, and the two checkpoints are compared tensor by tensor. All recipes run
in ONE mergekit-multi process (mergekit's start-up costs seconds per call); one one-pass
and one two-stage recipe also run exactly as written, with mergekit-yaml and mergekit-multi.

Expected (docs/merge.md, "Same as mergekit"): bit-identical for linear and TIES (fp32 task
vectors here have no ties at the trim cut; with bf16 sources, only tensors with a tie split
by the cut differ), within fp32 rounding (fp32) or one bf16 ulp (bf16) for task arithmetic
and slerp, and DARE equal in distribution only.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch

from merge.disk import merge_checkpoints
from merge.mergekit_recipe import FILE_NAME, STAGE1_NAME, recipe_for_merged
from tests.merge.helpers import bf16_ulp, load_state
from tests.merge.mergekit_tools import batch_recipes, require_mergekit, run_mergekit
from tests.tiny import make_trio

pytestmark = pytest.mark.slow

ALPHA, BETA = 0.3, 0.8
CASES = {  # key -> (stage-1 method, params, stage-2 method, params)
    "linear": ("linear", {}, "linear", {}),
    "linear-slerp": ("linear", {}, "slerp", {}),
    "task_arithmetic": ("task_arithmetic", {}, "linear", {}),
    "ties": ("ties", {"density": 0.5}, "linear", {}),
    "dare": ("dare", {"density": 0.5, "seed": 3}, "linear", {}),
    "dare_ties": ("dare", {"density": 0.5, "variant": "ties", "seed": 3}, "linear", {}),
    "slerp": ("slerp", {}, "linear", {}),
    "slerp-slerp": ("slerp", {}, "slerp", {}),
}
DTYPES = ("float32", "bfloat16")
# bf16 sources, output dtype auto (bf16): mergekit loads them as float32 (exact), as we read them
BF16_SOURCES = {
    "bf16-sources-linear": CASES["linear"],
    "bf16-sources-task_arithmetic": CASES["task_arithmetic"],
    "bf16-sources-ties": CASES["ties"],
}
EXACT = {"linear", "ties", "bf16-sources-linear"}  # bit-identical on these trios
STATISTICAL = {"dare", "dare_ties"}


@pytest.fixture(scope="module")
def roundtrip(tiny_trio, tmp_path_factory):
    """{(case, dtype): (our folder, mergekit's folder)} plus the seconds mergekit took."""
    mergekit = require_mergekit()
    root = tmp_path_factory.mktemp("mergekit")
    ours, recipes = {}, {}

    def merge_ours(trio, case: str, key: str, dtype: str | None) -> Path:
        """Our merge of `case` into ours/<key>, and the recipe `sweep export` writes beside it."""
        m1, p1, m2, p2 = CASES.get(case) or BF16_SOURCES[case]
        out = merge_checkpoints(
            **trio,
            alpha=ALPHA,
            beta=BETA,
            out=root / "ours" / key,
            stage1_method=m1,
            stage1_params=p1,
            stage2_method=m2,
            stage2_params=p2,
            **({"dtype": dtype} if dtype else {}),  # none: the sources' dtype (auto)
        )
        recipes[key] = recipe_for_merged(out)
        return out

    for case in CASES:
        for dtype in DTYPES:
            out = ours[(case, dtype)] = merge_ours(tiny_trio, case, f"{case}-{dtype}", dtype)
            (out / FILE_NAME).write_text(recipes[f"{case}-{dtype}"])
    bf16_trio = make_trio(root / "bf16-trio", dtype=torch.bfloat16)
    for case in BF16_SOURCES:
        ours[(case, "bfloat16")] = merge_ours(bf16_trio, case, f"{case}-bfloat16", None)
    batch = root / "all.yaml"
    batch.write_text(batch_recipes(recipes, STAGE1_NAME))
    started = time.perf_counter()
    seconds = {
        "batch": run_mergekit([str(mergekit / "mergekit-multi"), str(batch), "--intermediate-dir", str(root / "mk")])
    }
    # two recipes exactly as written, as a user runs them
    one_pass, two_stage = ours[("linear", "bfloat16")], ours[("ties", "float32")]
    seconds["mergekit-yaml"] = run_mergekit(
        [str(mergekit / "mergekit-yaml"), str(one_pass / FILE_NAME), str(root / "as-written-linear")]
    )
    seconds["mergekit-multi"] = run_mergekit(
        [
            str(mergekit / "mergekit-multi"),
            str(two_stage / FILE_NAME),
            "--intermediate-dir",
            str(root / "tmp"),
            "--out-path",
            str(root / "as-written-ties"),
        ]
    )
    seconds["total"] = time.perf_counter() - started
    pairs = {k: (v, root / "mk" / f"{k[0]}-{k[1]}") for k, v in ours.items()}
    pairs[("as-written-linear", "bfloat16")] = (one_pass, root / "as-written-linear")
    pairs[("as-written-ties", "float32")] = (two_stage, root / "as-written-ties")
    print(
        f"mergekit round trip: {len(recipes)} recipes in one mergekit-multi run {seconds['batch']:.1f} s, "
        f"mergekit-yaml {seconds['mergekit-yaml']:.1f} s, mergekit-multi {seconds['mergekit-multi']:.1f} s"
    )
    trios = {case: bf16_trio if case in BF16_SOURCES else tiny_trio for case, _ in pairs}
    return pairs, recipes, seconds, trios


def _pair(roundtrip, case, dtype):
    pairs = roundtrip[0]
    ours, theirs = (load_state(p) for p in pairs[(case, dtype)])
    assert ours.keys() == theirs.keys(), f"{case} {dtype}: tensor names differ"
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype == getattr(torch, dtype), f"{case} {dtype} {name}: dtype"
    return ours, theirs


@pytest.mark.parametrize(
    ("case", "dtype"),
    [(c, d) for c in ("linear", "ties") for d in DTYPES]
    + [("bf16-sources-linear", "bfloat16"), ("as-written-linear", "bfloat16"), ("as-written-ties", "float32")],
)
def test_linear_and_ties_are_bit_identical(roundtrip, case, dtype):
    ours, theirs = _pair(roundtrip, case, dtype)
    for name in ours:
        assert torch.equal(ours[name], theirs[name]), (
            f"{case} {dtype}: {name} differs in {(ours[name] != theirs[name]).sum()} entries"
        )


@pytest.mark.parametrize(
    ("case", "dtype"),
    [(c, d) for c in ("task_arithmetic", "linear-slerp", "slerp", "slerp-slerp") for d in DTYPES]
    + [("bf16-sources-task_arithmetic", "bfloat16")],
)
def test_task_arithmetic_and_slerp_agree_to_rounding(roundtrip, case, dtype):
    """fp32: within 4 fp32 ulp of the terms per stage that rounds differently from
    mergekit's (where they cancel, relative to the sources' magnitude, not the small
    result); bf16: that, or one bf16 ulp of the result. Linear stages are bit-identical;
    a slerp or task-arithmetic stage computes its coefficients in another order, and two
    of them in a row carry the first one's rounding into the second: slerp-slerp's
    embedding was 1.2x the one-stage bound on an AMD EPYC (AVX2), old and new code alike."""
    ours, theirs = _pair(roundtrip, case, dtype)
    base_case = case.removeprefix("bf16-sources-")
    inexact = sum(method in ("slerp", "task_arithmetic") for method in CASES[base_case][::2])
    sources = [load_state(path) for path in roundtrip[3][case].values()]
    differing = 0
    for name in ours:
        reference = ours[name].double()
        scale = torch.stack([reference.abs()] + [s[_stored(name, s)].double().abs() for s in sources]).amax(0)
        tolerance = 4 * max(1, inexact) * fp32_ulp(scale)
        if dtype == "bfloat16":
            tolerance = torch.maximum(tolerance, bf16_ulp(reference))
        gap = (reference - theirs[name].double()).abs()
        assert bool((gap <= tolerance).all()), (
            f"{case} {dtype}: {name} off by {float((gap / tolerance).max()):.1f}x the tolerance"
        )
        differing += int((gap > 0).sum())
    if dtype == "float32":
        assert differing > 0  # not bit-identical: the match statement must not claim so


def fp32_ulp(magnitude: torch.Tensor) -> torch.Tensor:
    """Spacing of float32 numbers at each magnitude (24 significant bits)."""
    return torch.pow(2.0, torch.floor(torch.log2(magnitude.clamp_min(2.0**-126))) - 23)


def _stored(name: str, state: dict) -> str:
    return name if name in state else "model.embed_tokens.weight"  # a tied model's head


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", sorted(STATISTICAL))
def test_dare_matches_in_distribution(roundtrip, tiny_trio, case, dtype):
    """Different random masks, same law: the share of entries both masks dropped (they equal
    pretrained) is (1 - density)^2 = 0.25 for both, and the spread around task arithmetic
    (the DARE expectation for variant linear) is the same."""
    ours, theirs = _pair(roundtrip, case, dtype)
    pretrained = load_state(tiny_trio["pretrained"])
    expected = merge_expected_task_arithmetic(tiny_trio)
    stats = {}
    for side, state in (("ours", ours), ("mergekit", theirs)):
        dropped, spread, count = 0, 0.0, 0
        for name, tensor in state.items():
            if name == "lm_head.weight" or tensor.dim() < 2:
                continue  # big matrices only: enough entries for the statistics
            value = tensor.double()
            base = pretrained[name].double()
            dropped += int(((value - base).abs() <= 1e-6 + 4e-3 * base.abs() * (dtype == "bfloat16")).sum())
            spread += float(((value - expected[name]) ** 2).sum())
            count += value.numel()
        stats[side] = (dropped / count, (spread / count) ** 0.5, count)
    (ours_drop, ours_spread, n), (mk_drop, mk_spread, _) = stats["ours"], stats["mergekit"]
    assert n > 10_000
    assert ours_drop == pytest.approx(0.25, abs=0.02) and mk_drop == pytest.approx(0.25, abs=0.02), stats
    assert ours_spread == pytest.approx(mk_spread, rel=0.1), stats
    assert not all(torch.equal(ours[k], theirs[k]) for k in ours)  # the masks really differ


def merge_expected_task_arithmetic(trio) -> dict[str, torch.Tensor]:
    """beta * (P + alpha*(I-P) + (1-alpha)*(R-P)) + (1-beta) * P in float64."""
    states = {role: load_state(path) for role, path in trio.items()}
    p, i, r = states["pretrained"], states["instruct"], states["reasoning"]
    return {
        n: BETA
        * (p[n].double() + ALPHA * (i[n].double() - p[n].double()) + (1 - ALPHA) * (r[n].double() - p[n].double()))
        + (1 - BETA) * p[n].double()
        for n in p
    }


def test_ties_on_bf16_sources_differs_only_where_magnitudes_tie_at_the_cut(roundtrip):
    """bf16 task vectors take few distinct magnitudes, so entries often tie at the trim cut;
    there mergekit (argsort) and we (index order) may keep different ones. Every tensor
    with no such split tie is bit-identical."""
    ours, theirs = _pair(roundtrip, "bf16-sources-ties", "bfloat16")
    sources = {role: load_state(path) for role, path in roundtrip[3]["bf16-sources-ties"].items()}
    density = CASES["ties"][1]["density"]
    exact = split = 0
    for name in ours:
        base = sources["pretrained"][name].float()
        tied_at_cut = False
        for role in ("instruct", "reasoning"):
            magnitude = (sources[role][name].float() - base).abs().flatten()
            keep = round(density * magnitude.numel())
            threshold = magnitude.sort(descending=True).values[keep - 1]
            above, at = int((magnitude > threshold).sum()), int((magnitude == threshold).sum())
            tied_at_cut |= above + at > keep  # more entries at the cut than places left
        if tied_at_cut:
            split += 1
        else:
            assert torch.equal(ours[name], theirs[name]), f"{name}: no tie at the cut, yet it differs"
            exact += 1
    print(f"TIES on bf16 sources: {exact} tensors bit-identical, {split} with a tie split by the trim cut")
    assert exact > 0 and split > 0, (exact, split)  # both kinds occur on this trio


def test_match_statements_are_what_was_measured(roundtrip):
    _, recipes, seconds, _ = roundtrip
    for key, text in recipes.items():
        match = next(line for line in text.splitlines() if line.startswith("# match:"))
        case = key.rsplit("-", 1)[0]
        if case in STATISTICAL:
            assert "statistics only" in match and "no exact mergekit equivalent" in text, (key, match)
        elif case.endswith("ties"):
            assert "bit-identical, except where task-vector magnitudes tie at the trim cut" in match, (key, match)
        elif case in EXACT:
            assert "bit-identical" in match, (key, match)
        else:
            assert "bit-identical" not in match, (key, match)
    assert seconds["total"] < 300  # the whole mergekit side: three processes


def test_recipe_file_runs_as_written(roundtrip):
    ours, _ = roundtrip[0][("ties", "float32")]
    text = (Path(ours) / FILE_NAME).read_text()
    assert text.count("\n---\n") == 1 and "mergekit-multi mergekit.yaml" in text
