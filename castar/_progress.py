"""Progress display for the CLI: a rich bar on a terminal's stderr, JSON lines, or nothing."""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterator

    from castar.store.progress import ProgressCallback

__all__ = ["open_progress"]

#: Seconds between two JSON progress lines (the last one is always written).
_JSON_INTERVAL = 0.2


@contextmanager
def open_progress(description: str, *, mode: str) -> Iterator[ProgressCallback]:
    """The callback for ``--progress``: ``auto`` (bytes, rate and ETA on a terminal), ``json``."""
    if mode == "json":
        with _json_lines(description.lower()) as update:
            yield update
    elif mode == "auto" and sys.stderr.isatty():
        with _bar(description) as update:
            yield update
    else:
        yield _ignore


def _ignore(done: int, total: int | None = None, what: object = None) -> None:
    pass


def _short(what: object) -> str:
    # A blob path or digest shows as its first 12 hex digits, like image IDs.
    return str(what).rpartition("/")[2].rpartition(":")[2][:12]


@contextmanager
def _bar(description: str) -> Iterator[ProgressCallback]:
    from rich.console import Console  # rich loads only when a bar is drawn
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=False),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as progress:
        task = progress.add_task(description, total=None)

        def update(done: int, total: int | None = None, what: object = None) -> None:
            shown = description if what is None else f"{description} {_short(what)}"
            progress.update(task, completed=done, total=total, description=shown)

        yield update


@contextmanager
def _json_lines(op: str) -> Iterator[ProgressCallback]:
    """``start``, ``progress`` lines at most every 0.2 s, ``end`` with ``ok`` and the counts."""
    lock = threading.Lock()  # callbacks may arrive from worker threads
    state: dict[str, object] = {"done": 0, "total": None, "item": None}
    last = 0.0

    def emit(event: str, **extra: object) -> None:
        print(json.dumps({"event": event, "op": op, **state, **extra}), file=sys.stderr, flush=True)

    def update(done: int, total: int | None = None, what: object = None) -> None:
        nonlocal last
        with lock:
            state.update(done=done, total=total, item=None if what is None else str(what))
            now = time.monotonic()
            if now - last >= _JSON_INTERVAL:
                last = now
                emit("progress")

    emit("start")
    ok = False
    try:
        yield update
        ok = True
    finally:
        with lock:
            emit("end", ok=ok)
