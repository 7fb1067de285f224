"""User-facing errors: one clear message, exit code 2, no traceback (unless --debug)."""

from __future__ import annotations

from core.errors import UserError


class SweepError(UserError):
    """A problem the user can fix (bad input, missing file). Printed without a traceback."""


class ConfigError(SweepError):
    """Every problem found in a spec, collected, then raised once.

    `problems` are strings of the form "<path.in.file>: <what is wrong>".
    """

    def __init__(self, problems: list[str], *, source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        noun = "problem" if len(problems) == 1 else "problems"
        lines = [f"{head}{len(problems)} {noun}:"] + [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines), problems=problems)
