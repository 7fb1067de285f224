"""lm-eval capability scores on a live, in-memory model.

    runner = LmEvalRunner(LmEvalConfig(tasks=["toy_reasoning"], include_paths=[...]))
    for candidate in trials:              # the same model object, new weights in place
        scores = runner.evaluate(model, tokenizer)   # -> list[EvalScore]

The task dict is built once per runner (one per worker) and reused; the lm-eval model
wrapper is built once per model object and reused while the same object comes back.
lm-eval's response cache is never used: it is keyed by model name, so it would return
the previous candidate's answers after the weights change. Generation is greedy.

Tasks come from the include paths (local YAML folders) and, only when a task is not
found there, from lm-eval's built-in registry (indexing it costs ~15 s). Reasoning
tasks are scored on the final answer: see `evals.answers` for how think_end and
answer_regex compose with a task's own filters.

Importing this module is cheap; lm-eval, torch and transformers load on first use.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from evals.answers import check_answer_regex, prepend_answer_regex
from evals.errors import EvalError
from evals.lm_backends import LmBackend, make_backend
from evals.lmeval_config import LmEvalConfig
from evals.scores import EvalScore, scores_from_results

# The lm_eval CLI's default seeds (lm_eval.config: DEFAULT_SEED = 0, 1234, 1234, 1234);
# the few-shot sampler is re-seeded before every evaluation so that repeated calls pick
# the same few-shot examples (its random state would otherwise advance between calls).
FEWSHOT_SEED = 1234
# Bootstrap draws for the stderr of non-mean metrics (mean metrics such as exact_match
# and acc use a closed form and ignore this). lm-eval's default 100000 costs seconds.
BOOTSTRAP_ITERS = 1000
LM_EVAL_PREFIX = "lm_eval/"


# ---------------------------------------------------------------- task lookup (cheap)


@functools.lru_cache(maxsize=8)
def _task_manager(include_paths: tuple[str, ...], include_defaults: bool):
    """lm-eval's TaskManager over these folders; cached per process (indexing is the cost)."""
    from lm_eval.tasks import TaskManager

    paths = [p for p in include_paths if Path(p).is_dir()]
    return TaskManager(include_path=paths or None, include_defaults=include_defaults)


def _builtin_index() -> dict:
    """lm-eval's own tasks, indexed once per process (~15 s: thousands of YAML files)."""
    return _task_manager((), True).task_index


def _entry(name: str, include_paths: list[str]) -> Any:
    """The index entry for a task/group/tag name: include paths first, then lm-eval's own."""
    entry = _task_manager(tuple(str(p) for p in include_paths), False).task_index.get(name)
    return entry if entry is not None else _builtin_index().get(name)


def _missing(tasks: list[str], include_paths: list[str]) -> list[str]:
    return [t for t in tasks if _entry(t, include_paths) is None]


def _loader(tasks: list[str], include_paths: list[str]) -> Any:
    """A TaskManager that can load all of `tasks` (lm-eval's own index only when needed)."""
    key = tuple(str(p) for p in include_paths)
    local = _task_manager(key, False)
    if all(t in local.task_index for t in tasks):
        return local
    return _task_manager(key, True)


def task_problems(tasks: list[str], include_paths: list[str]) -> list[str]:
    """Readable messages for task names neither the include paths nor lm-eval define.

    Cheap (milliseconds) when every task is defined under the include paths; otherwise
    it indexes lm-eval's built-in tasks once per process (~15 s). Include paths that are
    not folders are skipped here (the caller reports them).
    """
    if not tasks:
        return []
    missing = _missing(list(tasks), list(include_paths))
    if not missing:
        return []
    known = sorted(set(_task_manager(tuple(str(p) for p in include_paths), False).task_index) | set(_builtin_index()))
    where = ", ".join(str(p) for p in include_paths) if include_paths else "no include_paths"
    problems = []
    for name in missing:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        problems.append(
            f"unknown lm-eval task '{name}'{hint}: not defined by a YAML file under the include paths "
            f"({where}) nor among lm-eval's built-in tasks (check the file's `task:` name and that it parses)"
        )
    return problems


def produced_metrics(task: str, include_paths: list[str]) -> list[str] | None:
    """`<metric>,<filter>` names the task reports, read from its YAML; None when unknown.

    Tasks: metric_list (else lm-eval's defaults for the output type) times the filter
    names (else "none"). Groups: their aggregate_metric_list. Python-defined tasks, tags
    and groups without an explicit filter list: None (not checkable without running).
    """
    entry = _entry(task, list(include_paths))
    if entry is None:
        return None
    cfg = entry.cfg or {}
    kind = entry.kind.name
    if kind == "TASK":
        from lm_eval.api.registry import DEFAULT_METRIC_REGISTRY

        metric_list = cfg.get("metric_list")
        if metric_list:
            metrics = [m.get("metric") for m in metric_list if isinstance(m, dict)]
        else:
            metrics = list(DEFAULT_METRIC_REGISTRY.get(cfg.get("output_type", "generate_until"), []))
        filters = [f.get("name") for f in cfg.get("filter_list") or [] if isinstance(f, dict)] or ["none"]
        if not all(isinstance(m, str) for m in metrics) or not all(isinstance(f, str) for f in filters):
            return None
        return [f"{m},{f}" for m in metrics for f in filters]
    if kind == "GROUP":
        names = []
        for agg in cfg.get("aggregate_metric_list") or []:
            agg_filters = agg.get("filter_list") if isinstance(agg, dict) else None
            if not isinstance(agg, dict) or not isinstance(agg.get("metric"), str) or agg_filters is None:
                return None
            names += [f"{agg['metric']},{f}" for f in ([agg_filters] if isinstance(agg_filters, str) else agg_filters)]
        return names or None
    return None


def metric_problems(metrics: list[str], include_paths: list[str]) -> list[str]:
    """Messages for `lm_eval/<task>/<metric>,<filter>` names the task does not produce.

    Unknown tasks are left to task_problems; names of other families (probe/...) are
    ignored; tasks whose metrics cannot be read from YAML are not checked.
    """
    problems = []
    for name in metrics:
        if not name.startswith(LM_EVAL_PREFIX) or name.count("/") != 2:
            continue
        _, task, metric = name.split("/")
        produced = produced_metrics(task, include_paths)
        if produced is None or metric in produced:
            continue
        options = ", ".join(f"lm_eval/{task}/{p}" for p in produced) or "none"
        if "," not in metric:
            problems.append(
                f"'{name}' lacks the filter part: lm-eval names are <metric>,<filter>; task {task} reports {options}"
            )
            continue
        close = difflib.get_close_matches(metric, produced, n=1)
        hint = f" (did you mean 'lm_eval/{task}/{close[0]}'?)" if close else ""
        problems.append(f"task {task} does not report '{metric}'{hint}; it reports {options}")
    return problems


def test_split_problems(tasks: list[str], include_paths: list[str]) -> list[str]:
    """Search tasks that score a well-known benchmark's test split (as mergekit warns).

    A task counts when it is one of lm-eval's built-in tasks (not from an include path)
    and its YAML names a test_split (lm-eval scores test_split when a task has one).
    Groups and tags count when any of their member tasks does. Set allow_test_split to accept.
    """
    builtin_root = _builtin_tasks_root()
    problems = []
    for task in tasks:
        if _scores_builtin_test_split(task, list(include_paths), builtin_root, depth=0):
            problems.append(
                f"'{task}' scores a benchmark's test split; tuning merge ratios on it overfits the report. "
                "Use a dev/search split, or set evals.lm_eval.allow_test_split: true"
            )
    return problems


def _builtin_tasks_root() -> Path:
    import lm_eval.tasks

    return Path(lm_eval.tasks.__file__).resolve().parent


def _scores_builtin_test_split(name: str, include_paths: list[str], builtin_root: Path, *, depth: int) -> bool:
    entry = _entry(name, include_paths)
    if entry is None or depth > 4:
        return False
    cfg = entry.cfg or {}
    if entry.kind.name in ("GROUP", "TAG"):
        members = (cfg.get("task") or []) if entry.kind.name == "GROUP" else sorted(entry.tags)
        members = members if isinstance(members, list) else [members]
        names = [
            m if isinstance(m, str) else m.get("task") or m.get("group") for m in members if isinstance(m, (str, dict))
        ]
        return any(
            isinstance(n, str) and _scores_builtin_test_split(n, include_paths, builtin_root, depth=depth + 1)
            for n in names
        )
    if entry.yaml_path is None or builtin_root not in Path(entry.yaml_path).resolve().parents:
        return False
    return bool(cfg.get("test_split"))


# ---------------------------------------------------------------- the runner


def build_task_dict(config: LmEvalConfig) -> dict[str, Any]:
    """Load and configure the tasks once: lm-eval's {"tasks", "groups", "group_map"}.

    Applied to every task: num_fewshot (as the lm_eval CLI does), greedy generation and
    max_gen_toks (generate_until tasks), the answer_regex step (see evals.answers).
    Raises EvalError for unknown tasks or a task that fails to load (e.g. its data file).
    """
    if not config.tasks:
        raise EvalError("no lm-eval tasks given")
    check_answer_regex(config.answer_regex)
    if problems := task_problems(list(config.tasks), list(config.include_paths)):
        raise EvalError("; ".join(problems))
    try:
        task_dict = _loader(list(config.tasks), list(config.include_paths)).load(list(config.tasks))
    except Exception as exc:  # a task YAML or data file problem, in lm-eval's or datasets' words
        raise EvalError(f"cannot load lm-eval tasks {', '.join(config.tasks)}: {type(exc).__name__}: {exc}") from exc
    for task in task_dict["tasks"].values():
        _configure_task(task, config)
    cache_prompt_templates(True)
    return task_dict


class _CachedFromString:
    """jinja's `env.from_string` with plain-string templates compiled once (LRU, 1024)."""

    def __init__(self, original: Callable[..., Any]):
        self.sweep_original = original  # what cache_prompt_templates(False) puts back
        self._compiled = functools.lru_cache(maxsize=1024)(original)

    def __call__(self, source: Any, *args: Any, **kwargs: Any) -> Any:
        if args or kwargs or not isinstance(source, str):
            return self.sweep_original(source, *args, **kwargs)
        return self._compiled(source)


def cache_prompt_templates(enabled: bool) -> None:
    """Compile each lm-eval prompt template (doc_to_text, doc_to_target, ...) once per process.

    lm-eval's `apply_template` calls jinja's `env.from_string(template)` for every doc,
    which compiles the template anew each time: most of the per-trial overhead on small
    tasks (bench/eval_bench.py). A compiled template renders the same text, so caching
    it changes no output. `enabled=False` restores lm-eval's own behaviour.
    """
    from lm_eval import utils

    env = utils.env
    installed = getattr(env.from_string, "sweep_original", None)
    if enabled and installed is None:
        env.from_string = _CachedFromString(env.from_string)
    elif not enabled and installed is not None:
        env.from_string = installed


def _configure_task(task: Any, config: LmEvalConfig) -> None:
    if task.get_config("output_type") == "generate_until":
        # Greedy, whatever the task's YAML says: a sweep compares candidates, so the
        # same candidate must score the same twice.
        gen: dict[str, Any] = {"do_sample": False, "temperature": 0.0}
        if config.max_gen_toks is not None:
            gen["max_gen_toks"] = config.max_gen_toks
        if isinstance(task.get_config("generation_kwargs"), dict):
            task.set_config(key="generation_kwargs", value=gen, update=True)
        else:
            task.set_config(key="generation_kwargs", value=gen)
    # lm-eval's simple_evaluate rule: a task that fixes num_fewshot: 0 keeps it.
    if config.num_fewshot is not None and task.get_config("num_fewshot") != 0:
        task.set_config(key="num_fewshot", value=config.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    prepend_answer_regex(task, config.answer_regex)


class LmEvalRunner:
    """Scores live models on a fixed set of lm-eval tasks; one per worker.

    Construction checks the config and builds the task dict (raises EvalError on bad
    input); `evaluate` may then be called once per candidate.
    """

    def __init__(self, config: LmEvalConfig, *, backend: LmBackend | None = None):
        if config.limit is not None and config.limit >= 1 and config.limit != int(config.limit):
            raise EvalError(f"limit {config.limit}: a limit >= 1 is a number of documents and must be whole")
        self.config = config
        self.backend = backend or make_backend(config)
        self.task_dict = build_task_dict(config)

    @property
    def task_names(self) -> list[str]:
        return list(self.task_dict["tasks"])

    def evaluate(self, model: Any, tokenizer: Any) -> list[EvalScore]:
        """Score the model's current weights on every task; sorted by name.

        The model's train/eval mode is restored afterwards (HFLM switches it to eval).
        """
        from lm_eval.evaluator import evaluate

        was_training = bool(getattr(model, "training", False))
        lm = self.backend.lm_for(model, tokenizer)
        for task in self.task_dict["tasks"].values():
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        try:
            with _no_bootstrap_pool():
                results = evaluate(
                    lm=lm,
                    task_dict=self.task_dict,
                    limit=self.config.lm_eval_limit,
                    cache_requests=False,
                    bootstrap_iters=BOOTSTRAP_ITERS,
                    log_samples=False,
                    apply_chat_template=self.config.apply_chat_template,
                    # the lm_eval CLI's default: few-shot examples as chat turns
                    fewshot_as_multiturn=self.config.apply_chat_template,
                )
        finally:
            if was_training and hasattr(model, "train"):
                model.train()
        return scores_from_results(results)


@contextlib.contextmanager
def _no_bootstrap_pool():
    """lm-eval's bootstrap stderr starts a process pool of cpu_count() workers unless
    DISABLE_MULTIPROC is set: far too many inside a Ray worker with one CPU."""
    old = os.environ.get("DISABLE_MULTIPROC")
    os.environ["DISABLE_MULTIPROC"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("DISABLE_MULTIPROC", None)
        else:
            os.environ["DISABLE_MULTIPROC"] = old
