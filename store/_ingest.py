"""LocalWriter: one open ingest of the file backend, and its commit sequence.

Owns writing ``<root>/ingest/<key>/data`` while hashing, the commit (ING-8, containerd
``plugins/content/local/writer.go`` Commit, step for step; fsyncs optional, design rule
io-sync), the small-blob put (``ingest/.tmp-*`` renamed into place) and the pieces local.py
shares. Imports only castar.store.digest, errors and _pump: never local.py or the DB.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.lowlevel import RunVar

from castar.store._pump import Pump, hash_and_write, write_all
from castar.store.digest import Buffer, Digest, from_hasher, hasher, parse
from castar.store.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    SizeMismatch,
    map_os_errors,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime
    from pathlib import Path
    from types import TracebackType

__all__ = [
    "CHUNK",
    "TMP_PREFIX",
    "CommitResult",
    "IngestStatus",
    "LocalWriter",
    "SmallBatch",
    "SmallData",
    "blob_limiter",
    "format_time",
    "put_small",
    "put_small_batch",
    "ref_context",
    "rehash",
    "remove_stray_tmp",
    "write_atomic",
]

#: Bytes per worker-thread hop: writes coalesce to at least this, reads move this much.
CHUNK: Final = 1 << 20
#: The smallest piece of a ``bytes`` write queued as a step of its own, uncopied.
_MIN_STEP: Final = CHUNK // 4

_log = logging.getLogger(__name__)

_LIMITER: RunVar[anyio.CapacityLimiter] = RunVar("castar_blob_limiter")


def blob_limiter() -> anyio.CapacityLimiter:
    """The event loop's limiter for blob I/O hops: two at a time (design rule io-limiter)."""
    try:
        return _LIMITER.get()
    except LookupError:
        limiter = anyio.CapacityLimiter(2)
        _LIMITER.set(limiter)
        return limiter


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a commit did.

    Attributes:
        digest: the digest of the committed bytes (in the expected digest's algorithm).
        size: their size.
        existed: the blob file was already there and holds these bytes (re-hashed); the
            ingest was removed and nothing moved.
    """

    digest: Digest
    size: int
    existed: bool


@dataclass(frozen=True, slots=True)
class IngestStatus:
    """The state of one ingest (ING-6).

    Attributes:
        ref: the ingest's key, as given to ``open_writer``.
        offset: bytes in the ingest's data file (buffered, unflushed bytes excluded).
        total: the expected size, 0 when unknown.
        expected: the expected digest given at open, if any.
        started_at: when the ingest was created (or restarted).
        updated_at: the latest of the ``updatedat`` file and the data's mtime.
    """

    ref: str
    offset: int
    total: int
    expected: Digest | None
    started_at: datetime
    updated_at: datetime


# --- small file helpers (all sync: they run in worker threads) --------------------------


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds, UTC (what containerd writes to startedat/updatedat)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def write_atomic(path: Path, text: str) -> None:
    """Write a small file by tmp + rename, so a reader never sees a torn value (LAY-1)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def ref_context(ref: str) -> str:
    return f'ingest ref "{ref}"'


def rehash(fd: int, h: hashlib._Hash, check: Callable[[], None] | None = None) -> int:
    """Feed the whole data file to ``h`` in CHUNK reads; return its size."""
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    pos = 0
    while n := os.preadv(fd, [view], pos):
        h.update(view[:n])
        pos += n
        if check is not None:
            check()
    return pos


def sync_dir(path: Path) -> None:
    """Flush a directory (fsync), so a rename into it survives a power cut."""
    dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def holds(target: Path, size: int, digest: Digest, check: Callable[[], None] | None = None) -> bool:
    """True when the file at a blob address really holds ``digest`` (``size`` bytes).

    A file already there is normally the same blob (ING-12: another ref won) and is kept;
    it may also be an unsynced commit torn by a crash (right size, wrong bytes), so it is
    re-hashed before it is trusted. Rare: the metadata layer checks records first.
    """
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        if os.fstat(fd).st_size != size:
            return False
        h = hasher(digest.algorithm)
        rehash(fd, h, check)
        return from_hasher(h) == digest
    finally:
        os.close(fd)


#: Prefix of the temp files small blobs are written to, directly under ``<root>/ingest``.
TMP_PREFIX: Final = ".tmp-"

#: What a small blob's bytes come from: the bytes, or a function returning them, called in
#: the worker thread that writes them (so a reader of an archive reads in the same hop).
SmallData = Buffer | Callable[[], Buffer]


@dataclass(frozen=True, slots=True)
class SmallBatch:
    """What :func:`put_small_batch` did, item by item, in order.

    Attributes:
        results: one per item handled: its ``CommitResult``, or the ``DigestMismatch`` it
            raised (the caller decides, TV-44: a recorded digest is still a success).
        error: what stopped the batch early (a cancel, a read or I/O error), else None;
            the items after ``results`` were not written at all.
    """

    results: list[CommitResult | DigestMismatch]
    error: BaseException | None


def _verified(digest: Digest, expected: Digest | None) -> Digest:
    if expected is not None and expected != digest:
        raise DigestMismatch(
            f"unexpected commit digest {digest}, expected {expected}",
            expected=expected,
            actual=digest,
        )
    return digest


@functools.cache
def _umask_keeps_read_bits() -> bool:
    """True when the umask leaves ``0o444`` alone (``/proc/self/status``): no ``fchmod`` needed."""
    try:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"Umask:"):
                    return int(line.split()[1], 8) & 0o444 == 0
    except (OSError, ValueError, IndexError):
        pass
    return False


def put_small(
    root: Path,
    data: Buffer,
    expected: Digest | None,
    algorithm: str,
    sync: bool,
    check: Callable[[], None] | None = None,
) -> CommitResult:
    """Write a small blob held whole straight to its address: no ingest directory (§2.10).

    Verified, written to a read-only ``<root>/ingest/.tmp-<pid>-<random>``, fsynced when
    ``sync`` and renamed into place; the caller holds the commit lock shared, so GC only
    meets temp files of crashed writers. A failure or a cancel (``check``, up to the rename)
    removes the temp file. Directories are made only when found missing; the file is new,
    so its times are the commit time already (LAY-3). Sync: run in a worker thread.

    Raises:
        DigestMismatch: ``unexpected commit digest <computed>, expected <expected>``.
    """
    h = hasher(expected.algorithm if expected is not None else algorithm)
    h.update(data)
    digest = _verified(from_hasher(h), expected)
    size = memoryview(data).nbytes
    target = root / "blobs" / digest.algorithm / digest.encoded
    with map_os_errors(f"content {digest}: committing"):
        if holds(target, size, digest):
            return CommitResult(digest=digest, size=size, existed=True)
        tmp = root / "ingest" / f"{TMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        try:
            fd = os.open(tmp, flags, 0o444)
        except FileNotFoundError:
            tmp.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(tmp, flags, 0o444)
        renamed = False
        try:
            try:
                write_all(fd, data)
                if sync:
                    os.fsync(fd)
                if not _umask_keeps_read_bits():
                    os.fchmod(fd, 0o444)
            finally:
                os.close(fd)
            if check is not None:
                check()  # the last cancel point: past the rename the commit finishes
            try:
                os.rename(tmp, target)
            except FileNotFoundError:  # the algorithm's directory: made once, when missing
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                os.rename(tmp, target)
            renamed = True
            if sync:
                sync_dir(target.parent)
        finally:
            if not renamed:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
    return CommitResult(digest=digest, size=size, existed=False)


def put_small_batch(
    root: Path,
    items: Sequence[tuple[SmallData, Digest | None]],
    algorithm: str,
    sync: bool,
    check: Callable[[], None] | None = None,
) -> SmallBatch:
    """:func:`put_small` for each ``(data, expected)`` in turn, in one call (one thread hop).

    ``data`` may be a function, called here. A digest mismatch is reported in its item's
    place and the batch goes on; anything else (a cancel, a read or I/O error) stops it and
    is returned as ``error`` beside the results of the items already in place.
    """
    results: list[CommitResult | DigestMismatch] = []
    for data, expected in items:
        try:
            raw = data() if callable(data) else data
            results.append(put_small(root, raw, expected, algorithm, sync, check))
        except DigestMismatch as exc:
            results.append(exc)
        except BaseException as exc:
            return SmallBatch(results, exc)
    return SmallBatch(results, None)


def remove_stray_tmp(root: Path) -> int:
    """Remove ``ingest/.tmp-*`` files; only under the exclusive commit lock (no live writer)."""
    n = 0
    try:
        entries = list(os.scandir(root / "ingest"))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
                n += 1
    return n


# --- the writer -------------------------------------------------------------------------


def _remove_ingest(path: Path, ref: str) -> None:
    """Remove an ingest after its commit: failing here cannot undo the commit, so log it."""
    try:
        shutil.rmtree(path)
    except OSError as exc:
        _log.warning("%s: failed to remove ingest directory %s: %s", ref_context(ref), path, exc)


def _view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class LocalWriter:
    """An open, locked ingest: bytes are hashed as they are written (ING-3..9).

    Writes coalesce into a buffer; each 1 MiB becomes a step of the writer's
    :class:`~castar.store._pump.Pump`, a thread hashing and writing up to three steps
    ahead. One task at a time; never interleave ``write`` and ``write_sync``. ``async
    with``, :meth:`close` or :meth:`commit` release the ref lock.

    Attributes:
        ref: the ingest's key.
    """

    def __init__(
        self,
        *,
        root: Path,
        ref: str,
        path: Path,
        fd: int,
        lock_fd: int,
        hash_: hashlib._Hash,
        offset: int,
    ) -> None:
        self.ref = ref
        self._root = root
        self._path = path
        self._fd: int | None = fd
        self._lock_fd: int | None = lock_fd
        self._hash = hash_
        self._flushed = offset
        self._buf = bytearray()
        self._broken = False  # a failed os.write: the hash may not match the file
        self._pump: Pump | None = None  # started by the first 1 MiB of write()
        self._pump_error_raised = False

    @property
    def offset(self) -> int:
        """Bytes accepted so far: written, queued for the pump and buffered."""
        pumped = self._pump.done_bytes + self._pump.queued_bytes if self._pump else 0
        return self._flushed + pumped + len(self._buf)

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else f"offset={self.offset}"
        return f"<LocalWriter ref={self.ref!r} {state}>"

    async def __aenter__(self) -> LocalWriter:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __del__(self) -> None:
        # Last resort for a writer dropped without close(): never keep the ref locked.
        pump = self._pump
        if pump is not None:
            pump.stop()
            if not pump.settled():
                # Steps still run on the data fd: closing it under them could hand its
                # number to another file. Never wait here either (at interpreter exit the
                # pump's thread may never run again): leave both fds to the process.
                return
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)

    # -- writing

    def _open_fd(self, verb: str, *, broken_ok: bool = False) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"cannot {verb} on closed writer")
        if self._broken and not broken_ok:
            raise FailedPrecondition(
                f"{ref_context(self.ref)}: an earlier write failed; truncate, or close and "
                "reopen to resume"
            )
        return self._fd

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return map_os_errors(f"{ref_context(self.ref)}: writing {self._path / 'data'}")

    def _raise_pump_error(self) -> None:
        """Raise a failed pump step's error, once; the writer is broken from then on."""
        pump = self._pump
        if pump is None or pump.error is None or self._pump_error_raised:
            return
        self._pump_error_raised = self._broken = True
        with self._writing():
            raise pump.error

    def _stop_pump_sync(self) -> None:
        """Wait for the pump's steps and end it (worker thread), before this thread uses the fd.

        A failure not raised yet only marks the writer broken: :meth:`commit` raised it earlier.
        """
        pump, self._pump = self._pump, None
        if pump is None:
            return
        pump.drain_sync()
        pump.stop()
        self._flushed += pump.done_bytes
        if pump.error is not None:
            self._broken = True
        self._pump_error_raised = False

    def _flush_sync(self, extra: memoryview | None = None) -> None:
        """Hash and write the pump's steps, the buffer, then ``extra``; in a worker thread."""
        self._stop_pump_sync()
        fd = self._fd
        assert fd is not None
        parts = [p for p in (self._buf, extra) if p is not None and len(p)]
        try:
            with self._writing():
                for part in parts:
                    hash_and_write(fd, self._hash, part)
                    self._flushed += len(part)
        except BaseException:
            self._broken = True
            raise
        self._buf.clear()

    async def write(self, data: Buffer) -> None:
        """Append ``data``: buffered below 1 MiB, else queued for the pump in 1 MiB steps.

        ``bytes`` are queued uncopied (pieces under 256 KiB are buffered), other buffers
        copied, so the caller may reuse its buffer at once; waits only while the pump is
        three steps ahead. On a cancel ``offset`` counts exactly the bytes accepted. A
        failed step's error is raised by a later ``write`` or by :meth:`commit`.

        Raises:
            FailedPrecondition: the writer is closed or an earlier write failed.
        """
        fd = self._open_fd("write")
        self._raise_pump_error()
        view = _view(data)
        owned = isinstance(view.obj, bytes)  # immutable: the pump may keep it as it is
        if len(self._buf) + view.nbytes < CHUNK and (
            self._buf or not owned or view.nbytes < _MIN_STEP
        ):
            self._buf += view
            return
        pump = self._pump = self._pump or Pump(fd, self._hash)
        while (self._buf and len(self._buf) + view.nbytes >= CHUNK) or view.nbytes >= (
            _MIN_STEP if owned else CHUNK
        ):
            await pump.room()
            self._raise_pump_error()
            # From here to the put, nothing awaits: a cancel takes all of a step or none.
            if self._buf and not owned:  # top the buffer up to a whole step
                n = CHUNK - len(self._buf)
                self._buf += view[:n]
                view = view[n:]
            if self._buf:  # copied into one of the pump's buffers
                with memoryview(self._buf) as step:
                    pump.put(step, CHUNK)
                self._buf.clear()
                continue
            n = min(CHUNK, view.nbytes)
            pump.put(view[:n], CHUNK)  # bytes: as they are, whatever their alignment
            view = view[n:]
        self._buf += view

    def write_sync(self, data: Buffer) -> None:
        """Like :meth:`write`, for a caller already in a worker thread (the importer)."""
        self._open_fd("write")
        view = _view(data)
        if len(self._buf) + view.nbytes < CHUNK:
            self._buf += view
            return
        self._flush_sync(view)

    def digest(self) -> Digest:
        """The digest of the bytes written so far (hashes the < 1 MiB buffer in place).

        Waits for the pump's queued steps first: at most three MiB of hashing.
        """
        if self._pump is not None:
            self._pump.drain_sync()
            self._raise_pump_error()
        h = self._hash.copy()
        h.update(self._buf)
        return from_hasher(h)

    async def truncate(self, size: int) -> None:
        """Discard everything written: only ``size == 0`` is supported (ING-9).

        Also the way to start over after a failed write.

        Raises:
            InvalidArgument: ``Truncate: unsupported size`` for any other size.
        """
        fd = self._open_fd("truncate", broken_ok=True)
        if size != 0:
            raise InvalidArgument("Truncate: unsupported size")

        def reset() -> None:
            self._stop_pump_sync()
            with map_os_errors(f"{ref_context(self.ref)}: truncating"):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            self._buf.clear()
            self._hash = hashlib.new(self._hash.name)
            self._flushed = 0
            self._broken = False

        await anyio.to_thread.run_sync(reset, limiter=blob_limiter())

    # -- closing and committing

    def _holds_ref(self) -> bool:
        return self._fd is not None or self._lock_fd is not None

    def _release_sync(self, *, flush: bool, stamp: bool = True) -> None:
        """Flush (optionally), stamp updatedat, close data and drop the ref lock."""
        try:
            self._stop_pump_sync()
            if flush and self._fd is not None and self._buf and not self._broken:
                self._flush_sync()
            if stamp and self._fd is not None:
                with contextlib.suppress(OSError):
                    write_atomic(self._path / "updatedat", format_time(time.time_ns()))
        finally:
            fd, self._fd = self._fd, None
            lock_fd, self._lock_fd = self._lock_fd, None
            self._buf.clear()
            for f in (fd, lock_fd):
                if f is not None:
                    with contextlib.suppress(OSError):
                        os.close(f)

    async def close(self) -> None:
        """Flush and release the ref; the ingest stays resumable (ING-5). Idempotent."""
        if not self._holds_ref():
            return
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(
                lambda: self._release_sync(flush=True), limiter=blob_limiter()
            )

    async def commit(self, size: int, expected: str | None, *, sync: bool = True) -> CommitResult:
        """Verify the ingest and move it to ``blobs/<alg>/<hex>`` (ING-8), in one thread hop.

        Order (containerd ``writer.go`` Commit): flush, fsync data, size check, digest
        check (re-hashing for another algorithm), then either keep a blob file that
        :func:`holds` these bytes (``existed``) or chmod, rename into place, fsync the
        directory; then remove the ingest. A mismatch keeps the ingest data (as containerd
        does). The ref lock is always released. A cancel is honoured up to the rename, never
        after: it leaves no file at the blob address and a resumable ingest.

        Args:
            size: the expected size; 0 or less skips the size check.
            expected: the expected digest; ``None`` or ``""`` skips the digest check.
            sync: fsync the data and the blob directory; False skips both (the caller
                syncs later, design rule io-sync); the blob is still verified.

        Raises:
            FailedPrecondition: ``cannot commit on closed writer``.
            SizeMismatch: ``unexpected commit size <written>, expected <size>``.
            DigestMismatch: ``unexpected commit digest <computed>, expected <expected>``.
            NotFound: the ingest was aborted under the writer.
        """
        if self._fd is None:
            raise FailedPrecondition("cannot commit on closed writer")
        try:
            if self._pump is not None:
                await self._pump.drain()
                self._raise_pump_error()
            want = parse(expected) if expected else None
            return await anyio.to_thread.run_sync(
                self._commit_sync, size, want, sync, limiter=blob_limiter()
            )
        finally:
            if self._holds_ref():
                # The hop never ran (cancelled before it started, or a bad digest).
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(
                        lambda: self._release_sync(flush=True), limiter=blob_limiter()
                    )

    def _commit_sync(self, size: int, expected: Digest | None, sync: bool) -> CommitResult:
        check = anyio.from_thread.check_cancelled
        data = self._path / "data"
        ctx = ref_context(self.ref)
        done = False  # once the ingest directory is removed, never write into it again
        try:
            self._stop_pump_sync()
            fd = self._fd
            assert fd is not None
            if self._broken:  # the running hash may disagree with the file: trust the file
                self._hash = hashlib.new(self._hash.name)
                with map_os_errors(f"{ctx}: re-reading {data}"):
                    self._flushed = rehash(fd, self._hash)
                self._buf.clear()
                self._broken = False
            else:
                self._flush_sync()
            check()
            with map_os_errors(f"{ctx}: syncing {data}"):
                if sync:
                    os.fsync(fd)
                written = os.fstat(fd).st_size
            if size > 0 and size != written:
                raise SizeMismatch(
                    f"unexpected commit size {written}, expected {size}",
                    expected=size,
                    actual=written,
                )
            digest = from_hasher(self._hash)
            if expected is not None and expected.algorithm != digest.algorithm:
                h = hasher(expected.algorithm)
                with map_os_errors(f"{ctx}: re-hashing {data}"):
                    rehash(fd, h, check)
                digest = from_hasher(h)
            _verified(digest, expected)
            target = self._root / "blobs" / digest.algorithm / digest.encoded
            with map_os_errors(f"content {digest}: committing {ctx}"):
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                # Last cancel point: past it the blob becomes visible, so the commit finishes.
                check()
                if holds(target, written, digest, check):
                    # Already committed (ING-12: another ref won). The metadata layer decides
                    # whether that is AlreadyExists. A torn leftover fails `holds` and is
                    # replaced by the verified data below.
                    done = True
                    _remove_ingest(self._path, self.ref)
                    return CommitResult(digest=digest, size=written, existed=True)
                # Read-only and timestamped before the rename, so a visible blob is never
                # writable (containerd chmods after; the order does not matter to readers).
                now = time.time_ns()
                os.fchmod(fd, 0o444)
                os.utime(fd, ns=(now, now))  # LAY-3
                os.rename(data, target)
                if sync:
                    sync_dir(target.parent)
            # The blob is in place: cleaning the ingest up can only be logged, not undone.
            done = True
            _remove_ingest(self._path, self.ref)
            return CommitResult(digest=digest, size=written, existed=False)
        finally:
            self._release_sync(flush=False, stamp=not done)
