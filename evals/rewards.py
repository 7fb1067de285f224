"""Rewards for the RLHF probe: rule functions and a local reward model.

A reward is any callable

    reward(*, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None]) -> list[float]

returning one raw score per completion (prompts are the user messages, completions the
decoded responses without eos/padding, answers the expected final answers).

Rules are small functions registered in `evals.plugins.REWARD_RULES`
(`@register_rule("name", needs_answer=...)`); the built-in ones are
length-independent: a long correct answer scores the same as a short one.

- `exact_match`: 1.0 when the completion's final answer equals the expected answer
  (both stripped of surrounding whitespace), else 0.0.
- `format`: 1.0 when the completion is well-formed, else 0.0: either it has no think
  tags and a non-empty answer, or it opens with one `<think>`, closes it with one
  `</think>`, and a non-empty final answer follows.
- `exact_match+format`: their sum (0, 1 or 2).
- `concise`: prefers short, format-following answers, as a reward model trained on
  instruct-style preferences does: `format` x max(0, 1 - characters / 64). Not
  length-independent on purpose: it is the pressure under which a distilled reasoning
  model's length collapses in RLHF (the demo's probe reward).

The final answer of a completion (`final_answer`) is the text after the last
`</think>`, stripped; a completion that opens `<think>` and never closes it has no final
answer (""); one without think tags is its own final answer.

Chat templates that open `<think>` in the prompt (DeepSeek-R1-Distill's ends the
generation prompt with "<think>\n") make completions start mid-thought, without the
tag. The probe then puts `<think>` back in front of each completion before scoring
(`with_opened_think`), so the rules above see the whole block: a completion that never
writes `</think>` has no answer, and one that writes `<think>` again is malformed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from core.registry import UnknownName
from evals.errors import EvalError
from evals.plugins import REWARD_RULES

THINK_START = "<think>"
THINK_END = "</think>"


class Reward(Protocol):
    def __call__(
        self, *, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None]
    ) -> list[float]: ...


RuleFn = Callable[..., list[float]]


def register_rule(name: str, *, needs_answer: bool = False) -> Callable[[RuleFn], RuleFn]:
    """Register a rule reward under `name` (the value of `reward.rule` in a spec) in
    `evals.plugins.REWARD_RULES`. `needs_answer`: the rule compares against the expected
    answer, so every prompt then needs one (run_probe checks before any step)."""
    return REWARD_RULES.register(name, needs_answer=needs_answer)


def rule_needs_answer(rule: str) -> bool:
    """Whether the registered rule `rule` compares against expected answers."""
    return bool(REWARD_RULES.meta(rule).get("needs_answer", False))


def with_opened_think(completion: str, *, think_start: str = THINK_START) -> str:
    """A completion as the rules read it when the chat template already opened `<think>`."""
    return think_start + completion


def final_answer(text: str, *, think_end: str = THINK_END, think_start: str = THINK_START) -> str:
    """The final answer of a completion: text after the last think_end, stripped.

    An opened but unclosed think block (e.g. truncated mid-thought) has no answer: "".
    """
    if think_end in text:
        return text.rsplit(think_end, 1)[1].strip()
    if text.lstrip().startswith(think_start):
        return ""
    return text.strip()


def is_well_formed(text: str) -> bool:
    """No think tags and a non-empty answer, or `<think>...</think>answer` with one pair."""
    starts, ends = text.count(THINK_START), text.count(THINK_END)
    if starts == 0 and ends == 0:
        return bool(text.strip())
    if starts != 1 or ends != 1 or not text.lstrip().startswith(THINK_START):
        return False
    return bool(final_answer(text))


@register_rule("exact_match", needs_answer=True)
def exact_match(*, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    return [float(a is not None and final_answer(c) == a.strip()) for c, a in zip(completions, answers, strict=True)]


@register_rule("format")
def format_check(*, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    return [float(is_well_formed(c)) for c in completions]


@register_rule("exact_match+format", needs_answer=True)
def exact_match_and_format(
    *, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None]
) -> list[float]:
    kw = {"prompts": prompts, "completions": completions, "answers": answers}
    return [m + f for m, f in zip(exact_match(**kw), format_check(**kw), strict=True)]


CONCISE_CHARS = 64  # characters: `concise` scores a well-formed answer this long (or longer) 0


@register_rule("concise")
def concise(*, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    return [float(is_well_formed(c)) * max(0.0, 1.0 - len(c) / CONCISE_CHARS) for c in completions]


def get_rule(name: str) -> RuleFn:
    """The rule registered as `name`; EvalError (listing the registered rules) if none is."""
    try:
        return REWARD_RULES.get(name)
    except UnknownName as exc:
        raise EvalError(str(exc)) from None


class RewardModelScorer:
    """A local AutoModelForSequenceClassification checkpoint used as a reward.

    Scores "<prompt, completion>" rendered with the reward model's chat template (a user
    and an assistant message) when its tokenizer has one, else "prompt\\ncompletion".
    The score is the single logit (num_labels must be 1), returned as fp32. `dtype` (a
    torch dtype) loads the weights in it, the trial's dtype (default: the checkpoint's
    own). Loads on construction and raises EvalError for a missing or unsuitable checkpoint.
    """

    def __init__(self, path: str | Path, *, device: str | None = None, batch_size: int = 32, dtype: Any = None):
        path = Path(path)
        if not (path / "config.json").is_file():
            raise EvalError(f"reward model {path}: no such checkpoint folder (config.json missing)")
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            loading = {} if dtype is None else {"dtype": dtype}
            self.model = AutoModelForSequenceClassification.from_pretrained(path, **loading)
        except (OSError, ValueError, KeyError) as exc:
            raise EvalError(
                f"reward model {path}: cannot load as a sequence-classification checkpoint ({exc})"
            ) from None
        if self.model.config.num_labels != 1:
            raise EvalError(
                f"reward model {path}: has {self.model.config.num_labels} labels; a reward model has one (num_labels=1)"
            )
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.tokenizer.padding_side = "right"
        self.model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.batch_size = batch_size
        self._torch = torch

    def render(self, prompt: str, completion: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]
            text = self.tokenizer.apply_chat_template(messages, tokenize=False)
            if not isinstance(text, str):  # tokenize=False gives the rendered string
                raise EvalError(f"reward model tokenizer: apply_chat_template gave {type(text).__name__}, not text")
            return text
        return f"{prompt}\n{completion}"

    def __call__(
        self, *, prompts: Sequence[str], completions: Sequence[str], answers: Sequence[str | None]
    ) -> list[float]:
        texts = [self.render(p, c) for p, c in zip(prompts, completions, strict=True)]
        device = next(self.model.parameters()).device
        scores: list[float] = []
        with self._torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size], return_tensors="pt", padding=True, add_special_tokens=False
                )
                logits = self.model(**batch.to(device)).logits
                scores += logits[:, 0].float().tolist()
        return scores


def build_reward(*, rule: str | None, model: str | None, device: str | None = None, dtype: Any = None) -> Reward:
    """The reward a probe config names: the reward model (in `dtype`, on `device`) when
    `model` is set, else the rule."""
    if model is not None:
        return RewardModelScorer(model, device=device, dtype=dtype)
    if rule is None:
        raise EvalError("reward: give a rule or a reward model path")
    return get_rule(rule)
