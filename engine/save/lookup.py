"""What planning a save reads: names (SAVE-4), nodes, referrers, lease coverage (GC-4/5)."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import anyio.to_thread

from castar.engine import graph, images, oci, reference
from castar.engine import platforms as plat
from castar.engine.images import as_oci
from castar.engine.save.plan import Node, Target
from castar.store import digest as digests
from castar.store.errors import FailedPrecondition, InvalidArgument, NotFound, SizeMismatch
from castar.store.labels import REFERRER, is_content_ref

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence
    from pathlib import Path

    from castar.store.content import Info
    from castar.store.digest import Digest
    from castar.store.roles import BlobReader, ImageRecords, Leases

__all__ = ["Roles", "fetch", "resolve", "unlinked"]


class Roles(Protocol):
    """What a save uses of a root: blobs, image records and leases."""

    @property
    def content(self) -> BlobReader: ...  # noqa: D102
    @property
    def images(self) -> ImageRecords: ...  # noqa: D102
    @property
    def leases(self) -> Leases: ...  # noqa: D102


async def resolve(store: Roles, ref: str) -> list[Target]:
    """The targets ``ref`` names (SAVE-4): by name (a repository: its tags), else by digest/id."""
    key = ref.lower() if images.id_hex(ref) is not None else ref
    if reference.is_digest_ref(key):
        with contextlib.suppress(NotFound):  # IMG-7: a record so named, whatever its target
            image, named = await images.find(store.images, ref)
            if named:
                return [Target(ref, None, as_oci(image.target))]
        return [await _by_digest(store, ref, digests.parse(reference.parse_any(key).digest))]
    with contextlib.suppress(InvalidArgument):
        parsed = reference.parse_normalized(ref)
        if parsed.is_name_only:  # a bare repository: all its tags, by name
            repo = parsed.name + ":"
            listed = await store.images.list()
            tagged = [i for i in listed if i.name.startswith(repo) and "@" not in i.name]
            if tagged:
                return [Target(ref, i.name, as_oci(i.target)) for i in tagged]
    image, named = await images.find(store.images, ref)
    name = image.name if named else None
    with contextlib.suppress(InvalidArgument):  # IMG-7: a save writes the normalised form
        name = name and reference.normalize(name)
    return [Target(ref, name, as_oci(image.target))]


async def _by_digest(store: Roles, ref: str, digest: Digest) -> Target:
    """An image's target by digest, else the stored blob (past EDGE-13's cap: octet-stream)."""
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
    """A blob as a JSON object with its declared or guessed media type; else ``(None, "")``."""
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


class _Planning(graph.Reader):
    """Planning's reader: one ``infos`` call per document, SAVE-1 referrers after children."""

    def __init__(self, content: BlobReader) -> None:
        super().__init__(self._load)
        self.content = content
        self.infos: dict[str, Info | None] = {}  # None: not recorded
        self.referrers: dict[str, tuple[oci.Descriptor, ...]] = {}
        self._reached: list[Digest] = []

    async def info(self, desc: oci.Descriptor) -> Info | None:
        """The blob's record, ``None`` when absent; SizeMismatch when it has another size."""
        if desc.digest not in self.infos:
            todo = [d for d in dict.fromkeys([desc.digest, *self._reached]) if d not in self.infos]
            self._reached.clear()
            found = await self.content.infos(todo)
            self.infos.update((d, found.get(d)) for d in todo)
        info = self.infos[desc.digest]
        if info is not None and info.size != desc.size:
            raise SizeMismatch(
                f"content digest {desc.digest}: store holds {info.size} bytes, "
                f"descriptor says {desc.size}",
                expected=desc.size,
                actual=info.size,
            )
        return info

    async def present(self, desc: oci.Descriptor) -> bool:
        return await self.info(desc) is not None

    async def _load(self, desc: oci.Descriptor) -> bytes | None:
        info = await self.info(desc)
        return (
            None if info is None else await graph.read_document(_Recorded(self.content, info), desc)
        )

    async def read(self, desc: oci.Descriptor) -> graph.Document | None:
        """The document, its referrers listed after its children (SAVE-1)."""
        doc = await super().read(desc)
        if doc is None or not (oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)):
            return doc
        refs = self.referrers.get(desc.digest)
        if refs is None:
            info = self.infos[desc.digest]
            assert info is not None
            refs = self.referrers[desc.digest] = await _referrers(self.content, info)
            self._reached += [d.digest for d in (*doc.children, *refs)]
        return replace(doc, children=(*doc.children, *refs))


@dataclass(frozen=True, slots=True)
class _Recorded:
    """The store with one blob's record known: ``read_document`` asks for no record."""

    content: BlobReader
    record: Info

    async def info(self, digest: str) -> Info:
        return self.record

    async def exists(self, digest: str) -> bool:
        return True

    async def read_all(self, digest: str, *, limit: int) -> bytes:
        """The blob's file in one worker-thread hop, else the store's read and its error."""
        path = self.content.path(digest)
        data = await anyio.to_thread.run_sync(_read_file, path, self.record.size)
        return data if data is not None else await self.content.read_all(digest, limit=limit)


def _read_file(path: Path, size: int) -> bytes | None:
    with contextlib.suppress(OSError), open(path, "rb", buffering=0) as f:
        if len(data := f.read(size + 1)) == size:
            return data
    return None


async def fetch(content: BlobReader, roots: Sequence[oci.Descriptor]) -> dict[str, Node]:
    """A node for every blob reachable from ``roots``; faults in walk order (EXP-7, EXP-13)."""
    reader = _Planning(content)
    nodes: dict[str, Node] = {}
    for n in await graph.walk(reader, roots, blobs=reader.present, unique=True):
        desc = n.descriptor
        info = reader.infos[desc.digest]
        if info is None or not n.present:
            nodes[desc.digest] = Node(present=False)
            continue
        nodes[desc.digest] = node = Node(present=True, labels=dict(info.labels))
        doc = await reader.read(desc) if desc.digest in reader.referrers else None
        if doc is not None:
            refs = reader.referrers[desc.digest]
            children = doc.children[: len(doc.children) - len(refs)]
            platform = None
            if oci.is_manifest(desc.media_type) and children and desc.platform is None:
                platform = await _config_platform(reader, children[0])
            index = doc.data if oci.is_index(desc.media_type) else None
            nodes[desc.digest] = replace(
                node, children=children, document=index, platform=platform, referrers=refs
            )
    return nodes


async def _referrers(content: BlobReader, subject: Info) -> tuple[oci.Descriptor, ...]:
    """SAVE-1: the local referrers a node's labels name, with the subject annotation (EXP-7)."""
    out = []
    for key in sorted(k for k in subject.labels if k.startswith(REFERRER)):
        try:
            digest = digests.parse(subject.labels[key])
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
        kind = artifact if isinstance(artifact, str) else ""
        subject_of = {oci.ANNOTATION_MANIFEST_SUBJECT: subject.digest}
        out.append(
            oci.Descriptor(
                media_type, digest, len(data), annotations=subject_of, artifact_type=kind
            )
        )
    return tuple(out)


async def _config_platform(reader: _Planning, config: oci.Descriptor) -> plat.Platform | None:
    """The platform a config names (IMP-8), or None when it is absent or says none."""
    if not oci.is_config(config.media_type) or config.size > oci.MAX_DOCUMENT:
        return None
    try:
        doc = await reader.read(config)
    except (NotFound, InvalidArgument, FailedPrecondition):
        return None
    return None if doc is None else doc.platform


def unlinked(roots: Sequence[str], nodes: Mapping[str, Node], reads: Sequence[str]) -> list[str]:
    """The blobs in ``reads`` the roots' labels do not reach: lease entries of their own."""
    covered: set[str] = set()
    stack = list(roots)
    while stack:
        d = stack.pop()
        if d in covered:
            continue
        covered.add(d)
        node = nodes.get(d)
        if node is not None:
            stack.extend(v for k, v in node.labels.items() if is_content_ref(k))
    return sorted({d for d in reads if d not in covered})
