"""Byte sinks: paths, fds, stdout, anyio streams, async writers (design rule io-coalesce)."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import inspect
import os
import secrets
import select
import stat
import struct
import termios
import time
from typing import TYPE_CHECKING, Final, Literal, final

import anyio
import anyio.abc
import anyio.from_thread

from castar.engine._endpoints import CHUNK_SIZE, Endpoint, FileEndpoint, describe, file_target
from castar.store.errors import InvalidArgument

if TYPE_CHECKING:
    from castar.store.digest import Buffer

__all__ = ["Sink", "SinkKind", "open_sink", "wait_writable", "write_all"]

_DIRECT: Final = 64 << 10  # sends at least this large skip the coalescing buffer

SinkKind = Literal["file", "pipe", "socket", "stream"]
_KINDS: Final[dict[int, SinkKind]] = {
    stat.S_IFREG: "file",
    stat.S_IFIFO: "pipe",
    stat.S_IFSOCK: "socket",
}


def wait_writable(fd: int) -> None:
    """Wait (in a worker thread) until ``fd`` takes bytes, cancellable every 100 ms."""
    while not select.select([], [fd], [], 0.1)[1]:
        anyio.from_thread.check_cancelled()


def _pipe_room(fd: int) -> int | None:
    """Bytes the pipe ``fd`` takes now without blocking (Linux), None when unknown."""
    try:
        size = fcntl.fcntl(fd, fcntl.F_GETPIPE_SZ)
        (queued,) = struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))
    except OSError:
        return None
    return max(0, size - int(queued))


def write_all(fd: int, data: Buffer, kind: str) -> None:
    """Write all of ``data``; into a pipe never more than it takes, so waits stay cancellable."""
    view = memoryview(data)
    while view:
        room = _pipe_room(fd) if kind == "pipe" else None
        if room == 0:
            # A full pipe whose reader left stays full and selects writable: write anyway,
            # at most what a writable pipe takes without blocking, so EPIPE can say so.
            wait_writable(fd)
            room = select.PIPE_BUF
        try:
            n = os.write(fd, view if room is None else view[:room])
        except BlockingIOError:
            wait_writable(fd)
            continue
        view = view[n:]


class Sink(Endpoint):
    """Where archive bytes go; ``send`` coalesces, so ``flush()`` before using ``fileno()``."""

    #: "file" (regular file), "pipe", "socket", or "stream" (anything else: send() only).
    kind: SinkKind = "stream"

    def __init__(self) -> None:
        self._buf = bytearray()

    def fileno(self) -> int | None:
        """The OS file descriptor written to, or None."""
        return None

    async def send(self, data: Buffer) -> None:
        """Write ``data`` (copied or written before returning: the caller may reuse it)."""
        n = len(data)
        if not n:
            return
        if n < _DIRECT:
            self._buf += data
            if len(self._buf) >= CHUNK_SIZE:
                await self.flush()
            return
        head, self._buf = self._buf, bytearray()
        await (self._write(head, data) if head else self._write(data))

    async def flush(self) -> None:
        """Write out whatever ``send`` has buffered."""
        if self._buf:
            data, self._buf = self._buf, bytearray()
            await self._write(data)

    async def _write(self, *parts: Buffer) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Flush and release what ``open_sink`` opened."""
        with anyio.CancelScope(shield=True):
            await self.flush()

    async def _abort(self) -> None:
        self._buf = bytearray()
        await self.aclose()


def _temp_name(path: str) -> str:
    head, tail = os.path.split(path)
    return os.path.join(head, f".{tail}.castar-{os.getpid()}.{secrets.token_hex(4)}")


def _remove_stale_temps(path: str) -> None:
    """Remove the ``.NAME.castar-<pid>`` temps of ``path`` whose writer is dead."""
    head, tail = os.path.split(path)
    prefix = f".{tail}.castar-"
    for entry in os.scandir(head or "."):
        pid = entry.name.removeprefix(prefix).partition(".")[0]
        if entry.name.startswith(prefix) and pid.isdigit():
            try:
                os.kill(int(pid), 0)
            except ProcessLookupError:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
            except OSError:
                pass  # alive, someone else's


def _link_fd(fd: int, path: str) -> None:
    """Name the unnamed file ``fd`` ``path`` (a dir fd makes ``os.link`` call ``linkat``)."""
    head, tail = os.path.split(path)
    dir_fd = os.open(head or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(f"/proc/self/fd/{fd}", tail, dst_dir_fd=dir_fd, follow_symlinks=True)
    finally:
        os.close(dir_fd)


def _open_special(path: str, flags: int, *, fifo: bool) -> int:
    """Open a device or FIFO without blocking: a FIFO waits for its reader cancellably."""
    while True:
        try:
            fd = os.open(path, flags | os.O_NONBLOCK)
        except OSError as exc:  # ENXIO: a FIFO nobody reads yet
            if not (fifo and exc.errno == errno.ENXIO):
                raise
            anyio.from_thread.check_cancelled()
            time.sleep(0.05)
            continue
        os.set_blocking(fd, True)
        return fd


@final
class _FileSink(FileEndpoint, Sink):
    """A path, fd or stdout; a regular path is written unnamed and put in place on success."""

    _role = "sink"

    def __init__(self, target: str | os.PathLike[str] | int, name: str) -> None:
        Sink.__init__(self)
        FileEndpoint.__init__(self, target, name)
        self._fd: int | None = None
        self._place: str | None = None  # where the written file goes on success
        self._temp: str | None = None  # its name until then, when not O_TMPFILE

    def _is_open(self) -> bool:
        return self._fd is not None

    def fileno(self) -> int | None:
        if not self._is_open():
            raise self._not_open()
        return self._fd

    def _open_sync(self) -> None:
        target = self._target
        if isinstance(target, int):
            fd = target
        else:
            path = os.fspath(target)
            flags = os.O_WRONLY | os.O_CLOEXEC
            try:
                mode = os.stat(path).st_mode
            except FileNotFoundError:
                mode = stat.S_IFREG
            if stat.S_ISREG(mode):
                self._place = path
                fd = self._open_unnamed(path, flags)
            else:
                fd = _open_special(path, flags, fifo=stat.S_ISFIFO(mode))
        self.kind = _KINDS.get(stat.S_IFMT(os.fstat(fd).st_mode), "stream")
        self._fd = fd

    def _open_unnamed(self, path: str, flags: int) -> int:
        _remove_stale_temps(path)
        try:
            return os.open(os.path.dirname(path) or ".", flags | os.O_TMPFILE, 0o666)
        except AttributeError:  # no O_TMPFILE on this system
            pass
        except OSError as exc:  # EISDIR: a kernel without it; EOPNOTSUPP: a file system
            if exc.errno not in (errno.EISDIR, errno.EOPNOTSUPP):
                raise
        self._temp = _temp_name(path)
        return os.open(self._temp, flags | os.O_CREAT | os.O_EXCL, 0o666)

    def _release(self, fd: int, keep: bool) -> None:
        """Rename the written file into place if ``keep``, else drop it; close ``fd``."""
        temp = self._temp
        try:
            if keep and self._place is not None:
                if temp is None:  # O_TMPFILE: link it beside the target first
                    temp = _temp_name(self._place)
                    _link_fd(fd, temp)
                os.replace(temp, self._place)
                temp = None
        finally:
            os.close(fd)
            if temp is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp)

    async def _write(self, *parts: Buffer) -> None:
        await self.open()
        await anyio.to_thread.run_sync(self._write_sync, parts)

    def _write_sync(self, parts: tuple[Buffer, ...]) -> None:
        assert self._fd is not None
        for data in parts:
            write_all(self._fd, data, self.kind)

    async def aclose(self, *, keep: bool = True) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            except BaseException:
                keep = False
                raise
            finally:
                self._closed = True
                fd, self._fd = self._fd, None
                if fd is not None and self._owned:
                    await anyio.to_thread.run_sync(self._release, fd, keep)

    async def _abort(self) -> None:
        self._buf = bytearray()
        await self.aclose(keep=False)


@final
class _StreamSink(Sink):
    """An anyio ``ByteSendStream`` (``async send``) or an object with ``async write(b)``."""

    def __init__(self, obj: object, name: str, method: str) -> None:
        super().__init__()
        self.name = name
        self._call = getattr(obj, method)

    async def _write(self, *parts: Buffer) -> None:
        # Streams may keep what they are given (memory streams): hand over immutable bytes.
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        await self._call(data if isinstance(data, bytes) else bytes(data))


def open_sink(obj: object) -> Sink:
    """A path, ``"-"``, an fd, or an object with ``async send``/``write`` as a ``Sink``."""
    if isinstance(obj, Sink):
        return obj
    target = file_target(obj, 1, "<stdout>")
    if target is not None:
        return _FileSink(*target)
    if isinstance(obj, anyio.abc.ByteSendStream) or inspect.iscoroutinefunction(
        getattr(obj, "send", None)
    ):
        return _StreamSink(obj, describe(obj), "send")
    if callable(getattr(obj, "write", None)):
        return _StreamSink(obj, describe(obj), "write")
    raise InvalidArgument(f"cannot write an archive to {type(obj).__name__}")
