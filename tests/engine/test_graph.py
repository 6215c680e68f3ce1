"""castar.engine.graph over the real store: documents, children, platforms, SAVE-6, walks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import anyio
import pytest

from castar.engine import graph, oci, synth
from castar.engine.oci import Descriptor, Index, Manifest, Struct
from castar.engine.platforms import Platform
from castar.store import open_root
from castar.store.digest import compute
from castar.store.errors import (
    DigestMismatch,
    InvalidArgument,
    MalformedManifest,
    NotFound,
    SizeMismatch,
)
from castar.store.roles import BlobReader


def config_bytes(arch: str, variant: str = "") -> bytes:
    body = Struct(architecture=arch, os="linux")
    if variant:
        body["variant"] = variant
    body["rootfs"] = Struct(type="layers", diff_ids=[])
    return oci.canonical_json(body)


def doc(media_type: str, data: bytes, **kw: object) -> Descriptor:
    return Descriptor(media_type, compute(data), len(data), **kw)  # type: ignore[arg-type]


@dataclass
class Graph:
    """I → [M1 linux/amd64 (C1, L1, LS), M2 (C2 aarch64, L2 missing, LS), M3 missing]."""

    store: object
    content: BlobReader
    index: Descriptor
    m1: Descriptor
    m2: Descriptor
    m3: Descriptor
    c1: Descriptor
    c2: Descriptor
    l1: Descriptor
    l2: Descriptor
    ls: Descriptor
    blobs: dict[str, bytes]


def rd(g: Graph) -> graph.StoreReader:
    return graph.StoreReader(g.content)


@pytest.fixture
async def g(tmp_path):
    async with open_root(tmp_path / "root") as store:
        c1b, c2b = config_bytes("amd64"), config_bytes("aarch64", "v8")
        l1b, l2b, lsb = b"layer one", b"layer two", b"shared layer"
        c1, c2 = doc(oci.OCI_CONFIG, c1b), doc(oci.OCI_CONFIG, c2b)
        l1, l2, ls = (doc(oci.OCI_LAYER, b) for b in (l1b, l2b, lsb))
        m1b = oci.encode_manifest(Manifest(c1, (l1, ls)))
        m2b = oci.encode_manifest(Manifest(c2, (l2, ls)))
        m3b = oci.encode_manifest(Manifest(c2, ()))
        m1 = doc(oci.OCI_MANIFEST, m1b, platform=Platform("linux", "amd64"))
        m2 = doc(oci.OCI_MANIFEST, m2b)
        m3 = doc(oci.OCI_MANIFEST, m3b, platform=Platform("linux", "s390x"))
        ib = oci.encode_index(Index((m1, m2, m3)))
        index = doc(oci.OCI_INDEX, ib)
        blobs = {"c1": c1b, "c2": c2b, "l1": l1b, "ls": lsb, "m1": m1b, "m2": m2b, "i": ib}
        for data in blobs.values():
            await store.content.write_blob(data)
        yield Graph(store, store.content, index, m1, m2, m3, c1, c2, l1, l2, ls, blobs)


async def test_read_document_returns_the_verified_bytes(g):
    assert await graph.read_document(g.content, g.m1) == g.blobs["m1"]


async def test_read_document_of_a_missing_blob_is_not_found(g):
    with pytest.raises(NotFound, match=f"content digest {g.m3.digest}: not found"):
        await graph.read_document(g.content, g.m3)


async def test_read_document_over_the_cap_fails_before_reading(g):
    # EDGE-13: InvalidArgument even though the blob is not in the store
    big = Descriptor(oci.OCI_MANIFEST, compute(b"x"), oci.MAX_DOCUMENT + 1)
    with pytest.raises(InvalidArgument, match="exceeds the 20971520 byte limit"):
        await graph.read_document(g.content, big)


async def test_read_document_checks_size_before_digest(g):
    # DESC-3
    wrong = Descriptor(g.m1.media_type, g.m1.digest, g.m1.size + 1)
    with pytest.raises(SizeMismatch) as info:
        await graph.read_document(g.content, wrong)
    assert (info.value.expected, info.value.actual) == (g.m1.size + 1, g.m1.size)


async def test_read_document_detects_a_corrupt_blob(g):
    path = g.store.content.path(g.m2.digest)
    await anyio.to_thread.run_sync(os.chmod, path, 0o644)
    data = bytearray(g.blobs["m2"])
    data[-2] ^= 1
    await anyio.Path(path).write_bytes(bytes(data))
    with pytest.raises(DigestMismatch) as info:
        await graph.read_document(g.content, g.m2)
    assert info.value.expected == g.m2.digest
    assert info.value.actual == compute(bytes(data))


async def test_read_document_serves_matching_embedded_data_without_the_store(g):
    # DESC-4
    data = b'{"embedded":true}'
    d = Descriptor(oci.OCI_MANIFEST, compute(data), len(data), data=data)
    assert await graph.read_document(g.content, d) == data
    forged = Descriptor(oci.OCI_MANIFEST, compute(b"other bytes here!"), len(data), data=data)
    with pytest.raises(NotFound):
        await graph.read_document(g.content, forged)


async def test_reader_decodes_children_of_manifest_and_index(g):
    r = graph.StoreReader(g.content)
    assert (await r.read(g.m1)).children == (g.c1, g.l1, g.ls)
    assert (await r.read(g.index)).children == (g.m1, g.m2, g.m3)
    assert (await r.read(g.c2)).platform == Platform("linux", "arm64")  # NORM-3


async def test_reader_decodes_each_document_once(g):
    loads: list[str] = []

    async def load(desc: Descriptor) -> bytes | None:
        loads.append(desc.digest)
        try:
            return await graph.read_document(g.content, desc)
        except NotFound:
            return None

    r = graph.Reader(load)
    for _ in range(2):
        await graph.walk(r, [g.index, g.m1])
    assert sorted(loads) == sorted([g.index.digest, g.m1.digest, g.m2.digest, g.m3.digest])


async def test_reader_of_a_missing_manifest_is_none(g):
    assert await graph.StoreReader(g.content).read(g.m3) is None


async def test_reader_of_a_mistyped_document_fails_mt4(g):
    as_index = Descriptor(oci.OCI_INDEX, g.m1.digest, g.m1.size)
    with pytest.raises(MalformedManifest, match="expected index but found manifest"):
        await graph.StoreReader(g.content).read(as_index)


async def test_walk_filters_children_and_can_refuse_missing_documents(g):
    r = graph.StoreReader(g.content)
    amd64 = lambda d: d.platform is None or d.platform.architecture == "amd64"  # noqa: E731
    nodes = await graph.walk(r, [g.index], keep=amd64, skip_missing=False)
    assert [n.descriptor.digest for n in nodes] == [
        g.index.digest,
        g.m1.digest,
        g.c1.digest,
        g.l1.digest,
        g.ls.digest,
        g.m2.digest,
        g.c2.digest,
        g.l2.digest,
        g.ls.digest,
    ]
    assert nodes[0].children == (g.m1, g.m2)
    with pytest.raises(NotFound):
        await graph.walk(r, [g.index], skip_missing=False)
    unique = await graph.walk(r, [g.m1, g.m2], unique=True)
    assert [n.descriptor.digest for n in unique].count(g.ls.digest) == 1


async def test_manifest_platform_prefers_the_descriptor(g):
    assert await graph.manifest_platform(rd(g), g.m1) == Platform("linux", "amd64")


async def test_manifest_platform_falls_back_to_the_normalised_config(g):
    # IMP-8 / NORM-3: aarch64/v8 → arm64 without variant
    assert await graph.manifest_platform(rd(g), g.m2) == Platform("linux", "arm64")


async def test_manifest_platform_of_an_index_is_none_and_missing_manifest_not_found(g):
    assert await graph.manifest_platform(rd(g), g.index) is None
    bare = Descriptor(g.m3.media_type, g.m3.digest, g.m3.size)
    with pytest.raises(NotFound):
        await graph.manifest_platform(rd(g), bare)


async def test_walk_lists_every_reachable_descriptor_depth_first(g):
    r = graph.StoreReader(g.content)
    nodes = await graph.walk(r, [g.index], blobs=r.exists)
    assert [(n.descriptor.digest, n.present, n.depth) for n in nodes] == [
        (g.index.digest, True, 0),
        (g.m1.digest, True, 1),
        (g.c1.digest, True, 2),
        (g.l1.digest, True, 2),
        (g.ls.digest, True, 2),
        (g.m2.digest, True, 1),
        (g.c2.digest, True, 2),
        (g.l2.digest, False, 2),
        (g.ls.digest, True, 2),
        (g.m3.digest, False, 1),
    ]
    assert nodes[1].descriptor.platform == Platform("linux", "amd64")


async def test_a_stored_synthetic_image_is_fully_available(tmp_path):
    image = synth.plan(synth.SynthSpec(layer_size=5000, attestations=True, shared_fraction=0.5))
    async with open_root(tmp_path / "root") as store:
        for b in image.blobs:
            await store.content.write_blob(b"".join(bytes(p) for p in image.blob_chunks(b.digest)))
        r = graph.StoreReader(store.content)
        nodes = await graph.walk(r, [image.index], blobs=r.exists)
        assert all(n.present for n in nodes)
        for p in image.platforms:
            assert await graph.manifest_platform(r, p.manifest) == p.platform
            assert p.attestation is not None
            assert await graph.manifest_platform(r, p.attestation) == Platform("unknown", "unknown")
