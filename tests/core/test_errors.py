"""core.errors.UserError: every library's user-fixable error is one, with problems and an exit code."""

from __future__ import annotations

from core.errors import UserError
from evals.errors import EvalError
from merge.errors import MergeError
from sweep.errors import ConfigError, SweepError


def test_every_library_error_is_a_user_error_with_problems_and_exit_code_2():
    for cls in (MergeError, EvalError, SweepError):
        err = cls("models: instruct is missing")
        assert isinstance(err, UserError)
        assert err.problems == ["models: instruct is missing"] and err.exit_code == 2
    config = ConfigError(["a: bad", "b: worse"], source="space.yaml")
    assert isinstance(config, UserError) and config.problems == ["a: bad", "b: worse"]
    assert str(config).startswith("space.yaml: 2 problems:")


def test_collected_lists_every_problem_under_one_head():
    one = MergeError.collected("incompatible models", ["vocab differs"])
    assert str(one) == "incompatible models: vocab differs" and isinstance(one, MergeError)
    two = EvalError.collected("bad prompts", ["line 1: no prompt", "line 3: not JSON"])
    assert str(two) == "bad prompts:\n  - line 1: no prompt\n  - line 3: not JSON"
    assert two.problems == ["line 1: no prompt", "line 3: not JSON"]
