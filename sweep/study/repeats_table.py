"""<study_dir>/repeats.parquet: the probe repeats of `sweep nightly` (sweep.run.repeats runs them).

One row per (point, seed): the params (`params/<name>`), `seed`, and the probe metrics with
their bands, or `error`.
"""

from __future__ import annotations

from pathlib import Path

REPEATS_FILE = "repeats.parquet"


def load_repeats(study_dir: Path):
    """The study's repeats table; an empty one when the study has none."""
    import pandas as pd

    path = Path(study_dir) / REPEATS_FILE
    return pd.read_parquet(path) if path.exists() else pd.DataFrame()


def write_repeats(study_dir: Path, table) -> Path:
    """Write the whole table atomically (a stopped night keeps what it had)."""
    path = Path(study_dir) / REPEATS_FILE
    tmp = path.with_suffix(".parquet.tmp")
    table.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path
