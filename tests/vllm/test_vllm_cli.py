"""`sweep eval --backend vllm --json` == `--backend hf --json` on a checkpoint and tasks no other test uses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

FRESH_GEN = """\
task: fresh_double
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs: {{until: ["\\n"], max_gen_toks: 24}}
filter_list:
  - name: final
    filter: [{{function: regex, regex_pattern: "answer: (\\\\d+)", group_select: 0, fallback: "[invalid]"}}, {{function: take_first}}]
metric_list:
  - {{metric: exact_match, aggregation: mean, higher_is_better: true}}
"""

FRESH_CHOICE = """\
task: fresh_pick
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}="
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _sweep_json(command: str, *args: str) -> dict:
    """`python -m sweep <command> ... --json` in a subprocess: exit 0, then its one JSON object
    (vLLM's log lines go to stderr; the probe may print progress before the object)."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "sweep", command, *args, "--json"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout.strip()
    return json.loads(out[out.rfind("\n{") + 1 :])  # from the last line that opens an object


def test_sweep_eval_vllm_equals_hf_on_unseen_checkpoint_and_tasks(trio, tmp_path):
    import merge
    from tests.evals.conftest import load

    # an unseen checkpoint: a merge no other test builds, saved to disk
    sources = merge.SourceCache.load(
        pretrained=trio["pretrained"], instruct=trio["instruct"], reasoning=trio["reasoning"]
    )
    model, tokenizer = load(trio["reasoning"])
    merge.build_in_place(model, sources, alpha=0.35, beta=0.85)
    checkpoint = tmp_path / "unseen"
    model.save_pretrained(checkpoint)
    tokenizer.save_pretrained(checkpoint)

    tasks = tmp_path / "tasks"
    tasks.mkdir()
    gen = tasks / "double.jsonl"
    gen.write_text(
        "".join(
            json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n"
            for a, b in [(3, 4), (2, 5), (6, 1), (8, 8), (5, 2), (4, 3)]
        )
    )
    choice = tasks / "pick.jsonl"
    choice.write_text(
        "".join(
            json.dumps(
                {
                    "question": f"{a}+{b}",
                    "choices": [f"<think>{a}+{b}</think>answer: {a + b + k}" for k in (1, 0, 2)],
                    "label": 1,
                }
            )
            + "\n"
            for a, b in [(3, 4), (2, 5), (9, 3), (1, 1), (7, 5), (6, 6)]
        )
    )
    (tasks / "fresh_double.yaml").write_text(FRESH_GEN.format(data=gen))
    (tasks / "fresh_pick.yaml").write_text(FRESH_CHOICE.format(data=choice))

    common = [
        "--model",
        str(checkpoint),
        "--tasks",
        "fresh_double,fresh_pick",
        "--include-path",
        str(tasks),
        "--batch-size",
        "3",
    ]
    hf = _sweep_json("eval", *common, "--backend", "hf", "--device", "cpu")
    vllm = _sweep_json(
        "eval", *common, "--backend", "vllm", "--vllm-arg", "enforce_eager=true", "--vllm-arg", "max_model_len=256"
    )
    assert set(hf) == {
        "lm_eval/fresh_double/exact_match,final",
        "lm_eval/fresh_pick/acc,none",
        "lm_eval/fresh_pick/acc_norm,none",
    }
    assert vllm == hf
    assert any(v > 0 for v in hf.values())


def test_sweep_probe_generator_vllm_equals_hf_at_temperature_0(trio, tmp_path):
    """`sweep probe --generator vllm` builds an engine on the checkpoint and gives, greedy,
    the HF loop's curves: the same lengths and rewards, KL and entropy to rounding."""
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        "".join(json.dumps({"prompt": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a in range(3) for b in range(3))
    )
    common = [
        "--model",
        str(trio["reasoning"]),
        "--prompts",
        str(prompts),
        "--steps",
        "3",
        "--temperature",
        "0",
        "--max-new-tokens",
        "12",
        "--reward-rule",
        "exact_match",
        "--dtype",
        "float32",
    ]
    hf, vllm = _sweep_json("probe", *common, "--generator", "hf"), _sweep_json("probe", *common, "--generator", "vllm")
    assert vllm["config"]["generator"] == "vllm" and hf["config"]["generator"] == "hf"
    for key, want in hf["curves"].items():
        if key.startswith("timing/"):
            continue
        if key.startswith("response_length/") or key.startswith("critic/score"):
            assert vllm["curves"][key] == want, key
        else:
            assert vllm["curves"][key] == [pytest.approx(v, rel=1e-4, abs=1e-5) for v in want], key
