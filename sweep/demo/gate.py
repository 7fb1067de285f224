"""The demo family's quality gate: the trade-off table, and the criteria the docs rely on.

    result = measure_gate(family)      # greedy, 50 held-out problems per task, 8 merges
    print(result.report())             # the table, then each criterion with its numbers
    result.passed                      # False: `sweep demo check` exits 1

Every figure the README quotes about the demo (a reasoner that adds, an instruct model
that follows formats, a length gap RL can collapse, merges that trade one for the
other, a merge that keeps both) is a criterion here, so a family that cannot show them
fails loudly instead of quietly making the docs wrong. The thresholds are the issue's
(reasoning member >= 0.8, instruct member >= 0.7, length ratio >= 3x) plus the member
and merge criteria the docs' story needs: thinking is what adds (the instruct member,
answering directly, cannot), the instruct member is no worse at formats, and merges lie
between the members and trade one skill for the other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from sweep.demo.tradeoff import DEFAULT_POINTS, TradeoffRow, markdown_table

REASONER_ACCURACY = 0.8  # the reasoning member, held-out additions
INSTRUCT_ACCURACY = 0.7  # the instruct member, held-out format instructions
LENGTH_RATIO = 3.0  # reasoning member's length over the instruct member's, on additions
BETWEEN_SLACK_ACCURACY = 0.1  # a merge may pass a member by this much (5 of 50 problems)
BETWEEN_SLACK_LENGTH = 0.05  # share of the members' length gap a merge may fall outside it
BOTH_SKILLS = 0.5  # some merge scores at least this on both tasks
REASONING_GAP = 0.5  # the reasoner adds this much better than the instruct member (who answers directly)
FORMAT_TIE = 0.04  # the instruct member follows formats no worse than the reasoner, within 2 of 50


@dataclass(frozen=True)
class Criterion:
    name: str
    passed: bool
    detail: str  # the numbers against the threshold

    def line(self) -> str:
        return f"  {'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


@dataclass(frozen=True)
class GateResult:
    rows: list[TradeoffRow]
    criteria: list[Criterion]
    n: int  # problems per task

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria)

    @property
    def failed(self) -> list[Criterion]:
        return [c for c in self.criteria if not c.passed]

    def report(self) -> str:
        verdict = "PASS" if self.passed else f"FAIL ({len(self.failed)} of {len(self.criteria)} criteria missed)"
        return "\n".join([markdown_table(self.rows), "", *(c.line() for c in self.criteria), f"gate: {verdict}"])

    @classmethod
    def from_json(cls, data: dict) -> GateResult:
        return cls(
            rows=[TradeoffRow.from_json(r) for r in data["rows"]],
            criteria=[Criterion(**c) for c in data["criteria"]],
            n=int(data["n"]),
        )

    def to_json(self) -> dict:
        return {
            "n": self.n,
            "passed": self.passed,
            "rows": [r.to_json() for r in self.rows],
            "criteria": [asdict(c) for c in self.criteria],
        }


def gate_criteria(rows: list[TradeoffRow]) -> list[Criterion]:
    """The criteria, from rows that include (0, 1), (1, 1) and merges at beta 1 between them."""
    at = {(r.alpha, r.beta): r for r in rows}
    reasoner, instruct = at[(0.0, 1.0)], at[(1.0, 1.0)]
    between = [r for r in rows if r.beta == 1.0 and 0 < r.alpha < 1]
    merges = [r for r in rows if r not in (reasoner, instruct)]
    criteria = [
        Criterion(
            "reasoning member adds",
            reasoner.reasoning.accuracy >= REASONER_ACCURACY,
            f"held-out reasoning accuracy {reasoner.reasoning.accuracy:.2f} (need >= {REASONER_ACCURACY})",
        ),
        Criterion(
            "instruct member follows formats",
            instruct.instruct.accuracy >= INSTRUCT_ACCURACY,
            f"held-out instruction accuracy {instruct.instruct.accuracy:.2f} (need >= {INSTRUCT_ACCURACY})",
        ),
    ]
    gap = reasoner.reasoning.accuracy - instruct.reasoning.accuracy
    criteria.append(
        Criterion(
            "thinking is what adds",
            gap >= REASONING_GAP,
            f"reasoning member {reasoner.reasoning.accuracy:.2f} vs instruct member {instruct.reasoning.accuracy:.2f} "
            f"on additions, {gap:+.2f} (need >= +{REASONING_GAP})",
        )
    )
    criteria.append(
        Criterion(
            "the instruct member is the format follower",
            instruct.instruct.accuracy >= reasoner.instruct.accuracy - FORMAT_TIE,
            f"instruct member {instruct.instruct.accuracy:.2f} vs reasoning member {reasoner.instruct.accuracy:.2f} "
            f"on format instructions (need no worse than {FORMAT_TIE} below)",
        )
    )
    short = max(instruct.reasoning.mean_length, 1e-9)
    ratio = reasoner.reasoning.mean_length / short
    criteria.append(
        Criterion(
            "reasoning member answers at length",
            ratio >= LENGTH_RATIO,
            f"{reasoner.reasoning.mean_length:.1f} vs {instruct.reasoning.mean_length:.1f} tokens on additions, "
            f"{ratio:.1f}x (need >= {LENGTH_RATIO:g}x)",
        )
    )
    lo, hi = sorted((instruct.reasoning.mean_length, reasoner.reasoning.mean_length))
    slack = BETWEEN_SLACK_LENGTH * (hi - lo)
    outside = [r for r in between if not lo - slack <= r.reasoning.mean_length <= hi + slack]
    criteria.append(
        Criterion(
            "merges' lengths lie between the members'",
            not outside,
            f"{len(between) - len(outside)} of {len(between)} merges at beta 1 within [{lo:.1f}, {hi:.1f}] tokens "
            f"(+-{slack:.1f})" + "".join(f"; alpha {r.alpha:g}: {r.reasoning.mean_length:.1f}" for r in outside),
        )
    )
    for task in ("reasoning", "instruct"):
        a, b = getattr(reasoner, task).accuracy, getattr(instruct, task).accuracy
        low, high = min(a, b) - BETWEEN_SLACK_ACCURACY, max(a, b) + BETWEEN_SLACK_ACCURACY
        off = [r for r in between if not low <= getattr(r, task).accuracy <= high]
        criteria.append(
            Criterion(
                f"merges' {task} accuracy lies between the members'",
                not off,
                f"{len(between) - len(off)} of {len(between)} merges at beta 1 within [{max(low, 0):.2f}, {min(high, 1):.2f}]"
                + "".join(f"; alpha {r.alpha:g}: {getattr(r, task).accuracy:.2f}" for r in off),
            )
        )
    best = max(merges, key=lambda r: min(r.reasoning.accuracy, r.instruct.accuracy))
    worst_skill = min(best.reasoning.accuracy, best.instruct.accuracy)
    criteria.append(
        Criterion(
            "a merge keeps both skills",
            worst_skill >= BOTH_SKILLS,
            f"best merge ({best.alpha:g}, {best.beta:g}): reasoning {best.reasoning.accuracy:.2f}, "
            f"instruction {best.instruct.accuracy:.2f} (need both >= {BOTH_SKILLS})",
        )
    )
    return criteria


def measure_gate(family, *, n: int = 50) -> GateResult:
    """The trade-off table on `family` (held-out split, greedy, one torch thread) and the criteria."""
    import torch

    from sweep.demo.tradeoff import measure_tradeoff

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the table does not depend on how many threads the caller had
    try:
        rows = measure_tradeoff(family, points=DEFAULT_POINTS, n=n, split="heldout")
    finally:
        torch.set_num_threads(threads)
    return GateResult(rows=rows, criteria=gate_criteria(rows), n=n)
