"""The tar header wire format: 512-byte header blocks and PAX records, both directions.

Owns typeflags and field layout (TAR-1..4), decoding numeric and text fields
(octal, base-256, signed checksums) and PAX/GNU record bodies, and the deterministic
header encoder. ``tarcodec`` (the streaming decoder) builds on it and re-exports the
public names. Pure: imports only ``castar.store.errors``; never anyio (a test asserts it).
"""

from __future__ import annotations

import struct
from typing import Final

from castar.store.errors import InvalidArgument, MalformedArchive

__all__ = [
    "AREGTYPE", "BLOCKSIZE", "DIRTYPE", "END_OF_ARCHIVE", "GNU_LONGLINK", "GNU_LONGNAME",
    "HEADER_ONLY", "LNKTYPE", "MAX_OCTAL_SIZE", "MAX_RECORD", "META_TYPES", "PAX_FILE",
    "PAX_GLOBAL", "REGTYPE", "SYMTYPE", "USTAR_MAGIC", "ZERO_BLOCK", "apply_pax", "cstring",
    "encode_header", "number_field", "padding", "parse_pax", "signed_checksum", "text_field",
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
    """A NUL-terminated text field of a header block (undecodable bytes kept as surrogates)."""
    end = block.find(b"\0", start, stop)
    raw = block[start : stop if end < 0 else end]
    return raw.decode("utf-8", "surrogateescape")


def cstring(data: bytes) -> str:
    """A GNU long name/link record body: text up to the first NUL."""
    end = data.find(b"\0")
    return (data if end < 0 else data[:end]).decode("utf-8", "surrogateescape")


def number_field(block: bytes, start: int, stop: int, offset: int, member: str) -> int:
    """Decode an octal or base-256 numeric field (tarfile ``nti``)."""
    if block[start] & 0x80:
        if block[start] not in (0o200, 0o377):
            raise MalformedArchive(
                "invalid tar header: bad numeric field", offset=offset, member=member or None
            )
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
    raise MalformedArchive(
        f"invalid tar header: bad numeric field {raw!r}", offset=offset, member=member or None
    )


_SIGNED: Final = struct.Struct("148b8x356b")


def signed_checksum(block: bytes) -> int:
    """The header checksum summed over signed bytes (old Unix tars; tarfile accepts it)."""
    signed: tuple[int, ...] = _SIGNED.unpack(block)
    return 256 + sum(signed)


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
    value = pax.get("path")
    if value:
        name = value
    value = pax.get("linkpath")
    if value:
        linkname = value
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
    """Encode a deterministic header for one member (TAR-1, TAR-2).

    uid/gid 0, empty uname/gname, mtime 0. USTAR (with a prefix split) when the name,
    link name and size fit; otherwise a PAX ``x`` record carries ``path``,
    ``linkpath`` and/or ``size`` (names > 255 bytes or unsplittable, non-ASCII text,
    sizes of 8 GiB and more, which are also written base-256 in the ustar field).

    Directory names should end with ``/`` (TAR-1); blobs are ``mode`` 0o444 (TAR-3).
    Returns 512 bytes, or 1024 + PAX record blocks when PAX is needed.

    Raises:
        InvalidArgument: negative size or a typeflag that is not one byte (a ValueError).
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
    raw_name = name.encode("utf-8", "surrogateescape")
    raw_link = linkname.encode("utf-8", "surrogateescape")
    if not name.isascii() or len(raw_name) > 100:
        records.append(_pax_record("path", name))
    if not linkname.isascii() or len(raw_link) > 100:
        records.append(_pax_record("linkpath", linkname))
    if size > MAX_OCTAL_SIZE:
        records.append(_pax_record("size", str(size)))
    data = b"".join(records)
    pax_header = _block(b"././@PaxHeader", 0o644, len(data), PAX_FILE, b"", b"")
    short_name = name.encode("ascii", "replace")[:100]
    short_link = linkname.encode("ascii", "replace")[:100]
    return b"".join(
        (
            pax_header,
            data,
            padding(len(data)),
            _block(short_name, mode, size, type, short_link, b""),
        )
    )
