"""A storage password is never printed or written: `validate`, errors, spec.json; the
storage URL can come from the environment (`storage: env:VAR`). The full sweep on a real
PostgreSQL server is grepped for the password in test_drivers.py."""

from __future__ import annotations

import json
import socket

from sweep.config import load_spec, mask_url, redact, url_secrets
from sweep.study.durable import save_spec_snapshot
from tests.sweep.test_validate import base_spec, validate, workspace, write  # noqa: F401 - fixture

SECRET = "Sup3r-s3cret%21x"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mask_url():
    url = f"postgresql://sweep:{SECRET}@db.example:5432/studies"
    assert mask_url(url) == "postgresql://sweep:***@db.example:5432/studies"
    assert mask_url("sqlite:////tmp/x.db") == "sqlite:////tmp/x.db"
    assert set(url_secrets(url)) == {SECRET, "Sup3r-s3cret!x"}  # %-decoded too: drivers report that form
    assert redact(f"failed for {url}", url_secrets(url)) == "failed for postgresql://sweep:***@db.example:5432/studies"


def test_validate_masks_the_password_of_an_unreachable_storage(workspace, tiny_trio, capsys):  # noqa: F811
    spec = base_spec(tiny_trio) | {"storage": f"postgresql://sweep:{SECRET}@127.0.0.1:{_closed_port()}/db"}
    code, output = validate(write(workspace, "pg.yaml", spec), capsys)
    assert code == 2
    assert "cannot reach the storage postgresql://sweep:***@127.0.0.1" in output and "Nothing was created" in output
    assert SECRET not in output and "Sup3r-s3cret!x" not in output


def test_storage_from_the_environment(workspace, tiny_trio, capsys, monkeypatch, tmp_path):  # noqa: F811
    path = write(workspace, "env.yaml", base_spec(tiny_trio) | {"storage": "env:SWEEP_STORAGE"})
    monkeypatch.delenv("SWEEP_STORAGE", raising=False)
    code, output = validate(path, capsys)
    assert code == 2 and "storage: env:SWEEP_STORAGE: the environment variable SWEEP_STORAGE is not set" in output
    journal = tmp_path / "shared" / "study.journal"
    journal.parent.mkdir()  # a journal's folder must exist (an unmounted share is refused)
    monkeypatch.setenv("SWEEP_STORAGE", str(journal))
    code, output = validate(path, capsys)
    assert code == 0, output
    assert f"storage    {journal} (from env:SWEEP_STORAGE)" in output
    assert not journal.exists()  # validate creates nothing


def test_spec_snapshot_holds_no_password(workspace, tiny_trio, tmp_path):  # noqa: F811
    spec = base_spec(tiny_trio) | {
        "storage": f"postgresql://sweep:{SECRET}@127.0.0.1:5432/db",
        "results_dir": str(tmp_path),
    }
    snapshot = save_spec_snapshot(load_spec(write(workspace, "snap.yaml", spec)))
    text = snapshot.read_text()
    assert SECRET not in text and json.loads(text)["spec"]["storage"] == "postgresql://sweep:***@127.0.0.1:5432/db"
