from core.errors import UserError


class EvalError(UserError):
    """A user-fixable problem in evaluation input (unknown task, bad prompts file)."""
