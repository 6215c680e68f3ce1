"""Byte sources and sinks: paths, fds, stdin/stdout, anyio streams and async file objects.

Owns ``Source``, its adapters and ``open_source``: what the importer and the CLI read
archives from, with one worker-thread hop per >= 1 MiB of file I/O (design rule io-hops).
Re-exports the sink side (``save.sinks``) and ``CHUNK_SIZE`` (``_endpoints``): import all of
them from here. anyio only; must not import the store (but its errors) or engine modules
other than those two.
"""

from __future__ import annotations

import inspect
import io
import os
import select
import stat
from typing import Any, final

import anyio
import anyio.abc

from castar.engine._endpoints import CHUNK_SIZE, Endpoint, FileEndpoint, describe, file_target
from castar.engine.save.sinks import Sink, SinkKind, open_sink
from castar.store.errors import InvalidArgument

__all__ = ["CHUNK_SIZE", "Sink", "SinkKind", "Source", "open_sink", "open_source"]


class Source(Endpoint):
    """Where archive bytes come from; the shape of an anyio ``ByteReceiveStream``.

    Use as ``async with open_source(obj) as src:``. Paths are opened (in a worker
    thread) on entering, or on the first ``receive``/``seek``; ``seekable`` and
    ``size`` are known from then on. ``aclose`` closes only what ``open_source``
    opened itself: fds, stdin and the caller's streams or files are left open.
    """

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


@final
class _FileSource(FileEndpoint, Source):
    """A path, fd or stdin, read with one worker-thread hop per ``receive``."""

    _role = "source"

    def __init__(self, target: str | os.PathLike[str] | int, name: str) -> None:
        super().__init__(target, name)
        self._file: io.FileIO | None = None
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
            raise self._not_open()
        return self._file

    def _is_open(self) -> bool:
        return self._file is not None

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
        # same hop so the caller sees >= 1 MiB reads (design rule io-coalesce).
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
        if f is not None and self._owned:
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
    target = file_target(obj, 0, "<stdin>")
    if target is not None:
        return _FileSource(*target)
    if isinstance(obj, anyio.abc.ByteReceiveStream):
        return _StreamSource(obj, describe(obj), takes_max=True)
    if inspect.iscoroutinefunction(getattr(obj, "receive", None)):
        return _StreamSource(obj, describe(obj), takes_max=False)
    if callable(getattr(obj, "read", None)):
        return _ReaderSource(obj, describe(obj))
    raise InvalidArgument(f"cannot read an archive from {type(obj).__name__}")
