"""The save plan (``--dry-run --json``) and its pure planner: EXP-3/4/7/9/10, SAVE-1..3, MATCH-7."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Self, final

from castar.engine import oci, reference, tarcodec
from castar.engine import platforms as plat
from castar.store import digest as digests
from castar.store.errors import Conflict, InvalidArgument, NotFound
from castar.store.labels import SOURCE

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping, Sequence

    from _typeshed import DataclassInstance

    from castar.store.digest import Digest

__all__ = [
    "MISSING_POLICIES", "ImagePlan", "Member", "Node", "Planner", "PlatformPlan", "SaveOptions",
    "SavePlan", "Skipped", "Target",
]  # fmt: skip

MISSING_POLICIES: Final = ("sparse", "prune", "fail", "fetch")
_OCI_LAYOUT: Final = b'{"imageLayoutVersion":"1.0.0"}'


@dataclass(frozen=True, slots=True)
class Node:
    """What the store holds for one digest: enough to plan without further I/O."""

    present: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    children: tuple[oci.Descriptor, ...] = ()
    document: bytes | None = None  # indexes only: the raw bytes, for pruning
    platform: plat.Platform | None = None  # manifests only: from the config
    referrers: tuple[oci.Descriptor, ...] = ()  # SAVE-1: present referrers, subject-annotated


@dataclass(frozen=True, slots=True)
class Target:
    """One image named for saving."""

    reference: str  # as given by the caller
    name: str | None  # full name for the annotations; None → exported without names
    desc: oci.Descriptor

    @property
    def who(self) -> str:
        """What messages call it: the name, else the caller's reference."""
        return self.name or self.reference


@final
@dataclass(frozen=True, slots=True)
class SaveOptions:
    """How to save: ``missing`` is ``sparse`` (EXP-7), ``prune``, ``fail`` or ``fetch`` (SAVE-7)."""

    platforms: tuple[plat.Platform, ...] = ()  # empty: all (SAVE-1..3)
    missing: str = "sparse"
    docker_manifest: bool = True  # EXP-10
    verify: bool = False
    archive_digest: bool = False  # into ExportResult.sha256
    write_behind: bool = False

    def __post_init__(self) -> None:
        if self.missing not in MISSING_POLICIES:
            raise InvalidArgument(
                f"missing={self.missing!r}: must be one of {', '.join(MISSING_POLICIES)}"
            )

    @classmethod
    def parse(cls, platforms: Iterable[str | plat.Platform] | None = None, **fields: Any) -> Self:  # noqa: ANN401
        """Options with ``platforms`` as specifiers (comma lists, no duplicates) or Platforms."""
        values = plat.parse_list(platforms or ())
        return cls(tuple(values), **fields)


@final
@dataclass(frozen=True, slots=True)
class Member:
    """One tar member in writing order (TAR-1..3): a blob has ``digest``, generated ``data``."""

    name: str
    size: int
    header: bytes
    digest: Digest | None = None
    data: bytes | None = None


@final
@dataclass(frozen=True, slots=True)
class PlatformPlan:
    """One platform manifest or nested index: ``state`` complete, partial (EXP-7) or missing."""

    platform: str
    digest: Digest
    state: str
    attestation: bool = False
    absent: tuple[Digest, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Skipped:
    """A platform left out: ``reason`` is ``missing``, ``partial`` or ``not in image``."""

    image: str
    platform: str
    digest: Digest | None
    reason: str


@final
@dataclass(frozen=True, slots=True)
class ImagePlan:
    """One ``index.json`` entry; ``name`` for EXP-3 annotations, None by digest or id (SAVE-4)."""

    reference: str
    name: str | None
    media_type: str
    digest: Digest
    size: int
    original: Digest | None = None
    platforms: tuple[PlatformPlan, ...] = ()
    not_found: tuple[str, ...] = ()
    docker_manifest: Digest | None = None


@final
@dataclass(frozen=True, slots=True)
class SavePlan:
    """What :func:`save` writes: ``members`` in order, ``size`` with the end marker (EDGE-6)."""

    images: tuple[ImagePlan, ...]
    members: tuple[Member, ...]
    size: int
    warnings: tuple[str, ...] = ()

    @property
    def reads(self) -> tuple[Digest, ...]:
        """The blobs copied from the store, in writing order."""
        return tuple(m.digest for m in self.members if m.digest is not None and m.data is None)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """Platforms left out or written partially because content is missing."""
        out: list[Skipped] = []
        for image in self.images:
            who = image.name or str(image.digest)
            bad = [p for p in image.platforms if p.state != "complete"]
            out += [Skipped(who, p.platform, p.digest, p.state) for p in bad]
            out += [Skipped(who, p, None, "not in image") for p in image.not_found]
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (``castar save --dry-run --json``)."""
        return {
            "images": _plain(self.images),
            "members": [_json(m, "name", "size", "digest") for m in self.members],
            **_json(self, "size", "skipped", "warnings"),
        }


def _json(obj: DataclassInstance, *names: str) -> dict[str, Any]:
    """Fields ``names`` (else all) of ``obj``, JSON-ready under camelCase keys."""
    return {
        re.sub("_(.)", lambda m: m[1].upper(), n): _plain(getattr(obj, n))
        for n in names or [f.name for f in fields(obj)]
    }


def _plain(value: object) -> object:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if is_dataclass(value) and not isinstance(value, type):
        return _json(value)
    return str(value) if isinstance(value, str) else value  # a Digest as a plain str


class Planner:
    """Builds a :class:`SavePlan` from targets and fetched nodes; does no I/O."""

    def __init__(
        self, nodes: Mapping[str, Node], options: SaveOptions, host: plat.Platform
    ) -> None:
        self._nodes = nodes
        self._opts = options
        self._host = plat.only(host)
        self._blobs: dict[str, int] = {}  # digest → size, to write from the store
        self._generated: dict[str, bytes] = {}  # digest → bytes (pruned indexes)
        self._entries: list[oci.Descriptor] = []
        self._referrers: dict[str, oci.Descriptor] = {}  # EXP-9: extra index.json entries
        self._walked: set[str] = set()  # digests the walk reached as ordinary children
        self._docker: dict[str, tuple[str, list[str], list[str]]] = {}  # m → cfg, layers, tags
        self._warnings: list[str] = []

    def _platform_of(self, desc: oci.Descriptor) -> plat.Platform | None:
        return desc.platform if desc.platform is not None else self._nodes[desc.digest].platform

    def _absent(self, desc: oci.Descriptor) -> list[Digest]:
        """Digests of ``desc``'s subtree the store lacks (SAVE-6), foreign layers aside (SAVE-1)."""
        node = self._nodes[desc.digest]
        if not node.present:
            return [desc.digest]
        out: list[Digest] = []
        for child in node.children:
            if oci.is_index(child.media_type) or oci.is_manifest(child.media_type):
                out.extend(self._absent(child))
            elif not self._nodes[child.digest].present and not _foreign(child):
                out.append(child.digest)
        return out

    def _emit(self, desc: oci.Descriptor, *, referrer: bool = False) -> None:
        """Walk ``desc`` (EXP-7 with skip-missing and referrers); record the blobs to write."""
        node = self._nodes[desc.digest]
        if not referrer:
            self._walked.add(desc.digest)
        if not node.present or desc.digest in self._blobs:
            return
        self._blobs[desc.digest] = desc.size
        if oci.is_index(desc.media_type):
            for child in node.children:
                self._emit(child)
        elif any(not self._nodes[c.digest].present and not _foreign(c) for c in node.children):
            return  # EXP-7: a manifest with a missing child is written without children
        else:
            for child in node.children:
                self._walked.add(child.digest)
                if not _foreign(child):  # SAVE-1 skip_non_distributable, TV-59
                    self._blobs[child.digest] = child.size
        for ref in node.referrers:  # EXP-7: after the children
            self._referrers.setdefault(ref.digest, ref)
            self._emit(ref, referrer=True)

    def _platform_plan(self, desc: oci.Descriptor) -> PlatformPlan:
        absent = self._absent(desc)
        p = self._platform_of(desc)
        present = self._nodes[desc.digest].present
        state = "complete" if not absent else "partial" if present else "missing"
        name = plat.format_all(p) if p is not None else "unknown"
        return PlatformPlan(name, desc.digest, state, oci.is_attestation(desc), tuple(absent))

    def add(self, target: Target) -> ImagePlan | None:
        """Plan one top-level entry; None when it is left out (EDGE-6)."""
        desc = target.desc
        if not (oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)):
            raise InvalidArgument(
                f"export {desc.digest} ({desc.media_type}): only manifests may be exported"
            )
        node = self._nodes[desc.digest]
        if len(self._opts.platforms) == 1:  # SAVE-2
            one = self._single_target(target)
            self._emit(one)
            entry = self._entry(target, one, desc.digest)
            return self._image(
                target, entry, [self._platform_plan(one)], self._register(one, target.name)
            )
        if not node.present:
            if self._opts.missing == "fail":
                raise NotFound(f"{target.who}: content digest {desc.digest}")
            self._warnings.append(f"{target.who}: content digest {desc.digest} not found; left out")
            return None
        if oci.is_manifest(desc.media_type):
            return self._add_manifest(target)
        return self._add_index(target)

    def _single_target(self, target: Target) -> oci.Descriptor:
        """SAVE-2: the one available, non-attestation manifest matching the platform."""
        want = self._opts.platforms[0]
        strict = plat.only_strict(want)
        found: list[oci.Descriptor] = []
        stack = [target.desc]
        while stack:
            desc = stack.pop()
            node = self._nodes[desc.digest]
            if oci.is_index(desc.media_type):
                stack.extend(reversed(node.children))
                continue
            if not oci.is_manifest(desc.media_type) or oci.is_attestation(desc):
                continue
            if self._absent(desc):
                continue
            p = self._platform_of(desc)
            if p is not None and strict.match(p) and desc.digest not in {f.digest for f in found}:
                found.append(desc)
        ref = reference.familiarize(target.name) if target.name else target.reference
        if not found:
            raise NotFound(
                "no suitable export target found: image with reference "
                f"{ref} was found but does not provide the specified platform "
                f"({plat.format_all(want)})"
            )
        if len(found) > 1:
            raise Conflict(
                f"no suitable export target found: image with reference {ref}: "
                f"multiple manifests found for platform {plat.format_all(want)}"
            )
        return found[0]

    def _add_manifest(self, target: Target) -> ImagePlan:
        desc = target.desc
        pp = self._platform_plan(desc)
        p = self._platform_of(desc)
        wanted = self._opts.platforms
        if wanted and (p is None or not plat.any_of(*wanted).match(p)):
            raise NotFound(f"{target.who}: no manifest found for platform")
        self._check_complete(target, [pp])
        if self._opts.missing == "prune" and pp.state != "complete":
            raise NotFound(f"{target.who}: no platform is complete locally")
        self._emit(desc)
        docker = None
        if pp.state == "complete":
            docker = self._register(desc, target.name)
        elif self._opts.docker_manifest:
            self._warnings.append(
                f"{target.who}: manifest {desc.digest} is incomplete; "
                "manifest.json has no entry for it"
            )
        return self._image(target, self._entry(target, desc, desc.digest), [pp], docker)

    def _add_index(self, target: Target) -> ImagePlan:
        desc = target.desc
        node = self._nodes[desc.digest]
        wanted = self._opts.platforms
        matcher = plat.any_of(*wanted) if wanted else None
        walked: list[tuple[int, oci.Descriptor, PlatformPlan]] = []
        for pos, child in enumerate(node.children):
            if (
                matcher is not None
                and child.platform is not None
                and not matcher.match(child.platform)
            ):
                continue  # EXP-6: only direct children are filtered (EDGE-5); EDGE-4
            walked.append((pos, child, self._platform_plan(child)))
        if not walked:
            raise NotFound(f"{target.who}: no manifest found for platform")
        not_found = tuple(
            plat.format_all(w)
            for w in wanted
            if not any(
                (p := self._platform_of(c)) is not None and plat.any_of(w).match(p)
                for _, c, _ in walked
            )
        )
        if self._opts.missing == "fail" and not_found:
            raise NotFound(f"{target.who}: platform {not_found[0]} not found in the image")
        self._check_complete(target, [pp for _, _, pp in walked])
        entry_desc = desc
        original = None
        if self._opts.missing == "prune":
            kept = self._prunable(walked)
            if not kept:
                raise NotFound(f"{target.who}: no platform is complete locally")
            if len(kept) != len(node.children):
                entry_desc = self._pruned_index(desc, node, [pos for pos, _, _ in kept])
                original = desc.digest
            walked = kept
        if original is None:
            self._blobs[desc.digest] = desc.size  # EXP-6: the original index, unmodified
        for _, child, _ in walked:
            self._emit(child)
        return self._image(
            target,
            self._entry(target, entry_desc, desc.digest),
            [pp for _, _, pp in walked],
            self._pick_docker(target, [(c, pp) for _, c, pp in walked]),
            original=original,
            not_found=not_found,
        )

    def _image(
        self,
        target: Target,
        entry: oci.Descriptor,
        platforms: Sequence[PlatformPlan],
        docker: Digest | None,
        *,
        original: Digest | None = None,
        not_found: tuple[str, ...] = (),
    ) -> ImagePlan:
        """Add ``entry`` to ``index.json`` and describe it."""
        self._entries.append(entry)
        head = (target.reference, target.name, entry.media_type, entry.digest, entry.size)
        return ImagePlan(*head, original, tuple(platforms), not_found, docker)

    def _check_complete(self, target: Target, plans: Sequence[PlatformPlan]) -> None:
        bad = [pp for pp in plans if pp.state != "complete"]
        if self._opts.missing == "fail" and bad:
            raise NotFound(
                f"{target.who}: platform {bad[0].platform} ({bad[0].digest}) "
                f"is not complete locally: content digest {bad[0].absent[0]}"
            )

    def _prunable(
        self, walked: list[tuple[int, oci.Descriptor, PlatformPlan]]
    ) -> list[tuple[int, oci.Descriptor, PlatformPlan]]:
        """The walked children a pruned index keeps: complete ones, attestations of kept."""
        complete = [w for w in walked if w[2].state == "complete"]
        subjects = {str(c.digest) for _, c, pp in complete if not pp.attestation}
        return [
            w
            for w in complete
            if not w[2].attestation
            or w[1].annotations.get("vnd.docker.reference.digest") in subjects
        ]

    def _pruned_index(self, desc: oci.Descriptor, node: Node, keep: list[int]) -> oci.Descriptor:
        """A new index of only ``keep`` of the original's entries, re-encoded (DESC-1/2)."""
        assert node.document is not None
        index = oci.decode_index(node.document, name=str(desc.digest))
        data = oci.encode_index(replace(index, manifests=tuple(index.manifests[i] for i in keep)))
        new = digests.compute(data)
        self._generated[new] = data
        return oci.Descriptor(desc.media_type, new, len(data), annotations=desc.annotations)

    def _pick_docker(
        self, target: Target, candidates: list[tuple[oci.Descriptor, PlatformPlan]]
    ) -> Digest | None:
        """EXP-6 + EDGE-1 [castar]: the host-preferred *available* platform manifest."""
        if not self._opts.docker_manifest:
            return None
        eligible = [
            c
            for c, pp in candidates
            if oci.is_manifest(c.media_type) and not pp.attestation and pp.state == "complete"
        ]
        ordered = plat.sort_best_first(eligible, self._platform_of, self._host)
        if not ordered:
            self._warnings.append(
                f"{target.who}: no platform is available locally; manifest.json has no entry for it"
            )
            return None
        return self._register(ordered[0], target.name)

    def _register(self, desc: oci.Descriptor, name: str | None) -> Digest | None:
        """Add ``desc`` to manifest.json under ``name`` (EXP-10: one entry per digest)."""
        if not self._opts.docker_manifest:
            return None
        node = self._nodes[desc.digest]
        config, *layers = node.children
        entry = self._docker.setdefault(
            desc.digest,
            (digests.blob_path(config.digest), [digests.blob_path(x.digest) for x in layers], []),
        )
        if name is not None:
            try:
                tag = reference.familiarize(name)
            except InvalidArgument as err:
                raise InvalidArgument(f"unable to create manifests file: {err.message}") from err
            if tag not in entry[2]:
                entry[2].append(tag)
        return desc.digest

    def _entry(self, target: Target, desc: oci.Descriptor, labelled: str) -> oci.Descriptor:
        """The index.json descriptor: EXP-3 names (or none, SAVE-4) + EXP-4 sources."""
        names = (oci.ANNOTATION_IMAGE_NAME, oci.ANNOTATION_REF_NAME)
        annotations = {k: v for k, v in desc.annotations.items() if k not in names}
        node = self._nodes.get(labelled)
        labels = node.labels if node is not None else {}
        annotations.update((k, v) for k, v in labels.items() if k.startswith(SOURCE))
        if target.name is not None:
            annotations[oci.ANNOTATION_IMAGE_NAME] = target.name
            annotations[oci.ANNOTATION_REF_NAME] = reference.ref_name_annotation(target.name)
        return replace(desc, annotations=annotations, data=None)

    def finish(self, images: list[ImagePlan]) -> SavePlan:
        """Lay out the members: metadata first, then directories and blobs by name."""
        entries = _dedup(self._entries)
        tops = {e.digest for e in entries}
        extra = [  # EXP-9: referrers not otherwise part of the tree, by digest
            self._referrers[d]
            for d in sorted(self._referrers)
            if d not in tops and d not in self._walked
        ]
        index = oci.encode_index(oci.Index(manifests=(*entries, *extra)))
        meta = [("oci-layout", _OCI_LAYOUT, 0o444), ("index.json", index, 0o644)]
        if self._docker:
            meta.append(("manifest.json", _docker_manifest(self._docker), 0o644))
        members = [
            Member(name, len(data), tarcodec.encode_header(name, len(data), mode=mode), data=data)
            for name, data, mode in meta
        ]
        blobs: dict[str, Member] = {}
        for d, size in [*self._blobs.items(), *((d, len(b)) for d, b in self._generated.items())]:
            dg = digests.parse(d)
            name = digests.blob_path(dg)
            header = tarcodec.encode_header(name, size, mode=0o444)
            blobs[name] = Member(name, size, header, dg, self._generated.get(d))
            for folder in ("blobs/", f"blobs/{dg.algorithm}/"):
                if folder not in blobs:  # one header each, not one per blob
                    header = tarcodec.encode_header(folder, 0, mode=0o755, type=tarcodec.DIRTYPE)
                    blobs[folder] = Member(folder, 0, header)
        members.extend(blobs[k] for k in sorted(blobs, key=lambda n: n.encode()))
        size = sum(len(m.header) + m.size + -m.size % tarcodec.BLOCKSIZE for m in members)
        size += len(tarcodec.END_OF_ARCHIVE)
        return SavePlan(tuple(images), tuple(members), size, tuple(self._warnings))


def _foreign(desc: oci.Descriptor) -> bool:
    return oci.is_non_distributable(desc.media_type)


def _dedup(entries: list[oci.Descriptor]) -> list[oci.Descriptor]:
    seen: dict[tuple[str, str | None], oci.Descriptor] = {}
    for e in entries:
        seen.setdefault((str(e.digest), e.annotations.get(oci.ANNOTATION_IMAGE_NAME)), e)
    return list(seen.values())


def _docker_manifest(entries: Mapping[str, tuple[str, list[str], list[str]]]) -> bytes:
    """manifest.json (EXP-10): fields in Docker's order Config, RepoTags, Layers."""
    return oci.canonical_json(
        [
            oci.Struct(Config=cfg, RepoTags=tags or None, Layers=layers or None)
            for cfg, layers, tags in entries.values()
        ]
    )
