"""The export lookup's walk (lookup.fetch): what it reads, its nodes, its errors.

These tests check that records are looked up in one ``infos`` call per level and each
document is read once, whatever the number of platforms or layers, that the nodes say
what the store holds, and that faults surface in walk order (EXP-7, EXP-13: before the
first byte; DESC-3 size before digest; SAVE-6).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from castar.engine import oci
from castar.engine import platforms as plat
from castar.engine.save import exporter, lookup
from castar.store.errors import DataLoss, DigestMismatch, SizeMismatch
from castar.store.root import Root, open_root

if TYPE_CHECKING:
    from collections.abc import Iterable

    from castar.store.content import Info
    from castar.store.digest import Digest

NAME = "docker.io/library/fetch:1"
SPECS = ("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/s390x", "linux/ppc64le")


async def _put(
    store: Root, data: bytes, mt: str, children: tuple[oci.Descriptor, ...] = ()
) -> oci.Descriptor:
    labels = oci.children_labels(children) if children else None
    d = await store.content.write_blob(data, media_type=mt, labels=labels)
    return oci.Descriptor(mt, d.digest, d.size)


async def _image(store: Root, platforms: int, layers: int = 2) -> list[oci.Descriptor]:
    """NAME: an index of ``platforms`` manifests; the last has no descriptor platform, so
    its platform comes from its config (IMP-8), and the first is also listed in a nested
    index. Returns the index's manifest descriptors in order."""
    shared = await _put(store, b"shared layer", oci.OCI_LAYER_GZIP)
    entries = []
    for i, spec in enumerate(SPECS[:platforms]):
        p = plat.parse(spec)
        cfg = await _put(
            store,
            oci.canonical_json({"architecture": p.architecture, "os": p.os}),
            oci.OCI_CONFIG,
        )
        own = [await _put(store, f"{spec} {j}".encode(), oci.OCI_LAYER_GZIP) for j in range(layers)]
        ls = (*own, shared)
        m = await _put(
            store,
            oci.encode_manifest(oci.Manifest(config=cfg, layers=ls)),
            oci.OCI_MANIFEST,
            (cfg, *ls),
        )
        last = i == platforms - 1
        entries.append(oci.Descriptor(m.media_type, m.digest, m.size, platform=None if last else p))
    nested = await _put(
        store, oci.encode_index(oci.Index(manifests=(entries[0],))), oci.OCI_INDEX, (entries[0],)
    )
    top = (*entries, nested)
    index = await _put(store, oci.encode_index(oci.Index(manifests=top)), oci.OCI_INDEX, top)
    await store.images.create(NAME, index)
    return entries


def _count_reads(store: Root, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[object]]:
    """Record the store reads: ``infos`` (how many digests each), ``info``, document files."""
    calls: dict[str, list[object]] = {"infos": [], "info": [], "files": []}
    infos, info, path = store.content.infos, store.content.info, store.content.path

    async def spy_infos(digests: Iterable[str]) -> dict[Digest, Info]:
        ds = list(digests)
        calls["infos"].append(len(ds))
        return await infos(ds)

    async def spy_info(digest: str) -> Info:
        calls["info"].append(digest)
        return await info(digest)

    def spy_path(digest: str) -> Path:
        calls["files"].append(digest)
        return path(digest)

    monkeypatch.setattr(store.content, "infos", spy_infos)
    monkeypatch.setattr(store.content, "info", spy_info)
    monkeypatch.setattr(store.content, "path", spy_path)
    return calls


@pytest.mark.parametrize("platforms", [2, 5])
async def test_fetch_reads_each_document_once_and_records_by_level(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platforms: int
) -> None:
    async with open_root(tmp_path / "store") as store:
        entries = await _image(store, platforms, layers=platforms * 3)
        target = (await lookup.resolve(store, NAME))[0]
        data = await store.content.read_all(entries[-1].digest, limit=1 << 20)
        config = oci.decode_manifest(data).config
        calls = _count_reads(store, monkeypatch)
        nodes = await lookup.fetch(store.content, [target.desc])
    assert all(n.present for n in nodes.values())
    nested = nodes[target.desc.digest].children[-1].digest
    documents = [target.desc.digest, *(e.digest for e in entries), nested]
    # one records lookup per document, for all its children at once: none per layer
    assert len(calls["infos"]) == len(documents)
    assert calls["info"] == []  # the records are known: no lookup per document
    # every document read once, plus the one config IMP-8 needs
    assert sorted(calls["files"]) == sorted([*documents, config.digest])


async def test_fetch_gives_what_the_store_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_root(tmp_path / "store") as store:
        entries = await _image(store, 4)
        gone = entries[1]
        await store.content.delete(gone.digest)  # EXP-7: a missing manifest stays a node
        target = (await lookup.resolve(store, NAME))[0]
        nodes = await lookup.fetch(store.content, [target.desc])
        index = await store.content.read_all(target.desc.digest, limit=1 << 20)
    assert not nodes[gone.digest].present
    assert nodes[gone.digest].children == ()
    top = nodes[target.desc.digest]
    assert top.document == index  # indexes keep their bytes, for pruning
    assert [c.digest for c in top.children][:4] == [e.digest for e in entries]
    last = nodes[entries[-1].digest]
    assert last.platform == plat.parse("linux/s390x")  # IMP-8: from its config
    assert last.document is None
    assert nodes[entries[0].digest].platform is None  # the descriptor names it


async def _corrupt(store: Root, digest: str) -> None:
    """Flip a byte of a stored blob's file (same size, another digest)."""
    path = store.content.path(digest)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-2] ^= 1
    path.write_bytes(bytes(data))


async def test_a_corrupt_manifest_is_read_documents_digest_mismatch_before_any_byte(
    tmp_path: Path,
) -> None:
    async with open_root(tmp_path / "store") as store:
        entries = await _image(store, 3)
        await _corrupt(store, entries[1].digest)
        out = tmp_path / "out.tar"
        with pytest.raises(DigestMismatch, match=f"document {entries[1].digest}: unexpected"):
            await exporter.save(store, [NAME], out, exporter.SaveOptions())
    assert not out.exists()  # EXP-13


async def test_the_first_fault_in_walk_order_wins_over_a_later_corrupt_document(
    tmp_path: Path,
) -> None:
    async with open_root(tmp_path / "store") as store:
        entries = await _image(store, 3)
        # a new image whose first manifest lies about a layer's size, then corrupt manifest 1
        data = await store.content.read_all(entries[0].digest, limit=1 << 20)
        m0 = oci.decode_manifest(data)
        first = m0.layers[0]
        bad_layers = (
            oci.Descriptor(first.media_type, first.digest, first.size + 5),
            *m0.layers[1:],
        )
        lying = await _put(
            store,
            oci.encode_manifest(oci.Manifest(config=m0.config, layers=bad_layers)),
            oci.OCI_MANIFEST,
            (m0.config, *bad_layers),
        )
        top = (
            oci.Descriptor(
                lying.media_type, lying.digest, lying.size, platform=entries[0].platform
            ),
            *entries[1:],
        )
        index = await _put(store, oci.encode_index(oci.Index(manifests=top)), oci.OCI_INDEX, top)
        await store.images.create("docker.io/library/fetch:lies", index)
        await _corrupt(store, entries[1].digest)
        with pytest.raises(SizeMismatch) as err:
            await exporter.plan_save(
                store, ["docker.io/library/fetch:lies"], exporter.SaveOptions()
            )
    # depth-first: manifest 0's layer is met before manifest 1 is read (EXP-7 walk order)
    assert str(err.value).startswith(f"content digest {first.digest}: store holds")


async def test_a_recorded_manifest_whose_file_is_gone_is_data_loss(tmp_path: Path) -> None:
    async with open_root(tmp_path / "store") as store:
        entries = await _image(store, 2)
        store.content.path(entries[0].digest).unlink()
        with pytest.raises(DataLoss, match="recorded but missing on disk"):
            await exporter.plan_save(store, [NAME], exporter.SaveOptions())
