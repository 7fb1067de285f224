"""The root of every user-fixable error: one clear message, `problems`, an exit code.

merge.MergeError, evals.EvalError and sweep.errors.SweepError derive from UserError, so the
CLI and the runner catch one type: a UserError is printed without a traceback (unless
--debug) and is never retried, since running the same input again cannot fix it.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix (bad input, a missing file, mismatched models).

    `problems` holds the individual lines when several were collected into one error (a
    single problem is the message itself). `exit_code` is what the CLI exits with.
    """

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]

    @classmethod
    def collected(cls, head: str, problems: list[str]):
        """One error listing every problem under `head` (a single one stays on one line)."""
        if len(problems) == 1:
            return cls(f"{head}: {problems[0]}", problems=problems)
        return cls(f"{head}:\n" + "\n".join(f"  - {p}" for p in problems), problems=problems)
