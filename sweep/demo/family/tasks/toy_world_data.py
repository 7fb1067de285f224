"""lm-eval's loader for the demo tasks: each task's rows from a jsonl file beside this one.

The build copies this file into the family's `tasks/` folder, where the task YAMLs name it
(`custom_dataset: !function toy_world_data.load`, `dataset_kwargs: {data_file: data/<task>.jsonl}`).
lm-eval resolves `!function` against the YAML's own folder, so the folder works from any
place and any working directory: no absolute path is written anywhere, and a shipped or
moved family needs no rewriting. (A `data_files` path in a YAML resolves against the
working directory instead.)
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any


class _NoMetadataHint(logging.Filter):
    """lm-eval warns, for every task with a custom loader, that metadata can be passed on
    the command line; these tasks take none, so the hint is noise in every sweep log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Custom kwargs can be passed" not in record.getMessage()


logging.getLogger("lm_eval.api.task").addFilter(_NoMetadataHint())


def load(data_file: str, **_metadata: Any) -> Any:
    """{"test": Dataset} of the rows in `data_file` (relative to this file's folder).
    lm-eval also passes the task's metadata (version, description) as keywords: unused."""
    import datasets

    path = Path(__file__).resolve().parent / data_file
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})
