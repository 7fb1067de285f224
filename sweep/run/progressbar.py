"""A byte-count progress bar for long merges (merge, export), on stderr."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.progress import Progress, TaskID

# bytes: show a progress bar when the merge reads and writes more than this
PROGRESS_MIN_BYTES = 200_000_000


class MergeProgressBar:
    """A rich progress bar on stderr, started only once a merge turns out to be large."""

    def __init__(self, *, enabled: bool):
        self.enabled = enabled
        # rich is imported only once a bar is needed; the bar and its task come together
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total < PROGRESS_MIN_BYTES:
            return
        if self._progress is None or self._task is None:
            from rich.console import Console
            from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

            self._progress = Progress(
                "merging",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=sys.stderr),
                transient=True,
            )
            self._progress.start()
            self._task = self._progress.add_task("merge", total=total)
        self._progress.update(self._task, completed=done)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
