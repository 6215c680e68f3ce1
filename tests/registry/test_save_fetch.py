"""save --missing fetch: what the store lacks is pulled from the image's source first (SAVE-7)."""

from __future__ import annotations

import dataclasses

import anyio.to_thread
import httpx
import pytest

from castar._cli import main
from castar.engine import oci, platforms, synth
from castar.engine.images import ImageService
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.engine.registry.pull import pull
from castar.engine.save import exporter
from castar.engine.save.exporter import SaveOptions
from castar.store import open_root
from castar.store.errors import NotFound

pytestmark = pytest.mark.anyio

#: Four platforms, each with an attestation, sharing their first layer.
SPEC = synth.SynthSpec(
    platforms=("linux/amd64", "linux/arm64", "linux/s390x", "linux/ppc64le"),
    layers=2,
    layer_size=4 << 10,
    shared_fraction=0.5,
    attestations=True,
)


def _roles(s):
    return s.content, s.images, s.leases


async def _platforms_stored(s, name: str) -> dict[str, bool]:
    """Per image platform (attestations left out): whether its content is stored."""
    (tree,) = await ImageService(s.images, s.content).tree([name])
    return {
        platforms.format(m.platform): m.available
        for m in tree.manifests
        if m.platform and m.kind == "image"
    }


@pytest.fixture
async def full(tmp_path):
    async with open_root(tmp_path / "full") as s:
        yield s


async def test_fetch_saves_the_whole_image(registry, publish, store, full, tmp_path):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/fetch/whole:1")
    await anyio.to_thread.run_sync(publish, spec)
    await pull(*_roles(full), spec.name, LoadOptions())
    await exporter.save(full, [spec.name], tmp_path / "full.tar", SaveOptions())
    await pull(*_roles(store), spec.name, LoadOptions.parse(["linux/arm64"]))
    assert list((await _platforms_stored(store, spec.name)).values()).count(True) == 1

    out = tmp_path / "fetched.tar"
    await exporter.save(store, [spec.name], out, SaveOptions(missing="fetch"))
    assert out.read_bytes() == (tmp_path / "full.tar").read_bytes()
    assert all((await _platforms_stored(store, spec.name)).values())
    await store.gc()  # the fetched platforms are the image's now, not only the save lease's
    assert all((await _platforms_stored(store, spec.name)).values())
    assert await store.content.list_statuses() == []
    assert await store.leases.list() == []


async def test_fetch_of_one_platform_fetches_that_platform(registry, publish, store, tmp_path):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/fetch/one:1")
    await anyio.to_thread.run_sync(publish, spec)
    await pull(*_roles(store), spec.name, LoadOptions.parse(["linux/arm64"]))
    opts = SaveOptions.parse(["linux/s390x"], missing="fetch")
    await exporter.save(store, [spec.name], tmp_path / "s390x.tar", opts)
    stored = await _platforms_stored(store, spec.name)
    assert [p for p, ok in stored.items() if ok] == ["linux/arm64", "linux/s390x"]


async def test_without_a_source_or_with_a_failed_fetch_nothing_is_written(
    registry, publish, store, tmp_path
):
    archive = tmp_path / "orig.tar"
    await anyio.to_thread.run_sync(synth.write_path, SPEC, archive)
    await importer.load(*_roles(store), archive, LoadOptions.parse(["linux/amd64"]))
    out = tmp_path / "out.tar"
    with pytest.raises(NotFound, match=r"synth:latest: cannot fetch .* no containerd\.io/distr"):
        await exporter.save(store, [SPEC.name], out, SaveOptions(missing="fetch"))
    assert not out.exists()
    # Complete content needs no source: nothing is fetched, the save is a plain one.
    opts = SaveOptions.parse(["linux/amd64"], missing="fetch")
    await exporter.save(store, [SPEC.name], out, opts)
    plain = tmp_path / "plain.tar"
    await exporter.save(store, [SPEC.name], plain, SaveOptions.parse(["linux/amd64"]))
    assert out.read_bytes() == plain.read_bytes()
    out.unlink()

    spec = dataclasses.replace(SPEC, name=f"{registry.host}/fetch/broken:1")
    await anyio.to_thread.run_sync(publish, spec)
    (before,) = await pull(*_roles(store), spec.name, LoadOptions.parse(["linux/amd64"]))
    layers = [b.digest for b in synth.plan(spec).blobs if oci.is_layer(b.media_type)]
    stored = await store.content.infos(layers)
    layer = next(d for d in layers if d not in stored)
    async with httpx.AsyncClient() as client:
        resp = await client.delete(f"{registry.url}/v2/fetch/broken/blobs/{layer}")
        assert resp.status_code == 202
    with pytest.raises(NotFound, match="BLOB_UNKNOWN"):
        await exporter.save(store, [spec.name], out, SaveOptions(missing="fetch"))
    assert not out.exists()
    assert await store.content.list_statuses() == []
    assert (await store.images.get(spec.name)).target == before.target


def test_cli_save_missing_fetch(registry, publish, tmp_path, capsys):
    spec = dataclasses.replace(SPEC, name=f"{registry.host}/fetch/cli:1")
    publish(spec)
    root = str(tmp_path / "s")
    assert main(["--root", root, "pull", spec.name, "--platform", "linux/amd64", "-q"]) == 0
    out = tmp_path / "out.tar"
    assert main(["--root", root, "save", spec.name, "--missing", "fetch", "-o", str(out)]) == 0
    assert out.stat().st_size > 0
    assert main(["--root", root, "images", "--tree"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[-1] for r in rows if "linux/" in r] == ["yes"] * 4
