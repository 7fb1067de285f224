from core.errors import UserError


class MergeError(UserError):
    """A user-fixable merge problem (missing files, mismatched models). Exit code 2 in the CLI.

    `problems` holds the individual lines when several were collected into one error
    (`MergeError.collected(head, problems)`).
    """
