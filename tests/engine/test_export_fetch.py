"""The export lookup's read-ahead (_export_lookup.fetch): few hops, same nodes, same errors.

``fetch`` reads the graph level by level (one ``infos`` hop and one document hop per
level) before its depth-first walk. These tests check that the hops do not grow with
platforms or layers, that the nodes equal those of the one-blob-at-a-time walk (the
read-ahead switched off), and that faults still surface in walk order with the messages
one lookup per blob gives (EXP-7, EXP-13: before the first byte; DESC-3 size before
digest; SAVE-6).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio.to_thread
import pytest

from castar.engine import _export_lookup, exporter, oci
from castar.engine import platforms as plat
from castar.store.errors import DataLoss, DigestMismatch, SizeMismatch
from castar.store.root import Root, open_root

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

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


def _count_hops(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """Count worker-thread hops by the function they run."""
    counts: dict[str, int] = {}
    run_sync = anyio.to_thread.run_sync

    async def counting(fn: Callable[..., object], *args: object, **kw: object) -> object:
        name = getattr(fn, "__name__", repr(fn))
        counts[name] = counts.get(name, 0) + 1
        return await run_sync(fn, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return counts


def _count_infos(store: Root, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sizes: list[int] = []
    infos = store.content.infos

    async def spy(digests: Iterable[str]) -> dict[Digest, Info]:
        ds = list(digests)
        sizes.append(len(ds))
        return await infos(ds)

    monkeypatch.setattr(store.content, "infos", spy)
    return sizes


async def _slow_fetch(store: Root, monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """The walk with the read-ahead switched off: every document read through the store."""
    target = (await _export_lookup.resolve(store, NAME))[0]

    async def nothing(content: object, roots: object) -> _export_lookup._Prefetched:
        return _export_lookup._Prefetched()

    with monkeypatch.context() as m:
        m.setattr(_export_lookup, "_prefetch", nothing)
        return dict(await _export_lookup.fetch(store.content, [target.desc]))


@pytest.mark.parametrize("platforms", [2, 5])
async def test_fetch_hops_do_not_grow_with_platforms_or_layers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, platforms: int
) -> None:
    async with open_root(tmp_path / "store") as store:
        await _image(store, platforms, layers=platforms * 3)
        target = (await _export_lookup.resolve(store, NAME))[0]
        infos = _count_infos(store, monkeypatch)
        hops = _count_hops(monkeypatch)
        nodes = await _export_lookup.fetch(store.content, [target.desc])
        hops = dict(hops)  # not the store's own hops on closing
    assert all(n.present for n in nodes.values())
    # levels: the index; its manifests and the nested index; configs + layers. The documents
    # (index, manifests + nested index, the one config IMP-8 needs) take one hop per level.
    assert len(infos) == 3
    assert hops == {"run_txn": 3, "_read_verified": 3}  # no info() hop per document


async def test_fetch_with_read_ahead_gives_the_nodes_of_the_one_by_one_walk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with open_root(tmp_path / "store") as store:
        entries = await _image(store, 4)
        gone = entries[1]
        await store.content.delete(gone.digest)  # EXP-7: a missing manifest stays a node
        target = (await _export_lookup.resolve(store, NAME))[0]
        fast = await _export_lookup.fetch(store.content, [target.desc])
        slow = await _slow_fetch(store, monkeypatch)
    assert fast == slow
    assert not fast[gone.digest].present
    last = fast[entries[-1].digest]
    assert last.platform == plat.parse("linux/s390x")  # IMP-8: from its config


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
