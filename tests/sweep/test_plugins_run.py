"""A plug-in of every kind, registered in a module the test writes, used by a real
`python -m sweep run` through the spec's `plugins:` list: the driver and the Ray workers
import it, the trials merge, evaluate, probe and reward with it, and the report's balanced
point is chosen by it. No file of the project names any of them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import yaml

from tests.sweep.test_run import demo_spec_dict

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

PLUGINS = '''
"""Plug-ins for the test: each one leaves a marker file in $PLUGIN_MARKS when it is used."""
import os
from pathlib import Path

from evals.lm_backends import HfBackend
from evals.plugins import LM_BACKENDS, PROBE_BACKENDS, REWARD_RULES
from evals.probe.grpo import GRPOBackend
from merge.plugins import METHODS
from sweep.plugins import BALANCED_RULES, SAMPLERS


def mark(kind):
    Path(os.environ["PLUGIN_MARKS"], f"{kind}.{os.getpid()}").touch()


@METHODS.register("marked_linear")
def marked_linear(tensors, weights, *, base=None):
    from merge.methods import linear

    mark("merge")
    return linear(tensors, weights, base=base)


@SAMPLERS.register("marked_random")
def marked_random(spec, *, seed):
    import optuna

    mark("sampler")
    return optuna.samplers.RandomSampler(seed=seed)


@LM_BACKENDS.register("marked_hf")
class MarkedHf(HfBackend):
    def __init__(self, config):
        mark("lm_backend")
        super().__init__(config)


class MarkedProbe(GRPOBackend):
    def run(self, *args, **kwargs):
        mark("probe_backend")
        return super().run(*args, **kwargs)


PROBE_BACKENDS.add("marked_grpo", MarkedProbe)


@REWARD_RULES.register("marked_exact", needs_answer=True)
def marked_exact(*, prompts, completions, answers):
    from evals.rewards import exact_match

    mark("reward")
    return exact_match(prompts=prompts, completions=completions, answers=answers)


@BALANCED_RULES.register("marked_first_objective", doc="the front point best in the first objective")
def marked_first_objective(util, weights):
    mark("balanced")
    return util[:, 0]
'''


def test_a_plugin_of_every_kind_runs_in_a_real_sweep_from_the_spec(tmp_path, demo_family):
    (tmp_path / "plugmod").mkdir()
    (tmp_path / "plugmod" / "sweep_test_plugins.py").write_text(textwrap.dedent(PLUGINS))
    marks = tmp_path / "marks"
    marks.mkdir()
    spec = demo_spec_dict(tmp_path / "results", trials=3, concurrent=1)
    spec["space"]["points"] = []
    spec["plugins"] = ["sweep_test_plugins"]
    spec["merge"] = {"stage1": {"method": "marked_linear"}, "stage2": {"method": "marked_linear"}}
    spec["sampler"] = {"name": "marked_random", "seed": 0}
    spec["evals"]["lm_eval"]["backend"] = "marked_hf"
    spec["evals"]["probe"]["backend"] = "marked_grpo"
    spec["evals"]["probe"]["reward"] = {"rule": "marked_exact"}
    spec["report"] = {"balanced_rule": "marked_first_objective"}
    spec_path = tmp_path / "space.yaml"
    spec_path.write_text(yaml.safe_dump(spec, sort_keys=False))
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path / "plugmod")]),
        "PLUGIN_MARKS": str(marks),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    run = subprocess.run(
        [sys.executable, "-m", "sweep", "run", str(spec_path)], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    study_dir = tmp_path / "results" / spec["name"]
    study = optuna.load_study(study_name=spec["name"], storage=f"sqlite:///{study_dir / 'study.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials) == 3
    used = {p.name.split(".")[0] for p in marks.iterdir()}
    assert {"sampler", "merge", "lm_backend", "probe_backend", "reward"} <= used, used

    def pids(kind: str) -> set[int]:
        return {int(p.name.split(".")[1]) for p in marks.iterdir() if p.name.startswith(kind + ".")}

    # the sampler runs in the driver; the merges ran in Ray workers, which imported the module
    assert pids("merge") and pids("sampler") and pids("merge").isdisjoint(pids("sampler"))

    report = subprocess.run(
        [sys.executable, "-m", "sweep", "report", str(study_dir)], env=env, capture_output=True, text=True, timeout=300
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert (
        "rule marked\\_first\\_objective: the front point best in the first objective"
        in (study_dir / "report.md").read_text()
    )
    assert any(p.name.startswith("balanced.") for p in marks.iterdir())
