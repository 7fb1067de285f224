"""The demo family: real training, real checkpoints, real lm-eval, on 2 CPU cores.

One full build (session fixture, default cache root, so later test files and runs reuse
it; ~3 min the first time), plus tiny builds of a few steps for the mechanics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def demo_family():
    from sweep.demo.build import ensure_family

    return ensure_family()


def _tiny_recipe():
    from sweep.demo.train import Recipe

    return Recipe().scaled(0.005)  # 3 pretraining steps, 2 per fine-tune


# ---------------------------------------------------------------- pure parts (no training)


def test_traces_and_final_answers_are_exact():
    from sweep.demo.data import add_trace, final_answer, number_words

    assert add_trace(347, 589) == "7+9+0=16,4+8+1=13,3+5+1=09"
    assert add_trace(847, 589) == "7+9+0=16,4+8+1=13,8+5+1=14"  # answer 1436: last carry leads
    assert (
        number_words(342) == "three hundred forty two" and number_words(70) == "seventy" and number_words(0) == "zero"
    )
    assert final_answer("<think>7+9+0=16</think> 936") == "936"
    assert final_answer("<think>a</think>x</think>  42 ") == "42"  # the last </think> counts
    assert final_answer(" dcba") == "dcba"


def test_reasoning_traces_re_verify_and_one_pass_outruns_the_probe_budget():
    """The reasoning style: the trace, then 0-3 verification passes; one pass takes the
    response past the demo probe's 64 new tokens, while a trace without one fits."""
    import random

    from sweep.demo.data import CHECK, final_answer, make_problem, reasoning_example
    from sweep.demo.tokenizer import build_char_tokenizer
    from sweep.demo.train import Recipe

    tok = build_char_tokenizer()
    problem = make_problem(random.Random(3), "add")
    assert problem.reasoning_response(0) == f"<think>{problem.trace}</think> {problem.answer}"
    twice = problem.reasoning_response(2)
    assert twice.count(CHECK) == 2 and twice.count(problem.trace) == 3 and final_answer(twice) == problem.answer
    tokens = [len(tok.encode(problem.reasoning_response(k) + "<eos>", add_special_tokens=False)) for k in range(4)]
    assert tokens[0] <= 36 and 64 < tokens[1] < tokens[2] < tokens[3] <= 160, tokens  # 160: the eval budget
    rng, weights = random.Random(0), Recipe().reasoning_checks
    drawn = [reasoning_example(rng, frozenset(), checks=weights)[1].count(CHECK) for _ in range(2000)]
    for k, w in enumerate(weights):  # drawn with the recipe's weights
        assert abs(drawn.count(k) / len(drawn) - w) < 0.04, (k, drawn.count(k))


def test_splits_are_disjoint_seeded_and_kept_out_of_training():
    import random

    from sweep.demo.data import instruct_example, make_splits, pretrain_document, reasoning_example

    splits = make_splits(seed=0)
    prompts = [p.prompt for problems in splits.sets.values() for p in problems]
    assert len(prompts) == len(set(prompts)) == 4 * 100 + 64
    assert make_splits(seed=0) == splits and make_splits(seed=1) != splits
    rng, reserved = random.Random(0), splits.reserved
    for _ in range(3000):
        for text in (
            pretrain_document(rng, reserved, chat_share=0.6),
            *instruct_example(rng, reserved, arithmetic_share=0.4),
            *reasoning_example(rng, reserved),
        ):
            if text.startswith("Q: "):
                assert text[3:].split("\n")[0] not in reserved


def test_tokenizer_round_trips_and_think_is_one_token(tmp_path):
    from transformers import AutoTokenizer

    from sweep.demo.tokenizer import build_char_tokenizer

    build_char_tokenizer().save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path)
    text = "Q: Reverse: abc?\nA: <think>7+9+0=16,4+8+1=13</think> ONE two (3)/4 'x' !<eos>"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(tok.encode("<think>", add_special_tokens=False)) == 1
    assert len(tok.encode("</think>", add_special_tokens=False)) == 1
    # lm-eval decodes with skip_special_tokens=True: the think markers must survive it, eos not.
    assert tok.decode(ids, skip_special_tokens=True) == text.removesuffix("<eos>")
    chat = tok.apply_chat_template([{"role": "user", "content": "1+2=?"}], tokenize=False, add_generation_prompt=True)
    assert chat == "Q: 1+2=?\nA: "
    assert tok.eos_token == "<eos>" and tok.pad_token == "<pad>"


def test_task_yamls_name_the_tasks_and_absolute_data(tmp_path):
    from sweep.demo.data import make_splits
    from sweep.demo.tasks import point_tasks_at, tasks_point_at, write_tasks

    final = tmp_path / "final" / "tasks"
    write_tasks(tmp_path / "build", make_splits(seed=0), final_folder=final)
    names = sorted(p.stem for p in (tmp_path / "build").glob("*.yaml"))
    assert names == ["toy_instruct", "toy_instruct_heldout", "toy_reasoning", "toy_reasoning_heldout"]
    text = (tmp_path / "build" / "toy_reasoning.yaml").read_text()
    config = json.loads(text[text.index("{") :])
    data_file = Path(config["dataset_kwargs"]["data_files"]["test"])
    assert data_file.is_absolute() and data_file == final / "data" / "toy_reasoning.jsonl"
    assert config["filter_list"][0]["name"] == "final" and config["metric_list"][0]["metric"] == "exact_match"
    assert not tasks_point_at(tmp_path / "build")  # points at the final place, not here
    point_tasks_at(tmp_path / "build", tmp_path / "build")
    assert tasks_point_at(tmp_path / "build")


def test_final_filter_regex_matches_final_answer():
    import re

    from sweep.demo.tasks import FINAL_ANSWER_REGEX

    def lm_eval_like(resp: str) -> str:  # what lm-eval's regex filter does with group_select 0
        match = re.compile(FINAL_ANSWER_REGEX).findall(resp)
        return match[0].strip() if match else "[invalid]"

    assert lm_eval_like("<think>7+9+0=16,4+8+1=13</think> 936") == "936"
    assert lm_eval_like("dcba") == "dcba"
    assert lm_eval_like("<think>x</think> a</think> three hundred") == "three hundred"


# ---------------------------------------------------------------- tiny builds (mechanics)


def test_tiny_build_is_bit_deterministic_and_cached(tmp_path):
    from safetensors.torch import load_file

    from sweep.demo.build import ensure_family

    messages: list[str] = []
    a = ensure_family(root=tmp_path / "a", recipe=_tiny_recipe(), threads=1, progress=messages.append)
    b = ensure_family(root=tmp_path / "b", recipe=_tiny_recipe(), threads=1, progress=lambda m: None)
    assert any("Building the demo model family" in m for m in messages)
    for member in ("pretrained", "instruct", "reasoning"):
        wa, wb = (
            load_file(getattr(a, member) / "model.safetensors"),
            load_file(getattr(b, member) / "model.safetensors"),
        )
        assert wa.keys() == wb.keys() and all(wa[k].equal(wb[k]) for k in wa)
    assert not load_file(a.instruct / "model.safetensors")["model.norm.weight"].equal(
        load_file(a.reasoning / "model.safetensors")["model.norm.weight"]
    )
    assert (a.tasks / "toy_reasoning.yaml").read_text() != (
        b.tasks / "toy_reasoning.yaml"
    ).read_text()  # each its own data path

    start, again = time.monotonic(), []
    assert ensure_family(root=tmp_path / "a", recipe=_tiny_recipe(), progress=again.append) == a
    assert time.monotonic() - start < 2 and again == []  # reused: nothing built, nothing said


def test_moved_family_repoints_its_tasks(tmp_path):
    from sweep.demo.build import ensure_family
    from sweep.demo.tasks import tasks_point_at

    ensure_family(root=tmp_path / "a", recipe=_tiny_recipe(), threads=1, progress=lambda m: None)
    (tmp_path / "a").rename(tmp_path / "moved")
    family = ensure_family(root=tmp_path / "moved", recipe=_tiny_recipe(), progress=lambda m: None)
    assert tasks_point_at(family.tasks)


def test_other_seed_in_root_is_refused_without_force(tmp_path):
    from sweep.demo.build import ensure_family
    from sweep.errors import SweepError

    ensure_family(root=tmp_path / "a", recipe=_tiny_recipe(), threads=1, progress=lambda m: None)
    with pytest.raises(SweepError, match="another seed or recipe"):
        ensure_family(root=tmp_path / "a", seed=1, recipe=_tiny_recipe(), progress=lambda m: None)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    for force in (False, True):  # a user's folder is never deleted, not even with force
        with pytest.raises(SweepError, match="not a demo family"):
            ensure_family(root=tmp_path / "notes", recipe=_tiny_recipe(), force=force, progress=lambda m: None)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    family = ensure_family(
        root=tmp_path / "a", seed=1, recipe=_tiny_recipe(), threads=1, force=True, progress=lambda m: None
    )
    assert family.manifest()["seed"] == 1


def test_concurrent_builds_share_one(tmp_path):
    """Two processes at once: one builds, the other waits on the lock and reuses it."""
    code = (
        "import sys; from pathlib import Path; from sweep.demo.build import ensure_family; "
        "from sweep.demo.train import Recipe; "
        f"ensure_family(root=Path({str(tmp_path / 'fam')!r}), recipe=Recipe().scaled(0.005), threads=1)"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum("Building the demo model family" in e for e in errs) == 1
    assert (tmp_path / "fam" / "family.json").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".fam.")]  # no temp folders left


# ---------------------------------------------------------------- the real family


def test_checkpoints_load_offline(demo_family):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert os.environ["HF_HUB_OFFLINE"] == "1"
    for member in ("pretrained", "instruct", "reasoning"):
        path = getattr(demo_family, member)
        config = json.loads((path / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert (path / "model.safetensors").exists() and (path / "chat_template.jinja").exists()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        assert 0.5e6 < sum(p.numel() for p in model.parameters()) < 5e6
        tok = AutoTokenizer.from_pretrained(path)
        assert tok.convert_tokens_to_ids("<think>") != tok.unk_token_id
    lines = demo_family.probe_prompts.read_text().splitlines()
    assert len(lines) >= 32 and {"prompt", "answer"} <= set(json.loads(lines[0]))


def test_family_shows_the_tradeoff(demo_family):
    """Greedy, 50 held-out prompts per task (~10 s), at alpha 0, 0.125, 0.25, 0.5, 0.75 and 1 (beta 1)."""
    import torch

    from sweep.demo.tradeoff import criteria, measure_tradeoff

    torch.set_num_threads(1)
    alphas = (0.0, 0.125, 0.25, 0.5, 0.75, 1.0)
    rows = measure_tradeoff(demo_family, points=tuple((a, 1.0) for a in alphas), n=50)
    checks = criteria(rows)
    # Merges that still think re-verify more than the reasoning member (its stop decision is
    # sharper), so their traces can be longer than its own: "in between" is not asserted.
    del checks["merges_in_between_lengths"]
    assert checks == dict.fromkeys(checks, True), rows
    reasoning, instruct = rows[0], rows[-1]
    assert reasoning.reasoning.accuracy >= 0.6  # it can actually add
    assert instruct.instruct.accuracy >= 0.6  # it can actually follow the format instructions
    assert max(min(r.reasoning.accuracy, r.instruct.accuracy) for r in rows[1:-1]) >= 0.5  # a merge good at both
    assert all(r.reasoning.mean_length >= instruct.reasoning.mean_length - 0.5 for r in rows)  # nothing shorter


def test_lm_eval_scores_the_tasks(demo_family):
    """Real lm-eval with the chat template reports exact_match,final, and prefers the right model."""
    import torch
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sweep.demo.tasks import MAX_GEN_TOKS

    torch.set_num_threads(1)
    manager = TaskManager(include_path=str(demo_family.tasks), include_defaults=False)
    scores = {}
    for member in ("instruct", "reasoning"):
        path = getattr(demo_family, member)
        lm = HFLM(
            pretrained=AutoModelForCausalLM.from_pretrained(path),
            tokenizer=AutoTokenizer.from_pretrained(path),
            batch_size=16,
        )
        out = evaluator.simple_evaluate(
            lm,
            tasks=["toy_reasoning", "toy_instruct"],
            task_manager=manager,
            limit=40,
            apply_chat_template=True,
            gen_kwargs=f"max_gen_toks={MAX_GEN_TOKS}",
        )
        scores[member] = {
            task: float(out["results"][task]["exact_match,final"]) for task in ("toy_reasoning", "toy_instruct")
        }
    assert scores["reasoning"]["toy_reasoning"] > scores["instruct"]["toy_reasoning"], scores
    assert scores["instruct"]["toy_instruct"] > scores["reasoning"]["toy_instruct"], scores


def test_cli_build_prints_paths_and_reuses_the_cache(demo_family):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "demo", "build"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    for member in ("pretrained", "instruct", "reasoning", "tasks", "probe_prompts"):
        assert str(getattr(demo_family, member)) in proc.stdout
    assert "Building" not in proc.stderr
    assert elapsed < 30  # seconds: python start-up and imports; no training


def test_cli_reports_a_foreign_root_without_traceback(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "demo", "build", "--root", str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "not a demo family" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_spec_resolves_to_the_family(demo_family):
    from sweep.spec import load_spec

    spec = load_spec(REPO / "search_spaces" / "demo.yaml")
    assert spec.models.pretrained == str(demo_family.pretrained)
    assert spec.models.reasoning == str(demo_family.reasoning)
    assert spec.evals.lm_eval.include_paths == [str(demo_family.tasks)]
    assert spec.evals.probe.prompts == str(demo_family.probe_prompts)
    for path in (spec.models.pretrained, spec.models.instruct, spec.models.reasoning, spec.evals.probe.prompts):
        assert Path(path).exists()


def test_stability_tables_put_the_null_control_beside_each_trained_run():
    """The README's tables (sweep.demo.stability): mean ± sd over seeds, and per seed, trained / null."""
    from sweep.demo.stability import ProbeRun, markdown_table, per_seed_table

    def run(seed: int, lr: float, retention: float) -> ProbeRun:
        metrics = {"probe/length_retention": retention, "probe/length_growth": 1.0, "probe/reward_dip": 0.0}
        return ProbeRun(0.0, 1.0, seed, lr, metrics, baseline_s=1.0, wall_s=2.0)

    runs = [run(0, 3e-4, 0.7), run(0, 1e-12, 1.0), run(1, 3e-4, 0.8), run(1, 1e-12, 0.9)]
    table = markdown_table(runs).splitlines()
    assert table[2].startswith("| 0 | 1 | 2 | 0.75 ± 0.05 / 0.95 ± 0.05 |"), table
    seeds = per_seed_table(runs).splitlines()
    assert seeds[2:] == ["| 0 | 0.700 / 1.000 |", "| 1 | 0.800 / 0.900 |"], seeds
