"""What planning a save reads from the store: names resolved, nodes fetched, lease coverage.

Owns SAVE-4 name resolution (name, repository, digest, image-id prefix), the fetch of
every node reachable from the targets (infos, capped documents, config platforms,
SAVE-1 referrers) and which read blobs the lease must hold itself (GC-4/5). Async over
the store's public API; must not import the planner's logic or the writer.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Final

from castar.engine import graph, oci, reference
from castar.engine import platforms as plat
from castar.engine._export_plan import Node, Target
from castar.store import digest as digests
from castar.store.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SizeMismatch,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from castar.store._store import Store
    from castar.store.content import ContentStore, Info
    from castar.store.digest import Digest
    from castar.store.images import DescriptorLike

__all__ = ["fetch", "resolve", "unlinked"]

_REF_LABEL: Final = "containerd.io/gc.ref.content"
_REFERRER_LABEL: Final = "containerd.io/gc.ref.content.referrer.sha256."


# -- resolving names (SAVE-4) ----------------------------------------------------------------


def _as_oci(target: DescriptorLike) -> oci.Descriptor:
    return oci.Descriptor(
        media_type=target.media_type,
        digest=digests.parse(target.digest),
        size=target.size,
        annotations=dict(target.annotations),
    )


async def resolve(store: Store, ref: str) -> list[Target]:
    """The targets one caller-given reference names (SAVE-4).

    ``name:tag`` → that image under its name; a bare repository → every tagged image
    of it, by name; a digest, ``name@digest`` or an image-id prefix → the target
    without names.
    """
    if reference.is_digest_ref(ref):
        return [await _by_digest(store, ref, digests.parse(reference.parse_any(ref).digest))]
    candidates = [ref]
    try:
        parsed = reference.parse_normalized(ref)
    except InvalidArgument:
        parsed = None
    if parsed is not None:
        if parsed.is_name_only:  # a bare repository: all its tags, by name
            repo = parsed.name + ":"
            tagged = [
                i
                for i in await store.images.list()
                if i.name.startswith(repo) and "@" not in i.name
            ]
            if tagged:
                return [Target(ref, i.name, _as_oci(i.target)) for i in tagged]
        candidates.append(reference.normalize(ref))
    for name in candidates:
        try:
            image = await store.images.get(name)
        except NotFound:
            continue
        return [Target(ref, image.name, _as_oci(image.target))]
    hex_part = ref.lower()
    if 4 <= len(hex_part) <= 64 and all(c in "0123456789abcdef" for c in hex_part):
        matches = {
            i.target.digest: i
            for i in await store.images.list()
            if i.target.digest.partition(":")[2].startswith(hex_part)
        }
        if len(matches) > 1:
            raise Conflict(f'image ID prefix "{ref}" matches several images')
        if matches:
            image = next(iter(matches.values()))
            return [Target(ref, None, _as_oci(image.target))]
    raise NotFound(f'image "{ref}"')


async def _by_digest(store: Store, ref: str, digest: Digest) -> Target:
    """A target named by digest: an image's target, else a stored blob as it is.

    A blob past the document cap (EDGE-13) cannot be a manifest: its media type stays
    ``application/octet-stream`` and planning refuses it (TV-60).
    """
    for image in await store.images.list():
        if image.target.digest == digest:
            return Target(ref, None, _as_oci(image.target))
    try:
        size = (await store.content.info(digest)).size
    except NotFound:
        raise NotFound(f'image "{ref}"') from None
    media_type = ""
    if size <= oci.MAX_DOCUMENT:
        _, media_type = _document(await store.content.read_all(digest, limit=oci.MAX_DOCUMENT))
    return Target(ref, None, oci.Descriptor(media_type or "application/octet-stream", digest, size))


def _document(data: bytes) -> tuple[dict[str, Any] | None, str]:
    """A stored blob read as a JSON object, with its declared or guessed media type.

    Without ``mediaType``, ``manifests`` makes it an OCI index and ``config`` an OCI
    manifest; otherwise the type is ``""``. Not a JSON object: ``(None, "")``.
    """
    try:
        obj = json.loads(data)
    except ValueError:
        return None, ""
    if not isinstance(obj, dict):
        return None, ""
    media_type = obj.get("mediaType")
    if isinstance(media_type, str) and media_type:
        return obj, media_type
    return obj, oci.OCI_INDEX if "manifests" in obj else oci.OCI_MANIFEST if "config" in obj else ""


# -- what the store holds -------------------------------------------------------------------


async def fetch(content: ContentStore, roots: Sequence[oci.Descriptor]) -> dict[str, Node]:
    """Info for every blob reachable from ``roots``, documents for manifests and indexes.

    The walk is depth-first (errors surface in the same order as one lookup per blob
    would raise them), but the infos come in rounds: when the walk meets a digest it has
    no info for, one :meth:`ContentStore.infos` call fetches every descriptor queued since
    the last round (a manifest's config and all its layers, an index's manifests), so an
    image costs one store hop per document level, not one per blob.
    """
    nodes: dict[str, Node] = {}
    known: dict[str, Info | None] = {}  # None: not recorded
    stack = list(reversed(roots))
    queued = [d.digest for d in roots]  # pushed since the last round
    while stack:
        desc = stack.pop()
        if desc.digest in nodes:
            continue
        if desc.digest not in known:
            todo = [d for d in dict.fromkeys(queued) if d not in known]
            queued.clear()
            found = await content.infos(todo)
            known.update((d, found.get(d)) for d in todo)
        info = known[desc.digest]
        if info is None:
            nodes[desc.digest] = Node(present=False)
            continue
        if info.size != desc.size:
            raise SizeMismatch(
                f"content digest {desc.digest}: store holds {info.size} bytes, "
                f"descriptor says {desc.size}",
                expected=desc.size,
                actual=info.size,
            )
        node = Node(present=True, labels=dict(info.labels))
        if oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type):
            data = await graph.read_document(content, desc)  # capped, digest-checked
            children = tuple(oci.children(desc, data))
            node = replace(
                node,
                children=children,
                document=data if oci.is_index(desc.media_type) else None,
            )
            if oci.is_manifest(desc.media_type) and children and desc.platform is None:
                node = replace(node, platform=await _config_platform(content, children[0]))
            node = replace(node, referrers=await _referrers(content, desc.digest, node.labels))
            pushed = (*children, *node.referrers)
            stack.extend(reversed(pushed))
            queued.extend(d.digest for d in pushed if d.digest not in nodes)
        nodes[desc.digest] = node
    return nodes


async def _referrers(
    content: ContentStore, subject: str, labels: Mapping[str, str]
) -> tuple[oci.Descriptor, ...]:
    """SAVE-1: the referrers a node's labels name that exist locally, as descriptors.

    Media type and artifact type come from the referrer's own document; each carries
    ``io.containerd.manifest.subject: <subject>`` (EXP-7).
    """
    out = []
    for key in sorted(labels):
        if not key.startswith(_REFERRER_LABEL):
            continue
        try:
            digest = digests.parse(labels[key])
            data = await content.read_all(digest, limit=oci.MAX_DOCUMENT)
        except (NotFound, InvalidArgument):
            continue
        obj, media_type = _document(data)
        if obj is None or not (oci.is_manifest(media_type) or oci.is_index(media_type)):
            continue
        artifact = obj.get("artifactType")
        config = obj.get("config")
        if not isinstance(artifact, str) or not artifact:
            artifact = config.get("mediaType") if isinstance(config, dict) else ""
        out.append(
            oci.Descriptor(
                media_type,
                digest,
                len(data),
                annotations={oci.ANNOTATION_MANIFEST_SUBJECT: subject},
                artifact_type=artifact if isinstance(artifact, str) else "",
            )
        )
    return tuple(out)


async def _config_platform(content: ContentStore, config: oci.Descriptor) -> plat.Platform | None:
    """The platform a config names (IMP-8), or None when it is absent or says none."""
    if not oci.is_config(config.media_type) or config.size > oci.MAX_DOCUMENT:
        return None
    try:
        data = await graph.read_document(content, config)
        return oci.decode_config(data, name=str(config.digest)).platform()
    except (NotFound, InvalidArgument, FailedPrecondition):
        return None


# -- lease coverage (SAVE-5) ------------------------------------------------------------------


def _is_ref_label(key: str) -> bool:
    """A GC-5 content reference label: the exact key, or it followed by ``.`` or ``/``."""
    return key == _REF_LABEL or key.startswith((_REF_LABEL + ".", _REF_LABEL + "/"))


def unlinked(roots: Sequence[str], nodes: Mapping[str, Node], reads: Sequence[str]) -> list[str]:
    """The blobs in ``reads`` that the roots' reference labels do not reach (GC-4/5).

    The lease holds the roots; GC marks what their labels reach, so only these need a
    lease entry of their own (one SQL transaction each; usually none).
    """
    covered: set[str] = set()
    stack = list(roots)
    while stack:
        d = stack.pop()
        if d in covered:
            continue
        covered.add(d)
        node = nodes.get(d)
        if node is not None:
            stack.extend(v for k, v in node.labels.items() if _is_ref_label(k))
    return sorted({d for d in reads if d not in covered})
