"""What an image archive holds: tar-name rules (IMP-2, EDGE-10), the catalogue, a scan.

Which members count (TAR-5); ``scan_sync`` reads a seekable tar's headers in a worker thread.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import re
from dataclasses import dataclass, field
from typing import Final

from castar.engine import oci
from castar.engine.tarcodec import NEED_DATA, REGTYPE, SYMTYPE, ArchiveEnd, MemberStart, TarDecoder
from castar.store.digest import ALGORITHMS, Digest
from castar.store.errors import DigestMismatch, InvalidArgument, MalformedArchive

__all__ = [
    "DOCKER_MANIFEST",
    "LAYOUT",
    "Catalog",
    "Entry",
    "blob_digest",
    "clean",
    "note_member",
    "scan_sync",
]

#: Typeflags stored as content (TAR-5): regular files, including contiguous ones (``7``).
_REGULAR: Final = frozenset((REGTYPE, b"7"))
_BLOB_NAME: Final = re.compile(r"blobs/([a-z0-9]+)/([a-f0-9]+)")
LAYOUT: Final = "oci-layout"
DOCKER_MANIFEST: Final = "manifest.json"
#: Entries read as JSON documents instead of being stored (IMP-2).
_METADATA: Final = frozenset((LAYOUT, DOCKER_MANIFEST))


def clean(name: str) -> str:
    """POSIX lexical clean (Go ``path.Clean``): the only form tar names are compared in (IMP-2)."""
    cleaned = posixpath.normpath(name)
    return cleaned[1:] if cleaned.startswith("//") else cleaned  # Go keeps one leading slash


def _checked_name(name: str, offset: int) -> str:
    """The cleaned name, refusing absolute and parent-relative ones (EDGE-10, castar)."""
    cleaned = clean(name)
    if cleaned.startswith(("/", "../")) or cleaned == "..":
        raise MalformedArchive(
            f"unsafe tar entry name {name!r}: it leaves the archive root", offset=offset
        )
    return cleaned


def blob_digest(cleaned: str) -> Digest | None:
    """The digest a ``blobs/<alg>/<hex>`` entry promises, or None for any other name."""
    m = _BLOB_NAME.fullmatch(cleaned)
    if m is not None and m.group(1) in ALGORITHMS:
        with contextlib.suppress(InvalidArgument):
            return Digest(f"{m.group(1)}:{m.group(2)}")
    return None


@dataclass(slots=True)
class Entry:
    """A regular member: where its bytes are (seekable) or what it was stored as (stream)."""

    name: str
    size: int
    offset: int = -1  # first body byte in a seekable file, -1 in a stream
    digest: Digest | None = None  # set once the bytes are in the store
    copy: bool = False  # a blob member given again: only checked against its name (IMP-3)
    # IMP-4 from a stream: the member did not hash to its name. It was not stored, and the
    # load fails with this error only if the walk needs it, as a file's load would.
    mismatch: DigestMismatch | None = None


@dataclass(slots=True)
class Catalog:
    entries: dict[str, Entry] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)  # raw name -> raw link target
    # cleaned name (oci-layout, manifest.json) -> (raw name, bytes)
    documents: dict[str, tuple[str, bytes]] = field(default_factory=dict)
    copies: list[Entry] = field(default_factory=list)  # a seekable file's, for IMP-3


def scan_sync(fd: int, base: int, size: int) -> Catalog:
    """Walk the headers of a tar file in 4 KiB reads, seeking over bodies but documents'."""
    dec = TarDecoder()
    cat = Catalog()
    while True:
        ev = dec.next_event()
        if ev is NEED_DATA:
            pos = dec.offset + dec.buffered
            data = os.pread(fd, 4096, base + pos) if pos < size else b""
            if data:
                dec.feed(data)
            else:
                dec.feed_eof()
            continue
        if isinstance(ev, ArchiveEnd):
            return cat
        if not isinstance(ev, MemberStart):  # pragma: no cover - bodies are always skipped
            continue
        dec.skip_body()
        if ev.data_offset + ev.size > size:
            raise MalformedArchive(
                f"truncated archive: member body of {ev.size} bytes ends past the end of the file",
                offset=size,
                member=ev.name,
            )
        found = note_member(cat, ev, base + ev.data_offset)
        if isinstance(found, str):
            cat.documents[found] = (ev.name, os.pread(fd, ev.size, base + ev.data_offset))


def _never_used(cat: Catalog, cleaned: str) -> bool:
    """LOAD-9: ``repositories``; once an OCI layout is seen (IMP-5), non-blobs but index.json."""
    if cleaned == "repositories":
        return True
    raw = cat.documents.get(LAYOUT, ("", b""))[1]
    if cleaned == "index.json" or blob_digest(cleaned) is not None or not 0 < len(raw) < 4096:
        return False  # a big layout is read once, by resolve
    with contextlib.suppress(ValueError, RecursionError):  # a bad one fails in resolve (IMP-2)
        layout = json.loads(raw)
        return isinstance(layout, dict) and bool(layout.get("imageLayoutVersion"))
    return False


def note_member(cat: Catalog, ev: MemberStart, offset: int) -> Entry | str | None:
    """Record a member by kind (TAR-5): its new entry, a document's name to read, or None.

    Documents are ``oci-layout`` and ``manifest.json``, returned by their cleaned name;
    members no image can use (LOAD-9) are None.
    """
    cleaned = _checked_name(ev.name, ev.header_offset)
    if ev.type == SYMTYPE:
        cat.symlinks[ev.name] = ev.linkname
    if ev.type not in _REGULAR:
        return None
    if cleaned not in _METADATA:
        if _never_used(cat, cleaned):
            return None  # LOAD-9: streamed past, never written
        if cleaned in cat.entries and blob_digest(cleaned) is not None:
            copy = Entry(cleaned, ev.size, offset, copy=True)  # IMP-3: the first copy is used
            if offset >= 0:
                cat.copies.append(copy)
            return copy
        entry = cat.entries[cleaned] = Entry(cleaned, ev.size, offset)
        return entry
    if ev.size > oci.MAX_DOCUMENT:
        what = "oci layout" if cleaned == LAYOUT else "manifest"
        raise InvalidArgument(
            f'untar {what} "{ev.name}": document of {ev.size} bytes exceeds the '
            f"{oci.MAX_DOCUMENT}-byte cap"
        )
    return cleaned
