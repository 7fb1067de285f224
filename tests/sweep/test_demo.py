"""The demo family: the shipped checkpoints (checksums, gate, lm-eval), and real training
at a tiny size for the mechanics of a rebuild (determinism, labels, locks, progress).

The `demo_family` fixture (tests/conftest.py) is the shipped family, checked against its
checksums; nothing here reads a cache.
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


def test_shipped_task_loader_is_the_one_builds_copy(demo_family):
    """A family's tasks folder carries its own copy of the loader (lm-eval resolves
    `!function` beside the YAML); the shipped copy must be the source's, else an edit to
    sweep/demo/toy_world_data.py would reach rebuilds and not the shipped family."""
    from sweep.demo.tasks import LOADER

    assert (demo_family.tasks / LOADER.name).read_bytes() == LOADER.read_bytes()


def test_task_folder_is_relocatable_and_loads_from_any_working_directory(tmp_path, monkeypatch):
    """The YAMLs name no absolute path: their loader reads data/ beside it, so a moved
    (or shipped) tasks folder gives lm-eval the same documents from any cwd."""
    from lm_eval.tasks import TaskManager

    from sweep.demo.data import make_splits
    from sweep.demo.tasks import TASKS, write_tasks

    splits = make_splits(seed=0)
    write_tasks(tmp_path / "built", splits)
    assert sorted(p.stem for p in (tmp_path / "built").glob("*.yaml")) == sorted(TASKS)
    assert str(tmp_path) not in "".join(p.read_text() for p in (tmp_path / "built").glob("*.yaml"))
    (tmp_path / "built").rename(tmp_path / "moved")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    manager = TaskManager(include_path=str(tmp_path / "moved"), include_defaults=False)
    tasks = manager.load(["toy_reasoning", "toy_instruct_heldout"])["tasks"]  # {name: Task}
    docs = {name: list(task.test_docs()) for name, task in tasks.items()}
    assert [d["prompt"] for d in docs["toy_reasoning"]] == [p.prompt for p in splits.sets["reasoning_search"]]
    assert [d["answer"] for d in docs["toy_instruct_heldout"]] == [p.answer for p in splits.sets["instruct_heldout"]]
    task = tasks["toy_reasoning"]
    assert task.config.filter_list[0]["name"] == "final" and task.config.metric_list[0]["metric"] == "exact_match"


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


def _tiny_build(root: Path, **kwargs):
    from sweep.demo.build import build_family

    kwargs = {"recipe": _tiny_recipe(), "threads": 1, "gate": False, "progress": lambda m: None} | kwargs
    return build_family(root=root, **kwargs)


def test_tiny_build_is_bit_deterministic_labelled_by_its_weights_and_reused(tmp_path):
    from safetensors.torch import load_file

    from sweep.demo.build import checksum_problems, family_key

    messages: list[str] = []
    a = _tiny_build(tmp_path / "a", progress=messages.append)
    b = _tiny_build(tmp_path / "b")
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
    # the label is the recipe's key plus the weights' digest: equal weights, equal labels
    key = family_key(seed=0, recipe=_tiny_recipe())
    assert a.label == b.label and a.label.startswith(key + "-w") and len(a.label) == len(key) + 10
    other = _tiny_build(tmp_path / "c", seed=1)
    assert other.label.split("-w")[1] != a.label.split("-w")[1]  # other weights, another label
    assert checksum_problems(a.root) == [] and (a.root / "SHA256SUMS").read_text().count("\n") > 20

    start, again = time.monotonic(), []
    assert _tiny_build(tmp_path / "a", progress=again.append) == a
    assert time.monotonic() - start < 2 and again == []  # reused: nothing built, nothing said


def test_a_build_prints_progress_with_an_eta(tmp_path, monkeypatch):
    """Each progress line carries the build's elapsed time and, once a step is measured, its ETA."""
    import sweep.demo.train

    monkeypatch.setattr(sweep.demo.train, "PROGRESS_EVERY_S", 0.0)  # a line per step
    messages: list[str] = []
    _tiny_build(tmp_path / "a", progress=messages.append)
    steps = [m for m in messages if ": step " in m]
    assert len(steps) == sum(
        s.steps for s in (_tiny_recipe().pretrain, _tiny_recipe().instruct, _tiny_recipe().reasoning)
    )
    assert all(" left)" in m and "% of the build" in m for m in steps), steps
    assert steps[-1].endswith("100% of the build, about 0 s left)"), steps[-1]
    assert "ETA from the measured step time" in messages[0]


def test_a_changed_file_fails_the_checksum_check_naming_it(tmp_path, demo_family):
    import shutil

    from sweep.demo.build import open_family
    from sweep.errors import SweepError

    copy = tmp_path / "family"
    shutil.copytree(demo_family.root, copy)
    assert open_family(copy).label == demo_family.label  # an intact copy opens
    weights = copy / "reasoning" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    (copy / "tasks" / "data" / "toy_reasoning.jsonl").unlink()
    with pytest.raises(SweepError) as raised:
        open_family(copy)
    message = str(raised.value)
    assert "reasoning/model.safetensors: sha256 differs" in message and "toy_reasoning.jsonl: missing" in message


def test_other_seed_in_root_is_refused_without_force(tmp_path):
    from sweep.errors import SweepError

    _tiny_build(tmp_path / "a")
    with pytest.raises(SweepError, match="another seed or recipe"):
        _tiny_build(tmp_path / "a", seed=1)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep")
    for force in (False, True):  # a user's folder is never deleted, not even with force
        with pytest.raises(SweepError, match="not a demo family"):
            _tiny_build(tmp_path / "notes", force=force)
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep"
    assert _tiny_build(tmp_path / "a", seed=1, force=True).manifest()["seed"] == 1


def test_concurrent_builds_share_one(tmp_path):
    """Two processes at once: one builds, the other waits on the lock and reuses it."""
    code = (
        "import sys; from pathlib import Path; from sweep.demo.build import build_family; "
        "from sweep.demo.train import Recipe; "
        f"build_family(root=Path({str(tmp_path / 'fam')!r}), recipe=Recipe().scaled(0.005), threads=1, gate=False)"
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


# ---------------------------------------------------------------- the shipped family


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


def test_shipped_family_passes_its_gate_with_the_numbers_it_was_shipped_with(demo_family):
    """`sweep demo check` on the shipped family: every criterion passes, exit 0, and each
    accuracy is within 0.1 (5 of 50 problems) of the table recorded when it was built.
    A statement about the shipped weights: greedy decoding on another CPU may flip a
    near-tie token, which is what the 0.1 allows; nothing here is trained."""
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "demo", "check", "--json"],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    measured = json.loads(proc.stdout)
    assert measured["label"] == demo_family.label and measured["passed"]
    assert all(c["passed"] for c in measured["criteria"]) and len(measured["criteria"]) == 9
    recorded = {(r["alpha"], r["beta"]): r for r in demo_family.manifest()["gate"]["rows"]}
    for row in measured["rows"]:
        then = recorded[(row["alpha"], row["beta"])]
        for task in ("reasoning", "instruct"):
            assert abs(row[task]["accuracy"] - then[task]["accuracy"]) <= 0.1, (row, then)
            assert abs(row[task]["mean_length"] - then[task]["mean_length"]) <= 5, (row, then)


def test_gate_fails_naming_the_numbers():
    """A family whose reasoner cannot add and whose merges keep no skill misses the gate, and
    the report says which criteria, with the numbers."""
    from sweep.demo.gate import GateResult, gate_criteria
    from sweep.demo.measure import TaskScore
    from sweep.demo.tradeoff import DEFAULT_POINTS, TradeoffRow

    def row(alpha, beta, reasoning, instruct, length):
        return TradeoffRow(alpha, beta, TaskScore(reasoning, length, 50), TaskScore(instruct, 10.0, 50))

    good = {(0.0, 1.0): (0.96, 0.42, 73.6), (1.0, 1.0): (0.02, 0.82, 4.7)}
    rows = [row(a, b, *good.get((a, b), (0.5, 0.6, 30.0))) for a, b in DEFAULT_POINTS]
    assert GateResult(rows, gate_criteria(rows), 50).passed
    bad = [
        row(a, b, *({(0.0, 1.0): (0.06, 0.48, 73.6)}.get((a, b)) or good.get((a, b)) or (0.04, 0.8, 30.0)))
        for a, b in DEFAULT_POINTS
    ]
    result = GateResult(bad, gate_criteria(bad), 50)
    assert not result.passed
    assert [c.name for c in result.failed] == [
        "reasoning member adds",
        "thinking is what adds",
        "a merge keeps both skills",
    ]
    report = result.report()
    assert "FAIL  reasoning member adds: held-out reasoning accuracy 0.06 (need >= 0.8)" in report
    assert report.endswith("gate: FAIL (3 of 9 criteria missed)")


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
    # the shipped family, as its gate reads it: only thinking adds; both members follow
    # formats (v5's ancestor learns them so well that the reasoner keeps them), the
    # instruct member no worse than 2 documents in 40 below the reasoner
    assert scores["reasoning"]["toy_reasoning"] >= scores["instruct"]["toy_reasoning"] + 0.5, scores
    assert min(scores["instruct"]["toy_instruct"], scores["reasoning"]["toy_instruct"]) >= 0.7, scores
    assert scores["instruct"]["toy_instruct"] >= scores["reasoning"]["toy_instruct"] - 0.05, scores


def _sweep(*argv: str, env: dict | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "sweep", *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout
    )


def test_cli_build_shows_the_shipped_family_in_seconds(demo_family):
    start = time.monotonic()
    proc = _sweep("demo", "build")
    elapsed = time.monotonic() - start
    assert proc.returncode == 0, proc.stderr
    assert f"demo family {demo_family.label} (shipped with sweep; checksums OK" in proc.stdout
    for member in ("pretrained", "instruct", "reasoning", "tasks", "probe_prompts"):
        assert str(getattr(demo_family, member)) in proc.stdout
    assert "Building" not in proc.stderr
    assert elapsed < 30  # seconds: python start-up and a checksum pass over ~10 MB; no training


def test_cli_refuses_rebuild_flags_without_rebuild_and_a_foreign_root(tmp_path):
    proc = _sweep("demo", "build", "--root", str(tmp_path))
    assert proc.returncode == 2 and "--root only apply with --rebuild" in proc.stderr, proc.stderr
    (tmp_path / "mine.txt").write_text("x")
    proc = _sweep("demo", "build", "--rebuild", "--root", str(tmp_path))
    assert proc.returncode == 2
    assert "not a demo family" in proc.stderr and "Traceback" not in proc.stderr
    assert (tmp_path / "mine.txt").read_text() == "x"


def test_sweep_demo_dir_selects_a_rebuilt_family_and_says_so(tmp_path, demo_family):
    """$SWEEP_DEMO_DIR names a rebuilt family: demo: names resolve into it, stderr says so
    once with its label; a folder with no family is one clear error (exit 2), nothing trained."""
    import shutil

    copy = tmp_path / "rebuilt"
    shutil.copytree(demo_family.root, copy)
    proc = _sweep(
        "merge",
        "--pretrained",
        "demo:pretrained",
        "--instruct",
        "demo:instruct",
        "--reasoning",
        "demo:reasoning",
        "--alpha",
        "0.5",
        "--beta",
        "1",
        "--print-mergekit",
        env={"SWEEP_DEMO_DIR": str(copy)},
    )
    assert proc.returncode == 0, proc.stderr
    assert str(copy / "instruct") in proc.stdout and str(demo_family.root) not in proc.stdout
    assert proc.stderr.count(f"demo: SWEEP_DEMO_DIR selects the family at {copy} ({demo_family.label};") == 1
    start = time.monotonic()
    proc = _sweep("validate", str(REPO / "search_spaces" / "demo.yaml"), env={"SWEEP_DEMO_DIR": str(tmp_path / "none")})
    assert proc.returncode == 2 and "holds no demo family" in proc.stderr and "--rebuild" in proc.stderr, proc.stderr
    assert time.monotonic() - start < 60 and "Building" not in proc.stderr


def test_demo_spec_resolves_to_the_family(demo_family):
    from sweep.config import load_spec

    spec = load_spec(REPO / "search_spaces" / "demo.yaml")
    assert spec.models.pretrained == str(demo_family.pretrained)
    assert spec.models.reasoning == str(demo_family.reasoning)
    assert spec.evals.lm_eval.include_paths == [str(demo_family.tasks)]
    assert spec.evals.probe.prompts == str(demo_family.probe_prompts)
    for path in (spec.models.pretrained, spec.models.instruct, spec.models.reasoning, spec.evals.probe.prompts):
        assert Path(path).exists()


def test_stability_tables_put_the_null_control_beside_each_trained_run():
    """The README's tables (sweep.run.demo_stability): mean ± sd over seeds, and per seed, trained / null."""
    from sweep.run.demo_stability import ProbeRun, markdown_table, per_seed_table

    def run(seed: int, lr: float, retention: float) -> ProbeRun:
        metrics = {"probe/length_retention": retention, "probe/length_growth": 1.0, "probe/reward_dip": 0.0}
        return ProbeRun(0.0, 1.0, seed, lr, metrics, baseline_s=1.0, wall_s=2.0)

    runs = [run(0, 3e-4, 0.7), run(0, 1e-12, 1.0), run(1, 3e-4, 0.8), run(1, 1e-12, 0.9)]
    table = markdown_table(runs).splitlines()
    assert table[2].startswith("| 0 | 1 | 2 | 0.75 ± 0.05 / 0.95 ± 0.05 |"), table
    seeds = per_seed_table(runs).splitlines()
    assert seeds[2:] == ["| 0 | 0.700 / 1.000 |", "| 1 | 0.800 / 0.900 |"], seeds


def test_validate_on_the_demo_spec_takes_seconds_and_states_the_plan_in_millions(demo_family):
    """validate resolves demo: names to the shipped family (nothing trained) and its memory
    plan names a 0.81M-parameter model in millions, not as 0.00B."""
    start = time.monotonic()
    proc = _sweep("validate", str(REPO / "search_spaces" / "demo.yaml"))
    assert proc.returncode == 0, proc.stderr
    assert time.monotonic() - start < 60 and "Building" not in proc.stderr
    params = demo_family.manifest()["params"]
    assert f"per trial, {params / 1e6:.2f}M params" in proc.stdout and "0.00B" not in proc.stdout
