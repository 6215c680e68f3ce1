"""The save plan as values: what an archive will hold, and what planning starts from.

Owns ``SavePlan`` and its parts (``ImagePlan`` per ``index.json`` entry, ``PlatformPlan``
per platform manifest walked, ``Skipped``, ``Member``: one tar member in writing order)
with their JSON forms (``castar save --dry-run --json``), and the planner's inputs
(``Node``, ``Target``, ``Options``). Pure: never anyio, the store or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, final

from castar.engine import oci, tarcodec
from castar.engine import platforms as plat

if TYPE_CHECKING:
    from collections.abc import Mapping

    from castar.store.digest import Digest

__all__ = [
    "ImagePlan",
    "Member",
    "Node",
    "Options",
    "PlatformPlan",
    "SavePlan",
    "Skipped",
    "Target",
]


@final
@dataclass(frozen=True, slots=True)
class Member:
    """One tar member of the archive, in writing order.

    Attributes:
        name: the tar name (``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``…).
        size: body length in bytes.
        header: the encoded header (TAR-1..3), PAX records included.
        digest: for a blob copied from the store, its digest.
        data: for a generated member (metadata, a pruned index), its bytes.
    """

    name: str
    size: int
    header: bytes
    digest: Digest | None = None
    data: bytes | None = None

    @property
    def length(self) -> int:
        """Bytes the member takes in the archive: header, body and padding."""
        return len(self.header) + self.size + (-self.size % tarcodec.BLOCKSIZE)


@final
@dataclass(frozen=True, slots=True)
class PlatformPlan:
    """What happens to one platform manifest of an image.

    Attributes:
        platform: ``format_all`` of its platform (descriptor, else config), or
            ``unknown`` when neither says.
        digest: the platform manifest (or nested index).
        state: ``complete`` (every blob written), ``partial`` (the manifest is
            written, its missing children are not: EXP-7) or ``missing`` (the
            manifest itself is not in the store; nothing written).
        attestation: whether it is a BuildKit attestation manifest (MT-5).
        absent: the digests of its subtree that the store does not hold.
    """

    platform: str
    digest: Digest
    state: str
    attestation: bool = False
    absent: tuple[Digest, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Skipped:
    """Something the archive leaves out because the store does not hold it.

    Attributes:
        image: the image's name, or its digest when exported by digest.
        platform: the platform concerned (a requested one for ``reason='not in image'``).
        digest: the manifest concerned, when there is one.
        reason: ``missing``, ``partial`` or ``not in image``.
    """

    image: str
    platform: str
    digest: Digest | None
    reason: str


@final
@dataclass(frozen=True, slots=True)
class ImagePlan:
    """One ``index.json`` entry of the archive.

    Attributes:
        reference: the name, digest or short id the caller gave.
        name: the image name written in the name annotations (EXP-3), or ``None``
            when exported by digest or id (SAVE-4).
        media_type: media type of the entry.
        digest: digest of the entry: the image target, the one platform manifest
            (SAVE-2), or the new pruned index.
        size: size of the entry.
        original: with ``missing="prune"``, the original index the pruned one replaces.
        platforms: the platform manifests walked, in index order.
        not_found: requested platforms no manifest of the image matches.
        docker_manifest: the manifest ``manifest.json`` points at for this entry.
    """

    reference: str
    name: str | None
    media_type: str
    digest: Digest
    size: int
    original: Digest | None = None
    platforms: tuple[PlatformPlan, ...] = ()
    not_found: tuple[str, ...] = ()
    docker_manifest: Digest | None = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary."""
        return {
            "reference": self.reference,
            "name": self.name,
            "mediaType": self.media_type,
            "digest": str(self.digest),
            "size": self.size,
            "original": self.original and str(self.original),
            "platforms": [
                {
                    "platform": p.platform,
                    "digest": str(p.digest),
                    "state": p.state,
                    "attestation": p.attestation,
                    "absent": [str(d) for d in p.absent],
                }
                for p in self.platforms
            ],
            "notFound": list(self.not_found),
            "dockerManifest": self.docker_manifest and str(self.docker_manifest),
        }


@final
@dataclass(frozen=True, slots=True)
class SavePlan:
    """Everything :func:`save` will write, checked against the store.

    Attributes:
        images: the ``index.json`` entries, in input order.
        members: the tar members in writing order: ``oci-layout``, ``index.json``,
            ``manifest.json``, then the directories and blobs sorted by name.
        size: total archive bytes, end-of-archive marker included.
        warnings: what the caller should know (e.g. an image left out, EDGE-6).
    """

    images: tuple[ImagePlan, ...]
    members: tuple[Member, ...]
    size: int
    warnings: tuple[str, ...] = ()

    @property
    def reads(self) -> tuple[Digest, ...]:
        """The blobs whose bodies the archive copies from the store, in writing order."""
        return tuple(m.digest for m in self.members if m.digest is not None and m.data is None)

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """Platforms left out or written partially because content is missing."""
        out: list[Skipped] = []
        for image in self.images:
            who = image.name or str(image.digest)
            out.extend(
                Skipped(who, p.platform, p.digest, p.state)
                for p in image.platforms
                if p.state != "complete"
            )
            out.extend(Skipped(who, p, None, "not in image") for p in image.not_found)
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form (``castar save --dry-run --json``)."""
        return {
            "images": [i.to_json() for i in self.images],
            "members": [
                {"name": m.name, "size": m.size, "digest": m.digest and str(m.digest)}
                for m in self.members
            ],
            "size": self.size,
            "skipped": [
                {
                    "image": s.image,
                    "platform": s.platform,
                    "digest": s.digest and str(s.digest),
                    "reason": s.reason,
                }
                for s in self.skipped
            ],
            "warnings": list(self.warnings),
        }


# -- planning inputs (what the lookup fetched) -------------------------------------------------


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
    reference: str  # as given by the caller
    name: str | None  # full name for the annotations; None → exported without names
    desc: oci.Descriptor

    @property
    def who(self) -> str:
        """What messages call it: the name, else the caller's reference."""
        return self.name or self.reference


@dataclass(frozen=True, slots=True)
class Options:
    platforms: tuple[plat.Platform, ...]  # empty: all platforms
    missing: str
    docker_manifest: bool
    host: plat.Platform
