class EvalError(Exception):
    """A user-fixable problem in evaluation input (unknown task, bad prompts file)."""

    exit_code = 2
