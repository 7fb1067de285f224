"""Greedy generation and scoring on the toy tasks, for tables and checks.

The merge is `merge.build_in_place` (the engine every trial uses) and the scoring is
`evals.rewards.exact_match` (the text after the last `</think>`, stripped, must equal the
answer: the lm-eval tasks' `exact_match,final`). Length is the number of generated
tokens, the `<eos>` included, capped at `max_new_tokens` (a response that never ends
counts the cap). Generation is greedy through the chat template, as lm-eval's
generate_until does with `apply_chat_template: true`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sweep.demo.data import Problem
from sweep.demo.tasks import MAX_GEN_TOKS


@dataclass(frozen=True)
class TaskScore:
    accuracy: float  # exact match of the final answer, 0..1
    mean_length: float  # tokens per response
    n: int

    def to_json(self) -> dict:
        return asdict(self)


def generate(
    model, tokenizer, prompts: list[str], *, max_new_tokens: int = MAX_GEN_TOKS, batch_size: int = 50
) -> list[tuple[str, int]]:
    """Greedy responses to user messages (chat template applied): (text, length in tokens)."""
    import torch

    out: list[tuple[str, int]] = []
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        contexts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True, return_dict=False
            )
            for p in prompts[start : start + batch_size]
        ]
        contexts = [list(c["input_ids"]) if isinstance(c, dict) else list(c) for c in contexts]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(contexts):  # left padding, so every row continues at the end
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                eos_token_id=eos,
            )
        for row in gen[:, width:].tolist():
            n = row.index(eos) + 1 if eos in row else len(row)
            out.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    return out


def score(model, tokenizer, problems: list[Problem], *, max_new_tokens: int = MAX_GEN_TOKS) -> TaskScore:
    from evals.rewards import exact_match

    responses = generate(model, tokenizer, [p.prompt for p in problems], max_new_tokens=max_new_tokens)
    correct = exact_match(
        prompts=[p.prompt for p in problems],
        completions=[text for text, _ in responses],
        answers=[p.answer for p in problems],
    )
    length = sum(n for _, n in responses) / len(problems)
    return TaskScore(accuracy=sum(correct) / len(problems), mean_length=length, n=len(problems))


def bai_weights(alpha: float, beta: float) -> list[float]:
    """Closed-form linear BAI weights for (instruct, reasoning, pretrained)."""
    return [alpha * beta, (1 - alpha) * beta, 1 - beta]


def load_family_models(family):
    """(source cache, live model, tokenizer) for building the family's merges in place."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import merge

    sources = merge.SourceCache.load(
        pretrained=family.pretrained, instruct=family.instruct, reasoning=family.reasoning, dtype=torch.float32
    )
    model = AutoModelForCausalLM.from_pretrained(family.instruct, dtype=torch.float32).eval()
    return sources, model, AutoTokenizer.from_pretrained(family.instruct)


def build(model, sources, alpha: float, beta: float) -> None:
    """Overwrite `model` with the linear BAI merge at (alpha, beta), as a trial does."""
    import merge

    merge.build_in_place(model, sources, alpha=alpha, beta=beta)
