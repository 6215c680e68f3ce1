"""Importer (load) of Docker docker-save archives: manifest.json, symlinked layers (IMP-6..12)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
import zstandard

from castar.engine import oci
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.engine.platforms import pinned_host
from castar.store import Image, Root, open_root
from castar.store.errors import InvalidArgument, NotFound
from castar.store.ingest import LocalContentStore


async def load(root: Root, source: object, progress: Any = None, **options: Any) -> list[Image]:
    """The importer over a whole root, its options as keywords."""
    options_ = LoadOptions.parse(**options)
    roles = (root.content, root.images, root.leases)
    return await importer.load(*roles, source, options_, progress=progress)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canon(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


def tar_bytes(members: list[Member]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.linkname = m.linkname
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def layer_tar(text: str) -> bytes:
    return tar_bytes([Member(f"{text}.txt", text.encode() * 200)])


def docker_archive(
    *,
    repo_tags: list[str] | None = None,
    os_arch: tuple[str, str] = ("linux", "amd64"),
    layers: list[bytes] | None = None,
    symlink_second: bool = False,
    prefix: str = "",
) -> tuple[list[Member], dict[str, object]]:
    """A legacy ``docker save`` archive: ``<id>/layer.tar``, ``<hex>.json``, manifest.json."""
    layers = layers if layers is not None else [gzip.compress(layer_tar("base"), mtime=0)]
    config = canon({"architecture": os_arch[1], "os": os_arch[0], "rootfs": {"type": "layers"}})
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    members = [Member(config_name, config)]
    paths = []
    for i, layer in enumerate(layers):
        layer_id = hashlib.sha256(f"id{i}".encode()).hexdigest()
        members += [Member(f"{layer_id}/VERSION", b"1.0"), Member(f"{layer_id}/json", b"{}")]
        if symlink_second and i == 1:
            first = paths[0].split("/")[0]
            members.append(
                Member(
                    f"{layer_id}/layer.tar", type=tarfile.SYMTYPE, linkname=f"../{first}/layer.tar"
                )
            )
        else:
            members.append(Member(f"{layer_id}/layer.tar", layer))
        paths.append(f"{layer_id}/layer.tar")
    tags = ["test-import:notlatest", "another/repo:tag"] if repo_tags is None else repo_tags
    manifest = [
        {
            "Config": prefix + config_name,
            "RepoTags": tags or None,
            "Layers": [prefix + p for p in paths],
        }
    ]
    members.append(Member("manifest.json", json.dumps(manifest).encode()))
    members.append(Member("repositories", b"{}"))
    return members, {"config": config, "layers": layers}


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store") as s:
        yield s


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with pinned_host("linux/amd64"):
        yield


class ChunkedReader:
    def __init__(self, data: bytes, piece: int = 5000) -> None:
        self._data = memoryview(data)
        self._piece = piece

    async def read(self, n: int = -1) -> bytes:
        await anyio.lowlevel.checkpoint()
        size = self._piece if n < 0 else min(n, self._piece)
        out, self._data = bytes(self._data[:size]), self._data[size:]
        return out


def source(tmp_path: Path, data: bytes, stream: bool) -> object:
    if stream:
        return ChunkedReader(data)
    path = tmp_path / "docker.tar"
    path.write_bytes(data)
    return path


async def read_json(store: Root, digest: str) -> dict[str, object]:
    data = await store.content.read_all(digest, limit=1 << 20)
    value: dict[str, object] = json.loads(data)
    return value


@pytest.mark.parametrize("stream", [False, True])
async def test_tv66_docker_archive_gets_a_generated_schema2_manifest(store, tmp_path, stream):
    members, parts = docker_archive()
    images = await load(store, source(tmp_path, tar_bytes(members), stream))
    assert [i.name for i in images] == [
        "docker.io/library/test-import:notlatest",
        "docker.io/another/repo:tag",
    ]
    (target,) = {i.target.digest for i in images}
    assert {i.target.media_type for i in images} == {oci.DOCKER_MANIFEST}
    manifest_bytes = await store.content.read_all(target, limit=1 << 20)
    layer = parts["layers"][0]
    config = parts["config"]
    # IMP-7: the Go struct's field order (not sorted: it is not a map), compact
    assert (
        manifest_bytes
        == json.dumps(
            {
                "schemaVersion": 2,
                "mediaType": oci.DOCKER_MANIFEST,
                "config": {
                    "mediaType": oci.DOCKER_CONFIG,
                    "digest": sha(config),
                    "size": len(config),
                },
                "layers": [
                    {"mediaType": oci.DOCKER_LAYER_GZIP, "digest": sha(layer), "size": len(layer)}
                ],
            },
            separators=(",", ":"),
        ).encode()
    )
    assert images[1].target.annotations == {
        oci.ANNOTATION_IMAGE_NAME: "docker.io/another/repo:tag",
        oci.ANNOTATION_REF_NAME: "tag",
    }
    await store.gc()
    kept = {str(i.digest) for i in await store.content.walk()}
    assert kept == {target, sha(config), sha(layer)}  # legacy json/VERSION/repositories go


async def test_imp8_imp9_generated_index_carries_the_config_platform(store, tmp_path):
    members, _ = docker_archive(repo_tags=["alpine"])
    images = await load(store, source(tmp_path, tar_bytes(members), False))
    assert [i.name for i in images] == ["docker.io/library/alpine:latest"]
    # the generated index is the blob labelled with the manifest as its child
    infos = await store.content.walk()
    (index,) = [i for i in infos if any(v == images[0].target.digest for v in i.labels.values())]
    doc = await read_json(store, str(index.digest))
    assert "mediaType" not in doc  # IMP-9
    (entry,) = doc["manifests"]  # type: ignore[misc]
    assert entry["platform"] == {"architecture": "amd64", "os": "linux"}
    assert entry["annotations"][oci.ANNOTATION_REF_NAME] == "latest"


async def test_tv67_unknown_platform_loads_by_default_and_with_all_platforms(tmp_path):
    members, _ = docker_archive(os_arch=("foo", "lish"))
    data = tar_bytes(members)
    for i, kwargs in enumerate([{}, {"all_platforms": True}]):
        async with open_root(tmp_path / f"s{i}") as s:
            images = await load(s, source(tmp_path, data, False), **kwargs)
            assert len(images) == 2


async def test_tv67_unknown_platform_with_a_requested_platform_is_filtered_out(store, tmp_path):
    members, _ = docker_archive(os_arch=("foo", "lish"))
    with pytest.raises(NotFound) as err:
        await load(store, source(tmp_path, tar_bytes(members), False), platforms=["linux/amd64"])
    assert "requested platform(s) ([linux/amd64]) not found: image might be filtered out" in str(
        err.value
    )
    assert await store.images.list() == []


async def test_tv68_missing_layer_and_missing_config(store, tmp_path):
    members, _ = docker_archive()
    manifest = json.loads(members[-2].data)
    manifest[0]["Layers"] = ["x/layer.tar"]
    bad_layer = [*members[:-2], Member("manifest.json", json.dumps(manifest).encode())]
    with pytest.raises(
        InvalidArgument, match=r'failed to resolve layers: layer "x/layer\.tar" not found'
    ):
        await load(store, source(tmp_path, tar_bytes(bad_layer), False))
    manifest[0]["Config"] = "e9.json"
    bad_config = [*members[:-2], Member("manifest.json", json.dumps(manifest).encode())]
    with pytest.raises(InvalidArgument, match=r'image config "e9\.json" not found'):
        await load(store, source(tmp_path, tar_bytes(bad_config), True))


@pytest.mark.parametrize("stream", [False, True])
async def test_imp12_symlinked_duplicate_layer_resolves_to_its_target(store, tmp_path, stream):
    layer = layer_tar("dup")
    members, _ = docker_archive(layers=[layer, layer], symlink_second=True)
    images = await load(store, source(tmp_path, tar_bytes(members), stream))
    manifest = await read_json(store, images[0].target.digest)
    assert [x["digest"] for x in manifest["layers"]] == [sha(layer), sha(layer)]  # type: ignore[attr-defined]
    assert [x["mediaType"] for x in manifest["layers"]] == [oci.DOCKER_LAYER] * 2  # type: ignore[attr-defined]


async def test_imp12_symlink_without_target_fails_even_when_unused(store, tmp_path):
    members, _ = docker_archive()
    members.insert(0, Member("zz/layer.tar", type=tarfile.SYMTYPE, linkname="../nowhere/layer.tar"))
    with pytest.raises(InvalidArgument) as err:
        await load(store, source(tmp_path, tar_bytes(members), False))
    assert 'no target for symlink layer from "zz/layer.tar" to "nowhere/layer.tar"' in str(
        err.value
    )


async def test_edge7_dot_slash_paths_in_manifest_json_are_cleaned(store, tmp_path):
    members, _ = docker_archive(prefix="./")
    images = await load(store, source(tmp_path, tar_bytes(members), False))
    assert len(images) == 2


async def test_edge8_zstd_layers_are_typed_zstd_and_plain_layers_tar(store, tmp_path):
    plain = layer_tar("plain")
    packed = zstandard.ZstdCompressor().compress(layer_tar("zstd"))
    members, _ = docker_archive(layers=[plain, packed])
    images = await load(store, source(tmp_path, tar_bytes(members), False))
    manifest = await read_json(store, images[0].target.digest)
    types = [x["mediaType"] for x in manifest["layers"]]  # type: ignore[attr-defined]
    assert types == [oci.DOCKER_LAYER, oci.DOCKER_LAYER_ZSTD]


async def test_no_repo_tags_gives_a_dangling_record(store, tmp_path):
    members, _ = docker_archive(repo_tags=[])
    images = await load(store, source(tmp_path, tar_bytes(members), False))
    assert [i.name.split("@")[0] for i in images] == ["moby-dangling"]
    assert images[0].name == f"moby-dangling@{images[0].target.digest}"


async def test_imp5_archive_with_both_formats_is_read_as_oci(store, tmp_path):
    members, _ = docker_archive()
    config = canon({"architecture": "amd64", "os": "linux"})
    layer = b"oci layer"
    manifest = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": sha(config), "size": len(config)},
            "layers": [{"mediaType": oci.OCI_LAYER, "digest": sha(layer), "size": len(layer)}],
        }
    )
    entry = {
        "mediaType": oci.OCI_MANIFEST,
        "digest": sha(manifest),
        "size": len(manifest),
        "annotations": {oci.ANNOTATION_IMAGE_NAME: "docker.io/library/oci:wins"},
    }
    members += [Member("blobs/sha256/" + sha(b)[7:], b) for b in (config, layer, manifest)] + [
        Member("index.json", canon({"schemaVersion": 2, "manifests": [entry]})),
        Member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
    ]
    images = await load(store, source(tmp_path, tar_bytes(members), False))
    assert [(i.name, i.target.digest) for i in images] == [
        ("docker.io/library/oci:wins", sha(manifest))
    ]


async def test_uppercase_repo_tag_is_refused(store, tmp_path):
    members, _ = docker_archive(repo_tags=["Upper/Case:1"])
    with pytest.raises(InvalidArgument, match="must be lowercase"):
        await load(store, source(tmp_path, tar_bytes(members), False))
    assert await store.images.list() == []


async def test_imp6_empty_manifest_json_is_an_empty_walk(store, tmp_path):
    members = [Member("manifest.json", b"[]")]
    with pytest.raises(NotFound, match="image might be filtered out"):
        await load(store, source(tmp_path, tar_bytes(members), False))


async def test_imp6_null_manifest_json_is_an_unrecognized_format(store, tmp_path):
    members = [Member("manifest.json", b"null")]
    with pytest.raises(InvalidArgument, match="unrecognized image format"):
        await load(store, source(tmp_path, tar_bytes(members), False))


async def test_docker_archive_from_a_file_and_a_stream_give_the_same_store(tmp_path):
    layer = gzip.compress(layer_tar("same"), mtime=0)
    members, _ = docker_archive(layers=[layer, layer_tar("two")])
    data = tar_bytes(members)
    states = []
    for i, stream in enumerate((False, True)):
        async with open_root(tmp_path / f"s{i}") as s:
            await load(s, source(tmp_path, data, stream))
            await s.gc()
            images = {x.name: str(x.target.digest) for x in await s.images.list()}
            blobs = {str(x.digest): dict(x.labels) for x in await s.content.walk()}
            states.append((images, blobs))
    assert states[0] == states[1]


async def test_imp8_windows_config_without_version_takes_the_host_version(store, tmp_path):
    from castar.engine.platforms import Platform

    members, _ = docker_archive(os_arch=("windows", "amd64"))
    with pinned_host(Platform("windows", "amd64", os_version="10.0.20348.1")):
        images = await load(store, source(tmp_path, tar_bytes(members), False))
    infos = await store.content.walk()
    target = images[0].target.digest
    (index,) = [i for i in infos if target in i.labels.values()]
    doc = await read_json(store, str(index.digest))
    platform = doc["manifests"][0]["platform"]  # type: ignore[index]
    assert platform == {"architecture": "amd64", "os": "windows", "os.version": "10.0.20348.1"}


async def test_imp7_a_stored_compressed_form_of_a_layer_is_used(store, tmp_path):
    plain = layer_tar("plain")
    packed = gzip.compress(plain, mtime=0)
    await store.content.write_blob(packed, labels={"containerd.io/uncompressed": sha(plain)})
    members, _ = docker_archive(layers=[plain])
    images = await load(store, source(tmp_path, tar_bytes(members), False))
    manifest = await read_json(store, images[0].target.digest)
    (layer,) = manifest["layers"]  # type: ignore[misc]
    assert layer == {"mediaType": oci.DOCKER_LAYER_GZIP, "digest": sha(packed), "size": len(packed)}


async def test_small_docker_layers_from_a_file_are_stored_in_batches(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 4's small-layer path for docker-save archives too: the config and the layers,
    # named by path rather than digest, go in one batch, not a batch of one each
    layers = [layer_tar(f"layer {i}") for i in range(40)]
    members, parts = docker_archive(layers=layers)
    batches: list[int] = []
    real = LocalContentStore.commit_small_batch

    def spy(backend: LocalContentStore, items: list[object], **kw: bool) -> object:
        batches.append(len(items))
        return real(backend, items, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalContentStore, "commit_small_batch", spy)
    await load(store, source(tmp_path, tar_bytes(members), stream=False))
    assert batches[0] == 41  # the config and 40 layers, read and written in one hop
    for blob in [parts["config"], *layers]:
        assert (await store.content.info(sha(blob))).size == len(blob)  # type: ignore[arg-type]
