"""The one progress-event shape of castar's long operations (load, save, verify)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ProgressCallback"]

#: ``progress(done, total, item)``: bytes handled so far, bytes the operation expects to
#: handle (``None`` while unknown) and what it is working on (an archive entry or a digest).
#: Always called on the event loop, never from a worker thread.
ProgressCallback = Callable[[int, int | None, str], None]
