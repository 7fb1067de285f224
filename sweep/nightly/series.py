"""A nightly series on disk: one study folder per night, named by the spec's name template
(`nightly-{date}`), each with its night record (`nightly.json`)."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from sweep.study import table

NIGHT_FILE = "nightly.json"
DATE_TOKEN = "{date}"


@dataclass(frozen=True)
class Night:
    date: dt.date
    study_dir: Path


def find_nights(results_dir: Path, template: str) -> list[Night]:
    """Every study folder of this series, oldest first."""
    head, tail = template.split(DATE_TOKEN, 1)
    pattern = re.compile(re.escape(head) + r"(\d{4}-\d{2}-\d{2})" + re.escape(tail) + "$")
    nights = []
    if results_dir.is_dir():
        for folder in results_dir.iterdir():
            match = pattern.match(folder.name)
            if match and folder.is_dir():
                try:
                    nights.append(Night(dt.date.fromisoformat(match.group(1)), folder))
                except ValueError:
                    continue
    return sorted(nights, key=lambda n: n.date)


def previous_night(nights: list[Night], date: dt.date) -> Night | None:
    """The latest earlier night whose study has a trials table and a spec snapshot."""
    earlier = [n for n in nights if n.date < date and table.exists(n.study_dir)]
    earlier = [n for n in earlier if (n.study_dir / "spec.json").exists()]
    return earlier[-1] if earlier else None
