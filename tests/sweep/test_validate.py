"""`sweep validate`: every malformed spec gets exit 2, the offending field named, no traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from merge.checkpoint import inspect_checkpoint
from sweep.cli import main
from sweep.config import load_spec, parse_spec
from sweep.errors import ConfigError
from sweep.run.memory_plan import ModelShape
from tests.tiny import edit_config, make_tiny_checkpoint

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_trio):
    """A folder with a valid spec next to its task folder and prompts file."""
    root = tmp_path_factory.mktemp("validate")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "toy.jsonl").write_text(json.dumps({"question": "1+1", "answer": "2"}) + "\n")
    (tasks / "toy.yaml").write_text(
        textwrap.dedent(
            f"""\
            task: toy_task
            dataset_path: json
            dataset_kwargs: {{data_files: {{test: {tasks / "toy.jsonl"}}}}}
            test_split: test
            output_type: generate_until
            doc_to_text: "{{{{question}}}}="
            doc_to_target: "{{{{answer}}}}"
            metric_list: [{{metric: exact_match}}]
            """
        )
    )
    (root / "prompts.jsonl").write_text(json.dumps({"prompt": "1+1?", "answer": "2"}) + "\n")
    return root


def base_spec(trio: dict[str, Path]) -> dict:
    return {
        "name": "tiny",
        "models": {role: str(path) for role, path in trio.items()},
        "space": {"alpha": {"low": 0.0, "high": 1.0}, "beta": {"low": 0.5, "high": 1.0}},
        "sampler": {"name": "tpe", "seed": 1},
        "budget": {"trials": 4, "concurrent": 2},
        "evals": {
            "lm_eval": {"include_paths": ["tasks"], "search_tasks": ["toy_task"], "limit": 4},
            "probe": {"prompts": "prompts.jsonl", "steps": 4},
        },
        "objectives": [
            {"metric": "lm_eval/toy_task/exact_match,none", "direction": "maximize"},
            {"metric": "probe/length_retention", "direction": "maximize"},
        ],
        "constraints": ["probe/length_retention >= 0.5"],
    }


def write(root: Path, name: str, spec: dict | str) -> Path:
    path = root / name
    path.write_text(spec if isinstance(spec, str) else yaml.safe_dump(spec, sort_keys=False))
    return path


def validate(path: Path, capsys) -> tuple[int, str]:
    code = main(["validate", str(path)])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_valid_spec_exits_zero_with_summary(workspace, tiny_trio, capsys):
    path = write(workspace, "ok.yaml", base_spec(tiny_trio))
    code, output = validate(path, capsys)
    assert code == 0, output
    assert "spec OK: tiny" in output
    assert "LlamaForCausalLM" in output
    assert f"sqlite:///{workspace / 'results' / 'tiny' / 'study.db'}" in output
    assert "probe      4 steps x 4 prompts x 4 samples, at most 64 new tokens" in output
    assert "  note       " not in output  # the evals set no budget of their own
    # 4 steps x 16 completions x 64 tokens; a full update (2 + 4 + 2 per parameter and token)
    # on 256-token prompts as the memory plan assumes; the evals bound nothing without max_gen_toks
    work = next(line for line in output.splitlines() if line.startswith("  work "))
    params = ModelShape.from_info(inspect_checkpoint(tiny_trio["pretrained"])).params
    assert "probe 4,096 tokens sampled (4 steps x 16 x 64), 20,480 trained (update ~" in work, work
    assert ", full)" in work and "checkpointed" not in work
    flops = float(re.search(r"update ~([0-9.]+) GFLOP", work)[1])
    assert flops == pytest.approx(20_480 * params * 8 / 1e9, rel=0.01)
    assert "evals not bounded by the spec (set evals.lm_eval.limit and max_gen_toks to bound it)" in work


def test_a_probe_budget_below_the_evals_one_is_noted(workspace, tiny_trio, capsys):
    spec = base_spec(tiny_trio)
    spec["evals"]["lm_eval"]["max_gen_toks"] = 512
    code, output = validate(write(workspace, "short.yaml", spec), capsys)
    assert code == 0, output
    assert "note       the probe generates at most 64 tokens, the evals 512" in output
    assert "set evals.probe.max_new_tokens to your RL run's budget" in output
    assert "evals 2,048 tokens (1 task x 4 docs x 512)" in output  # the limit and the budget bound it now


def test_relative_paths_resolve_against_the_spec_folder(workspace, tiny_trio, monkeypatch, tmp_path):
    path = write(workspace, "rel.yaml", base_spec(tiny_trio))
    monkeypatch.chdir(tmp_path)  # somewhere else entirely
    spec = load_spec(path)
    assert spec.evals.lm_eval.include_paths == [str(workspace / "tasks")]
    assert spec.evals.probe.prompts == str(workspace / "prompts.jsonl")
    assert spec.results_dir == str(workspace / "results")


def _mutate(spec: dict, dotted: str, value) -> dict:
    if dotted == "*":  # several changes: {dotted: value}
        for key, item in value.items():
            _mutate(spec, key, item)
        return spec
    node = spec
    keys = dotted.split(".")
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return spec


_DELETE = object()

# (case id, dotted path to change, new value, text expected in the message)
MALFORMED = [
    ("unknown key", "budget.trails", 10, "budget.trails"),
    ("unknown top-level key", "objectivs", [], "objectivs"),
    ("wrong type", "budget.trials", "many", "budget.trials"),
    ("ratio above 1", "space.beta.high", 1.5, "space.beta.high"),
    ("ratio below 0", "space.alpha.low", -0.1, "space.alpha.low"),
    ("low > high", "space.alpha", {"low": 0.9, "high": 0.2}, "space.alpha"),
    ("unknown sampler", "sampler.name", "bayes", "sampler.name"),
    ("unknown merge method", "merge", {"stage1": {"method": "frankenmerge"}}, "merge.stage1.method"),
    (
        "unknown method parameter",
        "merge",
        {"stage1": {"method": "ties", "params": {"densty": 0.5}}},
        "merge.stage1.params.densty",
    ),
    (
        "bad method parameter value",
        "merge",
        {"stage1": {"method": "ties", "params": {"density": 1.5}}},
        "merge.stage1.params.density",
    ),
    (
        "searched parameter out of its domain",
        "*",
        {"merge": {"stage1": {"method": "dare"}}, "space.params": {"density": {"low": 0.5, "high": 2}}},
        "space.params.density.high",
    ),
    ("unknown objective metric", "objectives.1.metric", "probe/length_retension", "objectives.1.metric"),
    (
        "objective task not searched",
        "objectives.0.metric",
        "lm_eval/gsm8k/exact_match,strict-match",
        "objectives.0.metric",
    ),
    ("bad direction", "objectives.0.direction", "up", "objectives.0.direction"),
    ("bad constraint", "constraints", ["probe/length_retention > = 0.5"], "constraints.0"),
    ("missing models", "models", _DELETE, "models"),
    ("zero trials", "budget.trials", 0, "budget.trials"),
    ("grid without steps", "sampler.name", "grid", "space.alpha.step"),
    ("fixed point out of range", "space.points", [{"alpha": 0.5, "beta": 0.2}], "space.points.0.beta"),
    ("bad regex", "evals.lm_eval.answer_regex", "([0-9]+", "evals.lm_eval.answer_regex"),
    ("vllm without gpu", "evals.lm_eval.backend", "vllm", "evals.lm_eval.backend"),
    (
        "metric the task does not report",
        "objectives.0.metric",
        "lm_eval/toy_task/exact_match,nne",
        "objectives.0.metric",
    ),
    ("unknown lm-eval task", "evals.lm_eval.search_tasks", ["toy_task", "toy_tsk"], "toy_tsk"),
    ("missing prompts file", "evals.probe.prompts", "nowhere.jsonl", "evals.probe.prompts"),
]


@pytest.mark.parametrize("case,dotted,value,expected", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_spec_fails_with_field_named(case, dotted, value, expected, workspace, tiny_trio, capsys):
    spec = _mutate(base_spec(tiny_trio), dotted, value)
    path = write(workspace, "bad.yaml", spec)
    code, output = validate(path, capsys)
    assert code == 2, output
    assert expected in output, output
    assert "Traceback" not in output


def test_every_problem_is_reported_at_once_with_lines(workspace, tiny_trio):
    spec = base_spec(tiny_trio)
    spec["budget"]["trails"] = 3
    spec["space"]["beta"]["high"] = 2
    spec["sampler"]["name"] = "bayes"
    path = write(workspace, "many.yaml", spec)
    with pytest.raises(ConfigError) as info:
        load_spec(path)
    problems = info.value.problems
    assert len(problems) == 3, problems
    text = "\n".join(problems)
    assert "space.beta.high (line" in text
    assert "budget.trails (line" in text
    assert "did you mean" in text or "allowed here" in text


def test_missing_model_folders_are_reported_with_schema_problems(workspace, tiny_trio):
    spec = base_spec(tiny_trio)
    spec["sampler"]["name"] = "bayes"
    spec["models"]["reasoning"] = "no/such/folder"
    with pytest.raises(ConfigError) as info:
        load_spec(write(workspace, "both.yaml", spec))
    text = "\n".join(info.value.problems)
    assert "sampler.name" in text and f"models.reasoning: {workspace / 'no/such/folder'}" in text


def test_unknown_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as info:
        parse_spec("name: x\nmodels: {pretrained: a, instruct: b, reasoning: c}\nobjectives: []\nbudgt: {trials: 3}\n")
    assert any("did you mean 'budget'" in p for p in info.value.problems)


def _model_case(workspace: Path, tiny_trio, name: str, **kwargs) -> Path:
    spec = base_spec(tiny_trio)
    spec["models"]["reasoning"] = str(make_tiny_checkpoint(workspace / name, **kwargs))
    return write(workspace, f"{name}.yaml", spec)


def test_missing_model_path(workspace, tiny_trio, capsys):
    spec = base_spec(tiny_trio)
    spec["models"]["instruct"] = str(workspace / "nowhere")
    code, output = validate(write(workspace, "missing.yaml", spec), capsys)
    assert code == 2 and "models.instruct" in output and "nowhere" in output and "Traceback" not in output


def test_mismatched_architectures(workspace, tiny_trio, capsys):
    code, output = validate(_model_case(workspace, tiny_trio, "qwen", arch="qwen2"), capsys)
    assert code == 2 and "architecture mismatch" in output and "Qwen2ForCausalLM" in output, output


def test_mismatched_shapes_name_the_first_tensors(workspace, tiny_trio, capsys):
    code, output = validate(_model_case(workspace, tiny_trio, "wide", hidden=48), capsys)
    assert code == 2 and "shapes differ" in output and "model.embed_tokens.weight" in output, output


def test_vocab_mismatch_says_what_to_do(workspace, tiny_trio, capsys):
    path = _model_case(workspace, tiny_trio, "bigvocab", vocab_extra=3)
    code, output = validate(path, capsys)
    assert code == 2 and "vocabulary size mismatch" in output and "merge.vocab: truncate" in output, output
    spec = yaml.safe_load(path.read_text())
    spec["merge"] = {"vocab": "pad"}
    code, output = validate(write(workspace, "bigvocab-pad.yaml", spec), capsys)
    assert code == 0, output


def test_remote_code_is_refused(workspace, tiny_trio, capsys):
    path = _model_case(workspace, tiny_trio, "remote")
    edit_config(workspace / "remote", auto_map={"AutoModelForCausalLM": "modeling_x.X"})
    code, output = validate(path, capsys)
    assert code == 2 and "trust_remote_code" in output, output


def test_pickle_only_checkpoint_is_refused(workspace, tiny_trio, capsys):
    folder = workspace / "pickled"
    make_tiny_checkpoint(folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    spec = base_spec(tiny_trio)
    spec["models"]["pretrained"] = str(folder)
    code, output = validate(write(workspace, "pickled.yaml", spec), capsys)
    assert code == 2 and "pickle" in output, output


def test_yaml_syntax_error_names_the_line(workspace, capsys):
    path = write(workspace, "syntax.yaml", "name: x\nmodels:\n  pretrained: [a, b\n  instruct: c\n")
    code, output = validate(path, capsys)
    assert code == 2 and "YAML syntax error at line" in output and "Traceback" not in output, output


def test_empty_file(workspace, capsys):
    code, output = validate(write(workspace, "empty.yaml", ""), capsys)
    assert code == 2 and "empty" in output


def test_missing_spec_file(tmp_path, capsys):
    code, output = validate(tmp_path / "nope.yaml", capsys)
    assert code == 2 and "not found" in output


def test_cli_process_exit_codes(workspace, tiny_trio):
    """The real entry point: exit 2 and no traceback; --debug shows it; unknown command prints usage."""
    spec = base_spec(tiny_trio)
    spec["sampler"]["name"] = "bayes"
    path = write(workspace, "proc.yaml", spec)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "validate", str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2
    assert "sampler.name" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "--debug", "validate", str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "sweep", "frobnicate"], capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "usage:" in proc.stderr


def test_a_bad_merge_kernel_setting_is_caught_before_any_worker(workspace, tiny_trio):
    path = write(workspace, "env.yaml", base_spec(tiny_trio))
    env = os.environ | {"PYTHONPATH": str(REPO), "SWEEP_MERGE_KERNEL": "turbo"}
    proc = subprocess.run(
        [sys.executable, "-m", "sweep", "validate", str(path)], capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "SWEEP_MERGE_KERNEL must be one of auto, native, compiled, eager, got 'turbo'" in proc.stderr


def test_name_date_placeholder():
    from datetime import date

    from sweep.config import expand_name

    assert expand_name("nightly-{date}", date(2026, 11, 25)) == "nightly-2026-11-25"


def test_file_checks_are_reported_with_schema_problems(workspace, tiny_trio, capsys):
    """One round: a schema problem elsewhere does not hide the model, task and prompts checks."""
    spec = base_spec(tiny_trio)
    spec["sampler"]["name"] = "bayes"  # schema problem
    spec["models"]["reasoning"] = str(make_tiny_checkpoint(workspace / "wide-both", hidden=48))  # shapes differ
    spec["evals"]["lm_eval"]["search_tasks"] = ["toy_task", "toy_tsak"]  # unknown task
    spec["evals"]["probe"]["prompts"] = "no-prompts.jsonl"  # missing file
    code, output = validate(write(workspace, "schema-and-files.yaml", spec), capsys)
    assert code == 2 and "Traceback" not in output
    assert "sampler.name" in output
    assert "shapes differ" in output
    assert "evals.lm_eval.search_tasks" in output and "toy_tsak" in output
    assert f"evals.probe.prompts: {workspace / 'no-prompts.jsonl'} is not a file" in output
    assert output.count("problems:") == 1 and "4 problems" in output, output


def test_a_section_failing_its_schema_gets_no_file_checks(workspace, tiny_trio, capsys):
    spec = base_spec(tiny_trio)
    spec["evals"]["probe"] = {"prompts": "no-prompts.jsonl", "steps": 1}  # steps < 2: the section is invalid
    spec["merge"] = {"vocab": "padd"}  # merge invalid: no vocabulary verdict on the models
    spec["models"]["reasoning"] = str(make_tiny_checkpoint(workspace / "bigvocab-both", vocab_extra=3))
    code, output = validate(write(workspace, "section-fails.yaml", spec), capsys)
    assert code == 2
    assert "evals.probe.steps" in output and "merge.vocab" in output
    assert "no-prompts.jsonl" not in output  # the probe section is broken: its files are not checked
    assert "vocabulary size mismatch" not in output  # the vocab policy is the broken field
    assert "2 problems" in output, output


def test_a_kl_reference_is_shown_sized_and_checked(workspace, tiny_trio, capsys):
    """evals.probe.reference: validate names it in the probe line and plans its memory
    (full: the reference on the device, the starting weights in host memory); a missing
    folder and a vocabulary the models do not have are refused before anything runs."""
    spec = base_spec(tiny_trio)
    spec["evals"]["probe"]["reference"] = str(tiny_trio["instruct"])
    spec["evals"]["probe"]["loss_agg"] = "seq-mean-token-sum-norm"
    code, output = validate(write(workspace, "reference.yaml", spec), capsys)
    assert code == 0, output
    assert f"at most 64 new tokens, KL against {tiny_trio['instruct']}, seq-mean-token-sum-norm loss" in output
    rows = {line.split()[0]: line for line in output.splitlines() if line.startswith("    ")}
    assert "evals.probe.reference, frozen, for the KL term" in rows["reference"]
    assert "the starting weights, for the restore" in rows["start"]
    spec["evals"]["probe"]["reference"] = "nowhere"
    code, output = validate(write(workspace, "reference-missing.yaml", spec), capsys)
    assert code == 2 and f"evals.probe.reference: {workspace / 'nowhere'} is not a checkpoint folder" in output, output
    spec["evals"]["probe"]["reference"] = str(make_tiny_checkpoint(workspace / "othervocab", vocab_extra=5))
    code, output = validate(write(workspace, "reference-vocab.yaml", spec), capsys)
    assert code == 2 and "othervocab has a vocabulary of 88 tokens, the models 83" in output, output
    assert "must share a tokenizer" in output


def test_mini_batches_are_shown_planned_and_must_hold_whole_groups(workspace, tiny_trio, capsys):
    """evals.probe.mini_batches: the probe line and the work line say how many updates a
    step takes; a count that splits a group is refused naming both settings."""
    spec = base_spec(tiny_trio)
    spec["evals"]["probe"]["mini_batches"] = 2
    code, output = validate(write(workspace, "mini.yaml", spec), capsys)
    assert code == 0, output
    assert "at most 64 new tokens, 2 mini-batches a step (clip 0.2)" in output
    assert "full, 2 mini-batches)" in output
    spec["evals"]["probe"]["mini_batches"] = 3
    code, output = validate(write(workspace, "mini-bad.yaml", spec), capsys)
    assert code == 2
    assert "mini_batches (3) must divide prompts_per_step (4)" in output
