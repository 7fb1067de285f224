"""Every balanced-point rule in sweep.plugins.BALANCED_RULES against one contract, and a
rule registered from this file used by `balanced_point`, `summarize` and the report by name.

The contract: on a known front each rule scores every point with a finite number and
`balanced_point` returns a point of that front; its metadata `doc` is one line.
"""

from __future__ import annotations

import numpy as np
import pytest

from sweep.plugins import BALANCED_RULES
from sweep.report.balanced import balanced_point
from sweep.report.document import write_report
from sweep.report.front import pareto_front
from sweep.report.summary import summarize
from tests.sweep.test_pareto import FRONT_2D, MAX2, table

A, B = (metric for metric, _ in MAX2)
# The front plus a dominated trial, so that the front is not every trial.
TRIALS = FRONT_2D + [{A: 0.2, B: 0.5}]


@pytest.mark.parametrize(("name", "rule"), BALANCED_RULES.items(), ids=BALANCED_RULES.names())
def test_every_rule_picks_a_point_of_the_front(name, rule):
    trials = table(TRIALS)
    front = pareto_front(trials, MAX2)
    assert sorted(front["number"]) == [0, 1, 2, 3]
    point = balanced_point(front, MAX2, rule=name, trials=trials)
    assert point is not None and point.rule == name and point.number in set(front["number"])
    util = np.array([[0.0, 1.0], [0.3, 0.95], [0.6, 0.6], [1.0, 0.0]])
    weights = np.ones(2) if BALANCED_RULES.meta(name).get("uses_weights") else None
    scores = rule(util, weights)
    assert np.shape(scores) == (4,) and np.all(np.isfinite(scores))


@pytest.mark.parametrize("name", BALANCED_RULES.names())
def test_every_rule_has_a_one_line_doc(name):
    doc = BALANCED_RULES.meta(name)["doc"]
    assert isinstance(doc, str) and doc.strip() and "\n" not in doc


def test_a_rule_registered_here_is_used_by_name_everywhere(tmp_path):
    doc = "the front point with the lowest first objective"

    @BALANCED_RULES.register("contract_lowest_first", doc=doc)
    def lowest_first(util, weights):
        return -util[:, 0]

    try:
        trials = table(TRIALS)
        front = pareto_front(trials, MAX2)
        # On the front, trial 0 has the lowest first objective (A = 0.0).
        assert balanced_point(front, MAX2, rule="contract_lowest_first").number == 0
        summary = summarize(trials, MAX2, rule="contract_lowest_first")
        assert summary.balanced.number == 0 and summary.balanced.rule == "contract_lowest_first"
        _, md = write_report(
            tmp_path, trials=trials, objectives=MAX2, spec_name="rules", balanced_rule="contract_lowest_first"
        )
        assert f"contract\\_lowest\\_first: {doc}" in md.read_text()
    finally:
        BALANCED_RULES.remove("contract_lowest_first")
