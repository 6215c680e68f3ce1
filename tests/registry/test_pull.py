"""Pull from a real registry (distribution 2.8): platform selection, bytes, failure safety."""

from __future__ import annotations

import dataclasses
import io
import json
import subprocess
import tarfile

import anyio.to_thread
import httpx
import pytest

from castar.engine import graph, oci, synth
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.engine.registry.client import Registry
from castar.engine.registry.pull import SOURCE_LABEL, pull
from castar.engine.save import exporter
from castar.engine.save.exporter import SaveOptions
from castar.store import open_root
from castar.store.errors import NotFound

pytestmark = pytest.mark.anyio

SPEC = synth.SynthSpec(
    platforms=("linux/amd64", "linux/arm64", "linux/s390x"),
    layers=2,
    layer_size=8 << 10,
    attestations=True,
)


async def _publish(tmp_path, spec: synth.SynthSpec) -> None:
    """Put ``spec``'s archive into the registry under its name with skopeo (digests kept)."""
    path = tmp_path / f"{spec.seed}.tar"
    await anyio.to_thread.run_sync(synth.write_path, spec, path)
    cmd = ["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false"]
    cmd += [f"oci-archive:{path}", f"docker://{spec.name}"]
    await anyio.to_thread.run_sync(lambda: subprocess.run(cmd, check=True, capture_output=True))


def _counting(host: str) -> tuple[Registry, list[str]]:
    reg = Registry(host)
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(f"{request.method} {request.url.path}")

    reg._client.event_hooks["request"].append(hook)
    return reg, seen


@pytest.fixture
async def other(tmp_path):
    async with open_root(tmp_path / "other") as s:
        yield s


async def _roles(s):
    return s.content, s.images, s.leases


async def _save(s, name: str, path) -> dict[str, bytes]:
    """The saved archive's members; index.json without EXP-4 source annotations."""
    await exporter.save(s, [name], path, SaveOptions())
    with tarfile.open(path) as tar:
        out = {m.name: (tar.extractfile(m) or io.BytesIO()).read() for m in tar}
    index = json.loads(out["index.json"])
    for entry in index["manifests"]:
        entry["annotations"] = {
            k: v for k, v in entry["annotations"].items() if not k.startswith(SOURCE_LABEL)
        }
    out["index.json"] = json.dumps(index).encode()
    return out


async def test_one_platform_fetches_only_its_blobs(registry, store, tmp_path):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/pull/one:1")
    await _publish(tmp_path, spec)
    reg, seen = _counting(registry.host)
    async with reg:
        opts = LoadOptions.parse(["linux/arm64"])
        (image,) = await pull(*await _roles(store), spec.name, opts, registry=reg)
    assert image.name == spec.name
    index = oci.Descriptor(image.target.media_type, image.target.digest, image.target.size)
    doc = await graph.StoreReader(store.content).read(index)
    (arm,) = [d for d in doc.children if d.platform and d.platform.architecture == "arm64"]
    manifest = await graph.StoreReader(store.content).read(arm)
    blobs = {f"GET /v2/pull/one/blobs/{d.digest}" for d in manifest.children}
    assert sorted(seen) == sorted(
        [
            "HEAD /v2/pull/one/manifests/1",
            f"GET /v2/pull/one/manifests/{index.digest}",
            f"GET /v2/pull/one/manifests/{arm.digest}",
            *blobs,
        ]
    )
    info = await store.content.info(arm.digest)
    assert info.labels[f"containerd.io/distribution.source.{registry.host}"] == "pull/one"

    reg, seen = _counting(registry.host)  # everything is stored: only the HEAD
    async with reg:
        await pull(*await _roles(store), spec.name, opts, registry=reg)
    assert seen == ["HEAD /v2/pull/one/manifests/1"]


async def test_pulled_image_saves_like_the_loaded_one(registry, store, other, tmp_path):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/pull/all:1")
    await _publish(tmp_path, spec)
    archive = tmp_path / "orig.tar"
    await anyio.to_thread.run_sync(synth.write_path, spec, archive)
    await importer.load(*await _roles(other), archive, LoadOptions())
    (image,) = await pull(*await _roles(store), spec.name, LoadOptions())
    by_digest = f"{registry.host}/pull/all@{image.target.digest}"
    (pinned,) = await pull(*await _roles(store), by_digest, LoadOptions())
    assert pinned.name == by_digest
    assert pinned.target.digest == image.target.digest
    # Equal but for index.json naming where the pulled image came from (EXP-4).
    pulled = await _save(store, spec.name, tmp_path / "pulled.tar")
    assert pulled == await _save(other, spec.name, tmp_path / "loaded.tar")


async def test_failed_pull_leaves_images_unchanged(registry, store, tmp_path):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/pull/fail:1")
    await _publish(tmp_path, spec)
    (before,) = await pull(*await _roles(store), spec.name, LoadOptions())
    newer = dataclasses.replace(spec, seed=1)
    await _publish(tmp_path, newer)
    plan = synth.plan(newer)
    layer = next(b for b in plan.blobs if oci.is_layer(b.media_type))
    async with httpx.AsyncClient() as client:
        resp = await client.delete(f"{registry.url}/v2/pull/fail/blobs/{layer.digest}")
        assert resp.status_code == 202
    with pytest.raises(NotFound, match="BLOB_UNKNOWN"):
        await pull(*await _roles(store), spec.name, LoadOptions())
    assert (await store.images.get(spec.name)).target == before.target
    assert await store.content.list_statuses() == []  # no partial blob left behind
    with pytest.raises(NotFound, match="manifests/nope: 404"):
        await pull(*await _roles(store), f"{registry.host}/pull/fail:nope", LoadOptions())
    with pytest.raises(NotFound, match="requested platform"):
        await pull(*await _roles(store), spec.name, LoadOptions.parse(["linux/riscv64"]))
    assert [i.name for i in await store.images.list()] == [spec.name]
