"""The blob layout ``blobs/<alg>/<hex>`` (CS, LAY), ``commit.lock``, blob sync and limiter."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import secrets
import shutil
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast

import anyio
import anyio.from_thread
import anyio.to_thread
from anyio.lowlevel import RunVar

from castar.store._pump import write_all
from castar.store.digest import ALGORITHMS, CANONICAL, Buffer, Digest, from_hasher, hasher, parse
from castar.store.errors import DataLoss, DigestMismatch, InvalidArgument, map_os_errors

if TYPE_CHECKING:
    import hashlib
    from collections.abc import AsyncGenerator, AsyncIterator, Sequence

__all__ = [
    "CHUNK",
    "TMP_PREFIX",
    "BlobStore",
    "CommitResult",
    "SmallBatch",
    "SmallData",
    "blob_limiter",
    "holds",
    "rehash",
    "start_writeback",
    "sync_dir",
    "verified",
]

#: Bytes per worker-thread hop: writes coalesce to at least this, reads move this much.
CHUNK: Final = 1 << 20
#: Prefix of the temp files small blobs are written to, directly under ``<root>/ingest``.
TMP_PREFIX: Final = ".tmp-"
_LOCK_POLL_MAX: Final = 0.05  # seconds between tries for a contended commit lock
#: Worker threads flushing one operation's blobs at once (design rule io-sync).
_SYNC_THREADS: Final = 16

#: What a small blob's bytes come from: the bytes, or a function returning them, called in
#: the worker thread that writes them (so a reader of an archive reads in the same hop).
SmallData = Buffer | Callable[[], Buffer]

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
    """A commit's digest and size; ``existed``: a file holding these bytes was there already."""

    digest: Digest
    size: int
    existed: bool


@dataclass(frozen=True, slots=True)
class SmallBatch:
    """Each handled item's ``CommitResult`` or ``DigestMismatch`` (TV-44), and what stopped it."""

    results: list[CommitResult | DigestMismatch]
    error: BaseException | None


def rehash(fd: int, h: hashlib._Hash, check: Callable[[], None] | None = None) -> int:
    """Feed the whole file to ``h`` in CHUNK reads; return its size."""
    view = memoryview(bytearray(CHUNK))
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
    """True when the file at a blob address holds ``digest`` (re-hashed: it may be torn, ING-12).

    A directory there is no blob (a corrupt store): it is removed, so the blob can be renamed in.
    """
    try:
        fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(target)  # refuses a link to a directory: never removes what it points to
            return False
        if st.st_size != size:
            return False
        h = hasher(digest.algorithm)
        rehash(fd, h, check)
        return from_hasher(h) == digest
    finally:
        os.close(fd)


def verified(digest: Digest, expected: Digest | None) -> Digest:
    """``digest``, or DigestMismatch when ``expected`` is another one."""
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
    """A small blob held whole, written straight to its address: no ingest (io-small-blobs)."""
    h = hasher(expected.algorithm if expected is not None else algorithm)
    h.update(data)
    digest = verified(from_hasher(h), expected)
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
    """:func:`put_small` for each ``(data, expected)``; a digest mismatch does not stop it."""
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


def _remove_stray_tmp(root: Path) -> None:
    """Remove ``ingest/.tmp-*`` files; only under the exclusive commit lock (no live writer)."""
    try:
        entries = list(os.scandir(root / "ingest"))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(TMP_PREFIX) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def _content(digest: str) -> str:
    return f"content digest {digest}"


def _open_blob(path: Path, digest: str) -> tuple[int, int]:
    """A committed blob's fd and size; anything but a file there is DataLoss (a corrupt store)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise DataLoss(f"content {digest}: {path} is not a file")
    return fd, st.st_size


class BlobStore:
    """Committed blobs under one root directory (LAY-1), created lazily by the first write."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r})"

    def blob_path(self, digest: str) -> Path:
        """Where the committed blob lives (DIG-6); InvalidArgument for a bad digest (DIG-4)."""
        try:
            d = parse(digest)
        except InvalidArgument as exc:
            raise InvalidArgument(
                f"cannot calculate blob path from invalid digest: {exc.message}"
            ) from exc
        return self._blobs / d.algorithm / d.encoded

    async def is_file(self, digest: str) -> bool:
        """Whether a file is at the blob's address (not whether it holds the blob)."""
        return await anyio.to_thread.run_sync(os.path.isfile, self.blob_path(digest))

    async def stat(self, digest: str) -> int:
        """The size of a committed blob; NotFound ``content digest <d>: not found``."""
        path = self.blob_path(digest)

        def size() -> int:
            with map_os_errors(_content(digest)):
                return os.stat(path).st_size

        return await anyio.to_thread.run_sync(size)

    def read(
        self,
        digest: str,
        *,
        offset: int = 0,
        length: int | None = None,
        chunk_size: int = CHUNK,
    ) -> AsyncGenerator[bytes, None]:
        """Stream ``length`` bytes (to the end when None) from ``offset``; short past end (CS-2)."""
        path = self.blob_path(digest)
        if offset < 0 or (length is not None and length < 0) or chunk_size < 1:
            raise InvalidArgument(
                f"{_content(digest)}: bad read range (offset {offset}, length {length}, "
                f"chunk size {chunk_size})"
            )
        return self._chunks(path, digest, offset, length, chunk_size)

    async def _chunks(
        self, path: Path, digest: str, pos: int, length: int | None, chunk: int
    ) -> AsyncGenerator[bytes, None]:
        hop = max(chunk, CHUNK // chunk * chunk)
        fd = -1
        end = 0

        def pread() -> bytes:
            nonlocal fd, end
            with map_os_errors(_content(digest)):
                if fd < 0:
                    fd, size = _open_blob(path, digest)
                    end = size if length is None else min(pos + length, size)
                return os.pread(fd, min(hop, end - pos), pos) if end > pos else b""

        try:
            while True:
                data = await anyio.to_thread.run_sync(pread, limiter=blob_limiter())
                if not data:
                    return
                pos += len(data)
                if len(data) <= chunk:
                    yield data
                else:
                    view = memoryview(data)
                    for i in range(0, len(data), chunk):
                        yield bytes(view[i : i + chunk])
                if len(data) < hop or pos >= end:
                    return
        finally:
            if fd >= 0:
                os.close(fd)

    async def read_at(self, digest: str, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset`` in one hop; short or empty past the end (CS-2)."""
        path = self.blob_path(digest)
        if offset < 0 or n < 0:
            raise InvalidArgument(f"{_content(digest)}: bad read offset {offset} or size {n}")

        def pread() -> bytes:
            with map_os_errors(_content(digest)):
                fd, _ = _open_blob(path, digest)
                try:
                    return os.pread(fd, n, offset)
                finally:
                    os.close(fd)

        return await anyio.to_thread.run_sync(pread, limiter=blob_limiter())

    async def walk(self) -> list[tuple[Digest, int]]:
        """Every committed blob and its size, by digest string (CS-3); strays skipped (LAY-2)."""

        def scan() -> list[tuple[Digest, int]]:
            found: list[tuple[Digest, int]] = []
            for alg in ALGORITHMS:
                with map_os_errors(f"walking {self._blobs / alg}"):
                    try:
                        entries = list(os.scandir(self._blobs / alg))
                    except FileNotFoundError:
                        continue
                    for entry in entries:
                        try:
                            digest = parse(f"{alg}:{entry.name}")
                        except InvalidArgument:
                            _log.warning("walk: skipping %s: not a digest (LAY-2)", entry.path)
                            continue
                        try:
                            if entry.is_file(follow_symlinks=False):
                                found.append((digest, entry.stat(follow_symlinks=False).st_size))
                        except FileNotFoundError:
                            continue  # deleted while we walked
            found.sort(key=lambda item: str(item[0]))
            return found

        return await anyio.to_thread.run_sync(scan)

    async def delete(self, digest: str) -> None:
        """Unlink a committed blob (GC's content sweep, CS-6); NotFound when absent."""
        path = self.blob_path(digest)

        def unlink() -> None:
            with map_os_errors(_content(digest)):
                os.unlink(path)

        await anyio.to_thread.run_sync(unlink)

    def _open_lock(self) -> int:
        path = self.root / "commit.lock"
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        with map_os_errors(f"commit lock {path}"):
            try:
                return os.open(path, flags, 0o644)
            except FileNotFoundError:  # the root is made lazily, by the first write
                self.root.mkdir(mode=0o755, parents=True, exist_ok=True)
                return os.open(path, flags, 0o644)

    @contextlib.asynccontextmanager
    async def commit_lock(self, *, exclusive: bool) -> AsyncIterator[None]:
        """A cross-process reader/writer ``flock`` on ``<root>/commit.lock``."""
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB

        def open_and_try() -> tuple[int, bool]:
            fd = self._open_lock()
            return fd, _try_flock(fd, op)

        fd, held = await anyio.to_thread.run_sync(open_and_try)
        try:
            await _wait_flock(fd, op, held)
            if exclusive:
                # Small-blob writers hold the lock shared for their whole write: a temp file
                # left in ingest/ now is a crashed process's.
                await anyio.to_thread.run_sync(_remove_stray_tmp, self.root)
            yield
        finally:
            os.close(fd)  # drops the flock

    @contextlib.asynccontextmanager
    async def commit_small_batch(
        self, items: Sequence[tuple[SmallData, Digest | None]], *, sync: bool = True
    ) -> AsyncIterator[SmallBatch]:
        """Write small blobs in ONE worker-thread hop, holding the commit lock shared until exit."""
        op = fcntl.LOCK_SH | fcntl.LOCK_NB

        def put() -> SmallBatch:
            check = anyio.from_thread.check_cancelled
            return put_small_batch(self.root, items, CANONICAL, sync, check)

        def lock_and_put() -> tuple[int, SmallBatch | None]:
            fd = self._open_lock()
            try:
                return fd, put() if _try_flock(fd, op) else None
            except BaseException:
                os.close(fd)
                raise

        fd, batch = await anyio.to_thread.run_sync(lock_and_put, limiter=blob_limiter())
        try:
            if batch is None:  # GC holds the lock: wait for it, then write
                await _wait_flock(fd, op, False)
                batch = await anyio.to_thread.run_sync(put, limiter=blob_limiter())
            yield batch
        finally:
            os.close(fd)

    async def sync_blobs(self, digests: Sequence[str]) -> None:
        """``fdatasync`` each committed blob, then ``fsync`` its dir; never ``syncfs`` (io-sync)."""
        paths = [self.blob_path(d) for d in digests]
        dirs = sorted({p.parent for p in paths})

        def flush(group: Sequence[Path]) -> None:
            for path in group:
                with map_os_errors(f"syncing {path}"):
                    try:
                        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                    except FileNotFoundError:
                        continue
                    try:
                        os.fdatasync(fd)
                    finally:
                        os.close(fd)

        def flush_dirs() -> None:
            for d in dirs:
                with map_os_errors(f"syncing {d}"):
                    sync_dir(d)

        n = min(_SYNC_THREADS, len(paths))
        try:
            async with anyio.create_task_group() as tg:
                for i in range(n):
                    tg.start_soon(functools.partial(anyio.to_thread.run_sync, flush, paths[i::n]))
        except BaseExceptionGroup as group:  # errors-no-group: the first failure, alone
            first = group.exceptions[0]
            raise first from first.__cause__
        await anyio.to_thread.run_sync(flush_dirs)


def start_writeback(fd: int) -> None:
    """Start writing a finished blob's pages now (``sync_file_range(WRITE)``); no-op if missing."""
    if (sync_file_range := _libc_sync_file_range()) is not None:
        sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


@functools.cache
def _libc_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    import ctypes  # start-up: loaded with the first blob that needs it

    try:
        fn = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    return cast("Callable[[int, int, int, int], int]", fn)


_SYNC_FILE_RANGE_WRITE: Final = 2


async def _wait_flock(fd: int, op: int, held: bool) -> None:
    """Poll a non-blocking ``flock`` until it is held (backing off to 50 ms); cancellable."""
    delay = 0.001
    while not held:
        await anyio.sleep(delay)
        delay = min(delay * 2, _LOCK_POLL_MAX)
        held = _try_flock(fd, op)


def _try_flock(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op)
    except BlockingIOError:
        return False
    return True
