"""Writing a save plan to a sink with the cheapest copy it allows (EXP-8)."""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import anyio
import anyio.from_thread
import anyio.to_thread

from castar.engine import tarcodec
from castar.engine._endpoints import CHUNK_SIZE
from castar.engine.save.sinks import wait_writable, write_all
from castar.store import digest as digests
from castar.store.errors import DataLoss, DigestMismatch, SizeMismatch, Unavailable

if TYPE_CHECKING:
    from collections.abc import Generator, Iterator

    from castar.engine._streams import Sink
    from castar.engine.save.plan import Member, SaveOptions, SavePlan
    from castar.store.digest import Buffer, Digest
    from castar.store.progress import ProgressCallback
    from castar.store.roles import BlobReader

__all__ = ["Limiters", "store_limiters", "write"]

_HOP: Final = 256 << 20  # bytes one worker-thread hop moves into an fd sink
_CALL: Final = 64 << 20  # most bytes one copy call moves (cancellation checked between calls)
_SMALL: Final = 256 << 10  # blobs up to this size are coalesced with the headers
_SPLICE_FLAGS: Final = os.SPLICE_F_NONBLOCK | os.SPLICE_F_MOVE
_WINDOW: Final = 64 << 20  # write-behind: writeback starts for every this many bytes
#: What ``_pieces`` yields right before it copies more blob bytes: where a step may end.
_BREAK: Final = -1


class _WriteBehind:
    """Drops an archive's written-back pages from the page cache, a window behind the newest."""

    def __init__(self, fd: int, appending: bool) -> None:
        self._fd = fd
        self._engaged = True
        # an fd given may be past its start; O_APPEND writes land at the end whatever it is
        self._start = os.fstat(fd).st_size if appending else os.lseek(fd, 0, os.SEEK_CUR)
        self._dropped = self._kicked = self._previous = self._start

    def advance(self, written: int) -> None:
        """The archive now has ``written`` bytes."""
        end = self._start + written
        if end - self._kicked < _WINDOW or not self._engaged:
            return
        self._advise(self._kicked, end - self._kicked)  # writeback starts, nothing dropped
        if self._previous > self._dropped:  # older than the last window: had its time
            self._advise(self._dropped, self._previous - self._dropped)
            self._dropped = self._previous
        self._previous, self._kicked = self._kicked, end

    def finish(self) -> None:
        """The archive is complete: write back the rest, drop what is clean."""
        if self._engaged:
            self._advise(self._dropped, 0)  # 0: to the end of the file

    def _advise(self, offset: int, length: int) -> None:
        try:
            os.posix_fadvise(self._fd, offset, length, os.POSIX_FADV_DONTNEED)
        except OSError:  # advice only: a file system may refuse it
            self._engaged = False


class _Copier:
    """Moves a plan's bytes in worker threads; a stream sink's steps yield chunks to send."""

    def __init__(self, plan: SavePlan, content: BlobReader, sink: Sink, opts: SaveOptions) -> None:
        self._plan = plan
        self._content = content
        self._kind = kind = sink.kind
        self._fd = fd = sink.fileno() if kind in ("file", "pipe", "socket") else None
        self._opts = opts
        self._archive = digests.hasher("sha256") if opts.archive_digest else None
        self._pending = bytearray()
        self._buffer: bytearray | None = None
        self._out: list[bytes] = []
        self.written = 0
        self.item = ""  # the member being written, for progress
        self.done = False  # set by steps() before its last step
        # copy_file_range, splice and sendfile refuse an O_APPEND file: write() it
        self._appending = (
            kind == "file" and fd is not None and bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_APPEND)
        )
        self.zero_copy = fd is not None and not (
            opts.verify or opts.archive_digest or self._appending
        )
        self._behind: _WriteBehind | None = None  # made in a worker thread (lseek)

    @property
    def sha256(self) -> Digest | None:
        return None if self._archive is None else digests.from_hasher(self._archive)

    def _emit(self, data: Buffer) -> None:
        """Queue bytes for the sink: small ones coalesced up to ``CHUNK_SIZE``."""
        if self._archive is not None:
            self._archive.update(data)
        if len(data) < _SMALL:
            self._pending += data
            if len(self._pending) >= CHUNK_SIZE:
                self._flush()
        else:
            self._flush()
            self._put(data)

    def _flush(self) -> None:
        if self._pending:  # _put writes it or copies it before the buffer is reused
            self._put(self._pending)
            self._pending.clear()

    def _put(self, data: Buffer) -> None:
        if self._fd is not None:
            write_all(self._fd, data, self._kind)
        else:  # streams may keep what they are given
            self._out.append(data if isinstance(data, bytes) else bytes(data))
        self._moved(len(data))

    def _moved(self, n: int) -> None:
        self.written += n
        if self._behind is not None:
            self._behind.advance(self.written)

    def steps(self) -> Generator[list[bytes], None, None]:
        """Steps of a budget of bytes, ended before blob bytes; ``done`` is set before the last."""
        budget = _HOP if self._fd is not None else CHUNK_SIZE
        tail = budget // 4  # what is left of the archive below this joins the current step
        moved = total = 0
        for n in self._pieces():
            if n != _BREAK:
                moved += n
                total += n
            elif moved >= budget and self._plan.size - total > tail:
                moved = 0
                yield self._take()
            elif self._fd is not None:  # a long hop into an fd: cancellable between calls
                anyio.from_thread.check_cancelled()
        self.done = True
        yield self._take()

    def _pieces(self) -> Iterator[int]:
        """Emit the whole archive; yields the bytes moved after each piece."""
        if self._kind == "file" and self._fd is not None and self._opts.write_behind:
            self._behind = _WriteBehind(self._fd, self._appending)
        for m in self._plan.members:
            self.item = m.name
            self._emit(m.header)
            yield len(m.header)
            if m.data is not None:
                self._emit(m.data)
                yield m.size
            elif m.digest is not None:
                yield from self._blob(m)
            self._emit(tarcodec.padding(m.size))
        self._emit(tarcodec.END_OF_ARCHIVE)
        self._flush()
        if self._behind is not None:
            self._behind.finish()

    def _take(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    def _blob(self, m: Member) -> Iterator[int]:
        """Copy one blob body; yields the bytes moved after each piece (EXP-8)."""
        assert m.digest is not None
        try:
            src = os.open(self._content.path(m.digest), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:  # recorded (the plan checked) but gone from disk
            raise DataLoss(
                f"failed to get reader: content {m.digest}: recorded but missing on disk"
            ) from None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):  # a corrupt store: data loss, not a size mismatch
                raise DataLoss(f"content {m.digest}: {self._content.path(m.digest)} is not a file")
            actual = st.st_size
            if actual != m.size:
                raise _short(m, actual, f": store file has {actual} bytes")
            if self.zero_copy and m.size > _SMALL:
                self._flush()
                yield from self._splice(src, m)
            else:
                yield from self._buffered(src, m)
        finally:
            os.close(src)

    def _buffered(self, src: int, m: Member, start: int = 0) -> Iterator[int]:
        """Body through user space: hashing, streams, fallbacks (EXP-8)."""
        assert m.digest is not None
        h = digests.hasher(m.digest.algorithm) if self._opts.verify else None
        buf = None
        if self._fd is not None:  # written before the next read: one buffer serves
            buf = self._buffer = self._buffer or bytearray(CHUNK_SIZE)
        left = m.size - start
        while left:
            yield _BREAK
            want = min(CHUNK_SIZE, left)
            data: Buffer
            if buf is not None:
                data = memoryview(buf)[: os.readv(src, [memoryview(buf)[:want]])]
            else:
                data = os.read(src, want)  # streams may keep it: a fresh bytes object
            if not data:
                raise _short(m, m.size - left)
            left -= len(data)
            if h is not None:
                h.update(data)
            self._emit(data)
            yield len(data)
        if h is not None and (actual := digests.from_hasher(h)) != m.digest:
            raise DigestMismatch(
                f"unexpected digest {actual} copied", expected=m.digest, actual=actual
            )

    def _splice(self, src: int, m: Member) -> Iterator[int]:
        """Zero-copy body: copy_file_range to files, splice to pipes, sendfile to sockets."""
        assert self._fd is not None
        dst = self._fd
        offset = 0
        how = self._kind
        while offset < m.size:
            yield _BREAK
            count = min(m.size - offset, _CALL)
            try:
                if how == "file":
                    n = os.copy_file_range(src, dst, count, offset)
                elif how == "pipe":  # NONBLOCK on the pipe side only: the fd's flags stay
                    n = os.splice(src, dst, count, offset_src=offset, flags=_SPLICE_FLAGS)
                else:  # a blocking socket blocks per call: keep calls to 1 MiB
                    if self._kind == "socket":
                        wait_writable(dst)
                        count = min(count, CHUNK_SIZE)
                    n = os.sendfile(dst, src, offset, count)
            except BlockingIOError:
                wait_writable(dst)
                continue
            except OSError as exc:
                if exc.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                if how == "file":
                    how = "socket"  # sendfile works into any fd
                    continue
                os.lseek(src, offset, os.SEEK_SET)
                yield from self._buffered(src, m, offset)
                return
            if n == 0:
                raise _short(m, offset)
            offset += n
            self._moved(n)
            yield n


def _short(m: Member, actual: int, detail: str = "") -> SizeMismatch:
    return SizeMismatch(
        f"unexpected copy size for {m.name}{detail}", expected=m.size, actual=actual
    )


@dataclass(frozen=True, slots=True)
class Limiters:
    """Worker-thread budgets for blob work, shared by every save from one store."""

    #: zero-copy hops: one, as kernel copies share one core's memory bandwidth.
    copy: anyio.CapacityLimiter
    hash: anyio.CapacityLimiter  #: hops through user space (hashing, async streams): two


_limiters: weakref.WeakKeyDictionary[object, Limiters] = weakref.WeakKeyDictionary()


def store_limiters(content: BlobReader) -> Limiters:
    """The budgets every save from ``content`` shares (made on first use, dropped with it)."""
    limiters = _limiters.get(content)
    if limiters is None:
        limiters = _limiters[content] = Limiters(anyio.CapacityLimiter(1), anyio.CapacityLimiter(2))
    return limiters


async def write(
    plan: SavePlan,
    content: BlobReader,
    sink: Sink,
    options: SaveOptions,
    limiters: Limiters,
    progress: ProgressCallback | None,
) -> tuple[int, Digest | None]:
    """Write ``plan`` to the open ``sink``, one hop per step; the bytes written, their sha256."""
    copier = _Copier(plan, content, sink, options)
    limiter = limiters.copy if copier.zero_copy else limiters.hash
    steps = copier.steps()
    try:
        while not copier.done:  # set before the last step: the generator never runs out
            for chunk in await anyio.to_thread.run_sync(next, steps, limiter=limiter):
                await sink.send(chunk)
            if progress is not None:
                progress(copier.written, plan.size, copier.item)
    except BrokenPipeError as exc:  # the reader left: the archive is cut short, save failed
        raise Unavailable(f"output {sink.name} closed after {copier.written} bytes") from exc
    finally:
        if copier.done:  # parked at its last yield: closing runs no I/O
            steps.close()
        else:  # may close a blob file mid-copy
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(steps.close)
    return copier.written, copier.sha256
