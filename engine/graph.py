"""The image graph: document reads (EDGE-13), manifest platforms (IMP-8), THE walk (IMP-10..14)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, TypeVar, final

import anyio.to_thread

from castar.engine import oci
from castar.store.digest import compute
from castar.store.errors import DigestMismatch, InvalidArgument, NotFound, SizeMismatch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from castar.engine.oci import Descriptor
    from castar.engine.platforms import Platform
    from castar.store.content import Info

__all__ = [
    "ContentReader",
    "Document",
    "DocumentReader",
    "Node",
    "Reader",
    "StoreReader",
    "manifest_platform",
    "read_document",
    "walk",
]

# Hash documents above this size in a worker thread (design rule io-off-loop).
_THREAD_HASH = 1 << 20
#: Documents larger than this are decoded in a worker thread (io-off-loop).
INLINE_JSON = 256 << 10
_T = TypeVar("_T")
# Deeper indexes are not followed: content addressing rules out cycles, this bounds hostile ones.
_MAX_DEPTH = 32


class ContentReader(Protocol):
    """What :func:`read_document` reads through (a :class:`~castar.store.roles.BlobReader`)."""

    async def info(self, digest: str) -> Info: ...  # noqa: D102
    async def exists(self, digest: str) -> bool: ...  # noqa: D102
    async def read_all(self, digest: str, *, limit: int) -> bytes: ...  # noqa: D102


@final
@dataclass(frozen=True, slots=True)
class Document:
    """A decoded document: its bytes, MT-4 children (manifests, indexes), platform (configs)."""

    data: bytes
    children: tuple[Descriptor, ...] = ()
    platform: Platform | None = None


class DocumentReader(Protocol):
    """Where a walk reads documents from: the store, an archive, a registry."""

    async def read(self, desc: Descriptor) -> Document | None:
        """The decoded document, ``None`` when absent; decoded at most once per reader."""


def _decode_sync(desc: Descriptor, data: bytes) -> Document:
    if oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type):
        return Document(data, tuple(oci.children(desc, data)))
    return Document(data, platform=oci.config_platform(data, name=str(desc.digest)))


class Reader:
    """A :class:`DocumentReader` over a function loading a document's bytes (None: absent)."""

    def __init__(self, load: Callable[[Descriptor], Awaitable[bytes | None]]) -> None:
        self._load = load
        self._docs: dict[tuple[str, str], Document | None] = {}

    async def read(self, desc: Descriptor) -> Document | None:  # noqa: D102
        key = (desc.digest, desc.media_type)
        if key not in self._docs:
            data = await self._load(desc)
            doc: Document | None = None
            if data is not None:
                doc = await _off_loop(len(data) > INLINE_JSON, _decode_sync, desc, data)
            self._docs[key] = doc
        return self._docs[key]


class StoreReader(Reader):
    """Documents from the content store, verified by :func:`read_document`."""

    def __init__(self, content: ContentReader) -> None:
        super().__init__(self._read)
        self.content = content

    async def _read(self, desc: Descriptor) -> bytes | None:
        try:
            return await read_document(self.content, desc)
        except NotFound:
            return None

    async def exists(self, desc: Descriptor) -> bool:
        """Whether the blob is stored."""
        return await self.content.exists(desc.digest)


@final
@dataclass(frozen=True, slots=True)
class Node:
    """One descriptor reached by :func:`walk`, as its parent lists it."""

    descriptor: Descriptor
    present: bool  # its blob is stored (manifests and indexes: readable)
    depth: int  # 0 for a root
    children: tuple[Descriptor, ...] = ()  # those the walk followed (platform filter)


async def read_document(content: ContentReader, desc: Descriptor) -> bytes:
    """A manifest, index or config document, checked against its descriptor.

    Size against the cap (EDGE-13), then the store's record, then the digest (DESC-3);
    matching embedded ``data`` skips the store (DESC-4).
    """
    digest = desc.digest
    if desc.size < 0:
        raise InvalidArgument(f"invalid size {desc.size} in {digest} ({desc.media_type})")
    if desc.size > oci.MAX_DOCUMENT:
        raise InvalidArgument(
            f"document {digest} ({desc.media_type}): size {desc.size} exceeds the "
            f"{oci.MAX_DOCUMENT} byte limit"
        )
    embedded = desc.data
    if (
        embedded is not None
        and len(embedded) == desc.size
        and await _digest_of(embedded, digest.algorithm) == digest
    ):
        return embedded
    info = await content.info(digest)
    if info.size != desc.size:
        raise SizeMismatch(
            f"document {digest}: stored size {info.size}, descriptor size {desc.size}",
            expected=desc.size,
            actual=info.size,
        )
    data = await content.read_all(digest, limit=oci.MAX_DOCUMENT)
    actual = await _digest_of(data, digest.algorithm)
    if actual != digest:
        raise DigestMismatch(
            f"document {digest}: unexpected digest {actual}", expected=digest, actual=actual
        )
    return data


async def _digest_of(data: bytes, algorithm: str) -> str:
    return await _off_loop(len(data) >= _THREAD_HASH, compute, data, algorithm)


async def _off_loop(big: bool, fn: Callable[..., _T], *args: object) -> _T:
    """``fn(*args)``, in a worker thread when ``big`` (design rule io-off-loop)."""
    return await anyio.to_thread.run_sync(fn, *args) if big else fn(*args)


async def manifest_platform(reader: DocumentReader, desc: Descriptor) -> Platform | None:
    """A manifest's descriptor platform, else its config's (IMP-8, SAVE-2, NORM-3).

    Raises NotFound when the manifest or its config is missing.
    """
    if desc.platform is not None:
        return desc.platform
    if not oci.is_manifest(desc.media_type):
        return None
    doc = await reader.read(desc)
    config = None if doc is None else await reader.read(doc.children[0])
    if config is None:
        raise NotFound(f"content digest {desc.digest}: manifest or config")
    return config.platform


async def walk(
    reader: DocumentReader,
    roots: Sequence[Descriptor],
    *,
    keep: Callable[[Descriptor], bool] | None = None,
    skip_missing: bool = True,
    blobs: Callable[[Descriptor], Awaitable[bool]] | None = None,
    unique: bool = False,
) -> list[Node]:
    """Every descriptor reachable from ``roots``, depth first, parents before children.

    ``keep`` filters children (refused ones are neither listed nor followed); a missing
    manifest or index is listed absent (IMP-11 ``SkipDesc``), or NotFound without
    ``skip_missing``; ``blobs`` says whether any other blob is present (default: all are);
    ``unique`` lists a descriptor once (``images.Walk``).
    """
    out: list[Node] = []
    seen: set[str] = set()
    stack: list[tuple[Descriptor, int]] = [(d, 0) for d in reversed(roots)]
    while stack:
        node, depth = stack.pop()
        if unique and node.digest in seen:
            continue
        seen.add(node.digest)
        kids: tuple[Descriptor, ...] = ()
        if oci.is_manifest(node.media_type) or oci.is_index(node.media_type):
            doc = await reader.read(node)
            if doc is None and not skip_missing:
                raise NotFound(f"content digest {node.digest}")
            present = doc is not None
            if doc is not None and depth < _MAX_DEPTH:
                kids = tuple(c for c in doc.children if keep is None or keep(c))
        else:
            present = blobs is None or await blobs(node)
        out.append(Node(node, present, depth, kids))
        stack.extend((k, depth + 1) for k in reversed(kids))
    return out
