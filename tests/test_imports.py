"""`import sweep`, `import merge`, `import evals` stay light: no Ray, lm-eval or vLLM."""

import subprocess
import sys

import pytest

HEAVY = ("ray", "lm_eval", "vllm")


@pytest.mark.parametrize(
    "statement",
    [
        "import sweep, merge, evals",
        "import sweep.cli; sweep.cli.build_parser()",
        "import sweep.config.loading, sweep.config.checks",
    ],
)
def test_light_imports(statement):
    code = f"{statement}\nimport sys\nprint(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"{statement!r} imported {out.strip()}"
