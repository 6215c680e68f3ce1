"""From an archive's catalogue to image records-to-be: the top index and the filtered walk.

Owns IMP-5..9 (the top index), the walk (IMP-10..14, IMP-16, GC-7) and the copy it keeps.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

import anyio
import anyio.to_thread

from castar.engine import graph, oci, platforms, reference
from castar.engine.load import decompress
from castar.engine.load.archive import WORKERS, Session
from castar.engine.load.catalog import DOCKER_MANIFEST, LAYOUT, Catalog, Entry, clean
from castar.store.digest import Digest, compute
from castar.store.errors import (
    InvalidArgument,
    MalformedArchive,
    MalformedManifest,
    NotFound,
    SizeMismatch,
    UnsupportedMediaType,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["EmptyWalk", "Walk", "fetch_needed", "keep", "resolve", "walk_index"]


_LAYOUT_VERSION: Final = "1.0.0"


class EmptyWalk(NotFound):
    """No descriptor survived the platform filter: ``image might be filtered out`` (IMP-14)."""

    def __init__(self) -> None:
        super().__init__("image might be filtered out")


# -- resolving the archive's index (IMP-5..9) ------------------------------------------------


async def resolve(sess: Session) -> oci.Descriptor:
    """The archive's top index: ``index.json`` (OCI wins) or one built from ``manifest.json``."""
    cat = sess.catalog
    layout = cat.documents.get(LAYOUT)
    if layout is not None:
        value = _json_value(layout[1], "oci layout", layout[0])
        if not isinstance(value, dict):
            raise MalformedManifest(f'untar oci layout "{layout[0]}": not a JSON object')
        version = value.get("imageLayoutVersion")
        if version:
            if version != _LAYOUT_VERSION:
                raise MalformedArchive(f"unsupported OCI version {version}")
            entry = cat.entries.get("index.json")
            if entry is None:
                raise MalformedArchive(f"missing index.json in OCI layout {_LAYOUT_VERSION}")
            return oci.Descriptor(oci.OCI_INDEX, await sess.ensure(entry), entry.size)
    manifest = cat.documents.get(DOCKER_MANIFEST)
    if manifest is not None:
        items = _json_value(manifest[1], "manifest", manifest[0])
        if items is not None:
            if not isinstance(items, list):
                raise MalformedManifest(f'untar manifest "{manifest[0]}": not a JSON array')
            return await _docker_index(sess, items)
    raise MalformedArchive("unrecognized image format")


def _json_value(data: bytes, what: str, name: str) -> object:
    """The first JSON value of ``data``; trailing bytes are ignored (IMP-2)."""
    try:
        text = data.decode("utf-8")
        value, _ = json.JSONDecoder().raw_decode(text.lstrip())
    except (UnicodeDecodeError, ValueError) as exc:
        raise MalformedManifest(f'untar {what} "{name}": {exc}') from exc
    return value


def _symlinked(cat: Catalog) -> dict[str, Entry]:
    """Docker symlinked layers (IMP-12): each link name maps to its target's entry."""
    out: dict[str, Entry] = {}
    for name, target in cat.symlinks.items():
        parent = name.rsplit("/", 1)[0] if "/" in name else ""
        resolved = clean(f"{parent}/{target}")
        entry = cat.entries.get(resolved)
        if entry is None:
            raise MalformedArchive(f'no target for symlink layer from "{name}" to "{resolved}"')
        out[name] = entry
        out.setdefault(clean(name), entry)
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
    decompress.GZIP: oci.DOCKER_LAYER_GZIP,
    decompress.ZSTD: oci.DOCKER_LAYER_ZSTD,  # EDGE-8: castar types zstd as zstd
}


async def _docker_index(sess: Session, items: list[Any]) -> oci.Descriptor:
    """Build and store a schema2 manifest per item and an index over them (IMP-7..9)."""
    cat = sess.catalog
    links = _symlinked(cat)

    def lookup(path: str) -> Entry | None:
        return links.get(path) or cat.entries.get(clean(path))  # EDGE-7: both sides cleaned

    content = sess.content
    compressed = await _compressed_forms(sess)
    # Small configs and layers first, in batches (the loop below finds them stored); an
    # item the loop will refuse is skipped here, so its error stays the loop's.
    small: list[tuple[Entry, None]] = []
    for i, item in enumerate(items):
        with contextlib.suppress(MalformedManifest, MalformedArchive, AttributeError):
            for key in ("Config", "Layers"):
                small.extend((e, None) for p in _docker_str(item, key, i) if (e := lookup(p)))
    await sess.ensure_small(small)
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
            read = functools.partial(oci.config_platform, raw, name=config.name)
            big = len(raw) > graph.INLINE_JSON  # design rule io-off-loop
            platform = await anyio.to_thread.run_sync(read) if big else read()
        except (MalformedManifest, InvalidArgument) as exc:
            raise MalformedManifest(f"unable to resolve platform: {exc}") from exc
        if platform is not None and platform.os == "windows" and not platform.os_version:
            # IMP-8: a Windows config without a version takes the host's
            platform = dataclasses.replace(platform, os_version=platforms.host().os_version)
        layer_descs = []
        for entry in layers:
            digest = await sess.ensure(entry)
            size = entry.size
            if digest in compressed:  # IMP-7: the stored compressed form of this layer
                digest, size = compressed[digest]
            kind = decompress.sniff(await content.read_at(digest, 0, 10))
            media_type = _LAYER_TYPES.get(kind or "", oci.DOCKER_LAYER)
            layer_descs.append(oci.Descriptor(media_type, digest, size))
        manifest = oci.Manifest(
            config=oci.Descriptor(oci.DOCKER_CONFIG, config_digest, config.size),
            layers=tuple(layer_descs),
            media_type=oci.DOCKER_MANIFEST,
        )
        desc = await _store_document(sess, oci.encode_manifest(manifest), oci.DOCKER_MANIFEST)
        tags: list[str | None] = [*_docker_str(item, "RepoTags", i)] or [None]
        for tag in tags:
            annotations = {}
            if tag is not None:
                name = reference.normalize(tag)
                annotations = {
                    oci.ANNOTATION_IMAGE_NAME: name,
                    oci.ANNOTATION_REF_NAME: reference.ref_name_annotation(name),
                }
            entries.append(dataclasses.replace(desc, annotations=annotations, platform=platform))
    index = oci.Index(manifests=tuple(entries), media_type="")
    return await _store_document(sess, oci.encode_index(index), oci.OCI_INDEX)


_UNCOMPRESSED: Final = "containerd.io/uncompressed"


async def _compressed_forms(sess: Session) -> dict[str, tuple[Digest, int]]:
    """Stored blobs labelled ``containerd.io/uncompressed``: uncompressed digest -> blob (IMP-7)."""
    out: dict[str, tuple[Digest, int]] = {}
    for info in await sess.content.walk():
        plain = info.labels.get(_UNCOMPRESSED)
        if plain and plain not in out:
            out[plain] = (info.digest, info.size)
    return out


async def _store_document(sess: Session, data: bytes, media_type: str) -> oci.Descriptor:
    digest = compute(data)
    sess.written[digest] = data  # the walk decodes these bytes, never reads them back
    await sess.content.write_blob(
        data, digest=digest, size=len(data), ref=sess.ref(f"document-{digest}"), sync=False
    )
    return oci.Descriptor(media_type, digest, len(data))


# -- the walk (IMP-10..14) -------------------------------------------------------------------


@dataclass(slots=True)
class Walk:
    """What the walk found: records to write (name, target), names taken, labels, blobs."""

    queued: list[tuple[str, oci.Descriptor]] = field(default_factory=list)
    replaced: list[tuple[str, oci.Descriptor]] = field(default_factory=list)
    labels: dict[Digest, dict[str, str]] = field(default_factory=dict)
    needed: dict[Digest, oci.Descriptor] = field(default_factory=dict)
    produced: bool = False


def keep(sess: Session, desc: oci.Descriptor) -> bool:
    """The platform filter of the load (IMP-10): a descriptor without platform is kept."""
    return desc.platform is None or sess.matcher.match(desc.platform)


async def walk_index(sess: Session, top: oci.Descriptor) -> Walk:
    """Name, filter and label from the top index down; only manifests and indexes are read."""
    walk = Walk()
    walk.needed[top.digest] = top
    doc = await sess.reader.read(top)
    if doc is None:
        raise NotFound(f"content digest {top.digest}")
    entries = list(doc.children)
    listed = [(f"index.json: manifests[{i}]", e) for i, e in enumerate(entries)]
    for where, entry in listed:
        if not (oci.is_manifest(entry.media_type) or oci.is_index(entry.media_type)):
            kind = entry.media_type or "no media type"
            raise UnsupportedMediaType(f"{where}: {kind} is not a manifest or index type")
        _queue_names(sess, walk, entry)
    kept = [e for e in entries if keep(sess, e)]
    if kept:
        walk.produced = True
        walk.labels[top.digest] = oci.children_labels(kept)
    nodes = await graph.walk(
        sess.reader, kept, keep=lambda d: keep(sess, d), skip_missing=sess.skip_missing, unique=True
    )
    for node in nodes:  # SkipDesc (IMP-11, EDGE-2): a missing document has no children
        walk.needed.setdefault(node.descriptor.digest, node.descriptor)
        listed += ((f"document {node.descriptor.digest}", c) for c in node.children)
        if node.children:
            walk.produced = True
            walk.labels[node.descriptor.digest] = oci.children_labels(node.children)
    if not walk.produced:
        raise EmptyWalk
    await _check_sizes(sess, listed)
    return walk


async def _check_sizes(sess: Session, listed: list[tuple[str, oci.Descriptor]]) -> None:
    """IMP-16: each descriptor's size is that of its blob, in the archive or the store."""
    sizes = {d.digest: e.size for _, d in listed if (e := sess.blob_entry(d.digest))}
    infos = await sess.content.infos({d.digest for _, d in listed if d.digest not in sizes})
    sizes.update((digest, info.size) for digest, info in infos.items())
    for where, d in listed:
        size = sizes.get(d.digest, d.size)
        if size != d.size:
            raise SizeMismatch(
                f"{where}: descriptor {d.digest} ({d.media_type}) has size {d.size}, "
                f"blob has {size}",
                expected=d.size,
                actual=size,
            )


def _queue_names(sess: Session, walk: Walk, entry: oci.Descriptor) -> None:
    """Queue the image records one top-level entry gets (IMP-11, LOAD-1)."""
    name = entry.annotations.get(oci.ANNOTATION_IMAGE_NAME, "")
    if not name:
        name = entry.annotations.get(oci.ANNOTATION_REF_NAME, "")
        if name and sess.translator is not None:
            name = sess.translator(name)
    normalized = _normalized(name)
    if normalized is not None:
        walk.queued.append((normalized, entry))
    if oci.is_referrer(entry):
        return  # MT-6: no digest-named record for a referrer
    if normalized is None:
        walk.queued.append((reference.dangling_name(entry.digest), entry))
    else:
        walk.replaced.append((normalized, entry))


def _normalized(name: str) -> str | None:
    """The name recorded (IMG-7), None when empty or not a reference (LOAD-1: dangling)."""
    with contextlib.suppress(InvalidArgument):
        return reference.normalize(name) if name else None
    return None


async def fetch_needed(sess: Session, walk: Walk) -> None:
    """Copy the kept configs and layers a seekable archive holds: 2 copying, 4 in progress."""
    todo = sess.unstored(walk.needed)
    if todo:
        await sess.pool(todo, WORKERS, lambda t: sess.ensure(*t), tick=True)
        sess.progress.report()
