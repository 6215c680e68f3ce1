"""Ingests (ING, LAY) in ``<root>/ingest/<sha256(ref)>/``: ``LocalWriter`` and the file store."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import secrets
import shutil
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, final

import anyio
import anyio.from_thread
import anyio.to_thread

from castar.store._pump import Pump, hash_and_write
from castar.store.blobs import (
    CHUNK,
    BlobStore,
    CommitResult,
    blob_limiter,
    holds,
    rehash,
    start_writeback,
    sync_dir,
    verified,
)
from castar.store.digest import CANONICAL, Buffer, Digest, from_hasher, hasher, parse
from castar.store.errors import (
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SizeMismatch,
    Unavailable,
    map_os_errors,
)
from castar.store.labels import format_time, parse_expire

if TYPE_CHECKING:
    from pathlib import Path

__all__ = [
    "IngestStatus",
    "LocalContentStore",
    "LocalWriter",
    "ingest_dir",
    "lock_dir",
    "open_ingest",
    "remove_dir",
    "sweep_scratch",
]

#: The smallest piece of a ``bytes`` write queued as a step of its own, uncopied.
_MIN_STEP: Final = CHUNK // 4

_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class IngestStatus:
    """The state of one ingest (ING-6); ``total`` is 0 when unknown."""

    ref: str
    offset: int
    total: int
    expected: Digest | None
    started_at: datetime
    updated_at: datetime


def ingest_dir(root: Path, ref: str) -> Path:
    """``<root>/ingest/<sha256-hex of ref>`` (LAY-1)."""
    return root / "ingest" / hashlib.sha256(ref.encode()).hexdigest()


def _ctx(ref: str) -> str:
    return f'ingest ref "{ref}"'


def _now() -> str:
    return format_time(time.time_ns())


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except FileNotFoundError:
        return None


def _read_digest(path: Path) -> Digest | None:
    text = _read_text(path)
    return parse(text.strip()) if text else None


def _read_time(path: Path) -> datetime:
    at = parse_expire(path.read_text())
    if at is None:
        raise ValueError(f"not an RFC 3339 time in {path.name}")
    return at.astimezone(UTC)


def _write_atomic(path: Path, text: str) -> None:
    """Write a small file by tmp + rename, so a reader never sees a torn value (LAY-1)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


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


#: Prefixes of the ingest directory's scratch entries (ING-16): a directory being made, with
#: its lock already taken, before it is renamed to its name; one being removed, renamed away
#: first so that no half-removed directory is ever left under a name.
_NEW: Final = ".new-"
_TRASH: Final = ".trash-"


def lock_dir(path: Path, ref: str) -> int:
    """Take ``path/lock``'s exclusive flock and return its fd (ING-3, LEASE-8).

    A missing ``path`` is made as a scratch sibling whose lock is taken and marked with the
    time, then renamed into place: a directory under its name always has a lock a writer
    marked (ING-16). The lock dies with its process, so a free lock means no live owner;
    retries on a removed dir.
    """
    lock_path = path / "lock"
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            made = _made_locked(path)
            if made is not None:
                return made
            try:  # a directory is there already: another writer's, or one from before ING-16
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except FileNotFoundError:
                continue
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
            _mark(fd)
            return fd
        except BaseException:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise


def _mark(fd: int) -> None:
    """Write the time into a lock just taken; it is never empty on the way (ING-16)."""
    stamp = _now().encode()
    os.pwrite(fd, stamp, 0)
    os.ftruncate(fd, len(stamp))


def _made_locked(path: Path) -> int | None:
    """Make ``path`` with its lock taken and marked (ING-16); None if a directory is there.

    A gc removes a scratch whose lock it finds free or missing at once (:func:`sweep_scratch`):
    a maker that loses its scratch so, at any step, starts again with a new one.
    """
    while True:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        scratch = path.with_name(f"{_NEW}{secrets.token_hex(8)}")
        scratch.mkdir(mode=0o755)
        fd = -1
        try:
            fd = os.open(scratch / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            _mark(fd)
            os.rename(scratch, path)  # replaces only an empty directory
            return fd
        except BaseException as exc:
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
            shutil.rmtree(scratch, ignore_errors=True)
            if isinstance(exc, (BlockingIOError, FileNotFoundError)):  # a gc took the scratch
                continue
            if isinstance(exc, OSError) and exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return None
            raise


def remove_dir(path: Path) -> None:
    """Remove a locked directory: renamed away first, so a kill leaves no half of it (ING-16)."""
    trash = path.with_name(f"{_TRASH}{secrets.token_hex(8)}")
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash)  # what a failure leaves has no ingest's name: gc removes it (ING-16)


def sweep_scratch(path: Path, dry_run: bool = False) -> bool:
    """Whether ``path`` is a scratch directory (ING-16); one no live maker holds is removed.

    A ``.trash-`` one was being removed; a ``.new-`` one whose lock is free or not there yet
    goes too: its maker, if it lives, starts again (:func:`_made_locked`).
    """
    if path.name.startswith(_TRASH):
        if not dry_run:
            shutil.rmtree(path, ignore_errors=True)
        return True
    if not path.name.startswith(_NEW):
        return False
    fd = -1
    try:
        fd = os.open(path / "lock", os.O_RDWR | os.O_CLOEXEC)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:  # its maker holds it
        os.close(fd)
        return True
    except (FileNotFoundError, NotADirectoryError):
        pass  # no lock yet: taken away from under a live maker, it starts again
    try:
        if not dry_run:
            with contextlib.suppress(OSError):
                remove_dir(path)
    finally:
        if fd >= 0:
            os.close(fd)
    return True


def _locked(fd: int, ref: str) -> Unavailable:
    """The ING-3 error; the holder wrote the time it took the lock into the lock file."""
    stamp = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        stamp = os.pread(fd, 64, 0).decode().strip()
    since = parse_expire(stamp) if stamp else None
    if since is None:  # the holder has not written its time yet
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
    """Open (or resume, ING-5, re-hashing) the ingest of ``ref`` and lock it (ING-3), in a thread.

    A different non-zero ``total`` restarts at offset 0; the hash follows ING-7.
    """
    check = anyio.from_thread.check_cancelled if cancellable else None
    path = ingest_dir(root, ref)
    with map_os_errors(_ctx(ref)):
        lock_fd = lock_dir(path, ref)
        try:
            stored_ref = _read_text(path / "ref")
            try:
                stored_total = int(_read_text(path / "total") or 0)
                stored_expected = _read_digest(path / "expected")
            except (ValueError, InvalidArgument):  # unreadable state: start over
                stored_ref, stored_total, stored_expected = None, 0, None
            restart = bool(total and stored_total and total != stored_total)
            fresh = stored_ref != ref or restart
            if fresh:
                now = _now()
                for name in ("total", "expected"):
                    with contextlib.suppress(FileNotFoundError):
                        (path / name).unlink()
                stored_total, stored_expected = 0, None
                _write_atomic(path / "startedat", now)
                _write_atomic(path / "updatedat", now)
                _write_atomic(path / "ref", ref)  # last: a named ingest has a readable status
            if total and not stored_total:
                _write_atomic(path / "total", str(total))
                stored_total = total
            if expected is not None and expected != stored_expected:
                _write_atomic(path / "expected", str(expected))
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


def _read_status(path: Path, ref: str | None = None) -> IngestStatus:
    """Read one ingest directory's status files (ING-6): NotFound when gone, DataLoss if torn."""
    ctx = _ctx(ref if ref is not None else path.name)
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
            updated = _read_time(path / "updatedat")
            return IngestStatus(
                ref=stored_ref,
                offset=offset,
                total=int(_read_text(path / "total") or 0),
                expected=_read_digest(path / "expected"),
                started_at=_read_time(path / "startedat"),
                updated_at=max(updated, mtime) if mtime is not None else updated,
            )
        except (ValueError, InvalidArgument) as exc:
            raise DataLoss(f"{ctx}: unreadable status in {path}: {exc}") from exc


def _ingest_names(root: Path) -> list[str]:
    with map_os_errors(f"listing ingests in {root / 'ingest'}"):
        try:
            return os.listdir(root / "ingest")
        except FileNotFoundError:
            return []


def _list_ingests(root: Path) -> list[IngestStatus]:
    out = []
    for name in _ingest_names(root):
        if name.startswith("."):  # scratch (ING-16): being made or removed, not an ingest
            continue
        with contextlib.suppress(NotFound, DataLoss):
            out.append(_read_status(root / "ingest" / name))
    out.sort(key=lambda s: s.ref)
    return out


#: How old a directory with no writer's mark in its lock must be before GC takes it for a
#: dead writer's: a live one may be between ``mkdir`` and taking the lock (ING-16).
UNNAMED_GRACE: Final = 60.0


def _named(path: Path) -> bool:
    """Whether ``path`` is an ingest a listing shows: ``ref`` and a readable status (ING-16)."""
    try:
        _read_status(path)
    except (NotFound, DataLoss):
        return False
    return True


def _writer_left(path: Path) -> bool:
    """Whether a writer took ``path``'s lock or made ``path`` over a minute ago (ING-16).

    A writer writes its time into the lock as it takes it; either way, a lock that is free
    now means that writer is gone.
    """
    try:
        if os.stat(path / "lock").st_size > 0:
            return True
    except FileNotFoundError:
        pass
    return time.time() - path.stat().st_mtime >= UNNAMED_GRACE


def _remove_unnamed(root: Path, dry_run: bool) -> list[str]:
    """ING-16: remove ingest directories a writer died in before naming them; their names.

    Scratch directories no live maker holds go too, unlisted: they were never ingests.
    """
    out = []
    for name in _ingest_names(root):
        path = root / "ingest" / name
        if not path.is_dir() or path.is_symlink():  # small blobs' temp files: not ingests
            continue
        if sweep_scratch(path, dry_run):
            continue
        with contextlib.suppress(FileNotFoundError, NotADirectoryError, Unavailable):
            if _named(path) or not _writer_left(path):
                continue
            fd = lock_dir(path, name)  # Unavailable: a live writer holds it after all
            try:
                if not _named(path):
                    if not dry_run:
                        remove_dir(path)
                    out.append(name)
            finally:
                os.close(fd)
    return out


def _abort_ingest(root: Path, ref: str, if_unlocked: bool) -> bool:
    path = ingest_dir(root, ref)
    ctx = _ctx(ref)
    with map_os_errors(ctx):
        if not path.is_dir():
            raise NotFound(ctx)
        lock_fd = None
        try:
            lock_fd = lock_dir(path, ref)
        except Unavailable:
            if if_unlocked:
                return False
        try:
            remove_dir(path)
        finally:
            if lock_fd is not None:
                os.close(lock_fd)
    return True


@final
class LocalContentStore(BlobStore):
    """The file backend: the blob layout plus in-progress ingests under one root (LAY-1)."""

    async def open_writer(
        self, ref: str, *, total: int | None = None, expected: str | None = None
    ) -> LocalWriter:
        """Open the ingest of ``ref`` (ING-14), resuming it (ING-5); Unavailable if held (ING-3)."""
        if not ref:
            raise InvalidArgument("ref must not be empty")
        if total is not None and total < 0:
            raise InvalidArgument(f"{_ctx(ref)}: negative total {total}")
        want = parse(expected) if expected else None
        return await anyio.to_thread.run_sync(
            lambda: open_ingest(self.root, ref, total=total, expected=want, cancellable=True)
        )

    async def ingest_status(self, ref: str) -> IngestStatus:
        """The status of one ingest (ING-6); NotFound ``ingest ref "<ref>": not found``."""
        return await anyio.to_thread.run_sync(_read_status, ingest_dir(self.root, ref), ref)

    async def list_ingests(self) -> list[IngestStatus]:
        """Every readable ingest, sorted by ref (ING-6); half-created ones are skipped."""
        return await anyio.to_thread.run_sync(_list_ingests, self.root)

    async def remove_unnamed(self, *, dry_run: bool = False) -> list[str]:
        """Remove the half-created ingest directories of dead writers (ING-16); their names."""
        return await anyio.to_thread.run_sync(_remove_unnamed, self.root, dry_run)

    async def abort(self, ref: str, *, if_unlocked: bool = False) -> bool:
        """Remove an ingest and its data (ING-10); NotFound when there is none.

        With ``if_unlocked`` a locked ref is left alone (False), else removed under a live writer.
        """
        return await anyio.to_thread.run_sync(_abort_ingest, self.root, ref, if_unlocked)


def _remove_ingest(path: Path, ref: str) -> None:
    """Remove an ingest after its commit: failing here cannot undo the commit, so log it."""
    try:
        remove_dir(path)
    except OSError as exc:
        _log.warning("%s: failed to remove ingest directory %s: %s", _ctx(ref), path, exc)


def _view(data: Buffer) -> memoryview:
    view = memoryview(data)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


class LocalWriter(AbstractAsyncContextManager["LocalWriter"]):
    """An open, locked ingest hashing bytes as they are written (ING-3..9); one task at a time."""

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

    async def __aexit__(self, *exc_info: object) -> None:
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

    def _open_fd(self, verb: str, *, broken_ok: bool = False) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"cannot {verb} on closed writer")
        if self._broken and not broken_ok:
            raise FailedPrecondition(
                f"{_ctx(self.ref)}: an earlier write failed; truncate, or close and "
                "reopen to resume"
            )
        return self._fd

    def _writing(self) -> contextlib.AbstractContextManager[None]:
        return map_os_errors(f"{_ctx(self.ref)}: writing {self._path / 'data'}")

    def _raise_pump_error(self) -> None:
        """Raise a failed pump step's error, once; the writer is broken from then on."""
        pump = self._pump
        if pump is None or pump.error is None or self._pump_error_raised:
            return
        self._pump_error_raised = self._broken = True
        with self._writing():
            raise pump.error

    def _stop_pump_sync(self) -> None:
        """End the pump once its steps are done (in a worker thread); a failure marks it broken."""
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

        The caller may reuse its buffer at once; a failed step's error is raised later.
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
        """The digest of the bytes written so far (waits for the pump's queued steps)."""
        if self._pump is not None:
            self._pump.drain_sync()
            self._raise_pump_error()
        h = self._hash.copy()
        h.update(self._buf)
        return from_hasher(h)

    async def truncate(self, size: int) -> None:
        """Discard everything written, also after a failed write (ING-9); only ``size == 0``."""
        fd = self._open_fd("truncate", broken_ok=True)
        if size != 0:
            raise InvalidArgument("Truncate: unsupported size")

        def reset() -> None:
            self._stop_pump_sync()
            with map_os_errors(f"{_ctx(self.ref)}: truncating"):
                os.ftruncate(fd, 0)
                os.lseek(fd, 0, os.SEEK_SET)
            self._buf.clear()
            self._hash = hashlib.new(self._hash.name)
            self._flushed = 0
            self._broken = False

        await anyio.to_thread.run_sync(reset, limiter=blob_limiter())

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
                    _write_atomic(self._path / "updatedat", _now())
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
        if self._holds_ref():
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(
                    lambda: self._release_sync(flush=True), limiter=blob_limiter()
                )

    async def commit(self, size: int, expected: str | None, *, sync: bool = True) -> CommitResult:
        """Verify the ingest and move it to ``blobs/<alg>/<hex>`` (ING-8) as containerd does.

        A mismatch keeps the ingest data; a cancel is honoured up to the rename, never after.
        ``sync=False`` skips both fsyncs (design rule io-sync).

        Raises:
            SizeMismatch: ``size`` is not 0 and not the number of bytes written.
            DigestMismatch: ``expected`` is given and is not the digest of the bytes written.
            FailedPrecondition: the writer is closed.
            DataLoss: the disk failed reading back or syncing the data (EIO).
            Unavailable: the file system is full (ENOSPC).
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
            await self.close()  # the hop never ran (cancelled before it started, a bad digest)

    def _commit_sync(self, size: int, expected: Digest | None, sync: bool) -> CommitResult:
        check = anyio.from_thread.check_cancelled
        data = self._path / "data"
        ctx = _ctx(self.ref)
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
                else:  # the operation's final sync_blobs waits for less (design rule io-sync)
                    start_writeback(fd)
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
            verified(digest, expected)
            target = self._root / "blobs" / digest.algorithm / digest.encoded
            with map_os_errors(f"content {digest}: committing {ctx}"):
                target.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                # Last cancel point: past it the blob becomes visible, so the commit finishes.
                check()
                existed = holds(target, written, digest, check)
                # Already committed (ING-12: another ref won): the metadata layer decides
                # whether that is AlreadyExists. A torn leftover fails `holds` and is replaced.
                if not existed:
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
            return CommitResult(digest=digest, size=written, existed=existed)
        finally:
            self._release_sync(flush=False, stamp=not done)
