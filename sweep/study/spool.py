"""The result spool: a finished trial is on local disk before the study is told.

`<study_dir>/spool.jsonl` is append-only, one JSON object a line, fsync'd:
- an entry `{"key", "trial_number", "trial_id", "params", "result", "error", ...}` is
  written the moment a trial ends, before the study is told;
- `{"done": key}` follows once the study holds it.

When the storage is unreachable, telling is retried with backoff; whatever is still
unsent when the run ends is replayed by the next run on this results folder, before
anything else. A result therefore survives a storage outage, a crash of the driver
during the outage, or both.
"""

from __future__ import annotations

import json
import os
import threading
import uuid
from pathlib import Path
from typing import Any

SPOOL_FILE = "spool.jsonl"


class Spool:
    def __init__(self, study_dir: Path):
        self.path = Path(study_dir) / SPOOL_FILE
        self._lock = threading.Lock()

    def _append(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, allow_nan=False, default=str) + "\n"
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line)
                handle.flush()
                os.fsync(handle.fileno())

    def add(self, entry: dict[str, Any]) -> str:
        """Write a finished trial's outcome; returns its key."""
        key = uuid.uuid4().hex
        self._append({"key": key, **entry})
        return key

    def done(self, key: str) -> None:
        self._append({"done": key})

    def pending(self) -> list[dict[str, Any]]:
        """Entries not yet marked done, oldest first."""
        if not self.path.exists():
            return []
        entries: dict[str, dict[str, Any]] = {}
        with open(self.path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:  # a torn last line from a crash mid-write
                    continue
                if "done" in record:
                    entries.pop(record["done"], None)
                elif "key" in record:
                    entries[record["key"]] = record
        return list(entries.values())

    def compact(self) -> None:
        """Drop the file when nothing is pending (keeps the results folder tidy)."""
        with self._lock:
            if self.path.exists() and not self.pending():
                self.path.unlink()
