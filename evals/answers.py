"""Scoring reasoning tasks on the final answer: think_end and answer_regex.

How the two settings compose with a task's own filters (the same as the lm_eval CLI
would do with the settings spelled out in docs/evals.md):

1. think_end is lm-eval's own model argument `think_end_token`: the model wrapper cuts
   every generated text after the LAST think_end before any filter runs (a text without
   think_end is kept whole). When think_end is one special token of the tokenizer, it is
   passed as its token id: the HF backend decodes with skip_special_tokens=True, so the
   string would already be gone from the text and nothing would be cut.
2. answer_regex is lm-eval's `regex` filter (first match, first non-empty group, else
   "[invalid]"), inserted FIRST in every filter pipeline of every generate_until task.
   The task's own filters (take_first, its own regexes, ...) then run on the extracted
   answer, and the filter names (the `,<filter>` part of metric names) stay the task's.

Import-light: lm-eval is imported only inside the functions that need it.
"""

from __future__ import annotations

import re
from typing import Any

from evals.errors import EvalError

INVALID_ANSWER = "[invalid]"  # lm-eval's own fallback when its regex filter finds nothing


def think_end_token(tokenizer: Any, think_end: str | None, *, backend: str = "hf") -> str | int | None:
    """The value of lm-eval's `think_end_token` model argument for this tokenizer.

    hf: the token id when `think_end` is a single token that decoding with
    skip_special_tokens drops (a special token), else the string. vllm: always the
    string (lm-eval's vLLM wrapper decodes with skip_special_tokens=False).
    """
    if not think_end:
        return None
    if backend != "hf":
        return think_end
    ids = tokenizer.encode(think_end, add_special_tokens=False)
    if len(ids) == 1 and tokenizer.decode(ids, skip_special_tokens=True) == "":
        return int(ids[0])
    return think_end


def check_answer_regex(answer_regex: str | None) -> None:
    """Raise EvalError when answer_regex does not compile."""
    if answer_regex is None:
        return
    try:
        re.compile(answer_regex)
    except re.error as exc:
        raise EvalError(f"answer_regex {answer_regex!r} is not a valid regular expression: {exc}") from None


def answer_filter_step(answer_regex: str):
    """One step for an lm-eval FilterEnsemble: lm-eval's `regex` filter with answer_regex."""
    from functools import partial

    from lm_eval.api.registry import get_filter

    return partial(get_filter("regex"), regex_pattern=answer_regex, group_select=0, fallback=INVALID_ANSWER)


def prepend_answer_regex(task: Any, answer_regex: str | None) -> None:
    """Put the answer_regex step first in each filter pipeline of a generate_until task.

    Tasks of other output types (log-likelihoods, not texts) are left alone. Call once
    per task object: the task dict is built once per worker and reused.
    """
    if answer_regex is None or task.get_config("output_type") != "generate_until":
        return
    step = answer_filter_step(answer_regex)
    for ensemble in getattr(task, "_filters", []):
        ensemble.filters = [step, *ensemble.filters]
