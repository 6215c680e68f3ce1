"""Progress display for the CLI: a rich bar on a terminal's stderr, JSON lines, or nothing.

CLI-only: library modules take any callable as ``progress=``. Callbacks may arrive from
worker threads.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import final

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

__all__ = ["JsonProgress", "ProgressBar", "open_progress"]

#: Seconds between two JSON progress lines (the last one is always written).
_JSON_INTERVAL = 0.2


def open_progress(description: str, *, mode: str) -> ProgressBar | JsonProgress:
    """The progress display for ``--progress MODE``.

    Args:
        description: what is going on (``Loading``, ``Saving``, ``Verifying``).
        mode: ``auto`` (a bar when stderr is a terminal), ``json`` (JSON lines on
            stderr) or ``none``.
    """
    if mode == "json":
        return JsonProgress(description)
    return ProgressBar(description, enabled=mode == "auto" and sys.stderr.isatty())


def _short(what: object) -> str:
    # A blob path or digest shows as its first 12 hex digits, like image IDs.
    return str(what).rpartition("/")[2].rpartition(":")[2][:12]


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

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def __call__(self, done: int, total: int | None = None, what: object = None) -> None:
        """Record progress: ``done`` bytes of ``total`` (``None`` when unknown)."""
        if self._progress is None or self._task is None:
            return
        description = self._description if what is None else f"{self._description} {_short(what)}"
        self._progress.update(self._task, completed=done, total=total, description=description)


@final
class JsonProgress:
    """A context manager and progress callback writing JSON lines to stderr.

    One ``{"event": "start"}`` line, ``{"event": "progress", "done", "total", "item"}``
    lines at most every 0.2 s, and one ``{"event": "end"}`` line with the final
    counts (``"ok": false`` when the work failed). Safe to call from worker threads.
    """

    def __init__(self, description: str) -> None:
        self._op = description.lower()
        self._lock = threading.Lock()
        self._last = 0.0
        self._state: dict[str, object] = {"done": 0, "total": None, "item": None}

    def _emit(self, event: str, **extra: object) -> None:
        line = {"event": event, "op": self._op, **self._state, **extra}
        print(json.dumps(line), file=sys.stderr, flush=True)

    def __enter__(self) -> JsonProgress:
        self._emit("start")
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        with self._lock:
            self._emit("end", ok=exc_type is None)

    def __call__(self, done: int, total: int | None = None, what: object = None) -> None:
        """Record progress: ``done`` bytes of ``total`` (``None`` when unknown)."""
        with self._lock:
            self._state = {
                "done": done,
                "total": total,
                "item": None if what is None else str(what),
            }
            now = time.monotonic()
            if now - self._last >= _JSON_INTERVAL:
                self._last = now
                self._emit("progress")
