"""The tar codec's I/O shell: ``TarReader`` over a ``Source``, ``TarWriter`` onto a ``Sink``.

Owns only the loop between ``tarcodec`` and ``_streams`` (httpcore ``_receive_event``
shape, STYLE A2): ask the decoder for an event, on ``NEED_DATA`` receive >= 1 MiB and
feed it. anyio + tarcodec + _streams only; must not import the store (but its errors).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final, final

import anyio

from castar.engine._streams import CHUNK_SIZE, Sink, Source
from castar.engine.tarcodec import (
    DIRTYPE,
    END_OF_ARCHIVE,
    REGTYPE,
    ArchiveEnd,
    Chunk,
    MemberEnd,
    MemberStart,
    NeedData,
    TarDecoder,
    encode_header,
    padding,
)
from castar.store.errors import InvalidArgument, SizeMismatch

if TYPE_CHECKING:
    from collections.abc import AsyncIterable

    from castar.store.digest import Buffer

__all__ = ["TarReader", "TarWriter"]

# Members whose header + body + padding fit under this go out in one send.
_SMALL: Final = 64 << 10


@final
class TarReader:
    """Pull tar events from a ``Source`` (TAR-4: works on non-seekable streams).

    ``next_event`` returns ``MemberStart``, ``Chunk``, ``MemberEnd`` or ``ArchiveEnd``
    (then ``ArchiveEnd`` again on every call). ``Chunk.data`` is a view of a received
    buffer: use or copy it before the next call if it must outlive that.

    Args:
        source: where the archive bytes come from (see ``open_source``).
        chunk_size: bytes asked for per receive (one worker-thread hop for files).
    """

    def __init__(self, source: Source, chunk_size: int = CHUNK_SIZE) -> None:
        self.source = source
        self.decoder = TarDecoder()
        self._chunk_size = chunk_size
        self._discard = 0  # bytes of the next receives that belong to a skipped body
        #: The last ``MemberStart`` returned (None before the first).
        self.member: MemberStart | None = None

    @property
    def offset(self) -> int:
        """Archive bytes consumed so far."""
        return self.decoder.offset

    async def next_event(self) -> MemberStart | Chunk | MemberEnd | ArchiveEnd:
        """Return the next event, receiving from the source as needed.

        Raises:
            MalformedArchive: the archive is not well formed (offset and member named).
        """
        decoder = self.decoder
        while True:
            event = decoder.next_event()
            if not isinstance(event, NeedData):
                if isinstance(event, MemberStart):
                    self.member = event
                return event
            try:
                data = await self.source.receive(self._chunk_size)
            except anyio.EndOfStream:
                decoder.feed_eof()
                continue
            if self._discard:
                if len(data) <= self._discard:
                    self._discard -= len(data)
                    continue
                decoder.feed(memoryview(data)[self._discard :])
                self._discard = 0
                continue
            decoder.feed(data)

    async def skip_body(self) -> None:
        """Skip the body of the member whose ``MemberStart`` was just returned.

        Seeks when the source is seekable and the rest is at least one chunk away,
        otherwise drops the bytes as they arrive; the next event is the next member's.
        """
        unfed = self.decoder.skip_body()
        if not unfed:
            return
        if self.source.seekable and unfed >= self._chunk_size:
            await self.source.skip(unfed)
        else:
            self._discard += unfed

    async def read_member(self, limit: int) -> bytes:
        """Read the body of the member just started, whole, when it is at most ``limit``.

        Call right after ``MemberStart``; consumes through its ``MemberEnd``.

        Raises:
            InvalidArgument: the member is larger than ``limit`` (EDGE-13).
        """
        member = self.member
        if member is not None and member.size > limit:
            raise InvalidArgument(
                f"tar member {member.name!r}: {member.size} bytes exceeds the {limit}-byte limit"
            )
        parts: list[bytes] = []
        while True:
            event = await self.next_event()
            if isinstance(event, Chunk):
                parts.append(bytes(event.data))
            elif isinstance(event, MemberEnd):
                return b"".join(parts)
            else:
                raise RuntimeError(f"read_member() called out of order: got {event!r}")


@final
class TarWriter:
    """Write a deterministic tar archive to a ``Sink`` (TAR-1..3).

    Headers come from ``encode_header`` (mtime 0, ids 0, USTAR else PAX). Small
    members go out as one ``send`` with their header and padding; the sink then
    coalesces sends into >= 1 MiB writes. ``finish`` writes the end marker and flushes.
    """

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        #: Archive bytes written so far (the next member's header offset).
        self.offset = 0

    async def _send(self, data: Buffer) -> None:
        await self.sink.send(data)
        self.offset += len(data)

    async def add_file(
        self, name: str, data: Buffer, *, mode: int = 0o444, type: bytes = REGTYPE
    ) -> None:
        """Add a member whose body is ``data``."""
        header = encode_header(name, len(data), mode=mode, type=type)
        if len(data) <= _SMALL:
            await self._send(b"".join((header, data, padding(len(data)))))
            return
        await self._send(header)
        await self._send(data)
        await self._send(padding(len(data)))

    async def add_stream(
        self,
        name: str,
        size: int,
        chunks: AsyncIterable[Buffer],
        *,
        mode: int = 0o444,
    ) -> None:
        """Add a member of ``size`` bytes whose body comes from ``chunks``.

        Raises:
            SizeMismatch: ``chunks`` yields more or fewer than ``size`` bytes (the
                archive written so far is then unusable).
        """
        await self._send(encode_header(name, size, mode=mode))
        written = 0
        async for chunk in chunks:
            written += len(chunk)
            if written > size:
                raise SizeMismatch(
                    f"tar member {name!r}: body longer than {size} bytes",
                    expected=size,
                    actual=written,
                )
            await self._send(chunk)
        if written != size:
            raise SizeMismatch(
                f"tar member {name!r}: body of {written} bytes, header says {size}",
                expected=size,
                actual=written,
            )
        await self._send(padding(size))

    async def add_dir(self, name: str, *, mode: int = 0o755) -> None:
        """Add a directory entry (TAR-1: trailing ``/``; TAR-3: 0755)."""
        if not name.endswith("/"):
            name += "/"
        await self._send(encode_header(name, 0, mode=mode, type=DIRTYPE))

    async def finish(self) -> None:
        """Write the end-of-archive marker and flush the sink (it stays open)."""
        await self._send(END_OF_ARCHIVE)
        await self.sink.flush()
