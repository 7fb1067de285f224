"""Fixtures for the lm-eval adapter: tiny local tasks and a tiny model that really answers.

`think_model` is a tiny Llama trained for ~1-3 s to answer the first TRAINED docs of
tiny_think as "<think>a+b</think>answer: s<eos>", so generate_until scores are not all
zero and the think/answer settings change real numbers.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

# (question, answer) docs of tiny_think; the model learns the first TRAINED of them.
THINK_DOCS = [(3, 4), (2, 5), (6, 1), (8, 8), (9, 3), (1, 1), (7, 5), (4, 4), (5, 5), (6, 6), (2, 9), (7, 7)]
TRAINED = 8
ANSWER_REGEX = r"answer: (\d+)"

THINK_YAML = """\
task: tiny_think
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
num_fewshot: 0
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 40
filter_list:
  - name: final
    filter:
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""

# The documented lm_eval-CLI equivalent of tiny_think with answer_regex set.
THINK_REGEX_YAML = """\
include: tiny_think.yaml
task: tiny_think_regex
filter_list:
  - name: final
    filter:
      - function: regex
        regex_pattern: "answer: (\\\\d+)"
        group_select: 0
        fallback: "[invalid]"
      - function: take_first
"""

CHOICE_YAML = """\
task: tiny_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
fewshot_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}} "
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
  - metric: acc_norm
"""

CHOICE_WORDS = ["cat", "dog", "sun", "map", "red", "box", "hat", "pen", "cup", "egg", "fig", "jam"]


@pytest.fixture(scope="session")
def tiny_tasks(tmp_path_factory) -> Path:
    """A folder with tiny_think, tiny_think_regex and tiny_choice (absolute data paths)."""
    root = tmp_path_factory.mktemp("tasks")
    think = root / "think.jsonl"
    think.write_text("".join(json.dumps({"question": f"{a}+{b}=", "answer": str(a + b)}) + "\n" for a, b in THINK_DOCS))
    choice = root / "choice.jsonl"
    rows = []
    for i in range(16):
        choices = [CHOICE_WORDS[(i + k * 5) % len(CHOICE_WORDS)] for k in range(4)]
        rows.append({"question": f"pick {i % 7}:", "choices": choices, "label": i % 4})
    choice.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "tiny_think.yaml").write_text(THINK_YAML.format(data=think))
    (root / "tiny_think_regex.yaml").write_text(THINK_REGEX_YAML)
    (root / "tiny_choice.yaml").write_text(CHOICE_YAML.format(data=choice))
    return root


def train_think_model(path: Path, *, steps: int = 150, seed: int = 3, heads: int = 4) -> Path:
    """Save at `path` a tiny Llama (hidden 64, `heads` heads) that answers THINK_DOCS[:TRAINED]
    with a think trace. The vLLM tier passes heads=2: its CPU attention needs head_dim >= 32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.tiny import make_tiny_checkpoint

    torch.set_num_threads(1)
    make_tiny_checkpoint(path, hidden=64, heads=heads, seed=seed)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    texts = [f"{a}+{b}=<think>{a}+{b}</think>answer: {a + b}" for a, b in THINK_DOCS[:TRAINED]]
    seqs = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), tokenizer.pad_token_id)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    labels = ids.masked_fill(mask == 0, -100)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def think_model(tmp_path_factory) -> Path:
    return train_think_model(tmp_path_factory.mktemp("think") / "model")


@pytest.fixture(scope="session")
def random_model(tmp_path_factory) -> Path:
    """Same shape as think_model, untrained."""
    from tests.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("random") / "model", hidden=64, seed=3)


def load(path: Path):
    """(model, tokenizer) from a checkpoint folder, float32 on CPU, eval mode."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), AutoTokenizer.from_pretrained(path)


# (prompt, answer) pairs of the probe tests; `prompts_file` holds them as JSONL.
PROBE_PROMPTS = [(f"{a}+{b}", str(a + b)) for a in range(3) for b in range(3)]


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    """A tiny random checkpoint for the probe tests."""
    from tests.tiny import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("probe") / "model", seed=5)


@pytest.fixture(scope="module")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in PROBE_PROMPTS))
    return path
