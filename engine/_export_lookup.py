"""What planning a save reads from the store: names resolved, nodes fetched, lease coverage.

Owns SAVE-4 name resolution (name, repository, digest, image-id prefix), the fetch of
every node reachable from the targets (infos and verified documents level by level in
a few worker-thread hops, config platforms, SAVE-1 referrers) and which read blobs the
lease must hold itself (GC-4/5). Store's public API only; must not import the planner.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final

import anyio.to_thread

from castar.engine import graph, images, oci, reference
from castar.engine import platforms as plat
from castar.engine._export_plan import Node, Target
from castar.engine.images import as_oci
from castar.store import digest as digests
from castar.store.errors import (
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

__all__ = ["fetch", "resolve", "unlinked"]

_REF_LABEL: Final = "containerd.io/gc.ref.content"
_REFERRER_LABEL: Final = "containerd.io/gc.ref.content.referrer.sha256."


# -- resolving names (SAVE-4) ----------------------------------------------------------------


async def resolve(store: Store, ref: str) -> list[Target]:
    """The targets one caller-given reference names (SAVE-4).

    ``name:tag`` → that image under its name; a bare repository → every tagged image
    of it, by name; a digest, ``name@digest`` or an image-id prefix (any case) → the
    target without names.
    """
    key = ref.lower() if images.id_hex(ref) is not None else ref
    if reference.is_digest_ref(key):
        return [await _by_digest(store, ref, digests.parse(reference.parse_any(key).digest))]
    with contextlib.suppress(InvalidArgument):
        parsed = reference.parse_normalized(ref)
        if parsed.is_name_only:  # a bare repository: all its tags, by name
            repo = parsed.name + ":"
            tagged = [
                i
                for i in await store.images.list()
                if i.name.startswith(repo) and "@" not in i.name
            ]
            if tagged:
                return [Target(ref, i.name, as_oci(i.target)) for i in tagged]
    image, named = await images.find(store.images, ref)
    return [Target(ref, image.name if named else None, as_oci(image.target))]


async def _by_digest(store: Store, ref: str, digest: Digest) -> Target:
    """A target named by digest: an image's target, else a stored blob as it is.

    A blob past the document cap (EDGE-13) cannot be a manifest: its media type stays
    ``application/octet-stream`` and planning refuses it (TV-60).
    """
    for image in await store.images.list():
        if image.target.digest == digest:
            return Target(ref, None, as_oci(image.target))
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


@dataclass(slots=True)
class _Prefetched:
    """What :func:`_prefetch` read ahead of the walk; anything absent is read the slow way."""

    infos: dict[str, Info | None] = field(default_factory=dict)  # None: not recorded
    #: (digest, size, media type) → the document's MT-4 children and, for indexes, its bytes
    parsed: dict[tuple[str, int, str], tuple[tuple[oci.Descriptor, ...], bytes | None]] = field(
        default_factory=dict
    )
    #: (digest, size) of a config → its platform (IMP-8)
    platforms: dict[tuple[str, int], plat.Platform | None] = field(default_factory=dict)
    referrers: dict[str, tuple[oci.Descriptor, ...]] = field(default_factory=dict)


# Most document bytes one read-ahead hop holds (documents are capped at 20 MiB each).
_READ_AHEAD: Final = 32 << 20


def _read_verified(items: Sequence[tuple[str, int, Digest]]) -> list[bytes | None]:
    """Worker thread: each file's bytes if it has ``size`` bytes hashing to its digest.

    Anything else (absent, another size, corrupt) is None: the walk then reads it
    through the store and raises that read's error.
    """
    out: list[bytes | None] = []
    for path, size, digest in items:
        try:
            with open(path, "rb", buffering=0) as f:
                data = f.read(size + 1)
        except OSError:
            out.append(None)
            continue
        ok = len(data) == size and digests.compute(data, digest.algorithm) == digest
        out.append(data if ok else None)
    return out


def _wanted(desc: oci.Descriptor, info: Info | None, configs: set[str]) -> bool:
    """Whether the read-ahead reads ``desc``: a stored document read_document would accept."""
    if info is None or info.size != desc.size or desc.data is not None:
        return False
    if desc.size > oci.MAX_DOCUMENT:
        return False
    mt = desc.media_type
    if oci.is_manifest(mt) or oci.is_index(mt):
        return True
    return oci.is_config(mt) and desc.digest in configs


async def _prefetch(content: ContentStore, roots: Sequence[oci.Descriptor]) -> _Prefetched:
    """Read the graph under ``roots`` level by level, in few worker-thread hops.

    Per level: one ``infos`` hop, and one hop reading and verifying its documents
    (more only past ``_READ_AHEAD`` bytes of them).
    Never raises for the graph's own faults (missing, wrong size, corrupt, malformed):
    what it cannot vouch for it leaves out, and :func:`fetch`'s depth-first walk reads
    it one by one and raises exactly as it always did, in walk order.
    """
    pre = _Prefetched()
    configs: set[str] = set()  # configs whose platform a manifest needs (IMP-8)
    seen: set[tuple[str, int, str]] = set()
    level = list(roots)
    while level:
        todo = [d for d in dict.fromkeys(x.digest for x in level) if d not in pre.infos]
        if todo:
            found = await content.infos(todo)
            pre.infos.update((d, found.get(d)) for d in todo)
        reads = []
        for desc in level:
            key = (desc.digest, desc.size, desc.media_type)
            if key not in seen and _wanted(desc, pre.infos[desc.digest], configs):
                seen.add(key)
                reads.append(desc)
        following: list[oci.Descriptor] = []
        while reads:
            batch: list[oci.Descriptor] = []
            total = 0
            while reads and (not batch or total + reads[0].size <= _READ_AHEAD):
                total += reads[0].size
                batch.append(reads.pop(0))
            items = [(str(content.path(d.digest)), d.size, d.digest) for d in batch]
            datas = await anyio.to_thread.run_sync(_read_verified, items)
            for desc, data in zip(batch, datas, strict=True):
                if data is not None:
                    following.extend(await _read_ahead(content, pre, configs, desc, data))
        level = following
    return pre


async def _read_ahead(
    content: ContentStore,
    pre: _Prefetched,
    configs: set[str],
    desc: oci.Descriptor,
    data: bytes,
) -> tuple[oci.Descriptor, ...]:
    """Record what ``fetch`` needs of one verified document; returns what to read next."""
    if not (oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)):
        try:  # a config: as _config_platform, without the store reads
            platform = oci.decode_config(data, name=str(desc.digest)).platform()
        except (NotFound, InvalidArgument, FailedPrecondition):
            platform = None
        except Exception:  # the walk re-reads it and raises in walk order
            return ()
        pre.platforms[desc.digest, desc.size] = platform
        return ()
    try:
        children = tuple(oci.children(desc, data))
    except Exception:  # the walk re-reads it and raises in walk order
        return ()
    pre.parsed[desc.digest, desc.size, desc.media_type] = (
        children,
        data if oci.is_index(desc.media_type) else None,
    )
    if oci.is_manifest(desc.media_type) and children and desc.platform is None:
        configs.add(children[0].digest)
    info = pre.infos[desc.digest]
    assert info is not None
    referrers: tuple[oci.Descriptor, ...] = ()
    if any(k.startswith(_REFERRER_LABEL) for k in info.labels):
        try:
            referrers = await _referrers(content, desc.digest, info.labels)
        except Exception:  # the walk asks again and raises in walk order
            return children
        pre.referrers[desc.digest] = referrers
    return (*children, *referrers)


async def fetch(content: ContentStore, roots: Sequence[oci.Descriptor]) -> dict[str, Node]:
    """Info for every blob reachable from ``roots``, documents for manifests and indexes.

    First :func:`_prefetch` reads the graph level by level (one ``infos`` hop and one
    document hop per level, whatever the number of platforms or layers). Then the
    depth-first walk builds the nodes from what it read; a node it could not vouch for
    (missing, wrong size, corrupt, malformed, embedded data) is read here one by one,
    so errors surface in walk order with the messages one lookup per blob gives.
    """
    pre = await _prefetch(content, roots)
    nodes: dict[str, Node] = {}
    known = pre.infos
    stack = list(reversed(roots))
    queued = [d.digest for d in roots]  # pushed since the last round
    while stack:
        desc = stack.pop()
        if desc.digest in nodes:
            continue
        if desc.digest not in known:  # only below a node the read-ahead left out
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
            parsed = pre.parsed.get((desc.digest, desc.size, desc.media_type))
            if parsed is None:
                data = await graph.read_document(content, desc)  # capped, digest-checked
                parsed = (
                    tuple(oci.children(desc, data)),
                    data if oci.is_index(desc.media_type) else None,
                )
            children, document = parsed
            node = replace(node, children=children, document=document)
            if oci.is_manifest(desc.media_type) and children and desc.platform is None:
                config = children[0]
                key = (config.digest, config.size)
                platform = (
                    pre.platforms[key]
                    if key in pre.platforms and oci.is_config(config.media_type)
                    else await _config_platform(content, config)
                )
                node = replace(node, platform=platform)
            referrers = pre.referrers.get(desc.digest)
            if referrers is None:
                referrers = await _referrers(content, desc.digest, node.labels)
            node = replace(node, referrers=referrers)
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
