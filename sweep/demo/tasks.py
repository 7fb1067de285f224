"""lm-eval tasks and probe prompts for the toy world, written as YAML plus jsonl.

Task names: `toy_reasoning` and `toy_instruct` (search splits), `toy_reasoning_heldout`
and `toy_instruct_heldout` (held-out splits, disjoint problems). Each is
generate_until, scored by `exact_match` under the filter `final`, which keeps the text
after the last `</think>` (all of it when there is none), so lm-eval reports
`exact_match,final`. The folder is relocatable: each YAML loads its rows through
`toy_world_data.py`, copied beside it, from `data/<task>.jsonl` (see that module).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sweep.demo.data import Problem, Splits

# Task name -> split name in `Splits.sets`.
TASKS = {
    "toy_reasoning": "reasoning_search",
    "toy_reasoning_heldout": "reasoning_heldout",
    "toy_instruct": "instruct_search",
    "toy_instruct_heldout": "instruct_heldout",
}
PROBE_FILE = "probe_prompts.jsonl"
LOADER = Path(__file__).with_name("toy_world_data.py")  # copied into the tasks folder
# Tokens an eval answer may take: the reasoning member's greedy trace (two verification
# passes) is ~115 tokens, its longest sampled one ~155. Users eval at a longer budget
# than they RL at (the probe's max_new_tokens is 64).
MAX_GEN_TOKS = 160

# Text after the last </think> (greedy `[\s\S]*` finds the last one), stripped; the whole
# response when there is no </think>. Anchored at the start, so findall yields one match.
FINAL_ANSWER_REGEX = r"^(?:[\s\S]*</think>)?\s*([\s\S]*?)\s*$"

_DESCRIPTIONS = {
    "toy_reasoning": "three-digit addition; the final answer after any thinking must match",
    "toy_instruct": "format instructions (reverse, upper-case, number in words); exact match",
}


def task_yaml(name: str, *, max_gen_toks: int = MAX_GEN_TOKS) -> str:
    """One task's YAML, its rows in `data/<name>.jsonl` beside it. JSON is valid YAML (which
    spares us quoting rules for the regex) except for the `!function` tag, added as text."""
    family = name.removesuffix("_heldout")
    config = {
        "task": name,
        "tag": ["toy_world"],
        "custom_dataset": "LOADER",
        "dataset_kwargs": {"data_file": f"data/{name}.jsonl"},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",  # the user message; use apply_chat_template: true
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n"], "do_sample": False, "max_gen_toks": max_gen_toks},
        "filter_list": [
            {
                "name": "final",
                "filter": [
                    {"function": "regex", "regex_pattern": FINAL_ANSWER_REGEX, "group_select": 0},
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
        "metadata": {"version": 1, "description": _DESCRIPTIONS[family]},
    }
    body = json.dumps(config, indent=2).replace('"LOADER"', f"!function {LOADER.stem}.load")
    return f"# {name}: {_DESCRIPTIONS[family]} (written by sweep.demo)\n" + body + "\n"


def _write_jsonl(path: Path, problems: list[Problem]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for p in problems:
            fh.write(json.dumps({"prompt": p.prompt, "answer": p.answer, "kind": p.kind}) + "\n")


def write_tasks(folder: Path, splits: Splits) -> None:
    """Write the data jsonl files, the task YAMLs and their loader into `folder`."""
    (folder / "data").mkdir(parents=True, exist_ok=True)
    for name, split in TASKS.items():
        _write_jsonl(folder / "data" / f"{name}.jsonl", splits.sets[split])
        (folder / f"{name}.yaml").write_text(task_yaml(name))
    shutil.copyfile(LOADER, folder / LOADER.name)


PROBE_FORMAT_PROMPTS = 6  # format problems kept in the probe file, beside every addition problem


def write_probe_prompts(path: Path, splits: Splits) -> None:
    """One {"prompt": user message, "answer": final answer} per line (plus "kind").

    Every addition problem of the probe split (42) and its first PROBE_FORMAT_PROMPTS
    format problems: RLHF of a reasoning model runs mostly on reasoning prompts, and a
    format answer (~10 tokens, nothing to cut) only dilutes the length signal.
    """
    problems = splits.sets["probe"]
    formats = [p for p in problems if p.task != "reasoning"][:PROBE_FORMAT_PROMPTS]
    _write_jsonl(path, [p for p in problems if p.task == "reasoning" or p in formats])
