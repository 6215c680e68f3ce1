"""The metadata DB's async face: one ``_txn`` function per transaction in a worker thread.

Behind a ``CapacityLimiter(1)`` (design rule seam-txn); also LBL-1's label check.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TypeVar, TypeVarTuple, final

import anyio
import anyio.to_thread

from castar.store._schema import connect, run_txn
from castar.store.errors import FailedPrecondition, InvalidArgument

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Mapping
    from datetime import datetime
    from pathlib import Path

__all__ = ["MAX_LABEL", "Records", "SQLiteMetadataDB", "validate_labels"]

T = TypeVar("T")
Ts = TypeVarTuple("Ts")

#: LBL-1: a label's key plus value may not exceed this many bytes.
MAX_LABEL: Final = 4096


def validate_labels(labels: Mapping[str, str]) -> None:
    """Check every label against LBL-1 (content, image and lease labels alike)."""
    for key, value in labels.items():
        n = len(key.encode()) + len(value.encode())
        if n > MAX_LABEL:
            raise InvalidArgument(
                f"label key and value length ({n} bytes) greater than maximum size "
                f"({MAX_LABEL} bytes), key: {key[:64]}"
            )


@final
class SQLiteMetadataDB:
    """The metadata database at ``<root>/meta.db`` (SQLite in WAL mode, LAY-4), multi-process."""

    def __init__(self, conn: sqlite3.Connection, read_only: Path | None = None) -> None:
        self._conn = conn
        self._limiter = anyio.CapacityLimiter(1)
        #: The root of a read-only store (every write is refused), else None.
        self.read_only = read_only

    @classmethod
    async def open(cls, path: Path, *, read_only: bool = False) -> SQLiteMetadataDB:
        """Open (creating and migrating as needed) the database at ``path``; or ``read_only``."""
        conn = await anyio.to_thread.run_sync(connect, path, read_only)
        return cls(conn, path.parent if read_only else None)

    async def aclose(self) -> None:
        """Close the connection."""
        await anyio.to_thread.run_sync(self._conn.close, limiter=self._limiter)

    def check_writable(self) -> None:
        """FailedPrecondition ``store is read-only: <root>`` on a read-only store."""
        if self.read_only is not None:
            raise FailedPrecondition(f"store is read-only: {self.read_only}")

    async def read(self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts) -> T:
        """``fn(conn, *args)`` (a ``_txn`` function) as one read transaction."""
        return await anyio.to_thread.run_sync(
            run_txn, self._conn, False, fn, args, limiter=self._limiter
        )

    async def write(
        self, fn: Callable[[sqlite3.Connection, *Ts], T], *args: *Ts, durable: bool = True
    ) -> T:
        """``fn(conn, *args)`` as one write transaction; ``durable=False`` skips the WAL fsync."""
        self.check_writable()
        return await anyio.to_thread.run_sync(
            run_txn, self._conn, True, fn, args, durable, limiter=self._limiter
        )


class Records:
    """Base of the image and lease managers: ``db`` and ``clock`` (returns aware UTC now)."""

    def __init__(self, db: SQLiteMetadataDB, clock: Callable[[], datetime]) -> None:
        self._db = db
        self._clock = clock
