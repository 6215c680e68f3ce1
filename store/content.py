"""The public content store: blobs in the file backend, their records in the metadata DB.

A blob exists for callers once recorded, after the backend renamed it, under the commit lock.
"""

from __future__ import annotations

import os
import random
import secrets
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final, final

import anyio
import anyio.lowlevel

from castar.store import _txn
from castar.store._schema import Descriptor, Info
from castar.store.digest import Buffer, Digest, parse
from castar.store.errors import (
    AlreadyExists,
    DataLoss,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SizeMismatch,
    Unavailable,
    map_os_errors,
)
from castar.store.gc import mark, roots_and_edges
from castar.store.leases import current_lease_id
from castar.store.sqlite import validate_labels

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
    from pathlib import Path

    from castar.store._schema import GCGraph
    from castar.store.blobs import SmallData
    from castar.store.ingest import IngestStatus, LocalContentStore, LocalWriter
    from castar.store.sqlite import SQLiteMetadataDB

__all__ = [
    "INGEST_TTL",
    "SMALL_BLOB",
    "ContentStore",
    "Descriptor",
    "Info",
    "SmallBlob",
    "Writer",
]

#: ING-13: an ingest opened outside a lease expires this long after it was opened.
INGEST_TTL: Final = timedelta(hours=24)
#: ``write_blob`` of bytes up to this size skips the ingest directory (design rule io-small-blobs).
SMALL_BLOB: Final = 1 << 20


@final
@dataclass(frozen=True, slots=True)
class SmallBlob:
    """One blob of :meth:`ContentStore.write_small_blobs`: at most 1 MiB, stored whole.

    ``data`` may be a function returning the bytes; ``labels`` are a new record's (LBL-1).
    """

    data: SmallData
    digest: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    media_type: str = "application/octet-stream"


@final
class Writer:
    """An open ingest: a backend ``LocalWriter`` whose ``commit`` also records the blob."""

    def __init__(self, store: ContentStore, backend: LocalWriter, ref: str) -> None:
        self._store = store
        self._backend = backend
        self.ref = ref
        self._done = False

    @property
    def offset(self) -> int:
        """Bytes written so far (after a resume: including the earlier ones)."""
        return self._backend.offset

    async def write(self, data: Buffer) -> None:  # noqa: D102 - LocalWriter's
        await self._backend.write(data)

    def write_sync(self, data: Buffer) -> None:  # noqa: D102 - LocalWriter's
        self._backend.write_sync(data)

    def digest(self) -> Digest:  # noqa: D102 - LocalWriter's
        return self._backend.digest()

    async def truncate(self, size: int) -> None:  # noqa: D102 - LocalWriter's
        await self._backend.truncate(size)

    async def commit(
        self,
        size: int,
        digest: str | None,
        labels: Mapping[str, str] | None = None,
        *,
        sync: bool = True,
    ) -> Digest:
        """Verify, publish and record the blob (ING-8); it joins the current lease.

        ``sync=False`` marks the row unsynced until :meth:`ContentStore.sync` (design rule io-sync);
        AlreadyExists when the digest was recorded before (it still joins the current lease).
        """
        if self._done:
            raise FailedPrecondition("cannot commit on closed writer")
        self._done = True
        store = self._store
        try:
            expected = parse(digest) if digest else None
            labels = dict(labels or {})
            validate_labels(labels)
            # commit-order: the backend renames (after its fsyncs, unless deferred) before any
            # DB write starts. The shared commit lock is held from the rename until the row is
            # written, so GC's content sweep never sees the renamed-but-unrecorded file.
            unsynced = None if sync else store._boot
            async with store._backend.commit_lock(exclusive=False):
                try:
                    result = await self._backend.commit(size, expected, sync=unsynced is None)
                except (SizeMismatch, DigestMismatch):
                    # Bad data is never resumed: drop the ingest and its row. Other failures
                    # (EACCES, EROFS, ENOSPC…) keep the ingest resumable.
                    with anyio.CancelScope(shield=True):
                        await store._forget_ingest(self.ref)
                    raise
                with anyio.CancelScope(shield=True):
                    created = await store._db.write(
                        _txn.content_commit,
                        self.ref,
                        result.digest,
                        result.size,
                        labels,
                        current_lease_id(),
                        store._clock(),
                        unsynced,
                        durable=unsynced is None,  # unsynced data: its row need not be durable
                    )
            if not created:
                raise AlreadyExists(f"content {result.digest}")
            return result.digest
        except BaseException:
            # commit always closes (ING-8): a bad argument, a bad label or a cancel before the
            # backend commit ran (e.g. waiting for the commit lock) must still release the ref,
            # keeping the data resumable. close() is a no-op once the backend released it.
            with anyio.CancelScope(shield=True):
                await self._backend.close()
            raise

    async def _close(self) -> None:
        self._done = True
        await self._backend.close()


@final
class ContentStore:
    """Blobs with records: the content store callers see (CS, ING).

    ``boot_id`` marks blobs committed without fsync (None makes every commit sync).
    """

    def __init__(
        self,
        backend: LocalContentStore,
        db: SQLiteMetadataDB,
        clock: Callable[[], datetime],
        boot_id: str | None = None,
    ) -> None:
        self._backend = backend
        self._db = db
        self._clock = clock
        self._boot = boot_id

    async def info(self, digest: str) -> Info:
        """The record of a blob (CS-1); NotFound ``content digest <d>: not found``."""
        d = parse(digest)
        rec = await self._db.read(_txn.content_info, d)
        if rec is None:
            raise NotFound(f"content digest {d}")
        return rec

    async def infos(self, digests: Iterable[str]) -> dict[Digest, Info]:
        """The records of many blobs in one read transaction; unrecorded ones are missing."""
        ds = [parse(d) for d in digests]
        if not ds:
            return {}
        return {r.digest: r for r in await self._db.read(_txn.content_infos, ds)}

    async def exists(self, digest: str) -> bool:
        """True when the blob is recorded (CS-7)."""
        try:
            await self.info(digest)
        except NotFound:
            return False
        return True

    async def update_labels(self, digest: str, labels: Mapping[str, str]) -> Info:
        """Merge ``labels`` into the blob's, an empty value deleting the key (CS-5, LBL-1)."""
        return await self._relabel(digest, labels, replace=False)

    async def set_labels(self, digest: str, labels: Mapping[str, str]) -> Info:
        """Replace the blob's labels with ``labels`` (CS-5, no field paths)."""
        return await self._relabel(digest, labels, replace=True)

    async def _relabel(self, digest: str, labels: Mapping[str, str], *, replace: bool) -> Info:
        d = parse(digest)
        done = await self._labels([(d, labels)], replace)
        if d not in done:
            raise NotFound(f"content digest {d}")
        return done[d]

    async def update_labels_many(
        self, updates: Iterable[tuple[str, Mapping[str, str]]]
    ) -> dict[Digest, Info]:
        """:meth:`update_labels` of many ``(digest, labels)`` in ONE transaction, bar unrecorded."""
        return await self._labels(updates, False)

    async def _labels(
        self, updates: Iterable[tuple[str, Mapping[str, str]]], replace: bool
    ) -> dict[Digest, Info]:
        todo: dict[Digest, Mapping[str, str]] = {parse(d): dict(labels) for d, labels in updates}
        for labels in todo.values():
            validate_labels(labels)
        return (
            await self._db.write(_txn.content_labels, todo, replace, self._clock()) if todo else {}
        )

    async def delete(self, digest: str) -> None:
        """Forget a recorded blob at once; its file goes at the next GC (CS-6)."""
        await self._db.write(_txn.content_delete, parse(digest), current_lease_id())

    async def walk(self) -> list[Info]:
        """Every recorded blob, ascending by digest string (CS-3)."""
        return await self._db.read(_txn.content_list)

    async def read(
        self,
        digest: str,
        *,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = 1 << 20,
    ) -> AsyncIterator[bytes]:
        """Stream a recorded blob in chunks of up to ``chunk_size`` bytes (DataLoss: file gone)."""
        d = parse(digest)
        await self.info(d)
        chunks = self._backend.read(d, offset=offset, length=length, chunk_size=chunk_size)
        try:
            async for chunk in chunks:
                yield chunk
        except NotFound as exc:
            raise await self._missing(d) from exc
        finally:
            with anyio.CancelScope(shield=True):
                await chunks.aclose()

    async def read_at(self, digest: str, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``; short at the end of the blob (CS-2)."""
        d = parse(digest)
        await self.info(d)
        try:
            return await self._backend.read_at(d, offset, n)
        except NotFound as exc:
            raise await self._missing(d) from exc

    async def _missing(self, digest: Digest) -> NotFound | DataLoss:
        """What a blob file found missing means: deleted (and collected) meanwhile, or lost."""
        if not await self.exists(digest):
            return NotFound(f"content digest {digest}")
        return DataLoss(f"content {digest}: recorded but missing on disk")

    async def read_all(self, digest: str, *, limit: int) -> bytes:
        """The whole blob, for small documents: InvalidArgument when over ``limit`` bytes."""
        info = await self.info(digest)
        if info.size > limit:
            raise InvalidArgument(
                f"content {info.digest}: size {info.size} exceeds the limit of {limit} bytes"
            )
        data = await self.read_at(info.digest, 0, info.size)
        if len(data) != info.size:
            raise DataLoss(f"content {info.digest}: short read {len(data)} of {info.size} bytes")
        return data

    def path(self, digest: str) -> Path:
        """The committed file of a blob, for zero-copy export (the record is not checked)."""
        return self._backend.blob_path(parse(digest))

    @asynccontextmanager
    async def writer(
        self, ref: str, *, size: int | None = None, digest: str | None = None
    ) -> AsyncIterator[Writer]:
        """Open an ingest ``ref``; leaving the block without commit keeps it resumable (ING-5).

        The row is recorded before the backend ingest, so GC never meets it unrecorded (ING-13).
        AlreadyExists when ``digest`` is recorded (ING-2) and a file holds it (else it is written
        again: a repair); Unavailable if ``ref`` is held (ING-3).
        """
        if not ref:
            raise InvalidArgument("ref must not be empty")
        expected = parse(digest) if digest else None
        now = self._clock()
        row = (current_lease_id(), now + INGEST_TTL, now)  # non-durable: no writer survives a crash
        exists = await self._db.write(_txn.ingest_open, ref, expected, *row, durable=False)
        if exists and expected is not None:
            if await self._backend.is_file(expected):
                raise AlreadyExists(f"content {expected}")
            # Recorded, but no file holds it (data loss): written again, its commit repairs it.
            await self._db.write(_txn.ingest_open, ref, None, *row, durable=False)
        backend = await self._backend.open_writer(ref, total=size or None, expected=expected)
        w = Writer(self, backend, ref)
        try:
            yield w
        finally:
            with anyio.CancelScope(shield=True):
                await w._close()

    async def write_small_blobs(
        self,
        blobs: Iterable[SmallBlob],
        *,
        sync: bool = True,
        created: set[Digest] | None = None,
    ) -> list[Descriptor]:
        """Store small blobs: ONE worker-thread hop writes them, ONE transaction records them.

        A blob already recorded is a success (ING-11, ING-2, TV-44); every verified blob is recorded
        before the first DigestMismatch is raised. Bad digests, labels (LBL-1) or sizes raise first.
        The digests this call recorded first are added to ``created``.
        """
        items = list(blobs)
        if not items:
            return []
        self._db.check_writable()  # the files are written before the records
        expected = [parse(b.digest) if b.digest else None for b in items]
        labels = [dict(b.labels) for b in items]
        for item, item_labels in zip(items, labels, strict=True):
            validate_labels(item_labels)
            if not callable(item.data) and (n := memoryview(item.data).nbytes) > SMALL_BLOB:
                raise InvalidArgument(
                    f"small blob {item.digest or ''}: {n} bytes, over the {SMALL_BLOB}-byte limit"
                )
        unsynced = None if sync else self._boot
        work = [(b.data, d) for b, d in zip(items, expected, strict=True)]
        async with self._backend.commit_small_batch(work, sync=unsynced is None) as batch:
            joined: list[int | None] = []
            if batch.results:
                good = [
                    (r.digest, r.size, labels[i])
                    for i, r in enumerate(batch.results)
                    if not isinstance(r, DigestMismatch)
                ]
                with anyio.CancelScope(shield=True):
                    new, joined = await self._db.write(
                        _txn.content_commit_batch,
                        good,
                        [r.expected for r in batch.results if isinstance(r, DigestMismatch)],
                        current_lease_id(),
                        self._clock(),
                        unsynced,
                        durable=unsynced is None,
                    )
                if created is not None:
                    created.update(d for (d, _, _), n in zip(good, new, strict=True) if n)
        out: list[Descriptor] = []
        sizes = iter(joined)
        failure: DigestMismatch | None = None
        for item, want, result in zip(items, expected, batch.results, strict=False):
            if isinstance(result, DigestMismatch):
                size = next(sizes)
                if size is None:
                    failure = failure or result
                    continue
                assert want is not None  # only an expected digest can mismatch
                out.append(Descriptor(item.media_type, want, size))
            else:
                out.append(Descriptor(item.media_type, result.digest, result.size))
        if batch.error is not None:
            if isinstance(batch.error, anyio.get_cancelled_exc_class()):
                await anyio.lowlevel.checkpoint_if_cancelled()  # a fresh one, raised here
            raise batch.error
        if failure is not None:
            raise failure
        return out

    async def sync(self, digests: Iterable[str] | None = None) -> int:
        """Make blobs committed with ``sync=False`` durable; how many records were marked.

        Without ``digests``, every blob committed unsynced in this boot, read before the sync.
        """
        if self._boot is None:
            return 0  # no boot id: every commit synced already
        if digests is None:
            todo: list[str] = await self._db.read(_txn.content_unsynced, self._boot)
        else:
            todo = [parse(d) for d in digests]
        if not todo:
            return 0
        await self._backend.sync_blobs(todo)
        with anyio.CancelScope(shield=True):
            n = await self._db.write(_txn.content_mark_synced, todo)
        return n

    def free_space(self) -> int:
        """Bytes an unprivileged writer may still put on the store's file system (blocking)."""
        with map_os_errors("store free space"):
            st = os.statvfs(self._backend.root / "ingest")
        return st.f_bavail * st.f_frsize

    async def drop_unused(self, digests: Iterable[str]) -> list[Digest]:
        """Remove at once those of ``digests`` nothing keeps: rows, then files (LOAD-8).

        GC's marking (GC-2..6) decides, with every image, lease and ingest a root, expired or
        not; all under the exclusive commit lock, so no commit or read of them races it.
        """
        todo = {parse(d) for d in digests}
        if not todo:
            return []
        now = self._clock()

        def unused(graph: GCGraph) -> list[tuple[str, str]]:
            roots, edges, nodes = roots_and_edges(graph, now)
            roots += (n for n in nodes if n.kind != "content")
            live = mark(roots, edges)
            gone = todo.intersection(graph.content).difference(
                n.key for n in live if n.kind == "content"
            )
            return [("content", d) for d in sorted(gone)]

        async with self._backend.commit_lock(exclusive=True):
            _, doomed = await self._db.write(_txn.gc_sweep, unused, False)
            gone = [Digest(d) for _, d in doomed]
            with anyio.CancelScope(shield=True):
                for d in gone:
                    with suppress(NotFound):
                        await self._backend.delete(d)
        return gone

    async def drop_stale(self) -> list[Digest]:
        """Forget blobs committed unsynced before a machine crash (another boot id).

        The rows go, then their files, under the exclusive commit lock. ``open_root`` calls this.
        """
        if self._boot is None or not await self._db.read(_txn.content_stale, self._boot):
            return []  # the usual case: one read, no lock
        async with self._backend.commit_lock(exclusive=True):
            stale = [Digest(d) for d in await self._db.write(_txn.content_drop_stale, self._boot)]
            for d in stale:
                with suppress(NotFound):
                    await self._backend.delete(d)
        return stale

    async def _forget_ingest(self, ref: str) -> None:
        with suppress(NotFound):
            await self._backend.abort(ref)
        await self._db.write(_txn.ingest_delete, ref, durable=False)

    async def write_blob(
        self,
        data: Buffer | AsyncIterable[Buffer],
        *,
        digest: str | None = None,
        size: int | None = None,
        labels: Mapping[str, str] | None = None,
        media_type: str = "application/octet-stream",
        ref: str | None = None,
        sync: bool = True,
    ) -> Descriptor:
        """Store ``data`` and return its descriptor; an existing blob counts as success (ING-11).

        A recorded ``digest`` skips reading ``data`` (TV-44); busy refs are retried (ING-4).
        """
        expected = parse(digest) if digest else None
        if isinstance(data, bytes | bytearray | memoryview):
            n = memoryview(data).nbytes
            if n <= SMALL_BLOB and (not size or size == n):
                blob = SmallBlob(data, expected, dict(labels or {}), media_type)
                (desc,) = await self.write_small_blobs([blob], sync=sync)
                return desc
        if ref is None:
            ref = f"castar-blob-{expected or secrets.token_hex(16)}"  # uuid would import platform
        delay = 0.016
        while True:
            try:
                async with self.writer(ref, size=size, digest=expected) as w:
                    await _copy(w, data, size)
                    written = w.offset
                    try:
                        got = await w.commit(size or 0, expected, labels, sync=sync)
                    except AlreadyExists:
                        got = expected or w.digest()
                    return Descriptor(media_type, got, written)
            except AlreadyExists:
                assert expected is not None  # only a given digest can exist at open
                info = await self.info(expected)
                return Descriptor(media_type, info.digest, info.size)
            except Unavailable:
                # ING-4: the ref is held (another task or process writing the same digest).
                await anyio.sleep(random.uniform(0, delay))
                delay = min(delay * 2, 2.048)

    async def status(self, ref: str) -> IngestStatus:
        """Progress of ingest ``ref`` (ING-6); NotFound when unknown."""
        return await self._backend.ingest_status(ref)

    async def list_statuses(self) -> list[IngestStatus]:
        """Every ingest, sorted by ref (ING-6)."""
        return await self._backend.list_ingests()

    async def abort(self, ref: str) -> None:
        """Remove ingest ``ref`` and its data (ING-10); NotFound ``reference <ref>: not found``."""
        try:
            found = await self._backend.abort(ref)
        except NotFound:
            found = False
        recorded = await self._db.write(_txn.ingest_delete, ref, durable=False)
        if not (found or recorded):
            raise NotFound(f"reference {ref}")


async def _copy(w: Writer, data: Buffer | AsyncIterable[Buffer], size: int | None) -> None:
    """ING-11 copy: skip what a resumed ingest holds, stream the rest, check for a short read."""
    skip = w.offset
    if isinstance(data, bytes | bytearray | memoryview):
        view = memoryview(data)
        if skip < len(view):
            await w.write(view[skip:])
    else:
        async for chunk in data:
            if skip:
                if len(chunk) <= skip:
                    skip -= len(chunk)
                    continue
                chunk = memoryview(chunk)[skip:]
                skip = 0
            await w.write(chunk)
    if size and w.offset < size:
        raise SizeMismatch(
            f"short read: expected {size} bytes but got {w.offset}: unexpected EOF",
            expected=size,
            actual=w.offset,
        )
