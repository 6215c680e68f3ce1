"""SQLiteMetadataDB: a store's metadata (content records, labels, images, leases, ingests, edges).

Owns the async face of the metadata DB: one transaction per public method, each running a plain
sync function of ``_txn.py`` in a worker thread behind a ``CapacityLimiter(1)`` (STYLE §3.2
seam 3), so SQL never runs on the event loop; the schema, its ``user_version`` migrations and
the row values are ``_schema.py``'s. Also owns LBL-1's label check. Never imports the file
backend or anything of OCI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, TypeVar, final

import anyio
import anyio.to_thread

from castar.store import _txn
from castar.store._schema import (
    ContentRecord,
    GCGraph,
    ImageRecord,
    ImageTarget,
    LeaseRecord,
    connect,
    run_txn,
)
from castar.store.errors import InvalidArgument

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from datetime import datetime
    from pathlib import Path

    from castar.store.digest import Digest

__all__ = [
    "MAX_LABEL",
    "ContentRecord",
    "GCGraph",
    "ImageRecord",
    "ImageTarget",
    "LeaseRecord",
    "SQLiteMetadataDB",
    "validate_labels",
]

T = TypeVar("T")

#: LBL-1: a label's key plus value may not exceed this many bytes.
MAX_LABEL: Final = 4096


def validate_labels(labels: Mapping[str, str]) -> None:
    """Check every label against LBL-1 (content, image and lease labels alike).

    Raises:
        InvalidArgument: a key plus its value is longer than 4096 bytes.
    """
    for key, value in labels.items():
        n = len(key.encode()) + len(value.encode())
        if n > MAX_LABEL:
            raise InvalidArgument(
                f"label key and value length ({n} bytes) greater than maximum size "
                f"({MAX_LABEL} bytes), key: {key[:64]}"
            )


@final
class SQLiteMetadataDB:
    """The metadata database at ``<root>/meta.db`` (SQLite in WAL mode, LAY-4).

    Every method is one transaction, run in a worker thread; a ``CapacityLimiter(1)`` serialises
    this process's use of its single connection. Several processes may open the same file: write
    transactions start with ``BEGIN IMMEDIATE`` and wait on ``busy_timeout``.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> SQLiteMetadataDB:
        """Open (creating and migrating as needed) the database file at ``path``."""
        conn = await anyio.to_thread.run_sync(connect, path)
        return cls(conn)

    async def aclose(self) -> None:
        """Close the connection."""
        await anyio.to_thread.run_sync(self._conn.close, limiter=self._limiter)

    async def _run(self, write: bool, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(
            run_txn, self._conn, write, fn, args, limiter=self._limiter
        )

    async def _run_lazy(self, fn: Callable[..., T], *args: object) -> T:
        """A write whose loss in a power cut is harmless (ingest bookkeeping): no WAL fsync."""
        return await anyio.to_thread.run_sync(
            run_txn, self._conn, True, fn, args, False, limiter=self._limiter
        )

    # content
    async def content_info(self, digest: str) -> ContentRecord | None:
        """The content record of ``digest``, or None."""
        return await self._run(False, _txn.content_info, digest)

    async def content_infos(self, digests: Iterable[Digest]) -> list[ContentRecord]:
        """The records of those ``digests`` that exist, in one read transaction."""
        return await self._run(False, _txn.content_infos, list(digests))

    async def content_list(self) -> list[ContentRecord]:
        """All content records in ascending digest order."""
        return await self._run(False, _txn.content_list)

    async def content_labels(
        self, digest: str, labels: Mapping[str, str], *, replace: bool, now: datetime
    ) -> ContentRecord:
        """Merge (or replace) labels, ``""`` deleting a key; re-derives the edges."""
        return await self._run(True, _txn.content_labels, digest, dict(labels), replace, now)

    async def content_delete(self, digest: str, *, lease: str | None) -> None:
        """Remove a content record (CS-6); NotFound when absent."""
        await self._run(True, _txn.content_delete, digest, lease)

    async def content_commit(
        self,
        ref: str | None,
        digest: str,
        size: int,
        labels: Mapping[str, str],
        *,
        lease: str | None,
        now: datetime,
        unsynced_boot: str | None = None,
    ) -> bool:
        """Record a committed blob and drop its ingest row; False when it was recorded already.

        With ``unsynced_boot`` (the blob's data was not fsynced) the row carries that boot id
        and the transaction skips the WAL fsync: a power cut loses at most rows whose data
        could be torn anyway, and never reorders them after a later durable commit.
        """
        args = (ref, digest, size, dict(labels), lease, now, unsynced_boot)
        if unsynced_boot is not None:
            return await self._run_lazy(_txn.content_commit, *args)
        return await self._run(True, _txn.content_commit, *args)

    async def content_commit_batch(
        self,
        blobs: Sequence[tuple[str, int, Mapping[str, str]]],
        joins: Sequence[str] = (),
        *,
        lease: str | None,
        now: datetime,
        unsynced_boot: str | None = None,
    ) -> tuple[list[bool], list[int | None]]:
        """Record many blobs written whole (``(digest, size, labels)``) in ONE transaction.

        As :meth:`content_commit` (no ingest) for each blob, then :meth:`content_join` for
        each of ``joins``; returns which rows were created and the joins' recorded sizes.
        Skips the WAL fsync with ``unsynced_boot``, as :meth:`content_commit` does.
        """
        args = ([(d, s, dict(la)) for d, s, la in blobs], list(joins), lease, now, unsynced_boot)
        if unsynced_boot is not None:
            return await self._run_lazy(_txn.content_commit_batch, *args)
        return await self._run(True, _txn.content_commit_batch, *args)

    async def content_join(self, digest: str, *, lease: str | None) -> int | None:
        """The recorded size of ``digest`` (None if unrecorded); it joins ``lease`` if recorded."""
        return await self._run(True, _txn.content_join, digest, lease)

    async def content_unsynced(self, boot: str) -> list[str]:
        """Digests committed unsynced in boot ``boot`` and not synced since."""
        return await self._run(False, _txn.content_unsynced, boot)

    async def content_mark_synced(self, digests: Iterable[str]) -> int:
        """Clear the unsynced mark of ``digests``, durably; how many rows were marked."""
        return await self._run(True, _txn.content_mark_synced, list(digests))

    async def content_stale(self, boot: str) -> list[str]:
        """Digests committed unsynced in a boot other than ``boot`` (read only)."""
        return await self._run(False, _txn.content_stale, boot)

    async def content_drop_stale(self, boot: str) -> list[str]:
        """Delete rows committed unsynced in a boot other than ``boot``; their digests."""
        return await self._run(True, _txn.content_drop_stale, boot)

    async def ingest_open(
        self,
        ref: str,
        *,
        expected: str | None,
        lease: str | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> bool:
        """Record an ingest (ING-13); True, recording nothing, when ``expected`` exists (ING-2)."""
        # Losing this row in a power cut is harmless: no writer survives it, and GC aborts an
        # unrecorded, unlocked ingest. A later durable commit persists it anyway.
        return await self._run_lazy(_txn.ingest_open, ref, expected, lease, expires_at, now)

    async def ingest_delete(self, ref: str) -> bool:
        """Forget an ingest row; False when there was none."""
        return await self._run_lazy(_txn.ingest_delete, ref)

    # images
    async def image_get(self, name: str) -> ImageRecord | None:
        """The image record named ``name``, or None."""
        return await self._run(False, _txn.image_get, name)

    async def image_list(self) -> list[ImageRecord]:
        """All image records in ascending name order."""
        return await self._run(False, _txn.image_list)

    async def image_put(
        self,
        name: str,
        *,
        target: ImageTarget | None,
        labels: Mapping[str, str] | None,
        create: bool,
        lease: str | None,
        now: datetime,
    ) -> ImageRecord:
        """Create (AlreadyExists) or update (NotFound; None keeps a field) an image record."""
        return await self._run(
            True,
            _txn.image_put,
            name,
            target,
            None if labels is None else dict(labels),
            create,
            lease,
            now,
        )

    async def image_delete(self, name: str, *, target: str | None) -> None:
        """Delete an image record (IMG-4)."""
        await self._run(True, _txn.image_delete, name, target)

    # leases
    async def lease_create(
        self, id: str, labels: Mapping[str, str], *, now: datetime, durable: bool = True
    ) -> LeaseRecord:
        """Insert a lease; AlreadyExists on a duplicate id.

        ``durable=False`` skips the WAL fsync: for the short leases an operation holds for
        its own duration, whose loss in a power cut is harmless (the operation died with it,
        and any later durable transaction flushes the row anyway: the WAL is sequential).
        """
        if not durable:
            return await self._run_lazy(_txn.lease_create, id, dict(labels), now)
        return await self._run(True, _txn.lease_create, id, dict(labels), now)

    async def lease_list(self) -> list[LeaseRecord]:
        """All leases in ascending id order."""
        return await self._run(False, _txn.lease_list)

    async def lease_delete(self, id: str, *, durable: bool = True) -> None:
        """Delete a lease and its resource list; NotFound when absent.

        ``durable=False``: a delete lost in a power cut only keeps the lease until it expires.
        """
        if not durable:
            await self._run_lazy(_txn.lease_delete, id)
            return
        await self._run(True, _txn.lease_delete, id)

    async def lease_add(self, id: str, type: str, resource: str) -> None:
        """Add a resource to a lease; NotFound when the lease is absent."""
        await self._run(True, _txn.lease_add, id, type, resource)

    async def lease_remove(self, id: str, type: str, resource: str) -> None:
        """Remove a resource from a lease (absent is fine)."""
        await self._run(True, _txn.lease_remove, id, type, resource)

    async def lease_resources(self, id: str) -> list[tuple[str, str]]:
        """A lease's resources, content first, then images, then ingests (LEASE-4)."""
        return await self._run(False, _txn.lease_resources, id)

    # gc
    async def gc_graph(self) -> GCGraph:
        """The whole reference graph, read in one transaction."""
        return await self._run(False, _txn.gc_graph)

    async def gc_sweep(
        self, decide: Callable[[GCGraph], Iterable[tuple[str, str]]], *, dry_run: bool
    ) -> tuple[GCGraph, list[tuple[str, str]]]:
        """The metadata sweep in ONE write transaction (GC-10); ``decide`` must be pure."""
        return await self._run(True, _txn.gc_sweep, decide, dry_run)

    async def gc_kept(self) -> tuple[set[str], set[str]]:
        """Recorded (or ingest-expected) digests, and recorded ingest refs."""
        return await self._run(False, _txn.gc_kept)
