"""LocalContentStore: the file backend of the content store (CS, ING, LAY).

Owns ``<root>/blobs/<alg>/<hex>``, the ingest directories ``<root>/ingest/<sha256(ref)>/``
(open, per-ref flock, status, abort; writing and commit are ``_ingest.py``'s), small-blob
batches, the filesystem sync and ``<root>/commit.lock``. Knows nothing of labels, leases
or the metadata DB: imports only digest, errors and _ingest.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import re
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, cast, final

import anyio
import anyio.from_thread
import anyio.to_thread

from castar.store._ingest import (
    CHUNK,
    CommitResult,
    IngestStatus,
    LocalWriter,
    SmallBatch,
    SmallData,
    blob_limiter,
    format_time,
    put_small_batch,
    ref_context,
    rehash,
    remove_stray_tmp,
    write_atomic,
)
from castar.store.digest import ALGORITHMS, CANONICAL, Buffer, Digest, hasher, parse
from castar.store.errors import (
    DataLoss,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    Unavailable,
    map_os_errors,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

__all__ = ["CommitResult", "IngestStatus", "LocalContentStore", "LocalWriter", "SmallBatch"]

_log = logging.getLogger(__name__)
_LOCK_POLL_MAX: Final = 0.05  # seconds between tries for a contended commit lock


def _digest_arg(digest: str) -> Digest:
    """Validate a digest argument; DIG-4 words the error for store operations."""
    try:
        return parse(digest)
    except InvalidArgument as exc:
        raise InvalidArgument(
            f"cannot calculate blob path from invalid digest: {exc.message}"
        ) from exc


def _content(digest: str) -> str:
    return f"content digest {digest}"


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def ingest_dir(root: Path, ref: str) -> Path:
    """``<root>/ingest/<sha256-hex of ref>`` (LAY-1)."""
    return root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()


def _lock_ref(path: Path, ref: str) -> int:
    """Take the ref's exclusive flock and return its fd (ING-3, across processes).

    A commit or abort elsewhere may remove the directory between ``open`` and ``flock``,
    leaving us a lock on an unlinked file: the inode check catches that and retries.
    """
    lock_path = path / "lock"
    while True:
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except FileNotFoundError:
            continue  # the directory went away under us: recreate it
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _locked(fd, ref) from None
            try:
                same = os.stat(lock_path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            since = format_time(time.time_ns()).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, since, 0)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


_TIME = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (as containerd writes ``startedat``/``updatedat``), in UTC."""
    m = _TIME.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"not an RFC 3339 time: {text!r}")
    frac = (m.group(2) or "")[:6].ljust(6, "0")
    zone = "+00:00" if m.group(3) == "Z" else m.group(3)
    return datetime.fromisoformat(f"{m.group(1)}.{frac}{zone}").astimezone(UTC)


def go_duration(seconds: float) -> str:
    """A duration the way Go's ``time.Duration.String`` prints it (``1.5s``, ``2m3s``)."""
    if seconds < 1:
        ms = f"{max(seconds, 0.0) * 1000:.3f}".rstrip("0").rstrip(".")
        return "0s" if ms == "0" else f"{ms}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    out = f"{int(hours)}h" if hours else ""
    if hours or minutes:
        out += f"{int(minutes)}m"
    return out + (f"{secs:.3f}".rstrip("0").rstrip(".") or "0") + "s"


def _locked(fd: int, ref: str) -> Unavailable:
    """The ING-3 error; the holder wrote the time it took the lock into the lock file."""
    stamp = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        stamp = os.pread(fd, 64, 0).decode().strip()
    try:
        since = parse_time(stamp)
    except ValueError:  # the holder has not written its time yet
        since = datetime.fromtimestamp(os.fstat(fd).st_mtime, UTC)
        stamp = format_time(os.fstat(fd).st_mtime_ns)
    held = (datetime.now(UTC) - since).total_seconds()
    return Unavailable(f"ref {ref} locked for {go_duration(held)} (since {stamp})")


def open_ingest(
    root: Path,
    ref: str,
    *,
    total: int | None = None,
    expected: Digest | None = None,
    cancellable: bool = False,
) -> LocalWriter:
    """Open (or resume, ING-5) the ingest of ``ref`` and lock it (ING-3). Sync: run in a thread.

    Resuming re-hashes the stored data; ``cancellable`` (in an anyio worker thread) lets a
    cancel stop that between reads. A different non-zero ``total`` restarts at offset 0.
    The hash algorithm is ``expected``'s, else the stored one's, else sha256 (ING-7).
    """
    check = anyio.from_thread.check_cancelled if cancellable else None
    path = ingest_dir(root, ref)
    with map_os_errors(ref_context(ref)):
        lock_fd = _lock_ref(path, ref)
        try:
            stored_ref = _read_text(path / "ref")
            try:
                stored_total = int(_read_text(path / "total") or 0)
                stored_expected_text = _read_text(path / "expected")
                stored_expected = (
                    parse(stored_expected_text.strip()) if stored_expected_text else None
                )
            except (ValueError, InvalidArgument):  # unreadable state: start over
                stored_ref, stored_total, stored_expected = None, 0, None
            restart = bool(total and stored_total and total != stored_total)
            fresh = stored_ref != ref or restart
            if fresh:
                now = format_time(time.time_ns())
                for name in ("total", "expected"):
                    with contextlib.suppress(FileNotFoundError):
                        (path / name).unlink()
                stored_total, stored_expected = 0, None
                write_atomic(path / "ref", ref)
                write_atomic(path / "startedat", now)
                write_atomic(path / "updatedat", now)
            if total and not stored_total:
                write_atomic(path / "total", str(total))
                stored_total = total
            if expected is not None and expected != stored_expected:
                write_atomic(path / "expected", str(expected))
            want = expected or stored_expected
            h = hasher(want.algorithm if want is not None else CANONICAL)
            fd = os.open(path / "data", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            try:
                if fresh:
                    os.ftruncate(fd, 0)
                offset = rehash(fd, h, check)
                os.lseek(fd, offset, os.SEEK_SET)
            except BaseException:
                os.close(fd)
                raise
        except BaseException:
            os.close(lock_fd)
            raise
    return LocalWriter(
        root=root, ref=ref, path=path, fd=fd, lock_fd=lock_fd, hash_=h, offset=offset
    )


def read_status(path: Path, ref: str | None = None) -> IngestStatus:
    """Read the status files of one ingest directory (ING-6). Sync: run in a thread.

    Raises:
        NotFound: ``ingest ref "<ref>": not found`` when the directory or its ``ref`` is gone.
        DataLoss: a status file cannot be parsed.
    """
    ctx = ref_context(ref if ref is not None else path.name)
    with map_os_errors(ctx):
        stored_ref = (path / "ref").read_text()
        if ref is not None and stored_ref != ref:
            raise NotFound(ctx)
        try:
            data = os.stat(path / "data")
            offset, mtime = data.st_size, datetime.fromtimestamp(data.st_mtime, UTC)
        except FileNotFoundError:
            offset, mtime = 0, None
        try:
            expected = _read_text(path / "expected")
            updated = parse_time((path / "updatedat").read_text())
            status = IngestStatus(
                ref=stored_ref,
                offset=offset,
                total=int(_read_text(path / "total") or 0),
                expected=parse(expected.strip()) if expected else None,
                started_at=parse_time((path / "startedat").read_text()),
                updated_at=max(updated, mtime) if mtime is not None else updated,
            )
        except (ValueError, InvalidArgument) as exc:
            raise DataLoss(f"{ctx}: unreadable status in {path}: {exc}") from exc
    return status


def list_ingests(root: Path) -> list[IngestStatus]:
    """Every readable ingest, sorted by ref (ING-6); half-created directories are skipped."""
    out = []
    with map_os_errors(f"listing ingests in {root / 'ingest'}"):
        try:
            entries = sorted(os.listdir(root / "ingest"))
        except FileNotFoundError:
            return []
    for name in entries:
        with contextlib.suppress(NotFound, DataLoss):
            out.append(read_status(root / "ingest" / name))
    out.sort(key=lambda s: s.ref)
    return out


def abort_ingest(root: Path, ref: str, *, if_unlocked: bool) -> bool:
    """Remove the ingest of ``ref`` (ING-10). Sync: run in a thread.

    With ``if_unlocked`` a locked ref is left alone (False). Otherwise it is removed even
    under a live writer, as containerd does; that writer's commit then fails NotFound.
    """
    path = ingest_dir(root, ref)
    ctx = ref_context(ref)
    with map_os_errors(ctx):
        if not path.is_dir():
            raise NotFound(ctx)
        lock_fd = None
        try:
            lock_fd = _lock_ref(path, ref)
        except Unavailable:
            if if_unlocked:
                return False
        try:
            shutil.rmtree(path)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
    return True


@final
class LocalContentStore:
    """Committed blobs and in-progress ingests under one root directory (LAY-1).

    Disk work runs in worker threads (blob I/O shares a limiter of two per event loop).
    Safe across tasks and processes: ingests are flocked per ref, commits are atomic renames.

    Args:
        root: the store's directory; created lazily by the first write.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._blobs = self.root / "blobs"

    def __repr__(self) -> str:
        return f"LocalContentStore({str(self.root)!r})"

    def blob_path(self, digest: str) -> Path:
        """Where the committed blob lives (DIG-6); pure, the file may not exist.

        Raises:
            InvalidArgument: ``cannot calculate blob path from invalid digest: <why>`` (DIG-4).
        """
        d = _digest_arg(digest)
        return self._blobs / d.algorithm / d.encoded

    # -- reading

    async def stat(self, digest: str) -> int:
        """The size of a committed blob.

        Raises:
            NotFound: ``content digest <d>: not found``.
        """
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
    ) -> AsyncIterator[bytes]:
        """Stream ``length`` bytes of a blob from ``offset`` (all to the end when ``None``).

        Chunks of at most ``chunk_size``; each thread hop reads at least 1 MiB. Past the
        end is short, not an error (CS-2). The file is opened on the first iteration;
        ``aclose()`` the iterator when stopping early.

        Raises:
            InvalidArgument: a bad digest, a negative offset or length, chunk_size < 1.
            NotFound: ``content digest <d>: not found`` (on the first iteration).
        """
        path = self.blob_path(digest)
        if offset < 0 or (length is not None and length < 0) or chunk_size < 1:
            raise InvalidArgument(
                f"{_content(digest)}: bad read range (offset {offset}, length {length}, "
                f"chunk size {chunk_size})"
            )
        return _BlobChunks(path, digest, offset, length, chunk_size)

    async def read_at(self, digest: str, offset: int, n: int) -> bytes:
        """Up to ``n`` bytes at ``offset``, in one thread hop; short or empty past the end (CS-2).

        Raises:
            InvalidArgument: a bad digest, a negative offset or n.
            NotFound: ``content digest <d>: not found``.
        """
        path = self.blob_path(digest)
        if offset < 0 or n < 0:
            raise InvalidArgument(f"{_content(digest)}: bad read offset {offset} or size {n}")

        def pread() -> bytes:
            with map_os_errors(_content(digest)):
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return os.pread(fd, n, offset)
                finally:
                    os.close(fd)

        return await anyio.to_thread.run_sync(pread, limiter=blob_limiter())

    async def walk(self) -> list[tuple[Digest, int]]:
        """Every committed blob and its size, in ascending digest-string order (CS-3).

        Unknown algorithm directories and files not named as a digest are skipped (LAY-2).
        """

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

    # -- deleting

    async def delete(self, digest: str) -> None:
        """Unlink a committed blob (GC's content sweep; CS-6 for the file part).

        Raises:
            NotFound: ``content digest <d>: not found``.
        """
        path = self.blob_path(digest)

        def unlink() -> None:
            with map_os_errors(_content(digest)):
                os.unlink(path)

        await anyio.to_thread.run_sync(unlink)

    # -- ingests

    async def open_writer(
        self, ref: str, *, total: int | None = None, expected: str | None = None
    ) -> LocalWriter:
        """Open the ingest of ``ref`` (unique per import session, ING-14), resuming it (ING-5).

        ``total`` and ``expected`` are as for :func:`open_ingest`.

        Raises:
            InvalidArgument: ``ref must not be empty`` (ING-1), a bad digest or total.
            Unavailable: ``ref <ref> locked for <duration> (since <time>)`` while another
                writer, in this process or another, holds the ref (ING-3).
        """
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if total is not None and total < 0:
            raise InvalidArgument(f'ingest ref "{ref}": negative total {total}')
        want = parse(expected) if expected else None
        return await anyio.to_thread.run_sync(
            lambda: open_ingest(self.root, ref, total=total, expected=want, cancellable=True)
        )

    async def ingest_status(self, ref: str) -> IngestStatus:
        """The status of one ingest (ING-6).

        Raises:
            NotFound: ``ingest ref "<ref>": not found``.
        """
        path = ingest_dir(self.root, ref)
        return await anyio.to_thread.run_sync(read_status, path, ref)

    async def list_ingests(self) -> list[IngestStatus]:
        """Every ingest, sorted by ref (ING-6)."""
        return await anyio.to_thread.run_sync(list_ingests, self.root)

    async def abort(self, ref: str, *, if_unlocked: bool = False) -> bool:
        """Remove an ingest and its data (ING-10); False when ``if_unlocked`` kept a locked one.

        Raises:
            NotFound: ``ingest ref "<ref>": not found``.
        """
        return await anyio.to_thread.run_sync(
            lambda: abort_ingest(self.root, ref, if_unlocked=if_unlocked)
        )

    # -- the commit lock

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
        """A cross-process reader/writer lock: ``flock`` on ``<root>/commit.lock``.

        Commits hold it shared from the rename until their DB row is written; GC's content
        sweep holds it exclusive so it never sees a renamed-but-unrecorded blob. Waiting
        polls a non-blocking ``flock`` (backing off to 50 ms), so it is cancellable.
        """
        op = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB

        def open_and_try() -> tuple[int, bool]:
            fd = self._open_lock()
            return fd, _try_flock(fd, op)

        fd, held = await anyio.to_thread.run_sync(open_and_try)
        try:
            await _wait_flock(fd, op, held)
            if exclusive:
                # No small-blob writer is live now (they hold the lock shared for their whole
                # write): a temp file left in ingest/ is a crashed process's (GC's sweep).
                await anyio.to_thread.run_sync(remove_stray_tmp, self.root)
            yield
        finally:
            os.close(fd)  # drops the flock; closing a lock file does no I/O

    # -- small blobs and deferred sync

    @contextlib.asynccontextmanager
    async def commit_small(
        self, data: Buffer, *, expected: Digest | None, sync: bool = True
    ) -> AsyncIterator[CommitResult]:
        """:meth:`commit_small_batch` of one blob; raises its error or DigestMismatch."""
        async with self.commit_small_batch([(data, expected)], sync=sync) as batch:
            if batch.error is not None:
                raise batch.error
            (result,) = batch.results
            if isinstance(result, DigestMismatch):
                raise result
            yield result

    @contextlib.asynccontextmanager
    async def commit_small_batch(
        self, items: Sequence[tuple[SmallData, Digest | None]], *, sync: bool = True
    ) -> AsyncIterator[SmallBatch]:
        """Write small blobs (``(data, expected)`` each) in ONE worker-thread hop, lock held shared.

        :func:`put_small_batch` does the work; the commit lock stays held (shared) until
        the block exits, so the caller records the blobs renamed (even when
        ``SmallBatch.error`` stopped the batch), then raises the error. Meant for blobs
        of at most 1 MiB each and a few MiB per batch.
        """
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

    async def sync_filesystem(self) -> None:
        """One ``syncfs`` of the root's filesystem (``os.sync()`` where it is missing)."""

        def run() -> None:
            syncfs = _syncfs()
            if syncfs is None:
                os.sync()
                return
            with map_os_errors(f"syncing {self.root}"):
                fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    syncfs(fd)
                finally:
                    os.close(fd)

        await anyio.to_thread.run_sync(run)


def _syncfs() -> Callable[[int], None] | None:
    """``syncfs(2)``: ``os.syncfs`` where Python has it, else libc's through ctypes."""
    native = getattr(os, "syncfs", None)
    if native is not None:
        return cast("Callable[[int], None]", native)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.syncfs
    except (OSError, AttributeError):
        return None

    def call(fd: int) -> None:
        if fn(fd) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return call


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


class _BlobChunks:
    """The iterator :meth:`LocalContentStore.read` returns: one thread hop per >= 1 MiB."""

    def __init__(
        self, path: Path, digest: str, offset: int, length: int | None, chunk_size: int
    ) -> None:
        self._path = path
        self._digest = digest
        self._pos = offset
        self._end: int | None = None if length is None else offset + length
        self._chunk = chunk_size
        self._hop = max(chunk_size, CHUNK // chunk_size * chunk_size)
        self._fd: int | None = None
        self._pending: collections.deque[bytes] = collections.deque()
        self._done = False

    def __aiter__(self) -> _BlobChunks:
        return self

    def _read_sync(self) -> bytes:
        with map_os_errors(_content(self._digest)):
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC)
                size = os.fstat(self._fd).st_size
                self._end = size if self._end is None else min(self._end, size)
            assert self._end is not None
            n = min(self._hop, self._end - self._pos)
            data = os.pread(self._fd, n, self._pos) if n > 0 else b""
        self._pos += len(data)
        if len(data) < self._hop or self._pos >= self._end:
            self._close_fd()
        return data

    def _close_fd(self) -> None:
        self._done = True
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    async def __anext__(self) -> bytes:
        if not self._pending:
            if self._done:
                raise StopAsyncIteration
            data = await anyio.to_thread.run_sync(self._read_sync, limiter=blob_limiter())
            if not data:
                raise StopAsyncIteration
            if len(data) <= self._chunk:
                return data
            view = memoryview(data)
            self._pending.extend(
                bytes(view[i : i + self._chunk]) for i in range(0, len(data), self._chunk)
            )
        return self._pending.popleft()

    async def aclose(self) -> None:
        """Close the blob file; iterating again ends at once."""
        self._pending.clear()
        self._close_fd()

    def __del__(self) -> None:
        fd = self._fd
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)
