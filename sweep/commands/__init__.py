"""CLI commands: one module per command.

Each module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`.
`sweep.cli` discovers them, so a new command touches only its own file.
"""
