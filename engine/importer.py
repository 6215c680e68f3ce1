"""Import ("load") of OCI and Docker image archives into a store (SEMANTICS §15 IMP, LOAD).

Owns ``load()``: reading an archive (index-first from a seekable file, one pass from
a stream), verifying every ``blobs/<alg>/<hex>`` entry, choosing platforms, GC labels
and image records. Imports anyio, the store and the pure engine modules; it must not
import the exporter, the CLI or the facade. Tar names are only ever map keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, TypeVar

import anyio
import anyio.abc
import anyio.from_thread
import anyio.to_thread

from castar.engine import _decompress, oci, reference
from castar.engine import platforms as plats
from castar.engine._streams import open_source
from castar.engine.platforms import MatchComparer, Platform
from castar.engine.tarcodec import (
    NEED_DATA,
    REGTYPE,
    SYMTYPE,
    ArchiveEnd,
    Chunk,
    MemberEnd,
    MemberStart,
    TarDecoder,
)
from castar.store.digest import ALGORITHMS, Digest, compute
from castar.store.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidArgument,
    MalformedArchive,
    MalformedManifest,
    NotFound,
)

if TYPE_CHECKING:
    from castar.engine._streams import Source
    from castar.store import Image, Store, Writer

__all__ = [
    "EmptyWalk",
    "ProgressCallback",
    "add_ref_prefix",
    "filter_ref_prefix",
    "load",
]

# Strategy. Two ways in, one way out:
# - a seekable plain tar file is scanned header by header in one worker thread (bodies are
#   seeked over), giving a catalogue of entries and their offsets; the walk then copies
#   each blob it needs, once, in one worker-thread call per blob (pread into a reused
#   1 MiB buffer, then the writer hashes and writes), two copying and four in progress;
# - anything else (pipes, async streams, compressed files) goes through the decoder on
#   the event loop once, every regular entry into its own ingest as it passes, commits
#   overlapping the next entry's bytes; blobs the walk leaves out are never labelled and
#   go at the next GC once the import lease is released (EDGE-17).
# Then both resolve the top index (IMP-5..9), walk it with the platform filter
# (IMP-11..14), label parents (GC-7) and write image records last (IMP-15), so any
# failure before that point leaves every image as it was.

#: Bytes per read, hash and write step, and per worker-thread hop (IO-LIMITS §2.3).
CHUNK: Final = 1 << 20
#: Worker threads copying blob bytes at once (IO-LIMITS §2.5).
_IN_FLIGHT: Final = 2
#: Blobs in progress at once: while two copy, others open or commit (fsync, records).
_WORKERS: Final = 4
#: Stream members up to this size are read whole and stored by a task of their own.
_SMALL: Final = CHUNK
_PROGRESS_PERIOD: Final = 0.1
_CONTTYPE: Final = b"7"
_REGULAR: Final = frozenset((REGTYPE, _CONTTYPE))
_BLOB_NAME: Final = re.compile(r"blobs/([a-z0-9]+)/([a-f0-9]+)")
_LAYOUT: Final = "oci-layout"
_DOCKER_MANIFEST: Final = "manifest.json"
_INDEX: Final = "index.json"
_METADATA: Final = frozenset((_LAYOUT, _DOCKER_MANIFEST))
_LAYOUT_VERSION: Final = "1.0.0"

_T = TypeVar("_T")

#: ``progress(bytes_done, bytes_total_or_None, current_entry)``; called from the event loop.
ProgressCallback = Callable[[int, int | None, str], None]


class EmptyWalk(NotFound):
    """No descriptor survived the platform filter: ``image might be filtered out`` (IMP-14)."""

    def __init__(self) -> None:
        super().__init__("image might be filtered out")


# -- names (IMP-11, TV-64) -----------------------------------------------------------------


def _ref_translator(image: str, *, check_prefix: bool) -> Callable[[str], str]:
    def translate(ref: str) -> str:
        if not image:
            return ""
        if any(c in ref for c in "/:@"):  # already a full reference
            if check_prefix and not _has_image_prefix(ref, image):
                return ""
            return ref
        return f"{image}:{ref}"

    return translate


def _has_image_prefix(ref: str, image: str) -> bool:
    if not ref.startswith(image):
        return False
    return len(ref) == len(image) or ref[len(image)] in "/:@"


def add_ref_prefix(image: str) -> Callable[[str], str]:
    """Translator naming bare ``ref.name`` tags ``<image>:<tag>`` (containerd ``AddRefPrefix``).

    Full references (containing ``/``, ``:`` or ``@``) are kept as they are (TV-64).
    """
    return _ref_translator(image, check_prefix=False)


def filter_ref_prefix(image: str) -> Callable[[str], str]:
    """Like :func:`add_ref_prefix`, but full references outside ``image`` are dropped (TV-64)."""
    return _ref_translator(image, check_prefix=True)


def _clean(name: str) -> str:
    """POSIX lexical clean (Go ``path.Clean``): the only form tar names are compared in (IMP-2)."""
    rooted = name.startswith("/")
    parts: list[str] = []
    for part in name.split("/"):
        if not part or part == ".":
            continue
        if part == "..":
            if parts and parts[-1] != "..":
                parts.pop()
            elif not rooted:
                parts.append("..")
            continue
        parts.append(part)
    text = "/".join(parts)
    if rooted:
        return "/" + text
    return text or "."


def _checked_name(name: str, offset: int) -> str:
    """The cleaned name, refusing absolute and parent-relative ones (EDGE-10, castar)."""
    cleaned = _clean(name)
    if cleaned.startswith(("/", "../")) or cleaned == "..":
        raise MalformedArchive(
            f"unsafe tar entry name {name!r}: it leaves the archive root", offset=offset
        )
    return cleaned


def _blob_digest(cleaned: str) -> Digest | None:
    """The digest a ``blobs/<alg>/<hex>`` entry promises, or None for any other name."""
    m = _BLOB_NAME.fullmatch(cleaned)
    if m is None or m.group(1) not in ALGORITHMS:
        return None
    try:
        return Digest(f"{m.group(1)}:{m.group(2)}")
    except InvalidArgument:
        return None


def _json_value(data: bytes, what: str, name: str) -> object:
    """The first JSON value of ``data``; trailing bytes are ignored (IMP-2)."""
    try:
        text = data.decode("utf-8")
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedManifest(f'untar {what} "{name}": {exc}') from exc
    return value


# -- the archive catalogue -----------------------------------------------------------------


@dataclass(slots=True)
class _Entry:
    """A regular member: where its bytes are (seekable) or what it was stored as (stream)."""

    name: str
    size: int
    offset: int = -1  # first body byte in a seekable file, -1 in a stream
    digest: Digest | None = None  # set once the bytes are in the store


@dataclass(slots=True)
class _Catalog:
    entries: dict[str, _Entry] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)  # raw name -> raw link target
    # cleaned name (oci-layout, manifest.json) -> (raw name, bytes)
    documents: dict[str, tuple[str, bytes]] = field(default_factory=dict)


class _Progress:
    """Byte counter updated from worker threads, reported on the event loop."""

    def __init__(self, callback: ProgressCallback | None, total: int | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self.total = total
        self.done = 0
        self.entry = ""

    def add(self, n: int, entry: str) -> None:
        with self._lock:
            self.done += n
            self.entry = entry

    def report(self) -> None:
        if self._callback is not None:
            self._callback(self.done, self.total, self.entry)

    async def ticker(self) -> None:
        while True:
            await anyio.sleep(_PROGRESS_PERIOD)
            self.report()


# -- reading a seekable archive: headers only ----------------------------------------------


def _scan_sync(fd: int, base: int, size: int) -> _Catalog:
    """Walk the headers of a tar file, seeking over bodies (runs in a worker thread).

    Headers are fed to the decoder in 4 KiB reads; ``skip_body`` tells how far to jump.
    Only ``oci-layout`` and ``manifest.json`` bodies are read (≤ 20 MiB each).
    """
    dec = TarDecoder()
    cat = _Catalog()
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
        _note_member(cat, ev, base + ev.data_offset, None)
        cleaned = _clean(ev.name)
        if ev.type in _REGULAR and cleaned in _METADATA:
            _check_document_size(ev.size, cleaned, ev.name)
            cat.documents[cleaned] = (ev.name, os.pread(fd, ev.size, base + ev.data_offset))


def _check_document_size(size: int, cleaned: str, name: str) -> None:
    if size > oci.MAX_DOCUMENT:
        what = "oci layout" if cleaned == _LAYOUT else "manifest"
        raise InvalidArgument(
            f'untar {what} "{name}": document of {size} bytes exceeds the '
            f"{oci.MAX_DOCUMENT}-byte cap"
        )


def _note_member(cat: _Catalog, ev: MemberStart, offset: int, digest: Digest | None) -> None:
    """Record a member by kind (TAR-5): regular files and symlinks; the rest is ignored."""
    cleaned = _checked_name(ev.name, ev.header_offset)
    if ev.type in _REGULAR:
        if cleaned not in _METADATA:
            cat.entries[cleaned] = _Entry(cleaned, ev.size, offset, digest)
    elif ev.type == SYMTYPE:
        cat.symlinks[ev.name] = ev.linkname


# -- the import session ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Queued:
    name: str
    target: oci.Descriptor


class _Session:
    """State of one ``load`` call: the store, the archive and what the walk found."""

    def __init__(
        self,
        store: Store,
        *,
        matcher: MatchComparer,
        skip_missing: bool,
        translator: Callable[[str], str] | None,
        progress: _Progress,
    ) -> None:
        self.store = store
        self.matcher = matcher
        self.skip_missing = skip_missing
        self.translator = translator
        self.progress = progress
        self.session = secrets.token_hex(6)
        self.catalog = _Catalog()
        self.fd: int | None = None  # seekable archives are read with pread on this fd
        self.limiter = anyio.CapacityLimiter(_IN_FLIGHT)
        self._serial = 0
        self._buffers: list[bytearray] = []

    def ref(self, name: str) -> str:
        """A fresh ingest ref, unique per session (ING-14, EDGE-9)."""
        self._serial += 1
        return f"castar-import-{self.session}-{self._serial}-{name[:96]}"

    async def discard(self, ref: str) -> None:
        with anyio.CancelScope(shield=True), contextlib.suppress(NotFound):
            await self.store.content.abort(ref)

    # -- blob copies ------------------------------------------------------------------

    def _copy_sync(self, w: Writer, entry: _Entry) -> None:
        """Copy one member from the archive file into an ingest (one worker-thread call)."""
        assert self.fd is not None
        buf = self._buffers.pop() if self._buffers else bytearray(CHUNK)
        try:
            view = memoryview(buf)
            offset = entry.offset
            left = entry.size
            while left:
                n = os.preadv(self.fd, [view[: min(left, CHUNK)]], offset)
                if n == 0:
                    raise MalformedArchive(
                        f"truncated archive: {left} bytes of member body missing",
                        offset=offset,
                        member=entry.name,
                    )
                w.write_sync(view[:n])
                offset += n
                left -= n
                self.progress.add(n, entry.name)
                anyio.from_thread.check_cancelled()
        finally:
            self._buffers.append(buf)

    async def ensure(self, entry: _Entry, expected: Digest | None = None) -> Digest:
        """Make sure ``entry``'s bytes are stored; return their digest.

        From a stream they already are. From a seekable file the member is copied once,
        hashed with the algorithm of ``expected`` and checked against it (IMP-4); a blob
        already recorded is not read again (ING-2).
        """
        if entry.digest is not None:
            return entry.digest
        ref = self.ref(entry.name)
        try:
            async with self.store.content.writer(ref, size=entry.size, digest=expected) as w:
                await anyio.to_thread.run_sync(self._copy_sync, w, entry, limiter=self.limiter)
                digest = await _commit(w, entry, expected)
        except AlreadyExists:
            assert expected is not None
            digest = expected
            self.progress.add(entry.size, entry.name)
        except BaseException:
            await self.discard(ref)
            raise
        entry.digest = digest
        return digest

    def blob_entry(self, digest: str) -> _Entry | None:
        d = Digest(digest)
        return self.catalog.entries.get(f"blobs/{d.algorithm}/{d.encoded}")

    async def ensure_blob(self, desc: oci.Descriptor) -> None:
        entry = self.blob_entry(desc.digest)
        if entry is not None and entry.digest is None:
            await self.ensure(entry, desc.digest)

    async def document(self, desc: oci.Descriptor) -> bytes | None:
        """A manifest or index, from the store or (copied first) from the archive."""
        await self.ensure_blob(desc)
        try:
            return await self.store.content.read_all(desc.digest, limit=oci.MAX_DOCUMENT)
        except NotFound:
            return None


async def _commit(w: Writer, entry: _Entry, expected: Digest | None) -> Digest:
    """Commit an ingest (the store hashes, checks and fsyncs in a worker thread).

    A digest mismatch becomes the IMP-4 error naming the entry; the store has already
    dropped the bad ingest. An existing blob counts as success (ING-11).
    """
    try:
        return await w.commit(entry.size, expected)
    except AlreadyExists:
        return expected or w.digest()
    except DigestMismatch as exc:
        raise DigestMismatch(
            f"blob {entry.name}: unexpected digest {exc.actual}, expected {exc.expected}",
            expected=exc.expected,
            actual=exc.actual,
        ) from exc


# -- reading a stream: one pass ---------------------------------------------------------------


class _StreamReader:
    """Pulls decoder events from a non-seekable source, ≤ 1 MiB buffered at a time.

    Receiving and hashing take turns on purpose: a read-ahead task measured 5-25%
    slower on this machine's SMT pair (IO-LIMITS §2.4).
    """

    def __init__(
        self,
        src: _decompress.RawSource,
        first: bytes,
        max_size: int | None,
        progress: _Progress,
    ) -> None:
        self._src = src
        self._pending = first
        self._max_size = max_size
        self._progress = progress
        self._fed = 0
        self.dec = TarDecoder()
        self.member = ""

    async def next(self) -> MemberStart | Chunk | MemberEnd | ArchiveEnd:
        while True:
            ev = self.dec.next_event()
            if ev is not NEED_DATA:
                return ev  # type: ignore[return-value]
            await self._fill()

    async def _fill(self) -> None:
        data, self._pending = self._pending, b""
        if not data:
            try:
                data = await self._src.receive(CHUNK)
            except anyio.EndOfStream:
                self.dec.feed_eof()
                return
        self._fed += len(data)
        if self._max_size is not None and self._fed > self._max_size:
            raise MalformedArchive(
                f"archive {self._src.name} is larger than the {self._max_size}-byte limit"
                " (max_size)",
                offset=self._max_size,
            )
        self.dec.feed(data)
        self._progress.add(len(data), self.member)
        self._progress.report()

    async def body(self) -> bytes:
        """The rest of the current member's body, joined (callers cap the size first)."""
        parts = []
        while isinstance(ev := await self.next(), Chunk):
            parts.append(bytes(ev.data))
        return b"".join(parts)

    async def drain(self) -> None:
        """Discard the rest of the current member's body."""
        while isinstance(await self.next(), Chunk):
            pass


async def _ingest_stream(sess: _Session, reader: _StreamReader) -> None:
    """Store every regular entry as it streams by (IMP-3); keep the two metadata files.

    A big member streams into its ingest here, then its commit (fsync, rename, record)
    runs in a task while the next member streams in. A small member (≤ 1 MiB) is read
    whole and stored by a task of its own. At most four such tasks run at once, so
    memory stays within a few MiB whatever the archive holds.
    """
    cat = sess.catalog
    # Small members: up to four in flight. A big member's commit (fsync of up to GiBs)
    # holds one of the store's two blob-I/O threads: one at a time, so the next
    # member's writes always have the other.
    commits = anyio.Semaphore(_WORKERS)
    big_commits = anyio.Semaphore(1)
    try:
        async with anyio.create_task_group() as tg:
            while True:
                ev = await reader.next()
                if isinstance(ev, ArchiveEnd):
                    return
                if not isinstance(ev, MemberStart):  # pragma: no cover - members are read whole
                    continue
                reader.member = ev.name
                cleaned = _checked_name(ev.name, ev.header_offset)
                if ev.type not in _REGULAR:
                    _note_member(cat, ev, -1, None)
                    await reader.drain()
                elif cleaned in _METADATA:
                    _check_document_size(ev.size, cleaned, ev.name)
                    cat.documents[cleaned] = (ev.name, await reader.body())
                else:
                    entry = _Entry(cleaned, ev.size)
                    cat.entries[cleaned] = entry
                    expected = _blob_digest(cleaned)
                    if ev.size <= _SMALL:
                        data = await reader.body()
                        await commits.acquire()
                        tg.start_soon(_store_small, sess, entry, expected, data, commits)
                    else:
                        await _ingest_member(sess, reader, entry, expected, tg, big_commits)
    except BaseExceptionGroup as group:
        raise _first(group) from None


async def _ingest_member(
    sess: _Session,
    reader: _StreamReader,
    entry: _Entry,
    expected: Digest | None,
    tg: anyio.abc.TaskGroup,
    commits: anyio.Semaphore,
) -> None:
    """Stream one member into an ingest, then hand its commit to a task of ``tg``."""
    ref = sess.ref(entry.name)
    stack = contextlib.AsyncExitStack()
    try:
        try:
            w = await stack.enter_async_context(
                sess.store.content.writer(ref, size=entry.size, digest=expected)
            )
        except AlreadyExists:
            assert expected is not None
            entry.digest = expected
            await reader.drain()  # already stored: the bytes are not written again (ING-2)
            return
        while isinstance(ev := await reader.next(), Chunk):
            await w.write(ev.data)
        await commits.acquire()
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stack.aclose()
        await sess.discard(ref)
        raise
    tg.start_soon(_finish_member, sess, w, stack, entry, expected, commits)


async def _store_small(
    sess: _Session,
    entry: _Entry,
    expected: Digest | None,
    data: bytes,
    commits: anyio.Semaphore,
) -> None:
    """Store a small member read whole: open, write and commit overlap other members'."""
    ref = sess.ref(entry.name)
    try:
        async with sess.store.content.writer(ref, size=entry.size, digest=expected) as w:
            await w.write(data)
            entry.digest = await _commit(w, entry, expected)
    except AlreadyExists:
        assert expected is not None
        entry.digest = expected  # already stored: not written again (ING-2)
    except BaseException:
        await sess.discard(ref)
        raise
    finally:
        commits.release()


async def _finish_member(
    sess: _Session,
    w: Writer,
    stack: contextlib.AsyncExitStack,
    entry: _Entry,
    expected: Digest | None,
    commits: anyio.Semaphore,
) -> None:
    try:
        try:
            entry.digest = await _commit(w, entry, expected)
        finally:
            with anyio.CancelScope(shield=True):
                await stack.aclose()
    except BaseException:
        await sess.discard(w.ref)
        raise
    finally:
        commits.release()


# -- resolving the archive's index (IMP-5..9) ------------------------------------------------


async def _resolve(sess: _Session) -> oci.Descriptor:
    """The archive's top index: ``index.json`` (OCI wins) or one built from ``manifest.json``."""
    cat = sess.catalog
    layout = cat.documents.get(_LAYOUT)
    if layout is not None:
        value = _json_value(layout[1], "oci layout", layout[0])
        if not isinstance(value, dict):
            raise MalformedManifest(f'untar oci layout "{layout[0]}": not a JSON object')
        version = value.get("imageLayoutVersion")
        if version:
            if version != _LAYOUT_VERSION:
                raise MalformedArchive(f"unsupported OCI version {version}")
            entry = cat.entries.get(_INDEX)
            if entry is None:
                raise MalformedArchive(f"missing index.json in OCI layout {_LAYOUT_VERSION}")
            return oci.Descriptor(oci.OCI_INDEX, await sess.ensure(entry), entry.size)
    manifest = cat.documents.get(_DOCKER_MANIFEST)
    if manifest is not None:
        items = _json_value(manifest[1], "manifest", manifest[0])
        if items is not None:
            if not isinstance(items, list):
                raise MalformedManifest(f'untar manifest "{manifest[0]}": not a JSON array')
            return await _docker_index(sess, items)
    raise MalformedArchive("unrecognized image format")


def _symlinked(cat: _Catalog) -> dict[str, _Entry]:
    """Docker symlinked layers (IMP-12): each link name maps to its target's entry."""
    out: dict[str, _Entry] = {}
    for name, target in cat.symlinks.items():
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        resolved = _clean(f"{parent}/{target}")
        entry = cat.entries.get(resolved)
        if entry is None:
            raise MalformedArchive(f'no target for symlink layer from "{name}" to "{resolved}"')
        out[name] = entry
        out.setdefault(_clean(name), entry)
    return out


def _docker_str(item: Mapping[str, Any], key: str, i: int) -> list[str]:
    value = item.get(key)
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise MalformedManifest(f"manifest.json[{i}]: {key} must be a string list")
    return value


_LAYER_TYPES: Final = {
    _decompress.GZIP: oci.DOCKER_LAYER_GZIP,
    _decompress.ZSTD: oci.DOCKER_LAYER_ZSTD,  # EDGE-8: castar types zstd as zstd
}


async def _docker_index(sess: _Session, items: list[Any]) -> oci.Descriptor:
    """Build and store a schema2 manifest per item and an index over them (IMP-7..9)."""
    cat = sess.catalog
    links = _symlinked(cat)

    def lookup(path: str) -> _Entry | None:
        return links.get(path) or cat.entries.get(_clean(path))  # EDGE-7: both sides cleaned

    content = sess.store.content
    entries: list[oci.Descriptor] = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise MalformedManifest(f"manifest.json[{i}]: not a JSON object")
        (config_path,) = _docker_str(item, "Config", i) or [""]
        config = lookup(config_path)
        if config is None:
            raise MalformedArchive(f'image config "{config_path}" not found')
        layers = []
        for path in _docker_str(item, "Layers", i):
            entry = lookup(path)
            if entry is None:
                raise MalformedArchive(f'failed to resolve layers: layer "{path}" not found')
            layers.append(entry)
        config_digest = await sess.ensure(config)
        try:
            raw = await content.read_all(config_digest, limit=oci.MAX_DOCUMENT)
            platform = (await _decode(oci.decode_config, raw, config.name)).platform()
        except (MalformedManifest, InvalidArgument) as exc:
            raise MalformedManifest(f"unable to resolve platform: {exc}") from exc
        layer_descs = []
        for entry in layers:
            digest = await sess.ensure(entry)
            kind = _decompress.sniff(await content.read_at(digest, 0, 10))
            media_type = _LAYER_TYPES.get(kind or "", oci.DOCKER_LAYER)
            layer_descs.append(oci.Descriptor(media_type, digest, entry.size))
        manifest = oci.Manifest(
            config=oci.Descriptor(oci.DOCKER_CONFIG, config_digest, config.size),
            layers=tuple(layer_descs),
            media_type=oci.DOCKER_MANIFEST,
        )
        desc = await _store_document(sess, oci.encode_manifest(manifest), oci.DOCKER_MANIFEST)
        tags = _docker_str(item, "RepoTags", i)
        if not tags:
            entries.append(
                oci.Descriptor(desc.media_type, desc.digest, desc.size, platform=platform)
            )
        for tag in tags:
            name = reference.normalize(tag)
            annotations = {
                oci.ANNOTATION_IMAGE_NAME: name,
                oci.ANNOTATION_REF_NAME: reference.ref_name_annotation(name),
            }
            entries.append(
                oci.Descriptor(
                    desc.media_type,
                    desc.digest,
                    desc.size,
                    annotations=annotations,
                    platform=platform,
                )
            )
    index = oci.Index(manifests=tuple(entries), media_type="")
    return await _store_document(sess, oci.encode_index(index), oci.OCI_INDEX)


async def _store_document(sess: _Session, data: bytes, media_type: str) -> oci.Descriptor:
    digest = compute(data)
    await sess.store.content.write_blob(
        data, digest=digest, size=len(data), ref=sess.ref(f"document-{digest}")
    )
    return oci.Descriptor(media_type, digest, len(data))


#: Documents larger than this are decoded in a worker thread (a 20 MiB JSON parse would
#: hold the event loop for a fifth of a second).
_INLINE_JSON: Final = 256 << 10


async def _decode(decoder: Callable[..., _T], data: bytes, name: str) -> _T:
    if len(data) > _INLINE_JSON:
        return await anyio.to_thread.run_sync(lambda: decoder(data, name=name))
    return decoder(data, name=name)


async def _children(desc: oci.Descriptor, data: bytes) -> list[oci.Descriptor]:
    """MT-4 children, decoded off the event loop when the document is large."""
    if len(data) > _INLINE_JSON:
        return await anyio.to_thread.run_sync(oci.children, desc, data)
    return oci.children(desc, data)


# -- the walk (IMP-10..14) -------------------------------------------------------------------


@dataclass(slots=True)
class _Walk:
    queued: list[_Queued] = field(default_factory=list)
    replaced: list[tuple[str, oci.Descriptor]] = field(default_factory=list)
    labels: dict[Digest, dict[str, str]] = field(default_factory=dict)
    needed: dict[Digest, oci.Descriptor] = field(default_factory=dict)
    visited: set[Digest] = field(default_factory=set)
    produced: bool = False


def _keep(sess: _Session, desc: oci.Descriptor) -> bool:
    return desc.platform is None or sess.matcher.match(desc.platform)


async def _walk(sess: _Session, top: oci.Descriptor) -> _Walk:
    """Name, filter and label from the top index down; only manifests and indexes are read."""
    walk = _Walk()
    walk.needed[top.digest] = top
    data = await sess.document(top)
    if data is None:
        raise NotFound(f"content digest {top.digest}")
    entries = list((await _decode(oci.decode_index, data, str(top.digest))).manifests)
    for entry in entries:
        _queue_names(sess, walk, entry)
    kept = [e for e in entries if _keep(sess, e)]
    if kept:
        walk.produced = True
        walk.labels[top.digest] = oci.children_labels(kept)
    await _visit(sess, walk, kept)
    if not walk.produced:
        raise EmptyWalk
    return walk


def _queue_names(sess: _Session, walk: _Walk, entry: oci.Descriptor) -> None:
    """Queue the image records one top-level entry gets (IMP-11, LOAD-1)."""
    name = entry.annotations.get(oci.ANNOTATION_IMAGE_NAME, "")
    if not name:
        name = entry.annotations.get(oci.ANNOTATION_REF_NAME, "")
        if name and sess.translator is not None:
            name = sess.translator(name)
    if name:
        walk.queued.append(_Queued(name, entry))
    if oci.is_referrer(entry):
        return  # MT-6: no digest-named record for a referrer
    normalized = _normalized(name)
    if normalized is None:
        walk.queued.append(_Queued(reference.dangling_name(entry.digest), entry))
    else:
        walk.replaced.append((normalized, entry))


def _normalized(name: str) -> str | None:
    """Go ``ParseNormalizedNamed(name).String()``, None when empty or unparseable (LOAD-1)."""
    if not name:
        return None
    try:
        return str(reference.parse_normalized(name))
    except InvalidArgument:
        return None


async def _visit(sess: _Session, walk: _Walk, kept: list[oci.Descriptor]) -> None:
    """Depth-first, in order, below the top index (an explicit stack: no recursion limit)."""
    stack = kept[::-1]
    while stack:
        desc = stack.pop()
        walk.needed.setdefault(desc.digest, desc)
        if desc.digest in walk.visited:
            continue
        walk.visited.add(desc.digest)
        if not (oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)):
            continue
        data = await sess.document(desc)
        if data is None:
            if sess.skip_missing:
                continue  # SkipDesc (IMP-11, EDGE-2)
            raise NotFound(f"content digest {desc.digest}")
        children = [c for c in await _children(desc, data) if _keep(sess, c)]
        if children:
            walk.produced = True
            walk.labels[desc.digest] = oci.children_labels(children)
            stack += children[::-1]


async def _fetch_needed(sess: _Session, walk: _Walk) -> None:
    """Copy the kept configs and layers a seekable archive holds: 2 copying, 4 in progress."""
    todo = [
        (entry, desc.digest)
        for desc in walk.needed.values()
        if (entry := sess.blob_entry(desc.digest)) is not None and entry.digest is None
    ]
    if not todo:
        return
    sess.progress.total = sess.progress.done + sum(e.size for e, _ in todo)
    pending = iter(todo)

    async def worker() -> None:
        for entry, digest in pending:
            await sess.ensure(entry, digest)
            sess.progress.report()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(sess.progress.ticker)
            async with anyio.create_task_group() as workers:
                for _ in range(_WORKERS):
                    workers.start_soon(worker)
            tg.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        raise _first(group) from None
    sess.progress.report()


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The first real error of a task group (STYLE §3.4: no ExceptionGroup for one failure)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        return exc
    return group  # pragma: no cover - groups are never empty


async def _record(sess: _Session, walk: _Walk) -> list[Image]:
    """Label the kept graph (GC-7), then create or re-target the image records (IMP-15)."""
    content = sess.store.content
    for digest, labels in walk.labels.items():
        with contextlib.suppress(NotFound):  # a parent skipped as missing
            await content.update_labels(digest, labels)
    images = sess.store.images
    for normalized, target in walk.replaced:
        # LOAD-1: the image a name is taken from stays alive as a dangling record
        try:
            old = await images.get(normalized)
        except NotFound:
            continue
        if old.target.digest == target.digest:
            continue
        labels = {
            k: v
            for k, v in old.labels.items()
            if k not in (oci.ANNOTATION_IMAGE_NAME, oci.ANNOTATION_REF_NAME)
        }
        with contextlib.suppress(AlreadyExists):
            await images.create(
                reference.dangling_name(old.target.digest), old.target, labels=labels
            )
    out: dict[str, Image] = {}
    for q in walk.queued:
        try:
            image = await images.update(q.name, target=q.target)
        except NotFound:
            try:
                image = await images.create(q.name, q.target)
            except AlreadyExists:
                image = await images.update(q.name, target=q.target)
        out.pop(q.name, None)
        out[q.name] = image
    return list(out.values())


# -- LOAD-4: do the loaded images provide what was asked for? --------------------------------


async def _present_manifests(store: Store, desc: oci.Descriptor) -> list[oci.Descriptor]:
    if oci.is_manifest(desc.media_type):
        return [desc] if await store.content.exists(desc.digest) else []
    if not oci.is_index(desc.media_type):
        return []
    try:
        data = await store.content.read_all(desc.digest, limit=oci.MAX_DOCUMENT)
    except NotFound:
        return []
    out: list[oci.Descriptor] = []
    for child in await _children(desc, data):
        out += await _present_manifests(store, child)
    return out


async def _provides(store: Store, target: oci.Descriptor, matcher: MatchComparer) -> bool:
    content = store.content
    for m in await _present_manifests(store, target):
        try:
            raw = await content.read_all(m.digest, limit=oci.MAX_DOCUMENT)
        except NotFound:
            continue
        manifest = await _decode(oci.decode_manifest, raw, str(m.digest))
        platform = m.platform
        if platform is None:
            try:
                raw = await content.read_all(manifest.config.digest, limit=oci.MAX_DOCUMENT)
            except NotFound:
                continue
            config = await _decode(oci.decode_config, raw, str(manifest.config.digest))
            platform = config.platform()
        if platform is None or not matcher.match(platform):
            continue
        blobs = [manifest.config, *manifest.layers]
        if all([await content.exists(b.digest) for b in blobs]):  # SAVE-6
            return True
    return False


async def _verify_platforms(
    store: Store, images: list[Image], matcher: MatchComparer, wanted: str
) -> None:
    if not images:
        raise NotFound(f"no images providing the requested platform(s) found: {wanted}")
    lacking = []
    for image in images:
        t = image.target
        target = oci.Descriptor(t.media_type, Digest(t.digest), t.size)
        if not await _provides(store, target, matcher):
            lacking.append(reference.display_name(image.name))
    if len(lacking) == 1:
        raise NotFound(
            f"image {lacking[0]} was loaded, but doesn't provide the requested platform ({wanted})"
        )
    if lacking:
        raise NotFound(
            f"images [{', '.join(lacking)}] were loaded, but don't provide the requested"
            f" platform ({wanted})"
        )


# -- load ------------------------------------------------------------------------------------


async def _read_archive(sess: _Session, src: Source, max_size: int | None) -> None:
    """Fill ``sess.catalog``: headers only from a seekable plain tar, else one streaming pass."""
    fd = src.fileno() if src.seekable else None
    first = b""
    if fd is not None:

        def probe(fd: int) -> tuple[int, int, bytes]:
            base = os.lseek(fd, 0, os.SEEK_CUR)
            return base, os.fstat(fd).st_size - base, os.pread(fd, 8, base)

        base, size, head = await anyio.to_thread.run_sync(probe, fd)
        kind = _decompress.sniff(head)
        if kind is None:
            if max_size is not None and size > max_size:
                raise MalformedArchive(
                    f"archive {src.name} is larger than the {max_size}-byte limit (max_size)",
                    offset=max_size,
                )
            sess.catalog = await anyio.to_thread.run_sync(_scan_sync, fd, base, size)
            sess.fd = fd
            return
    else:
        while len(first) < 8:
            try:
                first += await src.receive(CHUNK)
            except anyio.EndOfStream:
                break
        kind = _decompress.sniff(first)
    stream: _decompress.RawSource = src
    if kind is not None:
        direct = src.raw_file() if fd is not None else None  # a regular file
        stream = _decompress.DecompressedSource(src, kind, first, direct)
        first = b""
    await _ingest_stream(sess, _StreamReader(stream, first, max_size, sess.progress))


def _requested(platforms_: Sequence[str | Platform] | str | None) -> list[Platform]:
    if platforms_ is None:
        return []
    if isinstance(platforms_, str):
        platforms_ = [platforms_]
    specs = [p for p in platforms_ if isinstance(p, str)]
    parsed = iter(plats.parse_list(specs)) if specs else iter(())
    return [p if isinstance(p, Platform) else next(parsed) for p in platforms_]


async def load(
    store: Store,
    source: object,
    *,
    platforms: Sequence[str | Platform] | str | None = None,
    all_platforms: bool = False,
    skip_missing: bool | None = None,
    name: str | Callable[[str], str] | None = None,
    progress: ProgressCallback | None = None,
    max_size: int | None = None,
) -> list[Image]:
    """Import an OCI or Docker image archive into ``store`` and record its images.

    The archive may be plain, gzip or zstd compressed (IMP-1). A seekable file is read
    index-first: headers are scanned, the selection is resolved from ``index.json`` or
    ``manifest.json``, and only the blobs that are needed and not already stored are
    read. Any other source is ingested in one pass; blobs of platforms left out stay
    unreferenced and go at the next GC (EDGE-17). Every ``blobs/<alg>/<hex>`` entry that
    is read is verified (IMP-4). The whole import runs under a lease (GC-11); image
    records are written last, so a failure or cancellation changes no image.

    Args:
        store: the store to import into.
        source: a path, an int file descriptor, ``"-"`` for stdin, an anyio
            ``ByteReceiveStream`` or any object with ``async read(n)``.
        platforms: platforms to keep (``"linux/arm64/v8"``, comma lists, or
            ``Platform`` values); any of them matches (LOAD-1). Without them every
            platform is kept.
        all_platforms: keep every platform even when ``platforms`` is given.
        skip_missing: tolerate manifests missing from archive and store; default: True
            when no platform is requested (LOAD-2), else False.
        name: for ``org.opencontainers.image.ref.name`` tags: a prefix (``"repo/x"``
            names the tag ``latest`` ``repo/x:latest``) or a translator function
            (see :func:`add_ref_prefix`, :func:`filter_ref_prefix`).
        progress: called on the event loop with (bytes done, bytes total or None,
            current entry) about once per MiB or every 0.1 s.
        max_size: refuse archives whose (decompressed) size exceeds this many bytes.

    Returns:
        The images recorded, in archive order (unnamed ones as ``moby-dangling@<digest>``).

    Raises:
        MalformedArchive: not a tar, truncated, unsafe names, unrecognised format,
            over ``max_size``.
        DigestMismatch: ``blob <name>: unexpected digest <d>, expected <d>`` (IMP-4).
        NotFound: a needed manifest is missing, nothing matched (``EmptyWalk``), or the
            LOAD-3/LOAD-4 platform errors.
        InvalidArgument: a bad platform, name or oversized JSON document.
    """
    requested = [] if all_platforms else _requested(platforms)
    matcher: MatchComparer = (
        plats.match_any_with_preference(plats.only(plats.host()), requested)
        if requested
        else plats.ALL
    )
    if skip_missing is None:
        skip_missing = not requested  # LOAD-2
    translator = add_ref_prefix(name) if isinstance(name, str) else name
    wanted = "[" + " ".join(plats.format_all(p) for p in requested) + "]"
    sess = _Session(
        store,
        matcher=matcher,
        skip_missing=skip_missing,
        translator=translator,
        progress=_Progress(progress, None),
    )
    try:
        async with store.lease(labels={"castar.import": sess.session}):
            async with open_source(source) as src:  # a seekable file is read until the end
                await _read_archive(sess, src, max_size)
                walk = await _walk(sess, await _resolve(sess))
                await _fetch_needed(sess, walk)
            images = await _record(sess, walk)
    except EmptyWalk as exc:
        if not requested:
            raise
        raise NotFound(
            f"requested platform(s) ({wanted}) not found: image might be filtered out"
        ) from exc
    except NotFound as exc:
        if not requested:
            raise
        raise NotFound(
            f"requested platform(s) ({wanted}) found, but some content is missing: {exc}"
        ) from exc
    if requested:
        await _verify_platforms(store, images, matcher, wanted)  # LOAD-4
    return images
