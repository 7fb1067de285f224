"""`python -m sweep nightly` for tests: the real command with the stand-in trial and probe
of tests/sweep/sweeps.py (a night takes seconds, plus Ray's start-up).

    python -m tests.sweep.nightly_driver SPEC [nightly options]

Everything else is the real command: argument parsing, exit codes, error messages.
"""

from __future__ import annotations

import sys


def main() -> int:
    import sweep.commands.nightly as nightly
    from sweep.cli import main as cli_main
    from tests.sweep import sweeps

    real_run = nightly.run

    def run(args):
        return real_run(args, trial_fn=sweeps.stand_in_nightly_trial, probe_fn=sweeps.stand_in_probe)

    nightly.run = run  # type: ignore[assignment]
    return cli_main(["nightly", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
