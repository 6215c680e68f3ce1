"""Interop: castar loads archives written by skopeo (``oci-archive:`` and ``docker-archive:``).

The source is an OCI layout made by ``synth.write_layout``; skopeo turns it into archives
the way real registries' tooling does (containerd-like entry order, Docker symlinked
layers). Skipped without skopeo unless ``CASTAR_REQUIRE_INTEROP=1``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from castar.engine import oci, synth
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.engine.platforms import pinned_host
from castar.store import Image, Root, open_root


async def load(root: Root, source: object, progress: Any = None, **options: Any) -> list[Image]:
    """The importer over a whole root, its options as keywords."""
    options_ = LoadOptions.parse(**options)
    roles = (root.content, root.images, root.leases)
    return await importer.load(*roles, source, options_, progress=progress)


pytestmark = pytest.mark.interop

PLATFORMS = ("linux/amd64", "linux/arm64", "linux/s390x")


def skopeo() -> str:
    path = shutil.which("skopeo")
    if path is None:
        if os.environ.get("CASTAR_REQUIRE_INTEROP") == "1":
            pytest.fail("skopeo is required (CASTAR_REQUIRE_INTEROP=1) but not installed")
        pytest.skip("skopeo is not installed")
    return path


@pytest.fixture(scope="module")
def archives(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    tool = skopeo()
    root = tmp_path_factory.mktemp("skopeo")
    spec = synth.SynthSpec(name="synth:1", platforms=PLATFORMS, layers=2, layer_size=96 << 10)
    image = synth.write_layout(spec, root / "layout")
    env = {**os.environ, "HOME": str(root)}  # no user policy/auth files needed

    def run(*args: str) -> None:
        cmd = [tool, "--insecure-policy", "copy", "--quiet", *args]
        subprocess.run(cmd, check=True, capture_output=True, env=env, timeout=120)

    # oci:DIR:<ref.name>; the layout's entry is tagged "1" (EXP-3)
    run("--all", f"oci:{root / 'layout'}:1", f"oci-archive:{root / 'oci.tar'}:1")
    run(
        "--override-arch",
        "arm64",
        f"oci:{root / 'layout'}:1",
        f"docker-archive:{root / 'docker.tar'}:synth:1",
    )
    return {"oci": root / "oci.tar", "docker": root / "docker.tar", "image": image}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store") as s:
        yield s


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with pinned_host("linux/amd64"):
        yield


class Pipe:
    """A non-seekable reader over a file (what ``cat archive | castar load`` gives)."""

    def __init__(self, path: Path) -> None:
        self._data = path.read_bytes()

    async def read(self, n: int = -1) -> bytes:
        await anyio.lowlevel.checkpoint()
        n = 64 << 10 if n < 0 else min(n, 64 << 10)
        out, self._data = self._data[:n], self._data[n:]
        return out


async def manifests_by_platform(store: Root, index_digest: str) -> dict[str, str]:
    index = oci.decode_index(await store.content.read_all(index_digest, limit=1 << 20))
    return {
        f"{d.platform.os}/{d.platform.architecture}": str(d.digest)
        for d in index.manifests
        if d.platform is not None
    }


async def complete(store: Root, manifest_digest: str) -> bool:
    """SAVE-6: the manifest, its config and every layer are present."""
    try:
        m = oci.decode_manifest(await store.content.read_all(manifest_digest, limit=1 << 20))
    except Exception:
        return False
    return all([await store.content.exists(d.digest) for d in (m.config, *m.layers)])


@pytest.mark.parametrize("stream", [False, True])
async def test_skopeo_oci_archive_loads_every_platform(store, archives, stream):
    path = archives["oci"]
    images = await load(store, Pipe(path) if stream else path, name="docker.io/library/synth")
    assert [i.name for i in images] == ["docker.io/library/synth:1"]
    assert images[0].target.media_type == oci.OCI_INDEX
    await store.gc()
    by_platform = await manifests_by_platform(store, images[0].target.digest)
    assert sorted(by_platform) == sorted(PLATFORMS)
    for digest in by_platform.values():
        assert await complete(store, digest)


@pytest.mark.parametrize("stream", [False, True])
async def test_skopeo_oci_archive_with_a_platform_filter(store, archives, stream):
    path = archives["oci"]
    await load(store, Pipe(path) if stream else path, platforms=["linux/arm64"])
    (image,) = await store.images.list()
    assert image.name == "docker.io/library/1:latest"  # EDGE-16, IMG-7: a bare ref.name
    await store.gc()
    by_platform = await manifests_by_platform(store, image.target.digest)
    available = {p for p, d in by_platform.items() if await complete(store, d)}
    assert available == {"linux/arm64"}


@pytest.mark.parametrize("stream", [False, True])
async def test_skopeo_docker_archive_with_symlinked_layers(store, archives, stream):
    path = archives["docker"]
    images = await load(store, Pipe(path) if stream else path)
    assert [i.name for i in images] == ["docker.io/library/synth:1"]
    target = images[0].target
    assert target.media_type == oci.DOCKER_MANIFEST
    manifest = json.loads(await store.content.read_all(target.digest, limit=1 << 20))
    assert [x["mediaType"] for x in manifest["layers"]] == [oci.DOCKER_LAYER] * 2
    config = json.loads(await store.content.read_all(manifest["config"]["digest"], limit=1 << 20))
    assert (config["os"], config["architecture"]) == ("linux", "arm64")
    assert await complete(store, target.digest)
    source = archives["image"]
    assert isinstance(source, synth.SynthImage)
    arm = next(p for p in source.platforms if p.platform.architecture == "arm64")
    assert [x["digest"] for x in manifest["layers"]] == [str(d) for d in arm.diff_ids]
