"""The image graph as the store holds it: documents, children, platforms, availability.

Owns reading JSON documents from the content store under the 20 MiB cap (EDGE-13) with
size and digest checks, MT-4 children of stored nodes, a manifest's platform (IMP-8),
content availability (SAVE-6) and depth-first walks with present sizes (TREE-1).
Uses anyio and the public content-store API only (``info``/``exists``/``read_all``);
it must not import the importer, the exporter or the file backend.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import anyio.to_thread

from castar.engine import oci
from castar.store.digest import compute
from castar.store.errors import DigestMismatch, InvalidArgument, NotFound, SizeMismatch

if TYPE_CHECKING:
    from castar.engine.oci import Descriptor
    from castar.engine.platforms import Platform
    from castar.store.roles import BlobReader

__all__ = [
    "Node",
    "is_available",
    "manifest_platform",
    "read_children",
    "read_document",
    "subtree_size",
    "walk",
]

# Hash documents above this size in a worker thread (STYLE §3.7: no multi-MB work on the loop).
_THREAD_HASH = 1 << 20
# Indexes nested deeper than this are not followed (content addressing rules out cycles,
# this only bounds hostile documents).
_MAX_DEPTH = 32


@final
@dataclass(frozen=True, slots=True)
class Node:
    """One descriptor reached by :func:`walk`.

    Attributes:
        descriptor: as listed by its parent (the root as given).
        present: whether its blob is in the store (for manifests and indexes: readable).
        depth: 0 for the root, 1 for its children, …
    """

    descriptor: Descriptor
    present: bool
    depth: int


async def read_document(content: BlobReader, desc: Descriptor) -> bytes:
    """Read a manifest, index or config document, verified against its descriptor.

    The size is checked against the 20 MiB cap before anything is read, then against
    the store's record, then the digest of the bytes (DESC-3: size before digest).
    Embedded ``data`` that matches the descriptor is used without touching the store
    (DESC-4).

    Raises:
        NotFound: ``content digest <d>: not found``.
        InvalidArgument: the descriptor's size exceeds the cap (EDGE-13) or is negative.
        SizeMismatch: the stored blob's size differs from the descriptor's.
        DigestMismatch: the stored bytes do not hash to the digest.
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
    if len(data) < _THREAD_HASH:
        return compute(data, algorithm)
    return await anyio.to_thread.run_sync(compute, data, algorithm)


async def read_children(
    content: BlobReader, desc: Descriptor, *, skip_missing: bool = False
) -> list[Descriptor]:
    """The MT-4 children of a stored node (only manifests and indexes are read).

    Args:
        content: the content store.
        desc: the node.
        skip_missing: a missing manifest/index has no children instead of failing
            (IMP-11 ``skip_missing``).

    Raises:
        NotFound: the manifest/index blob is missing and ``skip_missing`` is false.
        MalformedManifest, UnsupportedMediaType: as :func:`castar.engine.oci.children`.
    """
    if not (oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)):
        return []
    try:
        data = await read_document(content, desc)
    except NotFound:
        if skip_missing:
            return []
        raise
    return oci.children(desc, data)


async def manifest_platform(content: BlobReader, desc: Descriptor) -> Platform | None:
    """The platform of a manifest: its descriptor's, else its config's (IMP-8, SAVE-2).

    The config's platform is normalised (NORM-3); ``None`` when the descriptor has no
    platform and the node is not a manifest or its config names no os/arch.

    Raises:
        NotFound: the manifest or its config is missing.
    """
    if desc.platform is not None:
        return desc.platform
    if not oci.is_manifest(desc.media_type):
        return None
    config = oci.children(desc, await read_document(content, desc))[0]
    data = await read_document(content, config)
    return oci.decode_config(data, name=str(config.digest)).platform()


async def is_available(content: BlobReader, manifest_desc: Descriptor) -> bool:
    """Whether a manifest's content is complete locally (SAVE-6).

    The manifest blob is readable and its config and every layer are present. For an
    index: every blob reachable from it is present. Any other node: its blob is present.
    """
    return all(node.present for node in await walk(content, manifest_desc))


async def walk(content: BlobReader, desc: Descriptor) -> list[Node]:
    """Every descriptor reachable from ``desc``, depth first, parents before children.

    Present or not: a missing manifest or index is listed with ``present=False`` and
    no children; other missing blobs are listed with ``present=False``. Repeated
    descriptors (a layer shared by two manifests) are listed each time they are
    reached, as containerd's ``images.Walk`` visits them.

    Raises:
        MalformedManifest, UnsupportedMediaType: a stored document does not decode.
    """
    out: list[Node] = []
    stack: list[tuple[Descriptor, int]] = [(desc, 0)]
    while stack:
        node, depth = stack.pop()
        kids: list[Descriptor] = []
        if oci.is_manifest(node.media_type) or oci.is_index(node.media_type):
            try:
                data = await read_document(content, node)
            except NotFound:
                present = False
            else:
                present = True
                if depth < _MAX_DEPTH:
                    kids = oci.children(node, data)
        else:
            present = await content.exists(node.digest)
        out.append(Node(node, present, depth))
        stack.extend((k, depth + 1) for k in reversed(kids))
    return out


async def subtree_size(content: BlobReader, desc: Descriptor) -> int:
    """Bytes of the present blobs reachable from ``desc`` (TREE-1 ``Size.Content``).

    Sizes come from the descriptors; a blob reached twice counts twice (moby's
    ``PresentContentSize`` walks without de-duplication).
    """
    return sum(n.descriptor.size for n in await walk(content, desc) if n.present)
