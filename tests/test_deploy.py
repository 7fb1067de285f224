"""The nightly's scheduling recipes (deploy/) parse and validate, without a cluster.

- Kubernetes manifests: the plain CronJob against Kubernetes' own JSON schema (strict:
  unknown fields fail) from the `kubernetes-validate` package on PyPI, which bundles
  the schemas of each Kubernetes release; the RayCronJob against
  deploy/kubernetes/raycronjob.schema.json, a schema written for these tests from the
  fields KubeRay 1.6 documents for RayCronJob, RayJob and RayCluster, whose pod
  templates, services and metadata refer to the same Kubernetes schemas. kubectl is not
  needed (and kubectl --dry-run=client would not know the RayCronJob kind anyway).
- systemd units: `systemd-analyze verify` where it exists (with the paths pointed at this
  checkout, since it checks that ExecStart's program exists), else parsed as INI.
- The cron line: five schedule fields, then the command the README shows.
Each check is also run on a broken copy, so none of them passes whatever it is given.
"""

from __future__ import annotations

import configparser
import copy
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30"  # oldest Kubernetes KubeRay 1.6 supports, and CronJob timeZone is GA


def k8s_validate(resource: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(resource, K8S_VERSION, strict=True)


def raycronjob_validate(resource: dict) -> None:
    import importlib.resources

    import jsonschema
    from referencing import Registry, Resource

    folder = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict"
    defs = json.loads((importlib.resources.files("kubernetes_validate") / folder / "_definitions.json").read_text())
    schema = json.loads((DEPLOY / "kubernetes" / "raycronjob.schema.json").read_text())
    registry = Registry().with_resources(
        [("https://kubernetes.io/api/_definitions.json", Resource.from_contents(defs))]
    )
    jsonschema.Draft202012Validator.check_schema(schema)
    jsonschema.Draft202012Validator(schema, registry=registry).validate(resource)


def load(name: str) -> dict:
    docs = list(yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()))
    assert len(docs) == 1
    return docs[0]


def cron_fields_ok(schedule: str) -> bool:
    field = r"(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*"
    return bool(re.fullmatch(r"\s+".join([field] * 5), schedule.strip()))


def test_the_plain_cronjob_validates_against_kubernetes_schema():
    cronjob = load("cronjob.yaml")
    k8s_validate(cronjob)
    assert cron_fields_ok(cronjob["spec"]["schedule"]) and cronjob["spec"]["concurrencyPolicy"] == "Forbid"
    command = " ".join(cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["args"])
    assert '--submission-id "nightly-$(date +%F)"' in command and "-- python -m sweep nightly" in command
    broken = copy.deepcopy(cronjob)
    broken["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["comand"] = ["typo"]
    with pytest.raises(Exception, match="comand"):
        k8s_validate(broken)


def test_the_raycronjob_validates_against_kuberay_16_fields():
    raycronjob = load("raycronjob.yaml")
    raycronjob_validate(raycronjob)
    spec = raycronjob["spec"]
    assert cron_fields_ok(spec["schedule"]) and spec["jobTemplate"]["entrypoint"].startswith("python -m sweep nightly ")
    for change in (
        lambda r: r["spec"].update(concurrencyPolicy="Forbid"),  # not a KubeRay 1.6 field
        lambda r: r["spec"]["jobTemplate"].update(submissionMode="K8sJob"),
        lambda r: r["spec"]["jobTemplate"]["rayClusterSpec"]["headGroupSpec"].pop("rayStartParams"),
        lambda r: r["spec"]["jobTemplate"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][
            0
        ].update(imagee="x"),  # inside the pod template: Kubernetes' own schema
    ):
        broken = copy.deepcopy(raycronjob)
        change(broken)
        with pytest.raises(Exception):  # noqa: B017 - jsonschema.ValidationError
            raycronjob_validate(broken)


def test_the_systemd_units_verify(tmp_path):
    units = {p.name: p.read_text() for p in (DEPLOY / "systemd").glob("sweep-nightly.*")}
    assert set(units) == {"sweep-nightly.service", "sweep-nightly.timer"}
    for text in units.values():
        parser = configparser.ConfigParser(strict=True, interpolation=None)
        parser.optionxform = str  # type: ignore[assignment,method-assign]
        parser.read_string(text)
        assert parser.has_section("Unit")
    service = units["sweep-nightly.service"].replace("/srv/sweep/.venv/bin/python", sys.executable)
    service = service.replace("/srv/sweep", str(REPO)).replace("User=sweep", "User=root")
    assert f"ExecStart={sys.executable} -m sweep nightly search_spaces/nightly.yaml --quiet" in service
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze not installed: the units were parsed as INI only")
    (tmp_path / "sweep-nightly.service").write_text(service)
    (tmp_path / "sweep-nightly.timer").write_text(units["sweep-nightly.timer"])
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", *(str(p) for p in sorted(tmp_path.iterdir()))],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "sweep-nightly" not in result.stderr, result.stderr
    (tmp_path / "sweep-nightly.timer").write_text(units["sweep-nightly.timer"].replace("OnCalendar=", "OnCalender="))
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(tmp_path / "sweep-nightly.timer")], capture_output=True, text=True
    )
    assert "OnCalender" in result.stderr


def test_the_cron_line_is_the_readmes():
    text = (DEPLOY / "cron" / "sweep-nightly.cron").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(lines) == 1
    fields = lines[0].split(None, 5)
    assert cron_fields_ok(" ".join(fields[:5])) and not cron_fields_ok("30 1 * *")
    assert "python -m sweep nightly search_spaces/nightly.yaml --quiet" in fields[5]
    assert lines[0] in (REPO / "README.md").read_text() and lines[0] in (REPO / "docs" / "cluster.md").read_text()
