"""Pull from a real registry (distribution 2.8): platform selection, bytes, failure safety."""

from __future__ import annotations

import dataclasses
import io
import json
import shutil
import subprocess
import tarfile

import anyio.to_thread
import httpx
import pytest

from castar import open_store
from castar._cli import main
from castar.engine import graph, oci, synth
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.engine.registry.auth import login
from castar.engine.registry.client import Registry
from castar.engine.registry.pull import pull
from castar.engine.save import exporter
from castar.engine.save.exporter import SaveOptions
from castar.store import open_root
from castar.store.errors import NotFound, Unauthenticated
from castar.store.labels import SOURCE
from castar.store.verify import verify

pytestmark = pytest.mark.anyio

SPEC = synth.SynthSpec(
    platforms=("linux/amd64", "linux/arm64", "linux/s390x"),
    layers=2,
    layer_size=8 << 10,
    attestations=True,
)


def _publish_sync(tmp_path, spec: synth.SynthSpec, creds: tuple[str, str] | None = None) -> None:
    """Put ``spec``'s archive into the registry under its name with skopeo (digests kept)."""
    if shutil.which("skopeo") is None:
        pytest.skip("skopeo is not installed")
    path = tmp_path / f"{spec.seed}.tar"
    synth.write_path(spec, path)
    cmd = ["skopeo", "copy", "--all", "--preserve-digests", "--dest-tls-verify=false"]
    if creds is not None:
        cmd.append("--dest-creds=" + ":".join(creds))
    subprocess.run(
        [*cmd, f"oci-archive:{path}", f"docker://{spec.name}"], check=True, capture_output=True
    )


async def _publish(tmp_path, spec: synth.SynthSpec, creds: tuple[str, str] | None = None) -> None:
    await anyio.to_thread.run_sync(_publish_sync, tmp_path, spec, creds)


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
            k: v for k, v in entry["annotations"].items() if not k.startswith(SOURCE)
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


async def test_fetched_documents_are_decoded_from_the_bytes_in_hand(
    registry, store, tmp_path, monkeypatch
):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/pull/inhand:1")
    await _publish(tmp_path, spec)
    read_back: list[str] = []
    real = graph.read_document

    async def spy(content, desc):
        read_back.append(str(desc.digest))
        return await real(content, desc)

    monkeypatch.setattr(graph, "read_document", spy)
    (image,) = await pull(*await _roles(store), spec.name, LoadOptions.parse())
    assert image.name == spec.name
    assert read_back == []  # written once, never read back from the store


async def test_pulled_image_saves_like_the_loaded_one(registry, store, other, tmp_path):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/pull/all:1")
    await _publish(tmp_path, spec)
    archive = tmp_path / "orig.tar"
    await anyio.to_thread.run_sync(synth.write_path, spec, archive)
    await importer.load(*await _roles(other), archive, LoadOptions())
    ticks: list[tuple[int, int | None, str]] = []
    (image,) = await pull(
        *await _roles(store), spec.name, LoadOptions(), progress=lambda *t: ticks.append(t)
    )
    assert ticks[-1][0] == ticks[-1][1] > 0  # every fetched byte reported
    report = await verify(store.content)
    assert report.problems == ()
    assert report.checked == len(synth.plan(spec).blobs)
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


async def test_store_pull(registry, tmp_path):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/pull/facade:1")
    await _publish(tmp_path, spec)
    async with open_store(tmp_path / "s") as s:
        (image,) = await s.pull(spec.name, platforms=["linux/s390x"])
        assert image.name == spec.name
        (again,) = await s.pull(spec.name, all_platforms=True)
        assert again.target == image.target


def test_cli_pull(registry, tmp_path, capsys):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/pull/cli:1")
    _publish_sync(tmp_path, spec)
    root = str(tmp_path / "s")
    assert main(["--root", root, "pull", spec.name, "--platform", "linux/amd64", "-q"]) == 0
    assert capsys.readouterr().out == f"Pulled image: {spec.name}\n"
    assert main(["--root", root, "images", "--tree"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[-1] for r in rows if "linux/" in r] == ["yes", "no", "no"]
    assert main(["--root", root, "pull", spec.name, "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == spec.name
    assert main(["--root", root, "pull", f"{registry.host}/pull/cli:absent", "-q"]) == 3
    assert "404" in capsys.readouterr().err


async def test_pull_with_credentials(auth_registry, store, tmp_path, monkeypatch):
    spec = dataclasses.replace(SPEC, name=f"{auth_registry.host}/pull/auth:1")
    await _publish(tmp_path, spec, auth_registry.credentials)
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    with pytest.raises(Unauthenticated, match="no credentials"):
        await pull(*await _roles(store), spec.name, LoadOptions())
    assert await store.images.list() == []
    await anyio.to_thread.run_sync(login, auth_registry.host, *auth_registry.credentials)
    (image,) = await pull(*await _roles(store), spec.name, LoadOptions.parse(["linux/arm64"]))
    assert image.name == spec.name


async def test_pull_with_bearer_tokens(token_registry, store, tmp_path):
    server, tokens = token_registry
    spec = dataclasses.replace(SPEC, name=f"{server.host}/pull/token:1")
    await _publish(tmp_path, spec, server.credentials)
    before = len(tokens.scopes)
    async with Registry(server.host, credentials=lambda host: server.credentials) as reg:
        (image,) = await pull(*await _roles(store), spec.name, LoadOptions(), registry=reg)
    assert image.name == spec.name
    assert tokens.scopes[before:] == ["repository:pull/token:pull"]  # one token, cached
