"""Whole-archive decompression: gzip, zstd, xz and bzip2 sniffed by magic bytes (IMP-1).

``DecompressedSource`` inflates another source while streaming, in worker threads,
≥ 1 MiB per hop; isal when importable, else zlib; zstandard; stdlib lzma and bz2.
"""

from __future__ import annotations

import bz2
import io
import lzma
import zlib
from typing import IO, Final, Protocol, cast

import anyio
import anyio.from_thread
import anyio.to_thread

from castar.engine._endpoints import CHUNK_SIZE as CHUNK
from castar.store.errors import CastarError, MalformedArchive

__all__ = ["GZIP", "ZSTD", "DecompressedSource", "RawSource", "sniff"]

GZIP: Final = "gzip"
ZSTD: Final = "zstd"

_GZIP_MAGIC: Final = b"\x1f\x8b\x08"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"
#: The stdlib-read kinds by magic: their file objects read concatenated streams too.
_STDLIB: Final = {b"\xfd7zXZ\x00": ("xz", lzma.LZMAFile), b"BZh": ("bzip2", bz2.BZ2File)}
_ZSTD_SKIPPABLE: Final = 0x184D2A50


class RawSource(Protocol):
    """A named stream of bytes: ``receive`` raises ``anyio.EndOfStream`` at the end."""

    @property
    def name(self) -> str: ...
    async def receive(self, max_bytes: int = ...) -> bytes: ...


def sniff(head: bytes) -> str | None:
    """``"gzip"``, ``"zstd"`` (a frame or a skippable one), ``"xz"``, ``"bzip2"`` or None."""
    if head.startswith(_GZIP_MAGIC):
        return GZIP
    if head.startswith(_ZSTD_MAGIC):
        return ZSTD
    if len(head) >= 4 and int.from_bytes(head[:4], "little") & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
        return ZSTD
    return next((k for magic, (k, _) in _STDLIB.items() if head.startswith(magic)), None)


class _ZstdFrames:
    """Follows zstd frame and block headers (RFC 8878 §3.1): did the input end between frames?"""

    _FCS: Final = (0, 2, 4, 8)
    _DID: Final = (0, 1, 2, 4)

    def __init__(self) -> None:
        self._pending = bytearray()  # an incomplete header being collected
        self._skip = 0  # body bytes to pass over
        self._state = "magic"  # magic, skippable-size, header, block, checksum
        self._need = 4
        self._checksum = False

    @property
    def between_frames(self) -> bool:
        return self._state == "magic" and not self._pending and not self._skip

    def feed(self, data: memoryview) -> None:
        pos, n = 0, len(data)
        while pos < n:
            if self._skip:
                step = min(self._skip, n - pos)
                self._skip -= step
                pos += step
                continue
            take = min(self._need - len(self._pending), n - pos)
            self._pending += data[pos : pos + take]
            pos += take
            if len(self._pending) == self._need:
                self._advance(bytes(self._pending))

    def _advance(self, field: bytes) -> None:
        self._pending.clear()
        state = self._state
        if state == "magic":
            magic = int.from_bytes(field, "little")
            if magic & 0xFFFFFFF0 == _ZSTD_SKIPPABLE:
                self._state, self._need = "skippable-size", 4
            elif field == _ZSTD_MAGIC:
                self._state, self._need = "descriptor", 1
            else:
                raise ValueError(f"not a zstd frame (magic {field.hex()})")
        elif state == "skippable-size":
            self._skip = int.from_bytes(field, "little")
            self._state, self._need = "magic", 4
        elif state == "descriptor":
            fhd = field[0]
            single = bool(fhd & 0x20)
            fcs = self._FCS[fhd >> 6] or (1 if single else 0)
            self._checksum = bool(fhd & 0x04)
            self._skip = (0 if single else 1) + self._DID[fhd & 0x03] + fcs
            self._state, self._need = "block", 3
        elif state == "block":
            header = int.from_bytes(field, "little")
            kind = (header >> 1) & 0x03
            self._skip = 1 if kind == 1 else header >> 3
            if header & 1:  # the last block, then its checksum if any
                self._state, self._need = ("checksum" if self._checksum else "magic"), 4
        else:  # checksum
            self._state, self._need = "magic", 4


class _Bridge(io.RawIOBase):
    """A blocking file over an async source (≥ 1 MiB per hop), or ``direct`` file, cancellable."""

    def __init__(
        self, raw: RawSource, head: bytes, frames: _ZstdFrames | None, direct: IO[bytes] | None
    ) -> None:
        super().__init__()
        self._raw = raw
        self._direct = direct
        self._head = head  # fed to ``frames`` on the first read, so its errors are mapped
        self._buf = memoryview(b"")
        self._eof = False
        self._frames = frames
        self.consumed = 0

    def readable(self) -> bool:
        return True

    async def _fetch(self) -> bytes:
        try:
            return await self._raw.receive(CHUNK)
        except anyio.EndOfStream:
            return b""

    def readinto(self, b: memoryview) -> int:  # type: ignore[override]
        if not self._buf:
            if self._eof:
                return 0
            if self._head:
                data, self._head = self._head, b""
            elif self._direct is not None:  # a regular file: read it right here
                anyio.from_thread.check_cancelled()
                data = self._direct.read(CHUNK)
            else:
                data = anyio.from_thread.run(self._fetch)
            if not data:
                self._eof = True
                if self._frames is not None and not self._frames.between_frames:
                    raise EOFError("zstd stream ends inside a frame")
                return 0
            self._buf = memoryview(data)
            if self._frames is not None:
                self._frames.feed(self._buf)
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        self.consumed += n
        return n


class _Reader(Protocol):
    def read(self, n: int = ..., /) -> bytes: ...


class DecompressedSource:
    """The decompressed bytes of ``head`` + ``raw`` (or its file ``direct``); MalformedArchive."""

    def __init__(
        self, raw: RawSource, kind: str, head: bytes = b"", direct: IO[bytes] | None = None
    ) -> None:
        self._kind = kind
        self.name = raw.name
        frames = _ZstdFrames() if kind == ZSTD else None
        self._bridge = _Bridge(raw, head, frames, direct)
        self._reader: _Reader | None = None
        self._eof = False
        self._errors: tuple[type[Exception], ...] = (OSError, EOFError, zlib.error, ValueError)

    def _open(self) -> _Reader:
        opener = next((o for k, o in _STDLIB.values() if k == self._kind), None)
        if opener is not None:
            self._errors += (lzma.LZMAError,)
            stdlib: _Reader = opener(self._bridge)
            return stdlib
        if self._kind == GZIP:
            try:  # python-isal inflates faster than zlib (io-compression)
                from isal import igzip
            except ImportError:  # pragma: no cover - isal is optional at run time
                import gzip

                return gzip.GzipFile(fileobj=self._bridge, mode="rb")
            reader: _Reader = igzip.IGzipFile(fileobj=self._bridge, mode="rb")  # type: ignore[no-untyped-call]
            return reader
        import zstandard

        self._errors += (zstandard.ZstdError,)
        return zstandard.ZstdDecompressor().stream_reader(
            cast("IO[bytes]", self._bridge), read_size=CHUNK, read_across_frames=True, closefd=False
        )

    def _read_sync(self, max_bytes: int) -> bytes:
        """Inflate up to ``max_bytes`` (runs in a worker thread)."""
        if self._reader is None:
            self._reader = self._open()
        reader = self._reader
        parts: list[bytes] = []
        got = 0
        try:
            while got < max_bytes:
                data = reader.read(max_bytes - got)
                if not data:
                    break
                parts.append(data)
                got += len(data)
        except CastarError:
            raise  # the compressed source's own errors keep their kind and text
        except self._errors as exc:
            raise MalformedArchive(
                f"{self._kind} archive {self.name}: corrupt compressed data: {exc}",
                offset=self._bridge.consumed,
            ) from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def receive(self, max_bytes: int = CHUNK) -> bytes:
        """Return the next decompressed bytes (≥ 1 byte); ``anyio.EndOfStream`` at the end."""
        if self._eof:
            raise anyio.EndOfStream
        data = await anyio.to_thread.run_sync(self._read_sync, max(max_bytes, 1))
        if not data:
            self._eof = True
            raise anyio.EndOfStream
        return data
