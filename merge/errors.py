class MergeError(Exception):
    """A user-fixable merge problem (missing files, mismatched models). Exit code 2 in the CLI."""

    exit_code = 2
