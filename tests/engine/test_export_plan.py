"""Properties of the pure planner (save.plan.Planner) over what the store holds.

The store is fetched once; hypothesis then hides any subset of its blobs from the
planner (no I/O per example) and checks the missing-content policies (EXP-7, SAVE-6):
``prune`` archives are closed (every descriptor the entries reach is in the archive),
``sparse`` archives hold only present blobs and keep the original index, ``fail``
raises exactly when a walked platform is incomplete. Members are always unique and in
castar's order (metadata first, then sorted names).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castar.engine import oci
from castar.engine import platforms as plat
from castar.engine.save import exporter, lookup
from castar.engine.save.plan import MISSING_POLICIES, Node, Planner, SaveOptions, Target
from castar.store.errors import NotFound, SizeMismatch
from castar.store.root import Root, open_root

if TYPE_CHECKING:
    from collections.abc import Iterable

    from castar.store.content import Info
    from castar.store.digest import Digest

NAME = "docker.io/library/prop:1"
MANY = "docker.io/library/many:1"
SPECS = ("linux/amd64", "linux/arm64/v8", "linux/s390x")


async def _snapshot(root: Path) -> tuple[list[Target], dict[str, Node]]:
    async with open_root(root) as store:

        async def put(
            data: bytes, mt: str, children: tuple[oci.Descriptor, ...] = ()
        ) -> oci.Descriptor:
            labels = oci.children_labels(children) if children else None
            d = await store.content.write_blob(data, media_type=mt, labels=labels)
            return oci.Descriptor(mt, d.digest, d.size)

        shared = await put(b"shared layer", oci.OCI_LAYER_GZIP)
        entries = []
        for spec in SPECS:
            p = plat.parse(spec)
            cfg = await put(
                oci.canonical_json({"architecture": p.architecture, "os": p.os}), oci.OCI_CONFIG
            )
            layer = await put(spec.encode(), oci.OCI_LAYER_GZIP)
            layers = (layer, shared)
            m = await put(
                oci.encode_manifest(oci.Manifest(config=cfg, layers=layers)),
                oci.OCI_MANIFEST,
                (cfg, *layers),
            )
            entries.append(oci.Descriptor(m.media_type, m.digest, m.size, platform=p))
        top = tuple(entries)
        index = await put(oci.encode_index(oci.Index(manifests=top)), oci.OCI_INDEX, top)
        await store.images.create(NAME, index)
        targets = await lookup.resolve(store, NAME)
        nodes = await lookup.fetch(store.content, [t.desc for t in targets])
        return targets, nodes


@pytest.fixture(scope="module")
def snapshot(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Target], dict[str, Node]]:
    return anyio.run(_snapshot, tmp_path_factory.mktemp("plan") / "store")


def _plan(targets, nodes, missing: str, platforms: tuple[str, ...]) -> exporter.SavePlan:
    options = SaveOptions.parse(platforms, missing=missing)
    planner = Planner(nodes, options, plat.Platform(os="linux", architecture="amd64"))
    images = [p for t in targets if (p := planner.add(t)) is not None]
    return planner.finish(images)


def _reach(desc: oci.Descriptor, docs: dict[str, bytes], nodes) -> set[str]:
    """Every digest ``desc`` reaches, reading generated documents where there are some."""
    out = {str(desc.digest)}
    if str(desc.digest) in docs:
        children = oci.children(desc, docs[str(desc.digest)])
    else:
        children = list(nodes[desc.digest].children)
    for child in children:
        out |= _reach(child, docs, nodes)
    return out


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    hidden=st.sets(st.integers(0, 30), max_size=6),
    missing=st.sampled_from(MISSING_POLICIES),
    platforms=st.sampled_from(
        [(), ("linux/amd64", "linux/s390x"), ("linux/arm64", "linux/riscv64")]
    ),
)
def test_missing_policies_hold_for_any_set_of_absent_blobs(
    snapshot, hidden: set[int], missing: str, platforms: tuple[str, ...]
) -> None:
    targets, full = snapshot
    order = sorted(full)
    gone = {order[i % len(order)] for i in hidden}
    nodes = {d: (replace(n, present=False) if d in gone else n) for d, n in full.items()}
    try:
        plan = _plan(targets, nodes, missing, platforms)
    except NotFound:
        # fail: a requested platform is not in the image, or a walked one is incomplete;
        # prune: nothing complete; any policy: every requested platform is gone
        assert gone or (missing == "fail" and "linux/riscv64" in platforms)
        return
    names = [m.name for m in plan.members]
    assert len(names) == len(set(names))
    assert names[:2] == ["oci-layout", "index.json"]
    rest = names[3:] if names[2:3] == ["manifest.json"] else names[2:]
    assert rest == sorted(rest, key=str.encode)
    written = {str(m.digest) for m in plan.members if m.digest is not None}
    docs = {str(m.digest): m.data for m in plan.members if m.digest is not None and m.data}
    for m in plan.members:  # only present blobs, or documents castar generated
        if m.digest is not None and m.data is None:
            assert full[m.digest].present
            assert m.digest not in gone
    index = json.loads(next(m.data for m in plan.members if m.name == "index.json"))
    entries = [oci.Descriptor.from_json(e) for e in index["manifests"] or []]
    if missing == "fail":
        assert not any(p.state != "complete" for i in plan.images for p in i.platforms)
    # a closed archive (what consumers that reject sparse ones accept): prune always, and
    # fail without a platform filter (with one, the original index names other platforms)
    if missing == "prune" or (missing == "fail" and not platforms):
        for e in entries:
            assert _reach(e, docs, nodes) <= written
    if missing == "sparse" and entries:
        assert entries[0].digest == targets[0].desc.digest  # the original index, kept


# -- the lookup's store reads (issue 5: many-layer images) -------------------------------------


async def _many_layers(store: Root, n: int, sizes: dict[int, int] | None = None) -> None:
    """One manifest of ``n`` tiny layers named MANY; ``sizes`` overrides descriptor sizes."""
    layers = []
    for i in range(n):
        d = await store.content.write_blob(f"layer {i}".encode(), media_type=oci.OCI_LAYER)
        layers.append(oci.Descriptor(oci.OCI_LAYER, d.digest, (sizes or {}).get(i, d.size)))
    c = await store.content.write_blob(b'{"architecture":"amd64","os":"linux"}')
    cfg = oci.Descriptor(oci.OCI_CONFIG, c.digest, c.size)
    m = await store.content.write_blob(
        oci.encode_manifest(oci.Manifest(config=cfg, layers=tuple(layers))),
        labels=oci.children_labels([cfg, *layers]),
    )
    await store.images.create(MANY, oci.Descriptor(oci.OCI_MANIFEST, m.digest, m.size))


def _spy(store: Root, monkeypatch: pytest.MonkeyPatch) -> dict[str, list[int]]:
    """Count ``content.info`` / ``content.infos`` calls (infos: how many digests each)."""
    calls: dict[str, list[int]] = {"info": [], "infos": []}
    info, infos = store.content.info, store.content.infos

    async def spy_info(digest: str) -> Info:
        calls["info"].append(1)
        return await info(digest)

    async def spy_infos(digests: Iterable[str]) -> dict[Digest, Info]:
        ds = list(digests)
        calls["infos"].append(len(ds))
        return await infos(ds)

    monkeypatch.setattr(store.content, "info", spy_info)
    monkeypatch.setattr(store.content, "infos", spy_infos)
    return calls


@pytest.mark.parametrize("n", [2, 150])
async def test_planning_n_layers_makes_the_same_few_info_calls_whatever_n(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, n: int
) -> None:
    async with open_root(tmp_path / "store") as store:
        await _many_layers(store, n)
        calls = _spy(store, monkeypatch)
        plan = await exporter.plan_save(store, [MANY], exporter.SaveOptions())
    assert len(plan.reads) == n + 2  # EXP-7: manifest, config and every layer
    # One infos round for the manifest, one for its config and all its layers; the documents
    # (manifest, config) are read ahead from their files, verified, with no info() call each.
    assert calls["infos"] == [1, n + 1]
    assert calls["info"] == []


async def test_a_layer_of_another_size_than_stored_is_size_mismatch_before_any_byte(
    tmp_path: Path,
) -> None:
    async with open_root(tmp_path / "store") as store:
        # layers 1 and 3 lie about their size; the depth-first walk reports layer 1 (EXP-7)
        await _many_layers(store, 4, sizes={1: 99, 3: 98})
        bad = (await lookup.resolve(store, MANY))[0]
        manifest = oci.decode_manifest(await store.content.read_all(bad.desc.digest, limit=1 << 20))
        first = manifest.layers[1]
        out = tmp_path / "out.tar"
        with pytest.raises(SizeMismatch) as err:
            await exporter.save(store, [MANY], out, exporter.SaveOptions())
    assert str(err.value).startswith(
        f"content digest {first.digest}: store holds 7 bytes, descriptor says 99"
    )
    assert not out.exists() or out.stat().st_size == 0  # EXP-13: before the first byte


async def test_an_absent_layer_keeps_its_policies_with_batched_infos(tmp_path: Path) -> None:
    async with open_root(tmp_path / "store") as store:
        await _many_layers(store, 3)
        manifest_digest = (await lookup.resolve(store, MANY))[0].desc.digest
        data = await store.content.read_all(manifest_digest, limit=1 << 20)
        gone = oci.decode_manifest(data).layers[2].digest
        await store.content.delete(gone)
        sparse = await exporter.plan_save(
            store, [MANY], exporter.SaveOptions.parse(missing="sparse")
        )
        with pytest.raises(NotFound):  # SAVE-6 + EXP-7: fail refuses an incomplete platform
            await exporter.plan_save(store, [MANY], exporter.SaveOptions.parse(missing="fail"))
    # EXP-7 (skip missing): a manifest with a missing child is emitted without its children
    assert sparse.reads == (manifest_digest,)
    assert any("is incomplete" in w for w in sparse.warnings)
