"""Greedy generation and scoring on the toy tasks, without lm-eval (fast, for tables and checks).

Scores match the lm-eval tasks' `exact_match,final`: the text after the last `</think>`,
stripped, must equal the answer. Length is the number of generated tokens, the `<eos>`
included, capped at `max_new_tokens` (a response that never ends counts the cap).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sweep.demo.data import Problem, chat, final_answer


@dataclass(frozen=True)
class TaskScore:
    accuracy: float  # exact match of the final answer, 0..1
    mean_length: float  # tokens per response
    n: int

    def to_json(self) -> dict:
        return asdict(self)


def generate(model, tokenizer, prompts: list[str], *, max_new_tokens: int = 64, batch_size: int = 50) -> list[tuple[str, int]]:
    """Greedy responses to user messages (chat template applied): (text, length in tokens)."""
    import torch

    out: list[tuple[str, int]] = []
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    for start in range(0, len(prompts), batch_size):
        contexts = [tokenizer.encode(chat(p), add_special_tokens=False) for p in prompts[start : start + batch_size]]
        width = max(len(c) for c in contexts)
        ids = torch.full((len(contexts), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, c in enumerate(contexts):  # left padding, so every row continues at the end
            ids[i, width - len(c) :] = torch.tensor(c)
            mask[i, width - len(c) :] = 1
        with torch.no_grad():
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad, eos_token_id=eos
            )
        for row in gen[:, width:].tolist():
            n = row.index(eos) + 1 if eos in row else len(row)
            out.append((tokenizer.decode(row[:n], skip_special_tokens=True), n))
    return out


def score(model, tokenizer, problems: list[Problem], *, max_new_tokens: int = 64) -> TaskScore:
    responses = generate(model, tokenizer, [p.prompt for p in problems], max_new_tokens=max_new_tokens)
    correct = sum(final_answer(text) == p.answer for (text, _), p in zip(responses, problems))
    length = sum(n for _, n in responses) / len(problems)
    return TaskScore(accuracy=correct / len(problems), mean_length=length, n=len(problems))


def weighted_sum(state_dicts: list[dict], weights: list[float]) -> dict:
    """A plain fp32 weighted sum of state dicts (the table's merge; the merge engine lives in merge/)."""
    out = {}
    for name in state_dicts[0]:
        acc = state_dicts[0][name].float() * weights[0]
        for sd, w in zip(state_dicts[1:], weights[1:]):
            acc = acc + sd[name].float() * w
        out[name] = acc
    return out


def bai_weights(alpha: float, beta: float) -> list[float]:
    """Closed-form linear BAI weights for (instruct, reasoning, pretrained)."""
    return [alpha * beta, (1 - alpha) * beta, 1 - beta]
