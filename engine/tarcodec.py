"""The tar wire format (TAR-1..4, EDGE-12/13): deterministic header encoder, sans-IO decoder.

The decoder reads USTAR, PAX ``x``/``g``, GNU ``L``/``K``, base-256 and V7, as events.
"""

from __future__ import annotations

import struct
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from castar.store.errors import InvalidArgument, MalformedArchive

if TYPE_CHECKING:
    from castar.store.digest import Buffer

__all__ = [
    "AREGTYPE", "BLOCKSIZE", "DIRTYPE", "END_OF_ARCHIVE", "LNKTYPE", "MAX_RECORD", "NEED_DATA",
    "REGTYPE", "SYMTYPE", "ArchiveEnd", "Chunk", "Event", "MemberEnd", "MemberStart", "NeedData",
    "TarDecoder", "encode_header", "padding",
]  # fmt: skip

BLOCKSIZE: Final = 512
#: Cap on one PAX or GNU long-name/long-link record body (bytes).
MAX_RECORD: Final = 1 << 20

REGTYPE: Final = b"0"
AREGTYPE: Final = b"\0"
LNKTYPE: Final = b"1"
SYMTYPE: Final = b"2"
DIRTYPE: Final = b"5"
PAX_FILE: Final = b"x"
PAX_GLOBAL: Final = b"g"
GNU_LONGNAME: Final = b"L"
GNU_LONGLINK: Final = b"K"
META_TYPES: Final = frozenset((PAX_FILE, PAX_GLOBAL, GNU_LONGNAME, GNU_LONGLINK))
# Types that never carry a body, whatever their size field says (tarfile and Go agree).
HEADER_ONLY: Final = frozenset((b"1", b"2", b"3", b"4", b"5", b"6"))

#: Two zero blocks: what ends every archive castar writes.
END_OF_ARCHIVE: Final[bytes] = bytes(2 * BLOCKSIZE)
ZERO_BLOCK: Final = bytes(BLOCKSIZE)
USTAR_MAGIC: Final = b"ustar\x00"
MAX_OCTAL_SIZE: Final = 0o77777777777  # 8 GiB - 1: the largest size a USTAR field holds


# -- decoding fields and records ------------------------------------------------------


def text_field(block: bytes, start: int, stop: int) -> str:
    """A NUL-terminated text field (undecodable bytes kept as surrogates)."""
    end = block.find(b"\0", start, stop)
    raw = block[start : stop if end < 0 else end]
    return raw.decode("utf-8", "surrogateescape")


def number_field(block: bytes, start: int, stop: int, offset: int) -> int:
    """Decode an octal or base-256 numeric field (tarfile ``nti``)."""
    if block[start] & 0x80:
        if block[start] not in (0o200, 0o377):
            raise MalformedArchive("invalid tar header: bad numeric field", offset=offset)
        n = int.from_bytes(block[start + 1 : stop], "big")
        if block[start] == 0o377:
            n -= 256 ** (stop - start - 1)
        return n
    end = block.find(0, start, stop)
    raw = block[start : stop if end < 0 else end].strip()
    if raw.isdigit():
        try:
            return int(raw, 8)
        except ValueError:
            pass  # 8 or 9
    elif not raw:
        return 0
    raise MalformedArchive(f"invalid tar header: bad numeric field {raw!r}", offset=offset)


#: The header bytes outside the checksum field as signed values (old Unix tars summed those).
_SIGNED: Final = struct.Struct("148b8x356b")


def parse_pax(data: bytes, offset: int) -> dict[str, str]:
    """Parse ``<len> <key>=<value>`` newline-ended records; an empty value unsets the key."""
    records: dict[str, str] = {}
    pos = 0
    n = len(data)
    while pos < n:
        if data[pos] == 0:  # some writers pad the record block with NULs
            break
        space = data.find(b" ", pos, min(n, pos + 24))
        length_field = data[pos:space] if space > pos else b""
        if not length_field.isdigit():
            raise MalformedArchive("invalid PAX record: bad length", offset=offset)
        length = int(length_field)
        end = pos + length
        if end > n or length <= space - pos + 1 or data[end - 1] != 0x0A:
            raise MalformedArchive("invalid PAX record: bad length", offset=offset)
        eq = data.find(b"=", space + 1, end - 1)
        if eq < 0:
            raise MalformedArchive("invalid PAX record: no '='", offset=offset)
        key = data[space + 1 : eq].decode("utf-8", "surrogateescape")
        records[key] = data[eq + 1 : end - 1].decode("utf-8", "surrogateescape")
        pos = end
    return records


def apply_pax(
    pax: dict[str, str], name: str, linkname: str, size: int, mtime: int, offset: int
) -> tuple[str, str, int, int]:
    name = pax.get("path") or name
    linkname = pax.get("linkpath") or linkname
    value = pax.get("size")
    if value:
        if not value.isdigit():
            raise MalformedArchive(f"invalid PAX size {value!r}", offset=offset, member=name)
        size = int(value)
    value = pax.get("mtime")
    if value:
        try:
            mtime = int(float(value))
        except (ValueError, OverflowError):
            raise MalformedArchive(
                f"invalid PAX mtime {value!r}", offset=offset, member=name
            ) from None
    return name, linkname, size, mtime


# -- encoder ---------------------------------------------------------------------------------

_ZEROS8: Final = b"0000000\x00"
_MTIME0: Final = b"00000000000\x00"
_SPACES8: Final = b" " * 8
# magic, version, uname, gname, devmajor, devminor (TAR-1: empty names, ids 0)
_MIDDLE: Final = b"ustar\x0000" + bytes(64) + _ZEROS8 + _ZEROS8


def padding(size: int) -> bytes:
    """Return the zero bytes that pad a body of ``size`` bytes to a block boundary."""
    return bytes(-size % BLOCKSIZE)


def _block(name: bytes, mode: int, size: int, type_: bytes, link: bytes, prefix: bytes) -> bytes:
    if size > MAX_OCTAL_SIZE:
        size_field = b"\x80" + size.to_bytes(11, "big")
    else:
        size_field = b"%011o\x00" % size
    head = b"".join(
        (
            name.ljust(100, b"\x00"),
            b"%07o\x00" % (mode & 0o7777777),
            _ZEROS8,
            _ZEROS8,
            size_field,
            _MTIME0,
        )
    )
    tail = b"".join(
        (type_, link.ljust(100, b"\x00"), _MIDDLE, prefix.ljust(155, b"\x00"), bytes(12))
    )
    chksum = sum(head) + sum(tail) + 256
    return b"".join((head, b"%06o\x00 " % chksum, tail))


def _split_ustar(name: bytes) -> tuple[bytes, bytes] | None:
    """Split ``name`` into a prefix of <= 155 bytes and a name of 1..100 bytes, or None."""
    limit = min(len(name), 156)
    if name.endswith(b"/") and limit == len(name):
        limit -= 1
    idx = name.rfind(b"/", 0, limit)
    if idx <= 0 or not 0 < len(name) - idx - 1 <= 100:
        return None
    return name[:idx], name[idx + 1 :]


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode("utf-8", "surrogateescape")
    n = len(body) + 1
    while len(str(n)) + len(body) != n:
        n = len(str(n)) + len(body)
    return str(n).encode() + body


def encode_header(
    name: str,
    size: int,
    *,
    mode: int = 0o444,
    type: bytes = REGTYPE,
    linkname: str = "",
) -> bytes:
    """A deterministic header for one member (TAR-1..3): ids 0, no owner names, mtime 0.

    USTAR (with a prefix split) when name, link name and size fit; else a PAX ``x`` record
    carries ``path``, ``linkpath`` and/or ``size`` (8 GiB and more, also base-256 in ustar).
    """
    if size < 0:
        raise InvalidArgument(f"tar member {name!r}: negative size {size}")
    if len(type) != 1:
        raise InvalidArgument(f"tar member {name!r}: typeflag must be one byte, got {type!r}")
    if name.isascii() and linkname.isascii() and size <= MAX_OCTAL_SIZE:
        raw = name.encode("ascii")
        link = linkname.encode("ascii")
        if len(link) <= 100:
            if len(raw) <= 100:
                return _block(raw, mode, size, type, link, b"")
            split = _split_ustar(raw)
            if split is not None:
                return _block(split[1], mode, size, type, link, split[0])
    records = []
    if not name.isascii() or len(name) > 100:
        records.append(_pax_record("path", name))
    if not linkname.isascii() or len(linkname) > 100:
        records.append(_pax_record("linkpath", linkname))
    if size > MAX_OCTAL_SIZE:
        records.append(_pax_record("size", str(size)))
    data = b"".join(records)
    pax_header = _block(b"././@PaxHeader", 0o644, len(data), PAX_FILE, b"", b"")
    short_name = name.encode("ascii", "replace")[:100]
    short_link = linkname.encode("ascii", "replace")[:100]
    member = _block(short_name, mode, size, type, short_link, b"")
    return b"".join((pax_header, data, padding(len(data)), member))


# -- events ----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class MemberStart:
    """A member's header, PAX/GNU records applied; ``header_offset`` is its first record's."""

    name: str
    size: int
    type: bytes
    linkname: str
    mode: int
    mtime: int
    header_offset: int
    data_offset: int


@final
@dataclass(frozen=True, slots=True)
class Chunk:
    """Body bytes of the current member: a slice of a buffer given to ``feed``, not a copy."""

    data: memoryview


@final
@dataclass(frozen=True, slots=True)
class MemberEnd:
    """The current member's body is complete."""

    name: str


@final
@dataclass(frozen=True, slots=True)
class ArchiveEnd:
    """The archive ended; ``offset`` is where its end marker (or EOF) begins."""

    offset: int


@final
class NeedData:
    """Type of the ``NEED_DATA`` sentinel: feed more bytes (or ``feed_eof``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


#: Returned by ``TarDecoder.next_event`` when it needs more input.
NEED_DATA: Final = NeedData()

Event = MemberStart | Chunk | MemberEnd | ArchiveEnd | NeedData


# -- decoder ---------------------------------------------------------------------------------

# Bodies go out as slices of the fed buffers; only headers and PAX/GNU records are copied.
_S_HEADER: Final = 0
_S_META: Final = 1  # collecting a PAX / GNU record body
_S_BODY: Final = 2
_S_PAD: Final = 3
_S_END: Final = 4


@final
class TarDecoder:
    """Sans-IO tar decoder (design rule seam-tar, TAR-4): ``feed`` bytes (kept), pull events.

    Ends at the first zero block or EOF on a member boundary; else ``MalformedArchive``.
    """

    __slots__ = (
        "_avail", "_bufs", "_end", "_eof", "_global", "_head", "_long_link", "_long_name", "_meta",
        "_meta_need", "_meta_type", "_name", "_need", "_offset", "_pax", "_pending_offset",
        "_skippable", "_state",
    )  # fmt: skip

    def __init__(self) -> None:
        self._bufs: deque[memoryview] = deque()
        self._head = 0  # read position in self._bufs[0]
        self._avail = 0  # bytes buffered after the read position
        self._offset = 0  # archive bytes consumed
        self._eof = False
        self._end = ArchiveEnd(0)
        self._state = _S_HEADER
        self._need = 0  # bytes left in the current body / padding / record
        self._name = ""
        self._skippable = False
        self._meta = bytearray()
        self._meta_need = 0
        self._meta_type = b""
        self._pending_offset: int | None = None
        self._global: dict[str, str] = {}
        self._pax: dict[str, str] | None = None
        self._long_name: str | None = None
        self._long_link: str | None = None

    @property
    def offset(self) -> int:
        """Bytes of the archive consumed so far (the next event's position)."""
        return self._offset

    @property
    def buffered(self) -> int:
        """Bytes fed but not consumed yet."""
        return self._avail

    def feed(self, data: Buffer) -> None:
        """Give the decoder more archive bytes (kept by reference)."""
        if self._eof:
            raise RuntimeError("feed() after feed_eof()")
        if not data:
            return
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if self._state == _S_END:
            return  # bytes after the end marker are ignored
        self._bufs.append(view)
        self._avail += len(view)

    def feed_eof(self) -> None:
        """Say that no more bytes will come."""
        self._eof = True

    def skip_body(self) -> int:
        """Skip the just-started member's body; returns the bytes to skip in the source."""
        if not self._skippable:
            raise RuntimeError("skip_body() is only valid right after a MemberStart")
        self._skippable = False
        total = self._need + (-self._need % BLOCKSIZE)
        dropped = self._drop(total)
        self._offset += total - dropped
        self._need = 0
        self._state = _S_HEADER
        return total - dropped

    def next_event(self) -> Event:
        """The next event, or ``NEED_DATA`` when more input is needed."""
        self._skippable = False
        while True:
            state = self._state
            if state == _S_BODY:
                if self._need == 0:
                    self._state = _S_PAD
                    self._need = -self._offset % BLOCKSIZE
                    return MemberEnd(self._name)
                if not self._avail:
                    return self._starved(f"{self._need} bytes of member body missing", self._name)
                return Chunk(self._take_view(self._need))
            if state == _S_PAD:
                self._need -= self._drop(self._need)
                if self._need:
                    return self._starved("padding missing", self._name)
                self._state = _S_HEADER
                continue
            if state == _S_END:
                return self._end
            event = self._header() if state == _S_HEADER else self._collect_meta()
            if event is not None:
                return event

    def _starved(self, missing: str, member: str | None = None) -> NeedData:
        """``NEED_DATA``, or the truncation error once no more input can come."""
        if self._eof:
            raise MalformedArchive(
                f"truncated archive: {missing}", offset=self._offset, member=member
            )
        return NEED_DATA

    # -- buffer primitives --

    def _take_view(self, limit: int) -> memoryview:
        """Consume and return up to ``limit`` bytes from the first buffer (no copy)."""
        buf = self._bufs[0]
        head = self._head
        n = len(buf) - head
        if n > limit:
            n = limit
            view = buf[head : head + n]
            self._head = head + n
        else:
            view = buf[head:] if head else buf
            self._bufs.popleft()
            self._head = 0
        self._avail -= n
        self._offset += n
        self._need -= n
        return view

    def _take_bytes(self, n: int) -> bytes:
        """Consume exactly ``n`` buffered bytes as a copy (``n <= self._avail``)."""
        need = self._need
        parts = []
        while n:
            view = self._take_view(n)
            parts.append(view)
            n -= len(view)
        self._need = need
        return b"".join(parts)

    def _drop(self, n: int) -> int:
        """Consume up to ``n`` buffered bytes without looking at them; return how many."""
        dropped = 0
        while n > dropped and self._bufs:
            buf = self._bufs[0]
            left = len(buf) - self._head
            want = n - dropped
            if left > want:
                self._head += want
                dropped += want
            else:
                self._bufs.popleft()
                self._head = 0
                dropped += left
        self._avail -= dropped
        self._offset += dropped
        return dropped

    # -- headers --

    def _finish(self, at: int) -> ArchiveEnd:
        """Enter the end state: later input is ignored."""
        self._state = _S_END
        self._bufs.clear()
        self._avail = 0
        self._head = 0
        self._end = ArchiveEnd(at)
        return self._end

    def _header(self) -> Event | None:
        """Decode one header block; None when it was a PAX/GNU record header."""
        if self._avail < BLOCKSIZE:
            if not self._eof or self._avail:
                return self._starved("incomplete header")
            if self._pending_offset is not None:
                raise MalformedArchive(
                    "truncated archive: extended header not followed by a member",
                    offset=self._offset,
                )
            if self._offset == 0:
                raise MalformedArchive("empty archive", offset=0)
            return self._finish(self._offset)
        start = self._offset
        block = self._take_bytes(BLOCKSIZE)
        if block == ZERO_BLOCK:
            if self._pending_offset is not None:
                raise MalformedArchive("zero block after an extended header", offset=start)
            return self._finish(start)
        chksum = number_field(block, 148, 156, start)
        total = sum(block) - sum(block[148:156]) + 256
        if total != chksum and 256 + sum(_SIGNED.unpack(block)) != chksum:
            raise MalformedArchive("invalid tar header: checksum mismatch", offset=start)
        type_ = block[156:157]
        try:
            if block[135] != 0 or block[147] != 0 or block[107] != 0:
                raise ValueError
            size = int(block[124:135], 8)
            mtime = int(block[136:147], 8)
            mode = int(block[100:107], 8)
        except ValueError:
            size = number_field(block, 124, 136, start)
            mode = number_field(block, 100, 108, start)
            mtime = number_field(block, 136, 148, start)
        if size < 0:
            raise MalformedArchive("invalid tar header: negative size", offset=start)
        if type_ in META_TYPES:
            if size > MAX_RECORD:
                raise MalformedArchive(
                    f"extended header record of {size} bytes exceeds the {MAX_RECORD}-byte cap",
                    offset=start,
                )
            if self._pending_offset is None:
                self._pending_offset = start
            self._meta_type = type_
            self._meta_need = size
            self._meta = bytearray()
            self._state = _S_META
            return None
        header_offset = self._pending_offset if self._pending_offset is not None else start
        self._pending_offset = None
        name = text_field(block, 0, 100)
        if block[257:263] == USTAR_MAGIC and block[345] != 0:
            prefix = text_field(block, 345, 500)
            name = f"{prefix}/{name}"
        linkname = text_field(block, 157, 257)
        if type_ == AREGTYPE:
            type_ = DIRTYPE if name.endswith("/") else REGTYPE
        if self._long_name is not None:
            name = self._long_name
            self._long_name = None
        if self._long_link is not None:
            linkname = self._long_link
            self._long_link = None
        pax = self._pax
        if pax is not None or self._global:
            merged = {**self._global, **pax} if pax is not None else self._global
            self._pax = None
            name, linkname, size, mtime = apply_pax(merged, name, linkname, size, mtime, start)
        if type_ in HEADER_ONLY:
            size = 0
        self._name = name
        self._need = size
        self._state = _S_BODY
        self._skippable = True
        return MemberStart(name, size, type_, linkname, mode, mtime, header_offset, self._offset)

    def _collect_meta(self) -> NeedData | None:
        """Gather a PAX/GNU record body and its padding; None once it is applied."""
        if self._meta_need:
            n = min(self._meta_need, self._avail)
            self._meta += self._take_bytes(n)
            self._meta_need -= n
            if self._meta_need:
                return self._starved("extended header record incomplete")
        pad = -self._offset % BLOCKSIZE
        if self._avail < pad:
            return self._starved("extended header padding missing")
        self._drop(pad)
        data = bytes(self._meta)
        self._meta = bytearray()
        kind = self._meta_type
        at = self._pending_offset if self._pending_offset is not None else self._offset
        if kind == GNU_LONGNAME:
            self._long_name = text_field(data, 0, len(data))
        elif kind == GNU_LONGLINK:
            self._long_link = text_field(data, 0, len(data))
        else:
            records = parse_pax(data, at)
            if kind == PAX_GLOBAL:
                self._global = {**self._global, **records}
                self._global = {k: v for k, v in self._global.items() if v}
                # A global header is not part of the next member.
                self._pending_offset = None
            else:
                self._pax = {**self._pax, **records} if self._pax is not None else records
        self._state = _S_HEADER
        return None
