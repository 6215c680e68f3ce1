"""Progress display for the CLI: a rich bar on a terminal's stderr, or nothing.

Owns :class:`ProgressBar`, the callable handed to load/save/verify as their
``progress=`` callback. CLI-only: library modules must not import it (they take
any callable). Callbacks may arrive from worker threads; rich's updates are
thread-safe.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, final

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["ProgressBar", "wanted"]


def wanted(*, quiet: bool, json: bool) -> bool:
    """Whether to draw progress: on a terminal's stderr, unless ``-q`` or ``--json``."""
    return not quiet and not json and sys.stderr.isatty()


@final
class ProgressBar:
    """A context manager and progress callback: bytes, rate and ETA when the total is known.

    Call it as ``bar(done, total, what)``; ``total`` may be ``None`` (unknown,
    e.g. reading a pipe) and ``what`` names the current entry or blob. When
    ``enabled`` is false every call is a no-op.
    """

    def __init__(self, description: str, *, enabled: bool) -> None:
        self._description = description
        self._progress: Progress | None = None
        self._task: TaskID | None = None
        if enabled:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(binary_units=False),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )

    def __enter__(self) -> ProgressBar:
        if self._progress is not None:
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=None)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, done: int, total: int | None = None, what: object = None) -> None:
        """Record progress: ``done`` bytes of ``total`` (``None`` when unknown)."""
        if self._progress is None or self._task is None:
            return
        description = self._description
        if what is not None:
            # A blob path or digest shows as its first 12 hex digits, like image IDs.
            description += " " + str(what).rpartition("/")[2].rpartition(":")[2][:12]
        self._progress.update(self._task, completed=done, total=total, description=description)
