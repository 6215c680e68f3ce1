"""What ``python -m bench`` measures on: presets, workloads and their archives.

Owns the presets, ``Workload`` (a ``castar.engine.synth`` spec plus its name) and
``prepare``: the archive (castar's own generator, deterministic for a seed), its gzip and
zstd forms, the OCI layout of the same image and a one-platform layout, written once per
workload into a cache. Imports castar only for the generator and platform parsing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from castar.engine import synth

PLATFORMS = (
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
)
#: The 16 platforms of push-16's image: 16 one-platform pushes sharing a base layer.
SIXTEEN = (
    *PLATFORMS,
    "linux/mips64le",
    "linux/mips64",
    "linux/loong64",
    "linux/arm/v5",
    "windows/amd64",
    "freebsd/amd64",
    "netbsd/amd64",
    "darwin/arm64",
)
MIB = 1 << 20
IMAGE = "docker.io/library/synth:latest"


@dataclass(frozen=True, slots=True)
class Workload:
    """The synthetic image every case of one run works on."""

    platforms: tuple[str, ...] = PLATFORMS[:4]
    layers: int = 4
    layer_size: int = 16 * MIB
    compression: str = "none"
    shared_fraction: float = 0.0
    attestations: bool = False
    order: str = "castar"
    seed: int = 0

    def spec(self) -> synth.SynthSpec:
        """The generator's spec for this workload."""
        return synth.SynthSpec(
            name=IMAGE,
            platforms=self.platforms,
            layers=self.layers,
            layer_size=self.layer_size,
            compression=self.compression,  # type: ignore[arg-type]
            shared_fraction=self.shared_fraction,
            attestations=self.attestations,
            order=self.order,  # type: ignore[arg-type]
            seed=self.seed,
        )

    def key(self) -> str:
        """A short stable name for the archives of this workload (cache directory)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """One line for the report."""
        extra = []
        if self.shared_fraction:
            extra.append(f"shared {self.shared_fraction:g}")
        if self.attestations:
            extra.append("attestations")
        if self.compression != "none":
            extra.append(f"{self.compression} layers")
        extra.append(f"{self.order} order")
        extra.append(f"seed {self.seed}")
        return (
            f"{len(self.platforms)} platform{'s' if len(self.platforms) != 1 else ''} x "
            f"{self.layers} layers x "
            f"{_size(self.layer_size)} ({', '.join(extra)})"
        )


@dataclass(frozen=True, slots=True)
class Preset:
    """A named workload plus its default number of runs."""

    workload: Workload
    runs: int
    about: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        Workload(platforms=PLATFORMS[:3], layers=2, layer_size=128 << 10),
        1,
        "3 x 2 x 128 KiB: seconds, the CI smoke run",
    ),
    "medium": Preset(Workload(platforms=PLATFORMS[:4], layers=4, layer_size=16 * MIB), 3, ""),
    "large": Preset(Workload(platforms=PLATFORMS, layers=4, layer_size=64 * MIB), 3, "~2 GiB"),
    "many": Preset(
        Workload(platforms=PLATFORMS[:1], layers=5000, layer_size=64 << 10),
        3,
        "one platform, 5,000 layers of 64 KiB",
    ),
    "shared": Preset(
        Workload(platforms=PLATFORMS[:4], layers=4, layer_size=16 * MIB, shared_fraction=0.5),
        3,
        "half of each platform's layers shared by all",
    ),
}


#: The small archives every preset also times (issue 14): a 4-platform image of about
#: 280 KB, and an alpine-sized 2-platform one of about 4 MB.
SMALL = {
    "small": Workload(platforms=PLATFORMS[:4], layers=1, layer_size=64 << 10),
    "alpine": Workload(platforms=PLATFORMS[:2], layers=1, layer_size=2 * MIB),
}


def shared_base(workload: Workload) -> Workload:
    """push-16's image: 16 platforms of two layers of the workload's size, the first shared."""
    return Workload(
        platforms=SIXTEEN, layers=2, layer_size=workload.layer_size, shared_fraction=0.5
    )


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    raise AssertionError


# -- archives -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Archives:
    """The inputs every case of a run shares (written once per workload, then reused).

    Attributes:
        plain: the archive (``castar`` or ``containerd`` order as asked).
        gzip: ``plain`` gzip-compressed as a whole (level 1).
        zstd: ``plain`` zstd-compressed as a whole (level 1).
        layout: the same image as an OCI layout directory (tar -cf, sha256sum, skopeo).
        single: a one-platform layout of the same blobs, ``index.json`` pointing at
            the selected platform's manifest (umoci reads only that).
        size: bytes of ``plain``.
        blobs: number of distinct blobs.
        image: the plan (digests, per-platform descriptors).
    """

    plain: Path
    gzip: Path
    zstd: Path
    layout: Path
    single: Path
    size: int
    blobs: int
    image: synth.SynthImage = field(repr=False)


def prepare(workload: Workload, cache: Path, one_platform: str) -> Archives:
    """Write (or reuse) the archives of ``workload`` under ``cache/<key>/``."""
    d = cache / workload.key()
    done = d / "done.json"
    image = synth.plan(workload.spec())
    paths = Archives(
        d / "archive.tar",
        d / "archive.tar.gz",
        d / "archive.tar.zst",
        d / "layout",
        d / "single",
        image.size,
        len(image.blobs),
        image,
    )
    if done.exists() and json.loads(done.read_text()).get("size") == image.size:
        return paths
    # Written beside and renamed into place, so a concurrent or interrupted bench never
    # sees half an archive set.
    shutil.rmtree(d, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{d.name}-"))
    try:
        synth.write_path(image, tmp / paths.plain.name)
        _compress(tmp / paths.plain.name, tmp / paths.gzip.name, "gzip")
        _compress(tmp / paths.plain.name, tmp / paths.zstd.name, "zstd")
        synth.write_layout(image, tmp / paths.layout.name)
        _single_layout(image, tmp / paths.layout.name, tmp / paths.single.name, one_platform)
        (tmp / done.name).write_text(json.dumps({"size": image.size, **asdict(workload)}))
        try:
            tmp.rename(d)
        except OSError:  # another bench got there first with the same archives
            if not done.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def archive(workload: Workload, cache: Path) -> tuple[Path, int]:
    """Only the plain archive of ``workload`` (``cache/<key>.tar``) and its blobs' bytes."""
    path = cache / f"{workload.key()}.tar"
    image = synth.plan(workload.spec())
    nbytes = sum(b.size for b in image.blobs)
    if path.exists() and path.stat().st_size == image.size:
        return path, nbytes
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{path.name}-")
    os.close(fd)
    try:
        synth.write_path(image, tmp)
        os.replace(tmp, path)  # a concurrent or interrupted bench never sees half of it
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return path, nbytes


def _compress(src: Path, dst: Path, kind: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as raw:
        if kind == "gzip":
            # isal when installed, the fast deflate (design rule io-compression); level 1
            # either way.
            try:
                make: Any = importlib.import_module("isal.igzip").IGzipFile
            except ImportError:
                make = importlib.import_module("gzip").GzipFile
            out: Any = make(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0)
        else:
            import zstandard

            out = zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False)
        with out:
            while chunk := fin.read(MIB):
                out.write(chunk)


def _single_layout(image: synth.SynthImage, layout: Path, dst: Path, spec: str) -> None:
    """A layout whose index.json names one platform's manifest; blobs hard-linked."""
    from castar.engine import platforms as plat

    want = plat.normalize(plat.parse(spec))
    chosen = next((p for p in image.platforms if p.platform == want), image.platforms[0])
    (dst / "blobs" / "sha256").mkdir(parents=True)
    for desc in (chosen.manifest, chosen.config, *chosen.layers):
        name = desc.digest.encoded
        target = dst / "blobs" / "sha256" / name
        if not target.exists():
            os.link(layout / "blobs" / "sha256" / name, target)
    shutil.copy(layout / "oci-layout", dst / "oci-layout")
    entry = {
        "mediaType": chosen.manifest.media_type,
        "digest": str(chosen.manifest.digest),
        "size": chosen.manifest.size,
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }
    index = {"schemaVersion": 2, "manifests": [entry]}
    (dst / "index.json").write_text(json.dumps(index))
