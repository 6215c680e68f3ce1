"""Media types: the names OCI and Docker give blobs, and what each kind of name means.

Owns the MT-1 constants and the MT-2/MT-3 classification (manifest, index, config,
layer, non-distributable, the compression a layer type implies). Pure: imports only
``castar.store.errors``; never anyio, I/O or other engine modules. ``oci`` re-exports it.
"""

from __future__ import annotations

from typing import Final

from castar.store.errors import NotImplementedKind

__all__ = [
    "CHECKPOINT",
    "CHECKPOINT_CONFIG",
    "DOCKER_CONFIG",
    "DOCKER_LAYER",
    "DOCKER_LAYER_FOREIGN",
    "DOCKER_LAYER_FOREIGN_GZIP",
    "DOCKER_LAYER_GZIP",
    "DOCKER_LAYER_ZSTD",
    "DOCKER_MANIFEST",
    "DOCKER_MANIFEST_LIST",
    "DOCKER_SCHEMA1_MANIFEST",
    "EROFS_LAYER",
    "IN_TOTO",
    "OCI_CONFIG",
    "OCI_EMPTY",
    "OCI_INDEX",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ND",
    "OCI_LAYER_ND_GZIP",
    "OCI_LAYER_ND_ZSTD",
    "OCI_LAYER_ZSTD",
    "OCI_LAYOUT_HEADER",
    "OCI_MANIFEST",
    "is_config",
    "is_index",
    "is_known_config",
    "is_layer",
    "is_manifest",
    "is_non_distributable",
    "layer_compression",
]

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
OCI_LAYOUT_HEADER: Final = "application/vnd.oci.layout.header.v1+json"
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
    {DOCKER_LAYER, DOCKER_LAYER_GZIP, DOCKER_LAYER_ZSTD, DOCKER_LAYER_FOREIGN}
    | {DOCKER_LAYER_FOREIGN_GZIP}
)


# --- classification (MT-2, MT-3) ----------------------------------------------------------------


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


def layer_compression(media_type: str) -> str:
    """The compression a layer media type implies (MT-3).

    Returns:
        ``"gzip"``, ``"zstd"``, ``""`` (none, or a wrapped Docker type such as ``+encrypted``)
        or ``"unknown"`` for Docker ``.tar`` types that may be compressed anyway (sniff them).

    Raises:
        NotImplementedKind: ``unrecognised mediatype <mt>`` for anything that is not a layer.
    """
    base, plus, ext = media_type.partition("+")
    suffixes = sorted(ext.split("+")) if plus else []
    if base in (DOCKER_LAYER, DOCKER_LAYER_FOREIGN):
        return "" if suffixes else "unknown"
    if base in (DOCKER_LAYER_GZIP, DOCKER_LAYER_FOREIGN_GZIP):
        return "" if suffixes else "gzip"
    if base == DOCKER_LAYER_ZSTD:
        return "" if suffixes else "zstd"
    if base in (OCI_LAYER, OCI_LAYER_ND):
        # containerd sorts the suffixes and looks at the last one: tar+gzip+encrypted is gzip.
        if suffixes and suffixes[-1] in ("gzip", "zstd"):
            return suffixes[-1]
        return ""
    raise NotImplementedKind(f"unrecognised mediatype {media_type}")
