"""Progress of a batch: a Prefect progress artifact (updated at most every few seconds) and, when
``OLLAMA_CLOUDRUN_PROGRESS=1`` (set by the command line), a rich progress bar on stderr.

Progress is measured in input bytes (known up front from the listing), so it needs no pre-count.
"""

from __future__ import annotations

import os
import time
from uuid import UUID

from prefect.artifacts import acreate_progress_artifact, aupdate_progress_artifact
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

PROGRESS_ENV = "OLLAMA_CLOUDRUN_PROGRESS"


class ProgressReporter:
    def __init__(self, total_bytes: int, *, artifact_interval_seconds: float, key: str) -> None:
        self.total_bytes = max(1, total_bytes)
        self.interval = artifact_interval_seconds
        self.key = key
        self._artifact: UUID | None = None
        self._last_artifact = 0.0
        self._last_percent = -1.0
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        if os.environ.get(PROGRESS_ENV) == "1":
            self._bar = Progress(
                TextColumn("[bold]batch"),
                BarColumn(),
                TextColumn("{task.percentage:>5.1f}%"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=False,
            )

    async def start(self) -> None:
        self._artifact = await acreate_progress_artifact(
            0.0, key=self.key, description="Batch inference: share of the input processed"
        )
        self._last_artifact = time.monotonic()
        if self._bar is not None:
            self._bar.start()
            self._task = self._bar.add_task("", total=self.total_bytes)

    async def update(self, done_bytes: int, summary: str, *, force: bool = False) -> None:
        percent = min(100.0, 100.0 * done_bytes / self.total_bytes)
        if self._bar is not None and self._task is not None:
            self._bar.update(
                self._task, completed=min(done_bytes, self.total_bytes), description=summary
            )
        now = time.monotonic()
        due = force or now - self._last_artifact >= self.interval
        if self._artifact is not None and due and percent != self._last_percent:
            self._last_artifact = now
            self._last_percent = percent
            await aupdate_progress_artifact(self._artifact, round(percent, 2), description=summary)

    def stop(self) -> None:
        if self._bar is not None:
            self._bar.stop()
