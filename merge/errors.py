class MergeError(Exception):
    """A user-fixable merge problem (missing files, mismatched models). Exit code 2 in the CLI.

    `problems` holds the individual lines when several were collected into one error.
    """

    exit_code = 2

    def __init__(self, message: str, *, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems) if problems else [message]

    @classmethod
    def collected(cls, head: str, problems: list[str]) -> "MergeError":
        """One error listing every problem under `head` (a single one stays on one line)."""
        if len(problems) == 1:
            return cls(f"{head}: {problems[0]}", problems=problems)
        return cls(f"{head}:\n" + "\n".join(f"  - {p}" for p in problems), problems=problems)
