"""Byte sources and sinks: paths, fds, stdin/stdout, anyio streams and async file objects.

Owns ``Source``, its adapters and ``open_source``, with one worker-thread hop per >= 1 MiB
of file I/O (design rule io-hops). Re-exports the sink side (``save.sinks``) and ``CHUNK_SIZE``:
import them from here. anyio only; imports no store module but its errors.
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

    Use as ``async with open_source(obj) as src:``; ``aclose`` closes only what
    ``open_source`` opened itself (paths), never fds, stdin or the caller's objects.
    """

    def fileno(self) -> int | None:
        """The descriptor of a regular file, read with ``os.pread``; None for anything else."""
        return None

    def raw_file(self) -> io.FileIO | None:
        """The unbuffered file under a path/fd/stdin source, for a worker thread to read."""
        return None

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        """Return the next 1..max_bytes bytes; ``anyio.EndOfStream`` when none are left."""
        raise NotImplementedError


@final
class _FileSource(FileEndpoint, Source):
    """A path, fd or stdin, read with one worker-thread hop per ``receive``."""

    _role = "source"

    def __init__(self, target: str | os.PathLike[str] | int, name: str) -> None:
        super().__init__(target, name)
        self._file: io.FileIO | None = None
        self._regular = False

    def fileno(self) -> int | None:
        fd = self.raw_file().fileno()  # refuses before opening
        return fd if self._regular else None

    def raw_file(self) -> io.FileIO:
        if self._file is None:
            raise self._not_open()
        return self._file

    def _open_sync(self) -> None:
        f = io.FileIO(self._target, "rb", closefd=self._owned)
        self._regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode) and f.seekable()
        self._file = f

    def _is_open(self) -> bool:
        return self._file is not None

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        await self.open()
        data = await anyio.to_thread.run_sync(
            self._read, max_bytes, abandon_on_cancel=not self._regular
        )
        if not data:
            raise anyio.EndOfStream
        return data

    def _read(self, n: int) -> bytes:
        f = self.raw_file()
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
        args = (max_bytes,) if self._takes_max else ()
        data = b""
        while not data:  # an object stream may hand out empty items
            if self._eof:
                raise anyio.EndOfStream
            try:
                data = await self._stream.receive(*args)
            except (anyio.EndOfStream, anyio.ClosedResourceError):
                self._eof = True
                raise anyio.EndOfStream from None
        if len(data) > max_bytes:
            self._pending = memoryview(data)[max_bytes:]
            return bytes(data[:max_bytes])
        return bytes(data)  # no copy when it is bytes already

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

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        data = await self._obj.read(max_bytes)
        if not data:
            raise anyio.EndOfStream
        return bytes(data)


def open_source(obj: object) -> Source:
    """Adapt ``obj`` to a ``Source``; paths open on entering.

    ``obj`` is a path, ``"-"`` for stdin, an int fd, an anyio ``ByteReceiveStream``
    (anything with ``async receive``) or an object with ``async read(n)``; anything
    else is InvalidArgument.
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
