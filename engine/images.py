"""The images service (``castar.Store.images``): records, tree view (TREE-1..3), inspect, rm."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, final

from castar.engine import graph, oci, platforms, reference
from castar.store.digest import Digest
from castar.store.errors import Conflict, FailedPrecondition, InvalidArgument, NotFound

if TYPE_CHECKING:
    import builtins
    from collections.abc import Callable, Iterable, Sequence
    from datetime import datetime

    from castar.engine.platforms import Platform
    from castar.store.images import DescriptorLike, Image
    from castar.store.roles import BlobReader, ImageRecords

__all__ = [
    "ImageDetails", "ImageService", "ImageTree", "ManifestRow", "Removal", "as_oci", "find",
    "id_hex",
]  # fmt: skip

Kind = Literal["image", "attestation", "unknown"]


class _Lenient:
    """The tree view's reader over a store reader: an unusable document reads as absent.

    ``verify`` says why; sharing the inner reader lets a caller walk the same documents
    strictly afterwards without decoding them again.
    """

    def __init__(self, inner: graph.StoreReader) -> None:
        self._inner = inner

    async def read(self, desc: oci.Descriptor) -> graph.Document | None:
        try:
            return await self._inner.read(desc)
        except (NotFound, InvalidArgument, FailedPrecondition):
            return None

    async def exists(self, desc: oci.Descriptor) -> bool:
        return await self._inner.exists(desc)


@final
@dataclass(frozen=True, slots=True)
class ManifestRow:
    """One manifest reachable from an image's target (TREE-1), as its parent lists it."""

    descriptor: oci.Descriptor
    platform: Platform | None  # the descriptor's, else the config's
    kind: Kind  # "attestation" (MT-5), "unknown" (pseudo-images) or "image"
    available: bool  # the manifest, its config and every layer are stored (SAVE-6)
    content_size: int  # bytes of the stored subtree

    def to_json(self) -> dict[str, Any]:
        """A JSON-able mapping (``castar images --tree --json``)."""
        return {
            "platform": platforms.format(self.platform) if self.platform is not None else None,
            "digest": str(self.descriptor.digest),
            "media_type": self.descriptor.media_type,
            "kind": self.kind,
            "available": self.available,
            "content_size": self.content_size,
            "unpacked_size": 0,
        }


@final
@dataclass(frozen=True, slots=True)
class ImageTree:
    """One image (all records sharing a target) with its manifests (TREE-1..3)."""

    names: tuple[str, ...]  # sorted; empty for a dangling image
    target: oci.Descriptor
    manifests: tuple[ManifestRow, ...]  # every reachable one, in index order
    created_at: datetime  # the oldest record's

    @property
    def content_size(self) -> int:
        """CONTENT SIZE: stored bytes summed over all manifests (TREE-3)."""
        return sum(m.content_size for m in self.manifests)

    @property
    def disk_usage(self) -> int:
        """DISK USAGE: content plus unpacked size; castar unpacks nothing (TREE-2)."""
        return self.content_size

    @property
    def platforms(self) -> tuple[ManifestRow, ...]:
        """The rows of kind image: the per-platform child rows of the tree view."""
        return tuple(m for m in self.manifests if m.kind == "image")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able mapping (``castar images --tree --json``)."""
        return {
            "names": list(self.names),
            "id": str(self.target.digest),
            "media_type": self.target.media_type,
            "created_at": self.created_at.isoformat(),
            "content_size": self.content_size,
            "disk_usage": self.disk_usage,
            "platforms": [m.to_json() for m in self.platforms],
            "manifests": [m.to_json() for m in self.manifests],
        }


@final
@dataclass(frozen=True, slots=True)
class ImageDetails:
    """What ``inspect`` shows: the record, its tree, and the selected manifest's documents."""

    image: Image
    tree: ImageTree
    manifest: oci.Descriptor | None = None
    manifest_json: Any = None
    config_json: Any = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-able mapping (``castar inspect``)."""
        img = self.image
        out: dict[str, Any] = {
            "name": img.name,
            "names": list(self.tree.names),
            "target": _descriptor_json(self.tree.target),
            "labels": dict(img.labels),
            "created_at": img.created_at.isoformat(),
            "updated_at": img.updated_at.isoformat(),
            "content_size": self.tree.content_size,
            "platforms": [m.to_json() for m in self.tree.manifests],
        }
        if self.manifest is not None:
            out["manifest_descriptor"] = _descriptor_json(self.manifest)
            out["manifest"] = self.manifest_json
            out["config"] = self.config_json
        return out


@final
@dataclass(frozen=True, slots=True)
class Removal:
    """One line of ``rm`` output: a name untagged, or an image whose last name went."""

    kind: Literal["untagged", "deleted"]
    subject: str

    def __str__(self) -> str:
        return f"{self.kind.capitalize()}: {self.subject}"


def _descriptor_json(desc: oci.Descriptor) -> dict[str, Any]:
    return {
        "mediaType": desc.media_type,
        "digest": str(desc.digest),
        "size": desc.size,
        **({"annotations": dict(desc.annotations)} if desc.annotations else {}),
        **({"platform": platforms.format(desc.platform)} if desc.platform is not None else {}),
    }


def as_oci(target: DescriptorLike) -> oci.Descriptor:
    """A record's target as an OCI descriptor."""
    return oci.Descriptor(
        target.media_type, Digest(target.digest), target.size, annotations=dict(target.annotations)
    )


@final
class ImageService:
    """Image records (IMG-1..5) by full or familiar name, target digest or image-ID prefix."""

    def __init__(self, records: ImageRecords, content: BlobReader) -> None:
        self._records = records
        self._content = content
        # Plain record access is the records' own (IMG-1..4).
        self.create = records.create
        self.get = records.get
        self.update = records.update
        self.delete = records.delete

    async def list(self, filters: Sequence[str] = ()) -> builtins.list[Image]:
        """Records in name order (IMG-5) passing every reference/label/dangling filter."""
        passes = _filter(filters)
        return [img for img in await self._records.list() if passes(img)]

    async def resolve(self, ref: str) -> Image:
        """The record ``ref`` names, as :func:`find`."""
        return (await find(self._records, ref))[0]

    async def tree(
        self, names: Iterable[str] | None = None, reader: graph.StoreReader | None = None
    ) -> builtins.list[ImageTree]:
        """The tree view (TREE-1..3) of ``names`` (default all): by target, sorted by name.

        ``reader``: a store reader whose decoded documents the caller goes on to use.
        """
        return await self._trees(names, _Lenient(reader or graph.StoreReader(self._content)))

    async def _trees(
        self, names: Iterable[str] | None, reader: _Lenient
    ) -> builtins.list[ImageTree]:
        records = await self._records.list()
        if names is not None:
            wanted = {(await self.resolve(n)).target.digest for n in names}
            records = [r for r in records if r.target.digest in wanted]
        groups: dict[Digest, builtins.list[Image]] = {}
        for r in records:
            groups.setdefault(r.target.digest, []).append(r)
        trees = [await self._tree_of(group, reader) for group in groups.values()]
        return sorted(trees, key=_tree_order)

    async def _tree_of(self, group: builtins.list[Image], reader: _Lenient) -> ImageTree:
        target = as_oci(group[0].target)
        # TREE-1: one walk, depth first in index order, present or not; each manifest's
        # subtree is the run of deeper nodes after it.
        nodes = await graph.walk(reader, [target], blobs=reader.exists)
        rows = []
        for i, n in enumerate(nodes):
            if oci.is_manifest(n.descriptor.media_type):
                end = next((j for j in range(i + 1, len(nodes)) if nodes[j].depth <= n.depth), None)
                rows.append(await _row(reader, nodes[i:end]))
        names = tuple(sorted(r.name for r in group if not reference.is_dangling(r.name)))
        return ImageTree(names, target, tuple(rows), created_at=min(r.created_at for r in group))

    async def inspect(self, name: str, platform: str | None = None) -> ImageDetails:
        """The record, its tree, and the best (MATCH-7) or only manifest and its config."""
        wanted = None if platform is None else platforms.parse(platform)
        image = await self.resolve(name)
        reader = _Lenient(graph.StoreReader(self._content))
        (tree,) = await self._trees([image.name], reader)
        row = tree.manifests[0] if len(tree.manifests) == 1 else None
        if wanted is not None:
            matcher = platforms.only(wanted)
            rows = platforms.sort_best_first(
                (m for m in tree.platforms if m.platform is not None and matcher.match(m.platform)),
                lambda m: m.platform,
                matcher,
            )
            if not rows:
                shown = reference.display_name(image.name)
                raise NotFound(
                    f"image {shown} does not provide platform {platforms.format(wanted)}"
                )
            row = next((m for m in rows if m.available), rows[0])
        if row is None:
            return ImageDetails(image, tree)
        doc = await reader.read(row.descriptor)  # read by the tree's walk: not read again
        config = await reader.read(doc.children[0]) if doc and doc.children else None
        docs = [None if d is None else json.loads(d.data) for d in (doc, config)]
        return ImageDetails(image, tree, row.descriptor, *docs)

    async def tag(self, src: str, dst: str) -> Image:
        """Point ``dst`` (normalised) at ``src``'s target; a new ``dst`` copies ``src``'s labels."""
        name = reference.check_name(dst)  # IMG-8: a bad name is a usage error, whatever src is
        image = await self.resolve(src)
        try:
            return await self._records.update(name, target=image.target)
        except NotFound:
            return await self._records.create(name, image.target, labels=image.labels)

    async def remove(self, names: Sequence[str], *, force: bool = False) -> builtins.list[Removal]:
        """Remove image records, Docker ``rmi`` style; content goes at the next GC.

        A name removes that record ("Untagged"); a digest or ID removes every record with that
        target (dangling included; Conflict without ``force`` if several names). "Deleted" when
        an image's last record goes. All names resolve first: a bad one changes nothing.
        """
        plan: builtins.list[Image] = []
        for ref in names:
            image, by_name = await find(self._records, ref)
            if by_name:
                plan.append(image)
                continue
            same = [i for i in await self._records.list() if i.target.digest == image.target.digest]
            named = [i for i in same if not reference.is_dangling(i.name)]
            if len(named) > 1 and not force:
                shown = ", ".join(reference.display_name(i.name) for i in named)
                raise Conflict(
                    f"unable to delete {ref} (must be forced) - image is referenced in "
                    f"multiple repositories: {shown}"
                )
            plan.extend(same)
        removed: builtins.list[Removal] = []
        for rec in {r.name: r for r in plan}.values():  # each record once, in order
            await self._records.delete(rec.name)
            if not reference.is_dangling(rec.name):
                removed.append(Removal("untagged", reference.display_name(rec.name)))
            if all(i.target.digest != rec.target.digest for i in await self._records.list()):
                removed.append(Removal("deleted", str(rec.target.digest)))
        return removed


def id_hex(ref: str) -> str | None:
    """The lower-case hex an image ID names: ``sha256:<64 hex>`` or 4 to 64 hex, any case."""
    low = ref.lower()
    hex_part = low.removeprefix("sha256:")
    if not re.fullmatch(r"[a-f0-9]{4,64}", hex_part) or (low != hex_part and len(hex_part) != 64):
        return None
    return hex_part


async def find(records: ImageRecords, ref: str) -> tuple[Image, bool]:
    """The record ``ref`` names (as given, normalised, ID prefix), and whether by name (SAVE-4)."""
    names = [ref]
    with contextlib.suppress(InvalidArgument):
        names.append(reference.normalize(ref))
    for name in names:
        with contextlib.suppress(NotFound):
            return await records.get(name), True
    hex_part = id_hex(ref)
    matches = (
        [i for i in await records.list() if i.target.digest.encoded.startswith(hex_part)]
        if hex_part
        else []
    )
    if not matches:
        raise NotFound(f'image "{ref}"')
    if len({m.target.digest for m in matches}) > 1:
        raise Conflict(f'image ID prefix "{ref}" matches several images')
    return matches[0], False


async def _row(reader: _Lenient, nodes: builtins.list[graph.Node]) -> ManifestRow:
    desc = nodes[0].descriptor
    try:
        platform = await graph.manifest_platform(reader, desc)
    except NotFound:
        platform = None
    unknown = platform is not None and platform.os == platform.architecture == "unknown"
    kind: Kind = "attestation" if oci.is_attestation(desc) else "image"
    if kind == "image" and (unknown or oci.is_pseudo_image(desc)):
        kind = "unknown"
    return ManifestRow(
        descriptor=desc,
        platform=platform,
        kind=kind,
        available=all(n.present for n in nodes),  # SAVE-6
        content_size=sum(n.descriptor.size for n in nodes if n.present),
    )


def _tree_order(t: ImageTree) -> tuple[bool, builtins.list[str], str]:
    return not t.names, [reference.display_name(n) for n in t.names], t.target.digest


def _filter(filters: Sequence[str]) -> Callable[[Image], bool]:
    references: builtins.list[str] = []
    labels: builtins.list[tuple[str, str | None]] = []
    dangling: bool | None = None
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or not value:
            raise InvalidArgument(f'bad filter "{f}": expected key=value')
        if key == "reference":
            references.append(value)
        elif key == "label":
            k, has_v, v = value.partition("=")
            labels.append((k, v if has_v else None))
        elif key == "dangling" and value in ("true", "false"):
            dangling = value == "true"
        elif key == "dangling":
            raise InvalidArgument(f'bad filter "{f}": dangling is true or false')
        else:
            raise InvalidArgument(
                f'bad filter "{f}": unknown key "{key}" (reference, label, dangling)'
            )

    def passes(image: Image) -> bool:
        if dangling is not None and dangling != reference.is_dangling(image.name):
            return False
        shown = (image.name, reference.display_name(image.name))
        if references and not any(fnmatch.fnmatchcase(n, p) for p in references for n in shown):
            return False
        return all(k in image.labels and (v is None or image.labels[k] == v) for k, v in labels)

    return passes
