"""Pulls of several references at once (PULL-4); pulling a platform keeps the others (PULL-5)."""

from __future__ import annotations

import dataclasses
import json

import anyio
import anyio.to_thread
import httpx
import pytest

from castar import open_store
from castar._cli import main
from castar.engine import graph, oci, synth
from castar.engine.load.importer import LoadOptions
from castar.engine.registry import pull as pulling
from castar.engine.registry.client import Registry
from castar.store.errors import InvalidArgument, NotFound

pytestmark = pytest.mark.anyio

#: Two images sharing their linux/amd64 manifest, its config and its layers.
A = synth.SynthSpec(platforms=("linux/amd64", "linux/arm64"), layers=2, layer_size=8 << 10)
B = dataclasses.replace(A, platforms=("linux/amd64", "linux/s390x"))


def _is_document(desc: oci.Descriptor) -> bool:
    return oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)


def _named(host: str, repo: str, spec: synth.SynthSpec) -> synth.SynthSpec:
    return dataclasses.replace(spec, name=f"{host}/{repo}:1")


async def test_a_blob_two_pulls_share_is_fetched_once(
    registry, publish, store, tmp_path, monkeypatch
):
    a, b = _named(registry.host, "many/a", A), _named(registry.host, "many/b", B)
    await anyio.to_thread.run_sync(publish, a)
    await anyio.to_thread.run_sync(publish, b)
    blobs = [{str(x.digest) for x in synth.plan(s).blobs if not _is_document(x)} for s in (a, b)]
    shared = blobs[0] & blobs[1]
    seen: list[str] = []
    clients: list[Registry] = []

    def waiting(digest: str) -> bool:
        flight = pulling._FLIGHTS.get(store.content, {}).get(digest)
        return flight is not None and flight.statistics().tasks_waiting > 0

    async def hold(request: httpx.Request) -> None:
        # The first GET of a shared blob waits until the other pull needs that blob too: it
        # then waits for this transfer (or, were there no single flight, sends its own GET).
        line = f"{request.method} {request.url.path}"
        seen.append(line)
        digest = request.url.path.rsplit("/", 1)[1]
        if request.method == "GET" and "/blobs/" in line and digest in shared:
            with anyio.fail_after(60):  # a hang guard only
                while seen.count(line) == 1 and not waiting(digest):  # noqa: ASYNC110
                    await anyio.sleep(0.01)

    def counting(host: str, **kw: object) -> Registry:
        reg = Registry(host, **kw)  # type: ignore[arg-type]
        reg._client.event_hooks["request"].append(hold)
        clients.append(reg)
        return reg

    monkeypatch.setattr(pulling, "Registry", counting)
    results = await pulling.pull_many(
        store.content, store.images, store.leases, [a.name, b.name], LoadOptions()
    )
    assert [(r.ref, [i.name for i in r.images], r.error) for r in results] == [
        (a.name, [a.name], None),
        (b.name, [b.name], None),
    ]
    assert len(clients) == 1  # one client, one pool and one token cache for the host
    gets = [line.rsplit("/", 1)[1] for line in seen if line.startswith("GET") and "/blobs/" in line]
    assert sorted(gets) == sorted(set(gets))  # each blob once
    assert len(shared) == 3  # the config and two layers
    assert set(gets) == blobs[0] | blobs[1]


async def test_a_failed_ref_keeps_the_others(registry, publish, store, tmp_path):
    a = _named(registry.host, "many/keep", A)
    await anyio.to_thread.run_sync(publish, a)
    refs = [f"{registry.host}/many/keep:absent", a.name, "Not A Reference"]
    results = await pulling.pull_many(
        store.content, store.images, store.leases, refs, LoadOptions()
    )
    assert [r.ref for r in results] == refs
    absent, good, bad = results
    assert isinstance(absent.error, NotFound)
    assert absent.images == ()
    assert good.error is None
    assert [i.name for i in good.images] == [a.name]
    assert isinstance(bad.error, InvalidArgument)
    assert [i.name for i in await store.images.list()] == [a.name]
    assert await store.content.list_statuses() == []
    with pytest.raises(InvalidArgument, match="jobs"):
        await pulling.pull_many(
            store.content, store.images, store.leases, refs, LoadOptions(), jobs=0
        )


async def test_pulling_another_platform_keeps_the_first_alive(registry, publish, store, tmp_path):
    # GC-7 numbers an index's manifest edges by position: the second pull must label the
    # platforms stored before too, or the first platform's manifest loses its edge.
    a = _named(registry.host, "many/gc", A)
    await anyio.to_thread.run_sync(publish, a)
    roles = (store.content, store.images, store.leases)
    (image,) = await pulling.pull(*roles, a.name, LoadOptions.parse(["linux/arm64"]))
    await pulling.pull(*roles, a.name, LoadOptions.parse(["linux/amd64"]))
    await store.gc()
    index = oci.Descriptor(image.target.media_type, image.target.digest, image.target.size)
    doc = await graph.StoreReader(store.content).read(index)
    assert doc is not None
    for manifest in doc.children:
        assert await store.content.exists(manifest.digest), manifest.platform


async def test_store_pull_many(registry, publish, tmp_path):
    a, b = _named(registry.host, "many/facade-a", A), _named(registry.host, "many/facade-b", B)
    await anyio.to_thread.run_sync(publish, a)
    await anyio.to_thread.run_sync(publish, b)
    async with open_store(tmp_path / "s") as s:
        results = await s.pull_many([a.name, b.name], platforms=["linux/amd64"])
        assert [[i.name for i in r.images] for r in results] == [[a.name], [b.name]]
        assert sorted(i.name for i in await s.images.list()) == sorted([a.name, b.name])


def test_cli_pull_several(registry, publish, tmp_path, capsys):
    a, b = _named(registry.host, "many/cli-a", A), _named(registry.host, "many/cli-b", B)
    publish(a)
    publish(b)
    root = str(tmp_path / "s")
    assert main(["--root", root, "pull", a.name, b.name, "-q"]) == 0
    assert capsys.readouterr().out == f"Pulled image: {a.name}\nPulled image: {b.name}\n"
    absent = f"{registry.host}/many/cli-a:absent"
    assert main(["--root", root, "pull", absent, a.name, "bad ref!", "--json"]) == 3
    out = capsys.readouterr()
    rows = json.loads(out.out)
    assert [r["ref"] for r in rows] == [absent, a.name, "bad ref!"]
    assert rows[0]["exit"] == 3
    assert "404" in rows[0]["error"]
    assert rows[1]["name"] == a.name
    assert rows[1]["target"].startswith("sha256:")
    assert rows[2]["exit"] == 4
    errors = out.err.splitlines()
    assert errors[0].startswith(f"castar: error: {absent}: ")
    assert errors[1].startswith("castar: error: bad ref!: ")
    assert len(errors) == 2
