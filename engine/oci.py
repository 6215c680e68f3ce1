"""The OCI/Docker image model: media types, descriptors, manifests, indexes, configs, their graph.

Owns the media types and their classification (MT-1/2), the document dataclasses with strict
decoding under the 20 MiB cap (EDGE-13) and DESC-1 encoding, the children of a node (MT-4),
attestations, referrers and pseudo images (MT-5/6) and the GC child labels (GC-7).
Re-exports the canonical JSON encoder (``_json``, DESC-2).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import KW_ONLY, dataclass, field
from typing import TYPE_CHECKING, Any, Final, final

from castar.engine import platforms
from castar.engine._json import (
    Struct,
    canonical_json,
    get_int,
    get_map,
    get_str,
    get_strs,
    kind,
    load_object,
    malformed,
    object_of,
)
from castar.store.digest import Digest
from castar.store.errors import InvalidArgument, MalformedManifest, UnsupportedMediaType
from castar.store.labels import REF_CONTENT, REFERRER

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

__all__ = [
    "ANNOTATION_IMAGE_NAME", "ANNOTATION_MANIFEST_SUBJECT", "ANNOTATION_PREDICATE_TYPE",
    "ANNOTATION_REFERENCE_DIGEST", "ANNOTATION_REFERENCE_TYPE", "ANNOTATION_REF_NAME",
    "CHECKPOINT", "CHECKPOINT_CONFIG", "DOCKER_CONFIG", "DOCKER_LAYER", "DOCKER_LAYER_FOREIGN",
    "DOCKER_LAYER_FOREIGN_GZIP", "DOCKER_LAYER_GZIP", "DOCKER_LAYER_ZSTD", "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST", "DOCKER_SCHEMA1_MANIFEST", "EROFS_LAYER", "IN_TOTO", "MAX_DOCUMENT",
    "OCI_CONFIG", "OCI_EMPTY", "OCI_INDEX", "OCI_LAYER", "OCI_LAYER_GZIP", "OCI_LAYER_ND",
    "OCI_LAYER_ND_GZIP", "OCI_LAYER_ND_ZSTD", "OCI_LAYER_ZSTD",
    "OCI_MANIFEST", "Descriptor", "Index", "Manifest", "Struct", "canonical_json",
    "children", "children_labels", "config_platform", "decode_index", "decode_manifest",
    "encode_index", "encode_manifest", "is_attestation", "is_config", "is_index",
    "is_known_config", "is_layer", "is_manifest", "is_non_distributable", "is_pseudo_image",
    "is_referrer",
]  # fmt: skip

# --- media types (MT-1) -------------------------------------------------------------------------

OCI_INDEX: Final = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST: Final = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG: Final = "application/vnd.oci.image.config.v1+json"
OCI_LAYER: Final = "application/vnd.oci.image.layer.v1.tar"
OCI_LAYER_GZIP: Final = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD: Final = "application/vnd.oci.image.layer.v1.tar+zstd"
OCI_LAYER_ND: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar"
OCI_LAYER_ND_GZIP: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
OCI_LAYER_ND_ZSTD: Final = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
OCI_EMPTY: Final = "application/vnd.oci.empty.v1+json"
DOCKER_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_MANIFEST_LIST: Final = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_CONFIG: Final = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER: Final = "application/vnd.docker.image.rootfs.diff.tar"
DOCKER_LAYER_GZIP: Final = "application/vnd.docker.image.rootfs.diff.tar.gzip"
DOCKER_LAYER_ZSTD: Final = "application/vnd.docker.image.rootfs.diff.tar.zstd"
DOCKER_LAYER_FOREIGN: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar"
DOCKER_LAYER_FOREIGN_GZIP: Final = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
DOCKER_SCHEMA1_MANIFEST: Final = "application/vnd.docker.distribution.manifest.v1+prettyjws"
IN_TOTO: Final = "application/vnd.in-toto+json"
CHECKPOINT: Final = "application/vnd.containerd.container.criu.checkpoint.criu.tar"
CHECKPOINT_CONFIG: Final = "application/vnd.containerd.container.checkpoint.config.v1+proto"
EROFS_LAYER: Final = "application/vnd.erofs.layer.v1"

_DOCKER_LAYERS: Final = frozenset(
    (DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_ZSTD, DOCKER_LAYER_FOREIGN)
) | {DOCKER_LAYER_FOREIGN_GZIP}


# --- classification (MT-2) ----- ----------------------------------------------------------------


def is_manifest(media_type: str) -> bool:
    """True for exactly the OCI or Docker schema2 manifest type (MT-2)."""
    return media_type in (OCI_MANIFEST, DOCKER_MANIFEST)


def is_index(media_type: str) -> bool:
    """True for exactly the OCI index or the Docker manifest list type (MT-2)."""
    return media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST)


def is_config(media_type: str) -> bool:
    """True for the OCI or Docker image config type (MT-2)."""
    return media_type in (OCI_CONFIG, DOCKER_CONFIG)


def is_known_config(media_type: str) -> bool:
    """True for an image config or a containerd checkpoint config type (MT-2)."""
    return media_type in (OCI_CONFIG, DOCKER_CONFIG, CHECKPOINT, CHECKPOINT_CONFIG)


def is_layer(media_type: str) -> bool:
    """True for any OCI layer type, a Docker layer type with any ``+suffix``, or erofs (MT-2)."""
    if media_type.startswith("application/vnd.oci.image.layer."):
        return True
    base = media_type.partition("+")[0]
    return base in _DOCKER_LAYERS or base == EROFS_LAYER


def is_non_distributable(media_type: str) -> bool:
    """True for OCI non-distributable and Docker foreign layer types (MT-2)."""
    return media_type.startswith(
        (
            "application/vnd.oci.image.layer.nondistributable.",
            "application/vnd.docker.image.rootfs.foreign.",
        )
    )


# --- annotations --------------------------------------------------------------------------------

ANNOTATION_IMAGE_NAME: Final = "io.containerd.image.name"
ANNOTATION_REF_NAME: Final = "org.opencontainers.image.ref.name"
ANNOTATION_MANIFEST_SUBJECT: Final = "io.containerd.manifest.subject"
ANNOTATION_REFERENCE_TYPE: Final = "vnd.docker.reference.type"
ANNOTATION_REFERENCE_DIGEST: Final = "vnd.docker.reference.digest"
ANNOTATION_PREDICATE_TYPE: Final = "in-toto.io/predicate-type"

#: Largest JSON document (manifest, index, config, layout) castar reads (EDGE-13).
MAX_DOCUMENT: Final = 20 << 20


def _where(what: str, name: str) -> str:
    return f"{what} {name}" if name else what


# --- the model ----------------------------------------------------------------------------------


@final
@dataclass(frozen=True, slots=True)
class Descriptor:
    """A typed, sized, content-addressed reference to a blob (OCI descriptor, DESC-1)."""

    media_type: str
    digest: Digest
    size: int
    urls: tuple[str, ...] = ()
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)
    data: bytes | None = None
    platform: platforms.Platform | None = None
    artifact_type: str = ""

    def to_json(self) -> Struct:
        """The JSON object in DESC-1 field order, empty optional fields omitted."""
        out = Struct(mediaType=self.media_type, digest=str(self.digest), size=self.size)
        if self.urls:
            out["urls"] = list(self.urls)
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        if self.data:
            out["data"] = bytes(self.data)
        if self.platform is not None:
            out["platform"] = platforms.to_json(self.platform)
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        return out

    @classmethod
    def from_json(cls, obj: object, *, where: str = "descriptor") -> Descriptor:
        """Decode strictly: MalformedManifest for a bad field, digest, size (DESC-3) or ``data``."""
        o = object_of(obj, where)
        media_type = get_str(o, "mediaType", where)
        raw_digest = get_str(o, "digest", where)
        try:
            digest = Digest(raw_digest)
        except InvalidArgument as exc:
            raise MalformedManifest(f"{where}: invalid digest {raw_digest!r}: {exc}") from exc
        if o.get("size") is None:  # IMP-16: the OCI spec requires it
            raise MalformedManifest(f"{where}: size: missing in {digest} ({media_type})")
        size = get_int(o, "size", where)
        if size < 0:
            raise MalformedManifest(f"{where}: invalid size {size} in {digest} ({media_type})")
        data: bytes | None = None
        raw_data = o.get("data")
        if raw_data is not None:
            if not isinstance(raw_data, str):
                raise malformed(where, "data", "base64 string", raw_data)
            try:
                data = base64.b64decode(raw_data, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise MalformedManifest(f"{where}: data: invalid base64: {exc}") from exc
        raw_platform = o.get("platform")
        return cls(
            media_type=media_type,
            digest=digest,
            size=size,
            urls=get_strs(o, "urls", where),
            annotations=get_map(o, "annotations", where),
            data=data or None,
            platform=None
            if raw_platform is None
            else platforms.from_json(raw_platform, where=f"{where}: platform"),
            artifact_type=get_str(o, "artifactType", where),
        )


@dataclass(frozen=True, slots=True)
class _Document:
    """The members a manifest and an index share, in DESC-1 order around the body."""

    _: KW_ONLY
    media_type: str
    schema_version: int = 2
    artifact_type: str = ""
    subject: Descriptor | None = None
    annotations: Mapping[str, str] = field(default_factory=dict, hash=False)

    def _json(self, body: Struct) -> Struct:
        out = Struct(schemaVersion=self.schema_version)
        if self.media_type:
            out["mediaType"] = self.media_type
        if self.artifact_type:
            out["artifactType"] = self.artifact_type
        out.update(body)
        if self.subject is not None:
            out["subject"] = self.subject.to_json()
        if self.annotations:
            out["annotations"] = dict(self.annotations)
        return out


@final
@dataclass(frozen=True, slots=True)
class Manifest(_Document):
    """An OCI image manifest or Docker schema2 manifest."""

    config: Descriptor
    layers: tuple[Descriptor, ...] = ()
    media_type: str = field(default=OCI_MANIFEST, kw_only=True)

    def to_json(self) -> Struct:
        """The JSON object in DESC-1 order; ``layers`` is always written (``[]`` when empty)."""
        return self._json(
            Struct(config=self.config.to_json(), layers=[d.to_json() for d in self.layers])
        )


@final
@dataclass(frozen=True, slots=True)
class Index(_Document):
    """An OCI image index or Docker manifest list."""

    manifests: tuple[Descriptor, ...] = ()
    media_type: str = field(default=OCI_INDEX, kw_only=True)

    def to_json(self) -> Struct:
        """The JSON object in DESC-1 order; no ``manifests`` is ``null`` (IMP-9, EXP-9, EDGE-6)."""
        return self._json(Struct(manifests=[d.to_json() for d in self.manifests] or None))


def _descriptors(o: Mapping[str, Any], key: str, where: str) -> tuple[Descriptor, ...]:
    v = o.get(key)
    if v is None:
        return ()
    if not isinstance(v, list):
        raise malformed(where, key, "array", v)
    return tuple(Descriptor.from_json(x, where=f"{where}: {key}[{i}]") for i, x in enumerate(v))


def _head(o: Mapping[str, Any], where: str) -> dict[str, Any]:
    """The ``_Document`` members of a decoded manifest or index."""
    subject = o.get("subject")
    return {
        "schema_version": get_int(o, "schemaVersion", where),
        "media_type": get_str(o, "mediaType", where),
        "artifact_type": get_str(o, "artifactType", where),
        "subject": None
        if subject is None
        else Descriptor.from_json(subject, where=f"{where}: subject"),
        "annotations": get_map(o, "annotations", where),
    }


def _manifest_from(o: Mapping[str, Any], where: str) -> Manifest:
    config = o.get("config")
    if config is None:
        raise MalformedManifest(f"{where}: config: missing")
    return Manifest(
        Descriptor.from_json(config, where=f"{where}: config"),
        _descriptors(o, "layers", where),
        **_head(o, where),
    )


def _index_from(o: Mapping[str, Any], where: str) -> Index:
    return Index(_descriptors(o, "manifests", where), **_head(o, where))


def decode_manifest(data: bytes, *, name: str = "") -> Manifest:
    """Decode as Go does (unknown members ignored, ``null`` absent), else MalformedManifest."""
    where = _where("manifest", name)
    return _manifest_from(load_object(data, where, MAX_DOCUMENT), where)


def decode_index(data: bytes, *, name: str = "") -> Index:
    """Decode an index (or Docker manifest list) as ``decode_manifest`` decodes a manifest."""
    where = _where("index", name)
    return _index_from(load_object(data, where, MAX_DOCUMENT), where)


def config_platform(data: bytes, *, name: str = "") -> platforms.Platform | None:
    """A config's platform normalised (NORM-3), None without os and arch (IMP-8)."""
    where = _where("config", name)
    o = load_object(data, where, MAX_DOCUMENT)
    if (rootfs := o.get("rootfs")) is not None:
        get_strs(object_of(rootfs, f"{where}: rootfs"), "diff_ids", f"{where}: rootfs")
    p = platforms.from_json(o, where=where)  # the config's platform fields, as in an index
    return platforms.normalize(p) if p.os or p.architecture else None


def encode_manifest(manifest: Manifest) -> bytes:
    """The canonical bytes of a manifest (DESC-1 order, DESC-2 encoding)."""
    return canonical_json(manifest.to_json())


def encode_index(index: Index) -> bytes:
    """The canonical bytes of an index (DESC-1 order, DESC-2 encoding)."""
    return canonical_json(index.to_json())


# --- children (MT-4) ----------------------------------------------------------------------------


def _check_document_type(o: Mapping[str, Any], media_type: str) -> None:
    # containerd's ValidateMediaType decodes into raw members: a present member of any
    # value (even null) counts for config/manifests/fsLayers, a non-empty array for layers.
    doc_type = o.get("mediaType")
    if doc_type is not None and not isinstance(doc_type, str):
        raise MalformedManifest(f"mediaType: expected string, found {kind(doc_type)}")
    doc_type = doc_type or ""
    layers = o.get("layers")
    if layers is not None and not isinstance(layers, list):
        raise MalformedManifest(f"layers: expected array, found {kind(layers)}")
    if "fsLayers" in o:
        raise UnsupportedMediaType("media-type: schema 1 not supported")
    if is_manifest(media_type) and ("manifests" in o or is_index(doc_type)):
        raise MalformedManifest(f"media-type: expected manifest but found index ({media_type})")
    if is_index(media_type) and ("config" in o or layers or is_manifest(doc_type)):
        raise MalformedManifest(f"media-type: expected index but found manifest ({media_type})")


def children(desc: Descriptor, data: bytes) -> list[Descriptor]:
    """The children of a node (MT-4): config then layers, or an index's manifests; no subject."""
    if not (is_manifest(desc.media_type) or is_index(desc.media_type)):
        return []
    name = str(desc.digest)
    try:
        o = load_object(data, f"document {name}", MAX_DOCUMENT)
        _check_document_type(o, desc.media_type)
        if is_manifest(desc.media_type):
            m = _manifest_from(o, f"manifest {name}")
            return [m.config, *m.layers]
        return list(_index_from(o, f"index {name}").manifests)
    except (MalformedManifest, UnsupportedMediaType) as exc:
        raise type(exc)(f"children: invalid desc {name}: {exc.message}") from exc


# --- attestations, referrers, pseudo images (MT-5, MT-6) ----------------------------------------


def is_attestation(desc: Descriptor) -> bool:
    """True when the descriptor carries ``vnd.docker.reference.type`` (MT-5, moby)."""
    return ANNOTATION_REFERENCE_TYPE in desc.annotations


def is_referrer(desc: Descriptor) -> bool:
    """True when the descriptor is annotated ``io.containerd.manifest.subject`` (MT-6)."""
    return ANNOTATION_MANIFEST_SUBJECT in desc.annotations


def is_pseudo_image(desc: Descriptor, manifest: Manifest | None = None) -> bool:
    """An attestation, ``unknown/unknown``, or a manifest with layers but none a layer (MT-5)."""
    if is_attestation(desc):
        return True
    p = desc.platform
    if p is not None and p.os == "unknown" and p.architecture == "unknown":
        return True
    if manifest is not None and manifest.layers:
        return not any(is_layer(layer.media_type) for layer in manifest.layers)
    return False


# --- GC child labels (GC-7) ---------------------------------------------------------------------


def _child_label_key(child: Descriptor) -> str:
    if is_referrer(child):
        return REFERRER
    if is_known_config(child.media_type):
        return f"{REF_CONTENT}.config"
    if is_manifest(child.media_type):
        return f"{REF_CONTENT}.m."
    if is_layer(child.media_type):
        return f"{REF_CONTENT}.l."
    return f"{REF_CONTENT}."


def children_labels(children: Sequence[Descriptor]) -> dict[str, str]:
    """The GC reference labels a parent gets for its children: key → child digest (GC-7)."""
    labels: dict[str, str] = {}
    counters: dict[str, int] = {}
    for child in children:
        key = _child_label_key(child)
        n = counters.get(key, 0)
        counters[key] = n + 1
        if key.endswith(".sha256."):
            key += child.digest.encoded[:12]
        elif n > 0 or key.endswith("."):
            key += str(n)
        labels[key] = str(child.digest)
    return labels
