"""Getting an archive's bytes into the store: seekable copies and the one-pass stream ingest.

Owns the import ``Session``, the stream ingest (IMP-3), progress and ``read_archive``.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import secrets
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Final, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from castar.engine import graph, oci
from castar.engine._endpoints import CHUNK_SIZE as CHUNK
from castar.engine.load import decompress
from castar.engine.load.catalog import Catalog, Entry, blob_digest, note_member, scan_sync
from castar.engine.tarcodec import NEED_DATA, ArchiveEnd, Chunk, MemberEnd, MemberStart, TarDecoder
from castar.store.content import SmallBlob
from castar.store.digest import Digest, from_hasher, hasher
from castar.store.errors import (
    AlreadyExists,
    DigestMismatch,
    MalformedArchive,
    NotFound,
    Unavailable,
)

if TYPE_CHECKING:
    import hashlib
    from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
    from typing import TypeAlias

    from castar.engine._streams import Source
    from castar.engine.platforms import MatchComparer
    from castar.store import Writer
    from castar.store.progress import ProgressCallback
    from castar.store.roles import BlobIngester

    #: A small member to store: its entry, the digest it must have, its bytes (or a reader).
    SmallMember: TypeAlias = tuple[Entry, Digest | None, bytes | Callable[[], bytes]]

__all__ = ["WORKERS", "Progress", "Session", "read_archive"]

#: Worker threads copying blob bytes at once (design rule io-limiter).
_IN_FLIGHT: Final = 2
#: Blobs in progress at once: while two copy, others open or commit (rename, records).
WORKERS: Final = 4
#: Members up to this size are read whole and stored in batches (no ingest directory).
_SMALL: Final = CHUNK
#: A batch of small members ends at this many entries or bytes, whichever comes first:
#: one write hop and one record transaction each (design rule io-small-blobs).
BATCH_ENTRIES: Final = 64
BATCH_BYTES: Final = 4 << 20
#: Batches being stored at once: the store's two blob-I/O threads.
_BATCHES: Final = 2
#: LOAD-7: free space a load leaves on the store's file system beyond what a member still
#: needs, checked as each member starts and every :data:`_ROOM_EVERY` bytes of it.
RESERVE: Final = 64 << 20
_ROOM_EVERY: Final = 64 << 20

_T = TypeVar("_T")


class Progress:
    """Byte counter updated from worker threads, reported on the event loop."""

    def __init__(self, callback: ProgressCallback | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self.total: int | None = None
        self.done = 0
        self.entry = ""

    def add(self, n: int, entry: str) -> None:
        with self._lock:
            self.done += n
            self.entry = entry

    def report(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total, self.entry)

    async def ticker(self) -> None:
        while True:
            await anyio.sleep(0.1)
            self.report()


@dataclass(eq=False)
class Session:
    """State of one ``load`` call: the content store, the archive and what the walk found."""

    content: BlobIngester
    matcher: MatchComparer
    skip_missing: bool
    translator: Callable[[str], str] | None
    progress: Progress
    session: str = field(default_factory=lambda: secrets.token_hex(6))
    catalog: Catalog = field(default_factory=Catalog)
    fd: int | None = None  # seekable archives are read with pread on this fd
    written: dict[str, bytes] = field(default_factory=dict)  # documents the load built and stored
    created: set[Digest] = field(default_factory=set)  # first recorded by this load: LOAD-8
    _serial: Iterator[int] = field(default_factory=itertools.count)
    _buffers: list[bytearray] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limiter = anyio.CapacityLimiter(_IN_FLIGHT)
        self.reader = graph.Reader(self.document)  # the load's walks decode each document once

    def ref(self, name: str) -> str:
        """A fresh ingest ref, unique per session (ING-14, EDGE-9)."""
        return f"castar-import-{self.session}-{next(self._serial)}-{name[:96]}"

    def room(self, entry: Entry, left: int) -> None:
        """LOAD-7: refuse to write ``left`` more bytes of ``entry`` into too little free space.

        Blocking (one statvfs): called in a worker thread.
        """
        free = self.content.free_space()
        if free < left + RESERVE:
            raise Unavailable(
                f"blob {entry.name} of {entry.size} bytes: {left} bytes still to write would"
                f" leave less than the {RESERVE}-byte reserve of free space in the store"
                f" ({free} bytes free)"
            )

    async def discard(self, ref: str) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(NotFound):
            await self.content.abort(ref)

    def _copy_sync(self, w: Writer, entry: Entry) -> None:
        """Copy one member from the archive file into an ingest (one worker-thread call)."""
        assert self.fd is not None
        buf = self._buffers.pop() if self._buffers else bytearray(CHUNK)
        try:
            view = memoryview(buf)
            offset = entry.offset
            left = entry.size
            while left:
                if (entry.size - left) % _ROOM_EVERY < CHUNK:
                    self.room(entry, left)
                n = os.preadv(self.fd, [view[: min(left, CHUNK)]], offset)
                if n == 0:
                    raise _truncated(entry, left, offset)
                w.write_sync(view[:n])
                offset += n
                left -= n
                self.progress.add(n, entry.name)
                anyio.from_thread.check_cancelled()
        finally:
            self._buffers.append(buf)

    def _read_small(self, entry: Entry) -> bytes:
        """A small member's whole body from the archive file (one worker-thread call)."""
        assert self.fd is not None
        data = os.pread(self.fd, entry.size, entry.offset)
        if len(data) < entry.size:  # a regular file reads short only at its end
            raise _truncated(entry, entry.size - len(data), entry.offset + len(data))
        self.progress.add(entry.size, entry.name)
        return data

    async def store_small(self, batch: Sequence[SmallMember]) -> list[Digest]:
        """Store small members in one write hop and one record transaction (ING-11, IMP-4).

        Members with the same bytes read already (e.g. many empty ones) are written once.
        """
        blobs: list[SmallBlob] = []
        first: dict[tuple[bytes, Digest | None], int] = {}
        index = []
        for _, expected, data in batch:
            i = len(blobs)
            if isinstance(data, bytes):
                i = first.setdefault((data, expected), i)
            if i == len(blobs):
                blobs.append(SmallBlob(data, expected))
            index.append(i)
        try:
            descs = await self.content.write_small_blobs(blobs, sync=False, created=self.created)
        except DigestMismatch as exc:
            entry = next((e for e, x, _ in batch if x is not None and x == exc.expected), None)
            if entry is None:  # pragma: no cover - only an expected digest can mismatch
                raise
            if self.fd is not None:  # read because the walk needs it: the load fails now
                raise _imp4(entry, exc) from exc
            # From a stream every member is stored as it passes, needed or not: the bad one
            # waits for the walk (Entry.mismatch); the rest are stored (verified blobs were
            # recorded already, so this pass only records what the first one skipped).
            entry.mismatch = _imp4(entry, exc)
            return await self.store_small([m for m in batch if m[0] is not entry])
        digests = [descs[i].digest for i in index]
        for (entry, _, _), digest in zip(batch, digests, strict=True):
            entry.digest = digest
        return digests

    def unstored(self, digests: Iterable[str]) -> list[tuple[Entry, Digest]]:
        """The archive members of ``digests`` not stored yet; progress counts their bytes."""
        todo = [(e, Digest(d)) for d in digests if (e := self.blob_entry(d)) and e.digest is None]
        for entry, _ in todo:
            _needed(entry)
        if todo:
            self.progress.total = self.progress.done + sum(e.size for e, _ in todo)
        return todo

    async def ensure_small(self, members: Iterable[tuple[Entry, Digest | None]]) -> None:
        """Store the small ``members`` not stored yet, in batches, two at once."""
        todo = {id(e): (e, d) for e, d in members if e.digest is None and e.size <= _SMALL}

        async def store(batch: list[tuple[Entry, Digest | None]]) -> None:
            read = self._read_small
            await self.store_small([(e, d, functools.partial(read, e)) for e, d in batch])

        await self.pool(_batched(todo.values()), _BATCHES, store)

    async def pool(
        self,
        items: Iterable[_T],
        workers: int,
        fn: Callable[[_T], Awaitable[object]],
        *,
        tick: bool = False,
    ) -> None:
        """``fn`` over ``items`` in ``workers`` tasks, reporting progress after each."""
        pending = iter(items)

        async def worker() -> None:
            for item in pending:
                await fn(item)
                self.progress.report()

        try:
            async with anyio.create_task_group() as tg:
                if tick:
                    tg.start_soon(self.progress.ticker)
                async with anyio.create_task_group() as tasks:
                    for _ in range(workers):
                        tasks.start_soon(worker)
                tg.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            raise first_error(group) from None

    async def ensure(self, entry: Entry, expected: Digest | None = None) -> Digest:
        """Store ``entry``'s bytes unless stored (ING-2), checked against ``expected`` (IMP-4)."""
        if entry.digest is not None:
            return entry.digest
        _needed(entry)
        if entry.size <= _SMALL:
            read = functools.partial(self._read_small, entry)
            (digest,) = await self.store_small([(entry, expected, read)])
            return digest
        ref = self.ref(entry.name)
        try:
            async with self.content.writer(ref, size=entry.size, digest=expected) as w:
                await anyio.to_thread.run_sync(self._copy_sync, w, entry, limiter=self.limiter)
                digest = await _commit(self, w, entry, expected)
        except AlreadyExists:
            assert expected is not None
            digest = expected
            self.progress.add(entry.size, entry.name)
        except BaseException:
            await self.discard(ref)
            raise
        entry.digest = digest
        return digest

    def blob_entry(self, digest: str) -> Entry | None:
        d = Digest(digest)
        return self.catalog.entries.get(f"blobs/{d.algorithm}/{d.encoded}")

    async def document(self, desc: oci.Descriptor) -> bytes | None:
        """A document: the bytes stored from the archive as they pass, else from the store."""
        data = self.written.get(desc.digest)
        entry = self.blob_entry(desc.digest)
        if data is None and entry is not None:
            _needed(entry)
        if data is None and entry is not None and entry.digest is None and entry.size <= _SMALL:
            data = await anyio.to_thread.run_sync(self._read_small, entry)
            await self.store_small([(entry, Digest(desc.digest), data)])
        if data is not None:
            return data
        if entry is not None and entry.digest is None:
            await self.ensure(entry, desc.digest)
        try:
            return await self.content.read_all(desc.digest, limit=oci.MAX_DOCUMENT)
        except NotFound:
            return None


async def _commit(sess: Session, w: Writer, entry: Entry, expected: Digest | None) -> Digest:
    """Commit with fsync deferred to ``load``'s one sync (io-sync); IMP-4 error, ING-11."""
    try:
        digest = await w.commit(entry.size, expected, sync=False)
        sess.created.add(digest)
        return digest
    except AlreadyExists:
        return expected or w.digest()
    except DigestMismatch as exc:
        raise _imp4(entry, exc) from exc


def _needed(entry: Entry) -> None:
    """The walk needs ``entry``: a stream's member that did not match its name fails now."""
    if entry.mismatch is not None:
        raise entry.mismatch


def _imp4(entry: Entry, exc: DigestMismatch) -> DigestMismatch:
    return DigestMismatch(
        f"blob {entry.name}: unexpected digest {exc.actual}, expected {exc.expected}",
        expected=exc.expected,
        actual=exc.actual,
    )


def _truncated(entry: Entry, missing: int, offset: int) -> MalformedArchive:
    return MalformedArchive(
        f"truncated archive: {missing} bytes of member body missing",
        offset=offset,
        member=entry.name,
    )


def _too_large(name: str, max_size: int) -> MalformedArchive:
    return MalformedArchive(
        f"archive {name} is larger than the {max_size}-byte limit (max_size)", offset=max_size
    )


def _full(entries: int, nbytes: int, size: int) -> bool:
    """Whether a member of ``size`` bytes starts a new batch (design rule io-small-blobs)."""
    return entries >= BATCH_ENTRIES or nbytes + size > BATCH_BYTES


def _batched(entries: Iterable[tuple[Entry, _T]]) -> Iterator[list[tuple[Entry, _T]]]:
    """Runs of at most :data:`BATCH_ENTRIES` members and :data:`BATCH_BYTES` bytes, in order."""
    batch: list[tuple[Entry, _T]] = []
    nbytes = 0
    for item in entries:
        if batch and _full(len(batch), nbytes, item[0].size):
            yield batch
            batch, nbytes = [], 0
        batch.append(item)
        nbytes += item[0].size
    if batch:
        yield batch


# -- reading a stream: one pass ---------------------------------------------------------------


@dataclass(eq=False)
class _StreamReader:
    """Decoder events from a stream, ≤ 1 MiB buffered; receiving and hashing take turns."""

    src: decompress.RawSource
    max_size: int | None
    progress: Progress
    dec: TarDecoder = field(default_factory=TarDecoder)
    member: str = ""
    fed: int = 0

    async def next(self) -> MemberStart | Chunk | MemberEnd | ArchiveEnd:
        while True:
            ev = self.dec.next_event()
            if ev is not NEED_DATA:
                return ev  # type: ignore[return-value]
            await self._fill()

    async def _fill(self) -> None:
        try:
            self.feed(await self.src.receive(CHUNK))
        except anyio.EndOfStream:
            self.dec.feed_eof()

    def feed(self, data: bytes) -> None:
        self.fed += len(data)
        if self.max_size is not None and self.fed > self.max_size:
            raise _too_large(self.src.name, self.max_size)
        self.dec.feed(data)
        self.progress.add(len(data), self.member)
        self.progress.report()

    async def body(self) -> bytes:
        """The rest of the current member's body, joined (callers cap the size first)."""
        parts = []
        while isinstance(ev := await self.next(), Chunk):
            parts.append(bytes(ev.data))
        return b"".join(parts)

    async def drain(self) -> None:
        """Discard the rest of the current member's body."""
        while isinstance(await self.next(), Chunk):
            pass


async def _ingest_stream(sess: Session, reader: _StreamReader) -> None:
    """Store each regular entry as it streams by (IMP-3); commits and batches run in tasks."""
    cat = sess.catalog
    # One big commit at a time: it holds one of the store's two blob-I/O threads, so the
    # next member's writes (or a batch of small ones) always have the other.
    batches = anyio.Semaphore(1)
    big_commits = anyio.Semaphore(1)
    pending: list[SmallMember] = []
    nbytes = 0  # of pending
    try:
        async with anyio.create_task_group() as tg:

            async def flush() -> None:
                nonlocal pending, nbytes
                if pending:
                    await batches.acquire()
                    tg.start_soon(_store_batch, sess, pending, batches)
                    pending, nbytes = [], 0

            while True:
                ev = await reader.next()
                if isinstance(ev, ArchiveEnd):
                    await flush()
                    return
                if not isinstance(ev, MemberStart):  # pragma: no cover - members are read whole
                    continue
                reader.member = ev.name
                if reader.max_size is not None and ev.data_offset + ev.size > reader.max_size:
                    raise _too_large(reader.src.name, reader.max_size)  # known from the header
                entry = note_member(cat, ev, -1)
                if entry is None:
                    await reader.drain()
                elif isinstance(entry, str):
                    cat.documents[entry] = (ev.name, await reader.body())
                elif entry.copy:
                    await _check_copy(reader, entry)
                else:
                    expected = blob_digest(entry.name)
                    if ev.size <= _SMALL:
                        if _full(len(pending), nbytes, ev.size):
                            await flush()
                        pending.append((entry, expected, await reader.body()))
                        nbytes += ev.size
                    else:
                        await flush()
                        await _ingest_member(sess, reader, entry, expected, tg, big_commits)
    except BaseExceptionGroup as group:
        raise first_error(group) from None


async def _ingest_member(
    sess: Session,
    reader: _StreamReader,
    entry: Entry,
    expected: Digest | None,
    tg: anyio.abc.TaskGroup,
    commits: anyio.Semaphore,
) -> None:
    """Stream one member into an ingest, then hand its commit to a task of ``tg``."""
    ref = sess.ref(entry.name)
    stack = contextlib.AsyncExitStack()

    async def room(left: int) -> None:
        try:
            await anyio.to_thread.run_sync(sess.room, entry, left)
        except Unavailable:
            # LOAD-7: the space goes back first; then the rest of the member is read, not
            # written, so a truncated archive is refused as from a file, before the space is.
            with anyio.CancelScope(shield=True):
                await stack.aclose()
            await sess.discard(ref)
            await reader.drain()
            raise

    try:
        try:
            w = await stack.enter_async_context(
                sess.content.writer(ref, size=entry.size, digest=expected)
            )
        except AlreadyExists:
            assert expected is not None
            entry.digest = expected
            await reader.drain()  # already stored: the bytes are not written again (ING-2)
            return
        await room(entry.size)
        written = 0
        while isinstance(ev := await reader.next(), Chunk):
            await w.write(ev.data)
            before, written = written, written + len(ev.data)
            if written // _ROOM_EVERY != before // _ROOM_EVERY:
                await room(entry.size - written)
        await commits.acquire()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stack.aclose()
        await sess.discard(ref)
        raise
    tg.start_soon(_finish_member, sess, w, stack, entry, expected, commits)


async def _check_copy(reader: _StreamReader, entry: Entry) -> None:
    """IMP-3: a blob member given again is hashed as it passes, never stored."""
    h = _copy_hasher(entry)
    while isinstance(ev := await reader.next(), Chunk):
        await anyio.to_thread.run_sync(h.update, ev.data)
    _checked_copy(entry, h)


def _check_copies_sync(fd: int, copies: Iterable[Entry]) -> None:
    """IMP-3: each blob member given again in a seekable file must hash to its name."""
    for entry in copies:
        h = _copy_hasher(entry)
        offset, left = entry.offset, entry.size
        while left:
            data = os.pread(fd, min(left, CHUNK), offset)
            if not data:
                raise _truncated(entry, left, offset)
            h.update(data)
            offset += len(data)
            left -= len(data)
            anyio.from_thread.check_cancelled()
        _checked_copy(entry, h)


def _copy_hasher(entry: Entry) -> hashlib._Hash:
    expected = blob_digest(entry.name)
    assert expected is not None  # only a blob member is a copy
    return hasher(expected.algorithm)


def _checked_copy(entry: Entry, h: hashlib._Hash) -> None:
    expected, actual = blob_digest(entry.name), from_hasher(h)
    if actual != expected:
        assert expected is not None
        raise _imp4(entry, DigestMismatch("", expected=expected, actual=actual))


async def _store_batch(sess: Session, batch: list[SmallMember], done: anyio.Semaphore) -> None:
    """Store a batch of small members read whole, while the next batch gathers."""
    try:
        await sess.store_small(batch)
    finally:
        done.release()


async def _finish_member(
    sess: Session,
    w: Writer,
    stack: contextlib.AsyncExitStack,
    entry: Entry,
    expected: Digest | None,
    commits: anyio.Semaphore,
) -> None:
    try:
        try:
            entry.digest = await _commit(sess, w, entry, expected)
        finally:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
    except DigestMismatch as exc:
        entry.mismatch = exc  # not needed yet, perhaps never (Entry.mismatch)
        await sess.discard(w.ref)
    except BaseException:
        await sess.discard(w.ref)
        raise
    finally:
        commits.release()


async def read_archive(sess: Session, src: Source, max_size: int | None) -> None:
    """Fill ``sess.catalog``: headers only from a seekable plain tar, else one streaming pass."""
    fd = src.fileno()
    first = b""
    if fd is not None:

        def probe(fd: int) -> tuple[int, int, bytes]:
            base = os.lseek(fd, 0, os.SEEK_CUR)
            return base, os.fstat(fd).st_size - base, os.pread(fd, 8, base)

        base, size, head = await anyio.to_thread.run_sync(probe, fd)
        kind = decompress.sniff(head)
        if kind is None:
            if max_size is not None and size > max_size:
                raise _too_large(src.name, max_size)
            sess.catalog = await anyio.to_thread.run_sync(scan_sync, fd, base, size)
            sess.fd = fd
            if sess.catalog.copies:
                await anyio.to_thread.run_sync(_check_copies_sync, fd, sess.catalog.copies)
            return
    else:
        while len(first) < 8:
            try:
                first += await src.receive(CHUNK)
            except anyio.EndOfStream:
                break
        kind = decompress.sniff(first)
    stream: decompress.RawSource = src
    if kind is not None:
        direct = src.raw_file() if fd is not None else None  # a regular file
        stream = decompress.DecompressedSource(src, kind, first, direct)
        first = b""
    reader = _StreamReader(stream, max_size, sess.progress)
    if first:
        reader.feed(first)
    await _ingest_stream(sess, reader)


def first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group (errors-no-group: no ExceptionGroup for one)."""
    exc = group.exceptions[0]
    return first_error(exc) if isinstance(exc, BaseExceptionGroup) else exc
