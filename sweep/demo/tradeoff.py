"""The BAI trade-off on the demo family: lengths and accuracies of linear merges.

A row merges (instruct, reasoning, pretrained) at (alpha, beta) with the merge engine
(`merge.build_in_place`, linear stages: weights [alpha*beta, (1-alpha)*beta, 1-beta]),
then decodes greedily on the held-out problems of both tasks and scores them with
`evals.rewards.exact_match`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sweep.demo.measure import TaskScore, build, load_family_models, score
from sweep.demo.tasks import MAX_GEN_TOKS

# Alpha at beta 1 (stage 1 alone), then stage 2 (beta < 1) at alpha 0.25, where the
# shipped family's balanced actors lie (they think once, without re-verifying), and at 0.5.
DEFAULT_POINTS = (
    (0.0, 1.0),
    (0.125, 1.0),
    (0.25, 1.0),
    (0.5, 1.0),
    (0.75, 1.0),
    (1.0, 1.0),
    (0.25, 0.75),
    (0.25, 0.5),
    (0.5, 0.75),
    (0.5, 0.5),
)


@dataclass(frozen=True)
class TradeoffRow:
    alpha: float
    beta: float
    reasoning: TaskScore  # on the reasoning prompts
    instruct: TaskScore  # on the instruction prompts

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> TradeoffRow:
        return cls(
            alpha=data["alpha"],
            beta=data["beta"],
            reasoning=TaskScore(**data["reasoning"]),
            instruct=TaskScore(**data["instruct"]),
        )


def measure_tradeoff(
    family, *, points=DEFAULT_POINTS, n: int = 50, split: str = "heldout", max_new_tokens: int = MAX_GEN_TOKS
) -> list[TradeoffRow]:
    """One row per (alpha, beta) on the first `n` problems of each task's `split` (search or heldout)."""
    import json

    from sweep.demo.data import Problem

    def problems(task: str) -> list[Problem]:
        name = f"toy_{task}" + ("_heldout" if split == "heldout" else "")
        lines = (family.tasks / "data" / f"{name}.jsonl").read_text().splitlines()[:n]
        return [Problem(kind=d["kind"], prompt=d["prompt"], answer=d["answer"]) for d in map(json.loads, lines)]

    reasoning_problems, instruct_problems = problems("reasoning"), problems("instruct")
    sources, model, tokenizer = load_family_models(family)
    rows = []
    for alpha, beta in points:
        build(model, sources, alpha, beta)
        rows.append(
            TradeoffRow(
                alpha=alpha,
                beta=beta,
                reasoning=score(model, tokenizer, reasoning_problems, max_new_tokens=max_new_tokens),
                instruct=score(model, tokenizer, instruct_problems, max_new_tokens=max_new_tokens),
            )
        )
    return rows


def markdown_table(rows: list[TradeoffRow]) -> str:
    lines = [
        "| alpha | beta | length on reasoning prompts (tokens) | reasoning accuracy | length on instruction prompts | instruction accuracy |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.alpha:g} | {r.beta:g} | {r.reasoning.mean_length:.1f} | {r.reasoning.accuracy:.2f} "
            f"| {r.instruct.mean_length:.1f} | {r.instruct.accuracy:.2f} |"
        )
    return "\n".join(lines)
