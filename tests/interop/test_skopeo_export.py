"""castar's archives read by a real tool: skopeo's ``oci-archive:`` transport (Go
containers/image). ``inspect --raw`` gives back the stored document byte for byte and
``copy --all`` into an ``oci:`` layout carries the same digests. Skipped when skopeo
is absent, unless ``CASTAR_REQUIRE_INTEROP=1``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import anyio
import pytest

from castar.engine import oci
from castar.engine import platforms as plat
from castar.engine.save import exporter
from castar.store.root import Root, open_root

pytestmark = pytest.mark.interop

SKOPEO = shutil.which("skopeo")
if SKOPEO is None:
    if os.environ.get("CASTAR_REQUIRE_INTEROP") == "1":
        raise RuntimeError("CASTAR_REQUIRE_INTEROP=1 but skopeo is not installed")
    pytest.skip("skopeo is not installed", allow_module_level=True)

NAME = "docker.io/library/interop:1"


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with plat.pinned_host(plat.Platform(os="linux", architecture="amd64")):
        yield


def layer_tar(text: str) -> tuple[bytes, str]:
    """A gzip layer holding one file, and its diff id."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tf:
        body = text.encode()
        info = tarfile.TarInfo(f"etc/{text}")
        info.size = len(body)
        tf.addfile(info, io.BytesIO(body))
    plain = raw.getvalue()
    return gzip.compress(plain, mtime=0), "sha256:" + hashlib.sha256(plain).hexdigest()


async def put(
    store: Root, data: bytes, media_type: str, children: tuple[oci.Descriptor, ...] = ()
) -> oci.Descriptor:
    labels = oci.children_labels(children) if children else None
    d = await store.content.write_blob(data, media_type=media_type, labels=labels)
    return oci.Descriptor(media_type, d.digest, d.size)


async def build(store: Root) -> list[oci.Descriptor]:
    entries = []
    for spec in ("linux/amd64", "linux/arm64/v8"):
        p = plat.parse(spec)
        layer, diff_id = layer_tar(spec.replace("/", "-"))
        cfg = {
            "architecture": p.architecture,
            "os": p.os,
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
        if p.variant:
            cfg["variant"] = p.variant
        c = await put(store, oci.canonical_json(cfg), oci.OCI_CONFIG)
        lay = await put(store, layer, oci.OCI_LAYER_GZIP)
        m = await put(
            store,
            oci.encode_manifest(oci.Manifest(config=c, layers=(lay,))),
            oci.OCI_MANIFEST,
            (c, lay),
        )
        entries.append(oci.Descriptor(m.media_type, m.digest, m.size, platform=p))
    top = tuple(entries)
    index = await put(store, oci.encode_index(oci.Index(manifests=top)), oci.OCI_INDEX, top)
    await store.images.create(NAME, index)
    return [index, *entries]


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[tuple[Root, list[oci.Descriptor]]]:
    async with open_root(tmp_path / "store") as s:
        yield s, await build(s)


async def skopeo(*args: str) -> subprocess.CompletedProcess[bytes]:
    assert SKOPEO is not None
    return await anyio.run_process([SKOPEO, "--insecure-policy", *args], check=False)


def layout_digests(path: Path) -> set[str]:
    return {f"sha256:{p.name}" for p in (path / "blobs" / "sha256").iterdir()}


async def test_skopeo_reads_a_multi_platform_archive_and_copies_all_digests(
    world: tuple[Root, list[oci.Descriptor]], tmp_path: Path
) -> None:
    store, (index, _, _) = world
    archive = tmp_path / "multi.tar"
    await exporter.save(store, [NAME], archive, exporter.SaveOptions())

    raw = await skopeo("inspect", "--raw", f"oci-archive:{archive}")
    assert raw.returncode == 0, raw.stderr
    assert hashlib.sha256(raw.stdout).hexdigest() == index.digest.encoded

    out = tmp_path / "layout"
    copied = await skopeo("copy", "--all", f"oci-archive:{archive}", f"oci:{out}:x")
    assert copied.returncode == 0, copied.stderr
    with tarfile.open(archive) as tf:
        in_archive = {f"sha256:{n.rpartition('/')[2]}" for n in tf.getnames() if n.count("/") == 2}
    assert layout_digests(out) == in_archive
    (entry,) = json.loads((out / "index.json").read_bytes())["manifests"]
    assert entry["digest"] == index.digest


async def test_skopeo_reads_a_single_platform_archive(
    world: tuple[Root, list[oci.Descriptor]], tmp_path: Path
) -> None:
    store, (_, _, m2) = world
    archive = tmp_path / "arm64.tar"
    await exporter.save(
        store, [NAME], archive, exporter.SaveOptions.parse(platforms=["linux/arm64"])
    )

    raw = await skopeo("inspect", "--raw", f"oci-archive:{archive}")
    assert raw.returncode == 0, raw.stderr
    assert hashlib.sha256(raw.stdout).hexdigest() == m2.digest.encoded
    info = await skopeo("inspect", f"oci-archive:{archive}")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["Architecture"] == "arm64"

    out = tmp_path / "layout"
    copied = await skopeo("copy", "--all", f"oci-archive:{archive}", f"oci:{out}:x")
    assert copied.returncode == 0, copied.stderr
    with tarfile.open(archive) as tf:
        in_archive = {f"sha256:{n.rpartition('/')[2]}" for n in tf.getnames() if n.count("/") == 2}
    assert layout_digests(out) == in_archive


async def test_pruned_archive_is_accepted_where_the_sparse_one_is_not(
    world: tuple[Root, list[oci.Descriptor]], tmp_path: Path
) -> None:
    store, (_, _, m2) = world
    await store.content.delete(m2.digest)  # one platform not in the store
    sparse = tmp_path / "sparse.tar"
    pruned = tmp_path / "pruned.tar"
    await exporter.save(store, [NAME], sparse, exporter.SaveOptions())
    result = await exporter.save(store, [NAME], pruned, exporter.SaveOptions.parse(missing="prune"))

    failed = await skopeo("copy", "--all", f"oci-archive:{sparse}", f"oci:{tmp_path / 's'}:x")
    assert failed.returncode != 0  # the sparse index lists a manifest the archive lacks

    copied = await skopeo("copy", "--all", f"oci-archive:{pruned}", f"oci:{tmp_path / 'p'}:x")
    assert copied.returncode == 0, copied.stderr
    (entry,) = json.loads((tmp_path / "p" / "index.json").read_bytes())["manifests"]
    assert entry["digest"] == result.images[0].digest


async def test_skopeo_docker_archive_transport_reads_manifest_json(
    world: tuple[Root, list[oci.Descriptor]], tmp_path: Path
) -> None:
    # EXP-10: manifest.json alone (Docker's format) must describe a usable image
    store, _ = world
    archive = tmp_path / "docker.tar"
    await exporter.save(store, [NAME], archive, exporter.SaveOptions())
    info = await skopeo("inspect", f"docker-archive:{archive}")
    assert info.returncode == 0, info.stderr
    details = json.loads(info.stdout)
    assert details["Architecture"] == "amd64"  # the host's platform (SAVE-3)
    with tarfile.open(archive) as tf:
        f = tf.extractfile("manifest.json")
        assert f is not None
        (item,) = json.loads(f.read())
        c = tf.extractfile(item["Config"])
        assert c is not None
        config = json.loads(c.read())
    assert item["RepoTags"] == ["interop:1"]
    assert details["Layers"] == config["rootfs"]["diff_ids"]  # the layers it read, by diff id
    copied = await skopeo("copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'd'}:x")
    assert copied.returncode == 0, copied.stderr
