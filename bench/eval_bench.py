"""Per-trial lm-eval overhead, excluding the model's own work, with the task dict built once.

    python bench/eval_bench.py            # the shipped demo family's tasks
    python bench/eval_bench.py --standin  # same-shape local tasks on a tiny random model

Prints, from one run (timings on shared cores are noisy; compare the ratios):
  build   : LmEvalRunner(...) once per worker (TaskManager index + task objects + data)
  evaluate: one runner.evaluate(model, tok) per trial, median of --repeats
  model   : time inside generate_until / loglikelihood (the model's work)
  overhead: evaluate - model (prompt building, filters, metrics, aggregation)
and the same trial done the naive way (task dict rebuilt per trial), and without the
prompt-template cache (lm-eval compiles each Jinja prompt template once per doc).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

STANDIN_TASK = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["<eos>"]
  do_sample: false
filter_list:
  - name: final
    filter:
      - function: regex
        regex_pattern: "([0-9]+)\\\\s*$"
        fallback: "[invalid]"
      - function: take_first
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
"""


def standin_setup(root: Path):
    """Two generate_until tasks shaped like the demo's search tasks, a tiny random model."""
    from tests.tiny import make_tiny_checkpoint

    for name in ("toy_reasoning", "toy_instruct"):
        data = root / f"{name}.jsonl"
        data.write_text(
            "".join(
                json.dumps({"prompt": f"what is {a} plus {a + 7}?", "answer": str(2 * a + 7)}) + "\n"
                for a in range(100)
            )
        )
        (root / f"{name}.yaml").write_text(STANDIN_TASK.format(name=name, data=data))
    model_dir = make_tiny_checkpoint(root / "model", hidden=128, layers=4)
    return model_dir, str(root)


def demo_setup():
    from sweep.demo.build import active_family

    family = active_family()
    return Path(family.instruct), str(family.tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standin", action="store_true", help="use same-shape local tasks and a tiny random model")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--limit", type=float, default=24)
    parser.add_argument("--max-gen-toks", type=int, default=64)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from evals.lmeval import LmEvalConfig, LmEvalRunner, _task_manager, cache_prompt_templates

    torch.set_num_threads(1)
    if args.standin:
        model_dir, tasks_dir = standin_setup(Path(tempfile.mkdtemp(prefix="eval_bench_")))
        source = "stand-in tasks (demo shape), tiny random model"
    else:
        model_dir, tasks_dir = demo_setup()
        source = f"demo family: {model_dir}"
    config = LmEvalConfig(
        tasks=["toy_reasoning", "toy_instruct"],
        include_paths=[tasks_dir],
        limit=args.limit,
        batch_size=24,
        apply_chat_template=True,
        max_gen_toks=args.max_gen_toks,
    )
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    start = time.perf_counter()
    runner = LmEvalRunner(config)
    build_s = time.perf_counter() - start

    lm = runner.backend.lm_for(model, tokenizer)
    inside = {"s": 0.0}
    for method in ("generate_until", "loglikelihood", "loglikelihood_rolling"):
        original = getattr(lm, method)

        def timed(requests, *a, _original=original, **kw):
            t0 = time.perf_counter()
            try:
                return _original(requests, *a, **kw)
            finally:
                inside["s"] += time.perf_counter() - t0

        setattr(lm, method, timed)

    runner.evaluate(model, tokenizer)  # warm-up (first-call imports, allocator)

    def trial(rebuild: bool) -> tuple[float, float]:
        """(wall seconds, seconds inside the model) for one trial."""
        if rebuild:
            _task_manager.cache_clear()  # as a worker that indexes and loads the tasks per trial
        inside["s"] = 0.0
        t0 = time.perf_counter()
        this = LmEvalRunner(config, backend=runner.backend) if rebuild else runner  # same HFLM either way
        this.evaluate(model, tokenizer)
        return time.perf_counter() - t0, inside["s"]

    reuse, naive, uncached = [], [], []
    for _ in range(args.repeats):  # interleaved, so that load changes hit all alike
        reuse.append(trial(rebuild=False))
        naive.append(trial(rebuild=True))
        cache_prompt_templates(False)  # lm-eval's own: every prompt template compiled per doc
        uncached.append(trial(rebuild=False))
        cache_prompt_templates(True)
    evals = [wall for wall, _ in reuse]
    models = [model_s for _, model_s in reuse]

    evaluate_s, model_s = statistics.median(evals), statistics.median(models)
    overhead_s = statistics.median(e - m for e, m in zip(evals, models, strict=True))
    n_docs = int(args.limit) * len(config.tasks)
    print(f"source    : {source}")
    print(
        f"tasks     : {', '.join(config.tasks)}; limit {args.limit:g}; {n_docs} docs per trial; chat template; max_gen_toks {args.max_gen_toks}"
    )
    print(f"build     : {build_s:.3f} s once per worker")
    print(f"evaluate  : {evaluate_s:.3f} s per trial (median of {args.repeats})")
    print(f"model     : {model_s:.3f} s inside generate_until/loglikelihood")
    print(
        f"overhead  : {overhead_s:.3f} s per trial ({1000 * overhead_s / n_docs:.2f} ms per doc; {overhead_s / evaluate_s:.0%} of evaluate)"
    )
    naive_overhead = statistics.median(wall - inner for wall, inner in naive)
    print(
        f"naive     : {naive_overhead:.3f} s overhead per trial with the task dict rebuilt every trial "
        f"({naive_overhead / overhead_s:.1f}x the overhead with it built once)"
    )
    uncached_overhead = statistics.median(wall - inner for wall, inner in uncached)
    print(
        f"uncached  : {uncached_overhead:.3f} s overhead per trial without the prompt-template cache "
        f"({uncached_overhead / overhead_s:.1f}x)"
    )


if __name__ == "__main__":
    main()
