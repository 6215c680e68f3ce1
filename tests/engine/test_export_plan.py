"""Properties of the pure planner (_export_planner.Planner) over what the store holds.

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

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castar.engine import _export_lookup, exporter, oci
from castar.engine import platforms as plat
from castar.engine._export_plan import Node, Target
from castar.engine._export_planner import Planner
from castar.store._store import open_store
from castar.store.errors import NotFound

NAME = "docker.io/library/prop:1"
SPECS = ("linux/amd64", "linux/arm64/v8", "linux/s390x")


async def _snapshot(root: Path) -> tuple[list[Target], dict[str, Node]]:
    async with open_store(root) as store:

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
        targets = await _export_lookup.resolve(store, NAME)
        nodes = await _export_lookup.fetch(store.content, [t.desc for t in targets])
        return targets, nodes


@pytest.fixture(scope="module")
def snapshot(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[list[Target], dict[str, Node]]:
    return anyio.run(_snapshot, tmp_path_factory.mktemp("plan") / "store")


def _plan(targets, nodes, missing: str, platforms: tuple[str, ...]) -> exporter.SavePlan:
    with plat.pinned_host(plat.Platform(os="linux", architecture="amd64")):
        options = exporter._options(list(platforms) or None, missing, True)
        planner = Planner(nodes, options)
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
    missing=st.sampled_from(exporter.MISSING_POLICIES),
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
