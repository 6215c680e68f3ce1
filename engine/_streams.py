"""Byte sources and sinks: paths, fds, stdin/stdout, anyio streams and async file objects.

Owns the adapters the importer, exporter and CLI read archives from and write them to,
with one worker-thread hop per >= 1 MiB of file I/O (IO-LIMITS §2). anyio only; must not
import the store or other engine modules.
"""

from __future__ import annotations

import inspect
import io
import os
import select
import stat
from typing import TYPE_CHECKING, Any, Final, Literal, Self, final

import anyio
import anyio.abc

from castar.store.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from types import TracebackType

    from castar.store.digest import Buffer

__all__ = ["CHUNK_SIZE", "Sink", "SinkKind", "Source", "open_sink", "open_source"]

#: Default read size and the size sinks coalesce small writes up to (IO-LIMITS §2.3).
CHUNK_SIZE: Final = 1 << 20
# Sends at least this large skip the coalescing buffer.
_DIRECT: Final = 64 << 10

SinkKind = Literal["file", "pipe", "socket", "stream"]


class Source:
    """Where archive bytes come from; the shape of an anyio ``ByteReceiveStream``.

    Use as ``async with open_source(obj) as src:``. Paths are opened (in a worker
    thread) on entering, or on the first ``receive``/``seek``; ``seekable`` and
    ``size`` are known from then on. ``aclose`` closes only what ``open_source``
    opened itself: fds, stdin and the caller's streams or files are left open.
    """

    #: What to name in messages: the path, ``<stdin>``, ``<fd N>`` or the object.
    name: str

    @property
    def seekable(self) -> bool:
        """Whether ``seek`` works (a regular file, or an async file object over one)."""
        return False

    @property
    def size(self) -> int | None:
        """Bytes from the opening position to the end, when known."""
        return None

    def fileno(self) -> int | None:
        """The OS file descriptor read from, or None for streams and file objects."""
        return None

    def raw_file(self) -> io.FileIO | None:
        """The unbuffered file under a path/fd/stdin source, for sync use in a worker thread.

        Its position is the source's position: a caller that moves it must ``seek``
        the source back (or use ``os.pread`` on ``fileno()``, which moves nothing).
        """
        return None

    async def open(self) -> None:
        """Open the underlying file if not done yet (idempotent)."""

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        """Return the next 1..max_bytes bytes.

        Raises:
            anyio.EndOfStream: no bytes are left.
        """
        raise NotImplementedError

    async def receive_into(self, buffer: memoryview) -> int:
        """Fill the start of ``buffer`` with the next bytes; return how many (0 at the end)."""
        try:
            data = await self.receive(len(buffer))
        except anyio.EndOfStream:
            return 0
        buffer[: len(data)] = data
        return len(data)

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        """Move the read position (``os.lseek`` semantics); return the new position.

        Raises:
            InvalidArgument: the source is not seekable.
        """
        raise InvalidArgument(f"archive {self.name}: source is not seekable")

    async def skip(self, n: int) -> None:
        """Advance past ``n`` bytes: seek when seekable, else read and discard."""
        if n <= 0:
            return
        if self.seekable:
            await self.seek(n, os.SEEK_CUR)
            return
        while n:
            try:
                n -= len(await self.receive(min(n, CHUNK_SIZE)))
            except anyio.EndOfStream:
                return

    async def aclose(self) -> None:
        """Release what ``open_source`` opened."""

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await self.aclose()


def _map_open_error(exc: OSError, name: str) -> Exception:
    """Translate an open failure once (STYLE §3.4); other OSErrors stay as they are."""
    if isinstance(exc, FileNotFoundError):
        return NotFound(f"archive {name}: {exc.strerror or exc}")
    if isinstance(exc, IsADirectoryError | NotADirectoryError):
        return InvalidArgument(f"archive {name}: {exc.strerror or exc}")
    return exc


@final
class _FileSource(Source):
    """A path, fd or stdin, read with one worker-thread hop per ``receive``."""

    def __init__(self, target: str | os.PathLike[str] | int, name: str) -> None:
        self.name = name
        self._target = target
        self._file: io.FileIO | None = None
        self._closed = False
        self._regular = False
        self._size: int | None = None

    @property
    def seekable(self) -> bool:
        self._opened()
        return self._regular

    @property
    def size(self) -> int | None:
        self._opened()
        return self._size

    def fileno(self) -> int | None:
        return self._opened().fileno()

    def raw_file(self) -> io.FileIO | None:
        return self._opened()

    def _opened(self) -> io.FileIO:
        if self._file is None:
            raise RuntimeError(f"source {self.name} is not open yet: use `async with` or open()")
        return self._file

    async def open(self) -> None:
        if self._file is None:
            if self._closed:
                raise anyio.ClosedResourceError(f"source {self.name} is closed")
            try:
                await anyio.to_thread.run_sync(self._open_sync)
            except OSError as exc:
                raise _map_open_error(exc, self.name) from exc

    def _open_sync(self) -> None:
        target = self._target
        if isinstance(target, int):
            f = io.FileIO(target, "rb", closefd=False)
        else:
            f = io.FileIO(os.fspath(target), "rb")
        st = os.fstat(f.fileno())
        self._regular = stat.S_ISREG(st.st_mode) and f.seekable()
        if self._regular:
            self._size = max(0, st.st_size - os.lseek(f.fileno(), 0, os.SEEK_CUR))
        self._file = f

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        await self.open()
        data = await anyio.to_thread.run_sync(
            self._read, max_bytes, abandon_on_cancel=not self._regular
        )
        if not data:
            raise anyio.EndOfStream
        return data

    def _read(self, n: int) -> bytes:
        f = self._opened()
        data = self._read_once(f, n)
        if self._regular or len(data) in (0, n):
            return data
        # A pipe hands out what is there (64 KiB at a time): fill the request in this
        # same hop so the caller sees >= 1 MiB reads (IO-LIMITS §2.2).
        parts = [data]
        got = len(data)
        while got < n:
            more = self._read_once(f, n - got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    @staticmethod
    def _read_once(f: io.FileIO, n: int) -> bytes:
        while True:
            data = f.read(n)
            if data is not None:
                return data
            select.select([f.fileno()], [], [])  # a non-blocking fd with nothing yet

    async def receive_into(self, buffer: memoryview) -> int:
        await self.open()
        f = self._opened()
        return (
            await anyio.to_thread.run_sync(f.readinto, buffer, abandon_on_cancel=not self._regular)
            or 0
        )

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        await self.open()
        if not self.seekable:
            raise InvalidArgument(f"archive {self.name}: source is not seekable")
        return await anyio.to_thread.run_sync(self._opened().seek, offset, whence)

    async def aclose(self) -> None:
        self._closed = True
        f, self._file = self._file, None
        if f is not None and not isinstance(self._target, int):
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(f.close)


@final
class _StreamSource(Source):
    """An anyio ``ByteReceiveStream``, or an object stream of bytes (``async receive()``)."""

    def __init__(self, stream: object, name: str, *, takes_max: bool) -> None:
        self.name = name
        self._stream: Any = stream
        self._takes_max = takes_max
        self._pending = memoryview(b"")
        self._eof = False

    async def _piece(self, max_bytes: int) -> bytes:
        if self._pending:
            data = bytes(self._pending[:max_bytes])
            self._pending = self._pending[max_bytes:]
            return data
        while True:
            if self._eof:
                raise anyio.EndOfStream
            try:
                if self._takes_max:
                    data = await self._stream.receive(max_bytes)
                else:
                    data = await self._stream.receive()
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._eof = True
                raise anyio.EndOfStream from None
            if data:
                break
        if len(data) > max_bytes:
            self._pending = memoryview(data)[max_bytes:]
            return bytes(data[:max_bytes])
        return data if isinstance(data, bytes) else bytes(data)

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        first = await self._piece(max_bytes)
        want = max_bytes // 4
        if len(first) >= want:
            return first
        # Small pieces (sockets, memory streams) are joined up to a quarter of the
        # request so the decoder sees few, large buffers; stop early at the end.
        parts = [first]
        got = len(first)
        while got < want:
            try:
                more = await self._piece(max_bytes - got)
            except anyio.EndOfStream:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)


@final
class _ReaderSource(Source):
    """An object with ``async read(n)``: ``anyio.wrap_file``, trio or aiofiles files."""

    def __init__(self, obj: object, name: str) -> None:
        self.name = name
        self._obj: Any = obj
        self._checked = False
        self._seekable = False
        self._size: int | None = None

    @property
    def seekable(self) -> bool:
        return self._seekable

    @property
    def size(self) -> int | None:
        return self._size

    async def open(self) -> None:
        if self._checked:
            return
        self._checked = True
        seek = getattr(self._obj, "seek", None)
        tell = getattr(self._obj, "tell", None)
        if not (inspect.iscoroutinefunction(seek) and inspect.iscoroutinefunction(tell)):
            return
        try:
            here = await self._obj.tell()
            end = await self._obj.seek(0, os.SEEK_END)
            await self._obj.seek(here)
        except (OSError, ValueError):
            return  # a pipe under the file object
        self._seekable = True
        self._size = max(0, end - here)

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        await self.open()
        data = await self._obj.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return bytes(data)

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        await self.open()
        if not self._seekable:
            raise InvalidArgument(f"archive {self.name}: source is not seekable")
        pos: int = await self._obj.seek(offset, whence)
        return pos


def _describe(obj: object) -> str:
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) else f"<{type(obj).__name__}>"


def open_source(obj: object) -> Source:
    """Adapt ``obj`` to a ``Source`` (no I/O: paths open on entering or first use).

    Args:
        obj: a path (``str``/``PathLike``), ``"-"`` for stdin, an int fd, an anyio
            ``ByteReceiveStream`` (anything with ``async receive``), or an object
            with ``async read(n)``; the latter is seekable when it has async
            ``seek``/``tell`` over a seekable file.

    Raises:
        InvalidArgument: ``obj`` is none of these.
    """
    if isinstance(obj, Source):
        return obj
    if isinstance(obj, str) and obj == "-":
        return _FileSource(0, "<stdin>")
    if isinstance(obj, str | os.PathLike):
        return _FileSource(obj, os.fspath(obj))
    if isinstance(obj, int) and not isinstance(obj, bool):
        return _FileSource(obj, f"<fd {obj}>")
    if isinstance(obj, anyio.abc.ByteReceiveStream):
        return _StreamSource(obj, _describe(obj), takes_max=True)
    if inspect.iscoroutinefunction(getattr(obj, "receive", None)):
        return _StreamSource(obj, _describe(obj), takes_max=False)
    if callable(getattr(obj, "read", None)):
        return _ReaderSource(obj, _describe(obj))
    raise InvalidArgument(f"cannot read an archive from {type(obj).__name__}")


# -- sinks ---------------------------------------------------------------------------------------


class Sink:
    """Where archive bytes go; ``send`` coalesces small writes up to 1 MiB.

    Use as ``async with open_sink(obj) as sink:``. Whoever writes to ``fileno()``
    directly (``copy_file_range``/``splice``) must ``await flush()`` first so
    buffered bytes land before theirs. ``aclose`` flushes, then closes only what
    ``open_sink`` opened itself (paths).
    """

    #: What to name in messages.
    name: str
    #: "file" (regular file), "pipe", "socket", or "stream" (anything else: send() only).
    kind: SinkKind = "stream"

    def __init__(self) -> None:
        self._buf = bytearray()
        self.bytes_sent = 0

    def fileno(self) -> int | None:
        """The OS file descriptor written to, or None."""
        return None

    async def open(self) -> None:
        """Open the underlying file if not done yet (idempotent)."""

    async def send(self, data: Buffer) -> None:
        """Write ``data`` (copied or written before returning: the caller may reuse it)."""
        n = len(data)
        if not n:
            return
        self.bytes_sent += n
        if n < _DIRECT:
            self._buf += data
            if len(self._buf) >= CHUNK_SIZE:
                await self.flush()
            return
        if self._buf:
            head, self._buf = self._buf, bytearray()
            await self._write(head, data)
            return
        await self._write(data)

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

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            await self.aclose()
            return
        with anyio.CancelScope(shield=True):
            await self._close_quietly()

    async def _close_quietly(self) -> None:
        """On an error: drop buffered bytes and release resources."""
        self._buf = bytearray()
        await self.aclose()


@final
class _FileSink(Sink):
    def __init__(self, target: str | os.PathLike[str] | int, name: str) -> None:
        super().__init__()
        self.name = name
        self._target = target
        self._fd: int | None = None
        self._closed = False

    def fileno(self) -> int | None:
        if self._fd is None:
            raise RuntimeError(f"sink {self.name} is not open yet: use `async with` or open()")
        return self._fd

    async def open(self) -> None:
        if self._fd is None:
            if self._closed:
                raise anyio.ClosedResourceError(f"sink {self.name} is closed")
            try:
                await anyio.to_thread.run_sync(self._open_sync)
            except OSError as exc:
                raise _map_open_error(exc, self.name) from exc

    def _open_sync(self) -> None:
        target = self._target
        if isinstance(target, int):
            fd = target
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(target, flags, 0o666)
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode):
            self.kind = "file"
        elif stat.S_ISFIFO(mode):
            self.kind = "pipe"
        elif stat.S_ISSOCK(mode):
            self.kind = "socket"
        else:
            self.kind = "stream"
        self._fd = fd

    async def _write(self, *parts: Buffer) -> None:
        await self.open()
        await anyio.to_thread.run_sync(self._write_sync, parts)

    def _write_sync(self, parts: tuple[Buffer, ...]) -> None:
        fd = self.fileno()
        assert fd is not None
        for data in parts:
            view = memoryview(data)
            while view:
                try:
                    n = os.write(fd, view)
                except BlockingIOError:
                    select.select([], [fd], [])
                    continue
                view = view[n:]

    async def aclose(self) -> None:
        with anyio.CancelScope(shield=True):
            try:
                await self.flush()
            finally:
                self._closed = True
                fd, self._fd = self._fd, None
                if fd is not None and not isinstance(self._target, int):
                    await anyio.to_thread.run_sync(os.close, fd)


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
    """Adapt ``obj`` to a ``Sink`` (no I/O: paths are created on entering or first send).

    Args:
        obj: a path (created or truncated), ``"-"`` for stdout, an int fd, an anyio
            ``ByteSendStream`` (anything with ``async send``), or an object with
            ``async write(b)``.

    Raises:
        InvalidArgument: ``obj`` is none of these.
    """
    if isinstance(obj, Sink):
        return obj
    if isinstance(obj, str) and obj == "-":
        return _FileSink(1, "<stdout>")
    if isinstance(obj, str | os.PathLike):
        return _FileSink(obj, os.fspath(obj))
    if isinstance(obj, int) and not isinstance(obj, bool):
        return _FileSink(obj, f"<fd {obj}>")
    if isinstance(obj, anyio.abc.ByteSendStream) or inspect.iscoroutinefunction(
        getattr(obj, "send", None)
    ):
        return _StreamSink(obj, _describe(obj), "send")
    if callable(getattr(obj, "write", None)):
        return _StreamSink(obj, _describe(obj), "write")
    raise InvalidArgument(f"cannot write an archive to {type(obj).__name__}")
