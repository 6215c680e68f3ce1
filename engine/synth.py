"""Deterministic synthetic multi-platform image archives (tests, ``castar demo``, ``bench/``).

Owns ``SynthSpec`` → ``plan`` (every descriptor and digest, the archive size) → ``write``
(an OCI image archive, metadata first like castar's exporter, or containerd's order) and
``write_layout`` (an OCI image layout directory). Pure and synchronous: imports the OCI
model, platforms, references, the tar codec and the store's digest helpers and errors,
never anyio or the store's I/O; callers run ``write`` in a worker thread.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Final, Literal, final

from castar.engine import oci, platforms, reference
from castar.engine._synthlayer import BLOCK, Layer, blob_pieces, hash_layer
from castar.engine.oci import Descriptor, Index, Manifest, Struct
from castar.engine.platforms import Platform
from castar.engine.tarcodec import DIRTYPE, END_OF_ARCHIVE, encode_header, padding
from castar.store.digest import Digest, blob_path, compute
from castar.store.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from castar.store.digest import Buffer

__all__ = [
    "SynthImage",
    "SynthPlatform",
    "SynthSpec",
    "plan",
    "write",
    "write_layout",
    "write_path",
]

Compression = Literal["none", "gzip", "zstd"]
Order = Literal["castar", "containerd"]

_OCI_LAYOUT: Final = b'{"imageLayoutVersion":"1.0.0"}'
_PREDICATE: Final = "https://slsa.dev/provenance/v0.2"
_LAYER_TYPES: Final = {
    "none": oci.OCI_LAYER,
    "gzip": oci.OCI_LAYER_GZIP,
    "zstd": oci.OCI_LAYER_ZSTD,
}


@final
@dataclass(frozen=True, slots=True)
class SynthSpec:
    """What to generate. Equal specs give byte-identical archives.

    Attributes:
        name: image name; normalised (``synth`` → ``docker.io/library/synth:latest``).
        platforms: platform specifiers, one image manifest each (PLAT rules).
        layers: layers per platform.
        layer_size: bytes of each uncompressed layer: a tar with one file member when
            at least 1536 bytes (``tar -t`` works on it), raw bytes below that.
        compression: ``none``, ``gzip`` or ``zstd`` layers (media type per MT-1).
        shared_fraction: fraction of each platform's layers (its first ones) that are
            the same blob in every platform.
        attestations: add one BuildKit-style in-toto attestation manifest per platform
            (MT-5 shape) after the platform manifests in the image index.
        order: ``castar`` (oci-layout, index.json, manifest.json, then directories and
            blobs by name) or ``containerd`` (directories and blobs, then index.json,
            manifest.json, oci-layout: EXP-12).
        docker_manifest: write ``manifest.json`` pointing at the first platform.
        seed: changes every layer byte.
    """

    name: str = "docker.io/library/synth:latest"
    platforms: Sequence[str] = ("linux/amd64", "linux/arm64")
    layers: int = 3
    layer_size: int = 1 << 20
    compression: Compression = "none"
    shared_fraction: float = 0.0
    attestations: bool = False
    order: Order = "castar"
    docker_manifest: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "platforms", tuple(self.platforms))
        object.__setattr__(self, "name", reference.normalize(self.name))
        if not self.platforms:
            raise InvalidArgument("synth: at least one platform is needed")
        if self.layers < 0 or self.layer_size < 0:
            raise InvalidArgument(
                f"synth: negative layers ({self.layers}) or layer_size ({self.layer_size})"
            )
        if self.compression not in _LAYER_TYPES:
            raise InvalidArgument(f"synth: unknown compression {self.compression!r}")
        if self.order not in ("castar", "containerd"):
            raise InvalidArgument(f"synth: unknown order {self.order!r}")
        if not 0.0 <= self.shared_fraction <= 1.0:
            raise InvalidArgument(f"synth: shared_fraction {self.shared_fraction} not in [0, 1]")
        seen = [platforms.normalize(platforms.parse(p)) for p in self.platforms]
        if len(set(seen)) != len(seen):
            raise InvalidArgument(f"synth: duplicate platforms in {list(self.platforms)}")


@final
@dataclass(frozen=True, slots=True)
class SynthPlatform:
    """One platform of a planned image.

    Attributes:
        platform: the normalised platform (NORM-3).
        manifest: its manifest descriptor, as listed in the image index (with platform).
        config: the config descriptor.
        layers: layer descriptors in manifest order.
        diff_ids: digests of the uncompressed layers (``rootfs.diff_ids``).
        attestation: the attestation manifest descriptor, when attestations were asked for.
    """

    platform: Platform
    manifest: Descriptor
    config: Descriptor
    layers: tuple[Descriptor, ...]
    diff_ids: tuple[Digest, ...]
    attestation: Descriptor | None = None


@final
@dataclass(frozen=True, slots=True)
class SynthImage:
    """A planned archive: every descriptor and digest, without writing anything.

    Attributes:
        spec: the spec it was planned from.
        index: the image index descriptor (what an image record points at after load).
        platforms: per-platform descriptors, in spec order.
        blobs: every distinct blob, ascending digest.
        members: tar member names in archive order.
        size: the archive's exact size in bytes.
        index_json: ``index.json`` bytes (EXP-3 name annotations, EXP-9).
        manifest_json: ``manifest.json`` bytes, or ``None`` when not written (EXP-10).
    """

    spec: SynthSpec
    index: Descriptor
    platforms: tuple[SynthPlatform, ...]
    blobs: tuple[Descriptor, ...]
    members: tuple[str, ...]
    size: int
    index_json: bytes
    manifest_json: bytes | None
    _sources: dict[Digest, tuple[str, bytes | Layer]] = field(repr=False, compare=False)

    @property
    def layer_bytes(self) -> int:
        """Total bytes of distinct layer blobs (what dominates the archive)."""
        return sum(d.size for d in self.blobs if isinstance(self._sources[d.digest][1], Layer))

    def blob_chunks(self, digest: str) -> Iterator[Buffer]:
        """The bytes of one blob, in pieces of at most 1 MiB (regenerated, not stored).

        Raises:
            KeyError: the digest is not a blob of this image.
        """
        src = self._sources[Digest(digest)][1]
        if isinstance(src, bytes):
            yield src
        else:
            yield from blob_pieces(src)


# --- planning -----------------------------------------------------------------------------------


def _slug(p: Platform) -> str:
    return platforms.format(p).replace("/", "-")


def _attestation(
    sources: dict[Digest, tuple[str, bytes | Layer]], subject: Descriptor, name: str
) -> Descriptor:
    statement = oci.canonical_json(
        Struct(
            _type="https://in-toto.io/Statement/v0.1",
            predicateType=_PREDICATE,
            subject=[Struct(name=name, digest={"sha256": subject.digest.encoded})],
            predicate=Struct(buildType="https://castar.invalid/synth", builder={"id": "synth"}),
        )
    )
    layer = _add(sources, oci.IN_TOTO, statement, {oci.ANNOTATION_PREDICATE_TYPE: _PREDICATE})
    config = _add(
        sources,
        oci.OCI_CONFIG,
        oci.canonical_json(
            Struct(
                architecture="unknown",
                os="unknown",
                config=Struct(),
                rootfs=Struct(type="layers", diff_ids=[str(layer.digest)]),
            )
        ),
    )
    manifest = _add(sources, oci.OCI_MANIFEST, oci.encode_manifest(Manifest(config, (layer,))))
    return Descriptor(
        oci.OCI_MANIFEST,
        manifest.digest,
        manifest.size,
        annotations={
            oci.ANNOTATION_REFERENCE_DIGEST: str(subject.digest),
            oci.ANNOTATION_REFERENCE_TYPE: "attestation-manifest",
        },
        platform=Platform("unknown", "unknown"),
    )


def _add(
    sources: dict[Digest, tuple[str, bytes | Layer]],
    media_type: str,
    data: bytes,
    annotations: dict[str, str] | None = None,
) -> Descriptor:
    d = compute(data)
    sources[d] = (media_type, data)
    return Descriptor(media_type, d, len(data), annotations=annotations or {})


def plan(spec: SynthSpec) -> SynthImage:
    """Compute every descriptor, digest and the archive size of ``spec``.

    Hashes each distinct layer once; generation is nearly free, so sha256 sets the pace
    (gzip/zstd layers also hash the uncompressed tar for the diff id). Nothing is written;
    memory stays bounded.
    """
    sources: dict[Digest, tuple[str, bytes | Layer]] = {}
    hashed: dict[str, tuple[Digest, int, Digest]] = {}
    shared = round(spec.layers * spec.shared_fraction)
    planned: list[SynthPlatform] = []
    for text in spec.platforms:
        p = platforms.normalize(platforms.parse(text))
        layers: list[Descriptor] = []
        diff_ids: list[Digest] = []
        for n in range(spec.layers):
            key = f"shared/{n}" if n < shared else f"{_slug(p)}/{n}"
            layer = Layer(key, f"synth/{key}.bin", spec.layer_size, spec.compression, spec.seed)
            if key not in hashed:
                hashed[key] = hash_layer(layer)
            digest, size, diff_id = hashed[key]
            sources[digest] = (_LAYER_TYPES[spec.compression], layer)
            layers.append(Descriptor(_LAYER_TYPES[spec.compression], digest, size))
            diff_ids.append(diff_id)
        config_json = platforms.to_json(p)  # the config's platform fields, DESC-1 order
        config_json["config"] = Struct(Labels={"org.castar.synth.seed": str(spec.seed)})
        config_json["rootfs"] = Struct(type="layers", diff_ids=[str(d) for d in diff_ids])
        config = _add(sources, oci.OCI_CONFIG, oci.canonical_json(config_json))
        m = _add(sources, oci.OCI_MANIFEST, oci.encode_manifest(Manifest(config, tuple(layers))))
        manifest = Descriptor(oci.OCI_MANIFEST, m.digest, m.size, platform=p)
        attestation = _attestation(sources, manifest, spec.name) if spec.attestations else None
        planned.append(
            SynthPlatform(p, manifest, config, tuple(layers), tuple(diff_ids), attestation)
        )
    entries = [sp.manifest for sp in planned]
    entries += [sp.attestation for sp in planned if sp.attestation is not None]
    index = _add(sources, oci.OCI_INDEX, oci.encode_index(Index(tuple(entries))))
    named = Descriptor(
        oci.OCI_INDEX,
        index.digest,
        index.size,
        annotations={
            oci.ANNOTATION_IMAGE_NAME: spec.name,
            oci.ANNOTATION_REF_NAME: reference.ref_name_annotation(spec.name),
        },
    )
    index_json = oci.encode_index(Index((named,)))
    manifest_json = None
    if spec.docker_manifest:
        first = planned[0]
        manifest_json = oci.canonical_json(
            [
                Struct(
                    Config=blob_path(first.config.digest),
                    RepoTags=[reference.familiarize(spec.name)],
                    Layers=[blob_path(d.digest) for d in first.layers] or None,  # EXP-10
                )
            ]
        )
    blobs = tuple(
        sorted(
            (Descriptor(mt, d, _source_size(src, hashed)) for d, (mt, src) in sources.items()),
            key=lambda d: d.digest,
        )
    )
    members = _members(spec, blobs, manifest_json is not None)
    size = len(END_OF_ARCHIVE)
    sizes = {blob_path(b.digest): b.size for b in blobs}
    sizes |= {"oci-layout": len(_OCI_LAYOUT), "index.json": len(index_json)}
    if manifest_json is not None:
        sizes["manifest.json"] = len(manifest_json)
    for name in members:
        n = sizes.get(name, 0)
        size += len(encode_header(name, n)) + n + len(padding(n))
    return SynthImage(
        spec=spec,
        index=named,
        platforms=tuple(planned),
        blobs=blobs,
        members=members,
        size=size,
        index_json=index_json,
        manifest_json=manifest_json,
        _sources=sources,
    )


def _source_size(src: bytes | Layer, hashed: dict[str, tuple[Digest, int, Digest]]) -> int:
    return len(src) if isinstance(src, bytes) else hashed[src.key][1]


def _members(spec: SynthSpec, blobs: Sequence[Descriptor], docker: bool) -> tuple[str, ...]:
    algorithms = sorted({b.digest.algorithm for b in blobs})
    tree = ["blobs/", *(f"blobs/{a}/" for a in algorithms)]
    tree += sorted(blob_path(b.digest) for b in blobs)
    meta = ["index.json", *(["manifest.json"] if docker else [])]
    if spec.order == "castar":
        return ("oci-layout", *meta, *tree)
    return (*tree, *meta, "oci-layout")


# --- writing ------------------------------------------------------------------------------------


class _Sink:
    """Coalesces small pieces into ≥ 1 MiB writes to a file object or a raw fd."""

    def __init__(self, out: IO[bytes] | int) -> None:
        self._out = out
        self._buf = bytearray()

    def write(self, data: Buffer) -> None:
        if len(data) >= BLOCK // 4:
            self.flush()
            self._emit(data)
            return
        self._buf += data
        if len(self._buf) >= BLOCK:
            self.flush()

    def flush(self) -> None:
        if self._buf:
            self._emit(self._buf)
            self._buf = bytearray()

    def _emit(self, data: Buffer) -> None:
        if isinstance(self._out, int):
            mv = memoryview(data)
            while len(mv):
                mv = mv[os.write(self._out, mv) :]
        else:
            self._out.write(data)


def write(spec: SynthSpec | SynthImage, out: IO[bytes] | int) -> SynthImage:
    """Write the archive of ``spec`` to a binary file object or a file descriptor.

    Synchronous (run it in a worker thread from async code). Metadata comes first in
    ``castar`` order, so digests are needed before any layer byte: pass a
    :class:`SynthImage` from :func:`plan` to skip the hashing pass, else it is planned
    here. Memory stays bounded: layers are regenerated block by block while writing.

    Returns:
        The plan that was written.
    """
    image = spec if isinstance(spec, SynthImage) else plan(spec)
    sink = _Sink(out)
    meta = {"oci-layout": _OCI_LAYOUT, "index.json": image.index_json}
    if image.manifest_json is not None:
        meta["manifest.json"] = image.manifest_json
    by_path = {blob_path(b.digest): b for b in image.blobs}
    for name in image.members:
        if name.endswith("/"):
            sink.write(encode_header(name, 0, mode=0o755, type=DIRTYPE))
            continue
        if name in meta:
            data = meta[name]
            mode = 0o444 if name == "oci-layout" else 0o644  # TAR-3
            sink.write(encode_header(name, len(data), mode=mode))
            sink.write(data)
            sink.write(padding(len(data)))
            continue
        blob = by_path[name]
        sink.write(encode_header(name, blob.size, mode=0o444))
        for piece in image.blob_chunks(blob.digest):
            sink.write(piece)
        sink.write(padding(blob.size))
    sink.write(END_OF_ARCHIVE)
    sink.flush()
    return image


def write_path(spec: SynthSpec | SynthImage, path: str | os.PathLike[str]) -> SynthImage:
    """:func:`write` into a new file at ``path`` (synchronous)."""
    with open(path, "wb") as f:
        return write(spec, f)


def write_layout(spec: SynthSpec | SynthImage, directory: str | os.PathLike[str]) -> SynthImage:
    """Write an OCI image layout directory (``oci-layout``, ``index.json``, ``blobs/``).

    For interop with tools that read layouts (``skopeo copy oci:DIR …``). No
    ``manifest.json``: it is not part of a layout. Synchronous.
    """
    image = spec if isinstance(spec, SynthImage) else plan(spec)
    root = Path(directory)
    for b in image.blobs:
        (root / blob_path(b.digest)).parent.mkdir(parents=True, exist_ok=True)
    (root / "oci-layout").write_bytes(_OCI_LAYOUT)
    (root / "index.json").write_bytes(image.index_json)
    for b in image.blobs:
        with open(root / blob_path(b.digest), "wb") as f:
            sink = _Sink(f)
            for piece in image.blob_chunks(b.digest):
                sink.write(piece)
            sink.flush()
    return image
