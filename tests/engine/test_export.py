"""Exporter tests: behaviour.md "Save" (EXP, SAVE), TAR-1..3, EDGE-1/3/4/5/6, vectors TV-54..60.

The store is filled directly with ``content.write_blob`` + ``images.create`` (the
importer is only used for the round trip). Host pinned to linux/amd64 (HOST-3).
Every archive is read back with Python's ``tarfile`` (the oracle).
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import tarfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import pytest

from castar.engine import oci
from castar.engine import platforms as plat
from castar.engine.save import exporter
from castar.store.digest import Digest, compute
from castar.store.errors import (
    Conflict,
    DataLoss,
    DigestMismatch,
    InvalidArgument,
    NotFound,
)
from castar.store.root import Root, open_root

ALPINE = "docker.io/library/alpine:latest"
ATTESTATION = {
    "vnd.docker.reference.type": "attestation-manifest",
}


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with plat.pinned_host(plat.Platform(os="linux", architecture="amd64")):
        yield


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store") as s:
        yield s


async def put(
    store: Root, data: bytes, media_type: str, children: tuple[oci.Descriptor, ...] = ()
) -> oci.Descriptor:
    labels = oci.children_labels(children) if children else None
    d = await store.content.write_blob(data, media_type=media_type, labels=labels)
    return oci.Descriptor(media_type, d.digest, d.size)


async def put_manifest(
    store: Root,
    config: oci.Descriptor,
    layers: tuple[oci.Descriptor, ...],
    media_type: str = oci.OCI_MANIFEST,
) -> oci.Descriptor:
    doc = oci.Manifest(config=config, layers=layers, media_type=media_type)
    return await put(store, oci.encode_manifest(doc), media_type, (config, *layers))


async def put_config(store: Root, os_: str, arch: str, variant: str = "") -> oci.Descriptor:
    cfg: dict[str, object] = {"architecture": arch, "os": os_, "rootfs": {"type": "layers"}}
    if variant:
        cfg["variant"] = variant
    return await put(store, oci.canonical_json(cfg), oci.OCI_CONFIG)


@dataclass
class World:
    """The TV-54..60 store: alpine → I [M1 amd64 (C1 L1 LS), M2 arm64/v8 (C2 L2 LS), A1]."""

    I: oci.Descriptor  # noqa: E741 - the vector's name
    M1: oci.Descriptor
    M2: oci.Descriptor
    A1: oci.Descriptor
    C1: oci.Descriptor
    C2: oci.Descriptor
    CA: oci.Descriptor
    L1: oci.Descriptor
    L2: oci.Descriptor
    LS: oci.Descriptor
    LA: oci.Descriptor
    extra: dict[str, oci.Descriptor] = field(default_factory=dict)

    def hexes(self, *names: str) -> set[str]:
        return {getattr(self, n).digest.encoded for n in names}


async def build_world(store: Root, name: str = ALPINE) -> World:
    c1 = await put_config(store, "linux", "amd64")
    c2 = await put_config(store, "linux", "arm64", "v8")
    ca = await put(store, b'{"architecture":"unknown","os":"unknown"}', oci.OCI_CONFIG)
    l1 = await put(store, b"layer-1" * 3000, oci.OCI_LAYER_GZIP)
    l2 = await put(store, b"layer-2" * 5000, oci.OCI_LAYER_GZIP)
    ls = await put(store, b"shared" * 100000, oci.OCI_LAYER_GZIP)  # > 256 KiB: zero-copy
    la = await put(store, b'{"_type":"https://in-toto.io/Statement/v0.1"}', oci.IN_TOTO)
    m1 = await put_manifest(store, c1, (l1, ls))
    m2 = await put_manifest(store, c2, (l2, ls))
    a1 = await put_manifest(store, ca, (la,))
    entries = (
        oci.Descriptor(m1.media_type, m1.digest, m1.size, platform=plat.parse("linux/amd64")),
        oci.Descriptor(m2.media_type, m2.digest, m2.size, platform=plat.parse("linux/arm64/v8")),
        oci.Descriptor(
            a1.media_type,
            a1.digest,
            a1.size,
            platform=plat.Platform(os="unknown", architecture="unknown"),
            annotations={**ATTESTATION, "vnd.docker.reference.digest": str(m1.digest)},
        ),
    )
    index = await put(store, oci.encode_index(oci.Index(manifests=entries)), oci.OCI_INDEX, entries)
    await store.images.create(name, index)
    return World(index, entries[0], entries[1], entries[2], c1, c2, ca, l1, l2, ls, la)


@dataclass
class Archive:
    names: list[str]
    members: dict[str, tarfile.TarInfo]
    files: dict[str, bytes]

    @property
    def index(self) -> dict[str, object]:
        return json.loads(self.files["index.json"])  # type: ignore[no-any-return]

    @property
    def docker(self) -> list[dict[str, object]]:
        return json.loads(self.files["manifest.json"])  # type: ignore[no-any-return]

    @property
    def blob_hexes(self) -> set[str]:
        return {
            n.rpartition("/")[2] for n in self.names if n.startswith("blobs/sha256/") and n[13:]
        }


def read_archive(data: bytes) -> Archive:
    """Parse with the stdlib oracle and check every blob's bytes against its name."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        infos = tf.getmembers()
        files = {}
        for info in infos:
            if info.isfile():
                f = tf.extractfile(info)
                assert f is not None
                files[info.name] = f.read()
    for name, body in files.items():
        if name.startswith("blobs/"):
            _, alg, hex_ = name.split("/")
            assert hashlib.new(alg, body).hexdigest() == hex_, name
    return Archive([i.name for i in infos], {i.name: i for i in infos}, files)


async def save_bytes(store: Root, tmp_path: Path, names: list[str], **kw: object) -> bytes:
    out = tmp_path / f"out-{next(_counter)}.tar"
    await exporter.save(store, names, out, exporter.SaveOptions.parse(**kw))  # type: ignore[arg-type]
    return await anyio.Path(out).read_bytes()


_counter = itertools.count()


async def save_archive(
    store: Root, tmp_path: Path, names: list[str], **kw: object
) -> tuple[exporter.ExportResult, Archive]:
    """Save to a new file; the result and the archive as the stdlib reads it."""
    out = tmp_path / f"out-{next(_counter)}.tar"
    result = await exporter.save(store, names, out, exporter.SaveOptions.parse(**kw))  # type: ignore[arg-type]
    return result, read_archive(await anyio.Path(out).read_bytes())


# -- TV-54..60 --------------------------------------------------------------------------------


async def test_tv54_single_manifest_image_writes_metadata_first_then_sorted_blobs(
    store: Root, tmp_path: Path
) -> None:
    c1 = await put_config(store, "linux", "amd64")
    l1 = await put(store, b"layer-1" * 3000, oci.OCI_LAYER_GZIP)
    ls = await put(store, b"shared" * 100000, oci.OCI_LAYER_GZIP)
    m1 = await put_manifest(store, c1, (l1, ls))
    await store.images.create("docker.io/library/single:1", m1)

    ar = read_archive(await save_bytes(store, tmp_path, ["single:1"]))

    blobs = sorted(d.digest.encoded for d in (c1, l1, ls, m1))
    # TV-54 / EXP-12 [castar]: metadata first, then directories and blobs by name.
    assert ar.names == [
        "oci-layout",
        "index.json",
        "manifest.json",
        "blobs",
        "blobs/sha256",
        *(f"blobs/sha256/{h}" for h in blobs),
    ]
    for info in ar.members.values():  # TAR-1
        assert (info.mtime, info.uid, info.gid, info.uname, info.gname) == (0, 0, 0, "", "")
    # TAR-3 modes
    assert ar.members["oci-layout"].mode == 0o444
    assert ar.members["index.json"].mode == 0o644
    assert ar.members["manifest.json"].mode == 0o644
    assert ar.members["blobs"].isdir()
    assert ar.members["blobs"].mode == 0o755
    assert ar.members[f"blobs/sha256/{blobs[0]}"].mode == 0o444
    assert ar.files["oci-layout"] == b'{"imageLayoutVersion":"1.0.0"}'  # EXP-11
    # EXP-3 annotations, EXP-9 index.json
    (entry,) = ar.index["manifests"]  # type: ignore[misc]
    assert entry["digest"] == m1.digest
    assert entry["annotations"] == {
        "io.containerd.image.name": "docker.io/library/single:1",
        "org.opencontainers.image.ref.name": "1",
    }
    # EXP-10 manifest.json, byte for byte in Docker's field order
    assert (
        ar.files["manifest.json"]
        == (
            f'[{{"Config":"blobs/sha256/{c1.digest.encoded}","RepoTags":["single:1"],'
            f'"Layers":["blobs/sha256/{l1.digest.encoded}","blobs/sha256/{ls.digest.encoded}"]}}]'
        ).encode()
    )


async def test_tv55_platform_list_keeps_original_index_and_only_matching_subtrees(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    result, ar = await save_archive(
        store, tmp_path, ["alpine"], platforms=["linux/amd64", "linux/s390x"]
    )
    # TV-55 / EXP-6: {I, M1, C1, L1, LS}; I is the unmodified original; attestation dropped (EDGE-4)
    assert ar.blob_hexes == w.hexes("I", "M1", "C1", "L1", "LS")
    (entry,) = ar.index["manifests"]  # type: ignore[misc]
    assert entry["digest"] == w.I.digest
    index_doc = json.loads(ar.files[f"blobs/sha256/{w.I.digest.encoded}"])
    assert [m["digest"] for m in index_doc["manifests"]] == [w.M1.digest, w.M2.digest, w.A1.digest]
    assert ar.docker[0]["Config"] == f"blobs/sha256/{w.C1.digest.encoded}"
    assert ("docker.io/library/alpine:latest", "linux/s390x", None, "not in image") in {
        (s.image, s.platform, s.digest, s.reason) for s in result.skipped
    }


async def test_tv55_no_platform_exports_every_platform_and_points_manifest_json_at_host(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    ar = read_archive(await save_bytes(store, tmp_path, [ALPINE]))
    assert ar.blob_hexes == w.hexes("I", "M1", "C1", "L1", "LS", "M2", "C2", "L2", "A1", "CA", "LA")
    # SAVE-1/SAVE-3: moby always registers the host-preferred child (castar follows moby).
    (item,) = ar.docker
    assert item["Config"] == f"blobs/sha256/{w.C1.digest.encoded}"
    assert item["RepoTags"] == ["alpine:latest"]


async def test_save2_one_platform_makes_its_manifest_the_only_entry(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    ar = read_archive(await save_bytes(store, tmp_path, [ALPINE], platforms=["linux/arm64"]))
    assert ar.blob_hexes == w.hexes("M2", "C2", "L2", "LS")
    (entry,) = ar.index["manifests"]  # type: ignore[misc]
    assert entry["digest"] == w.M2.digest
    assert entry["platform"] == {"architecture": "arm64", "os": "linux", "variant": "v8"}
    assert entry["annotations"]["io.containerd.image.name"] == ALPINE
    assert ar.docker[0]["Config"] == f"blobs/sha256/{w.C2.digest.encoded}"


async def test_tv56_single_platform_absent_raises_not_found_with_save2_text(
    store: Root, tmp_path: Path
) -> None:
    await build_world(store)
    out = tmp_path / "never.tar"
    with pytest.raises(NotFound) as err:
        await exporter.save(
            store, [ALPINE], out, exporter.SaveOptions.parse(platforms=["linux/s390x"])
        )
    assert str(err.value) == (
        "no suitable export target found: image with reference alpine:latest was found "
        "but does not provide the specified platform (linux/s390x): not found"
    )
    assert not out.exists()  # EXP-13 [castar]: before the sink is even opened


async def test_tv56_platform_list_matching_nothing_raises_no_manifest_found(
    store: Root, tmp_path: Path
) -> None:
    await build_world(store)
    with pytest.raises(NotFound, match="no manifest found for platform: not found"):
        await exporter.plan_save(
            store, [ALPINE], exporter.SaveOptions.parse(platforms=["linux/s390x", "linux/ppc64le"])
        )


async def test_save2_two_manifests_for_one_platform_is_a_conflict(store: Root) -> None:
    w = await build_world(store)
    twin = await put_manifest(store, w.C1, (w.L1,))
    entries = (
        w.M1,
        oci.Descriptor(twin.media_type, twin.digest, twin.size, platform=plat.parse("linux/amd64")),
    )
    idx = await put(store, oci.encode_index(oci.Index(manifests=entries)), oci.OCI_INDEX, entries)
    await store.images.create("docker.io/library/twins:1", idx)
    with pytest.raises(Conflict, match="multiple manifests found for platform linux/amd64"):
        await exporter.plan_save(
            store, ["twins:1"], exporter.SaveOptions.parse(platforms=["linux/amd64"])
        )


async def test_tv59_non_distributable_layer_is_not_written_but_listed(
    store: Root, tmp_path: Path
) -> None:
    c = await put_config(store, "windows", "amd64")
    foreign = await put(store, b"foreign", oci.DOCKER_LAYER_FOREIGN_GZIP)
    layer = await put(store, b"ordinary", oci.DOCKER_LAYER_GZIP)
    m = await put_manifest(store, c, (foreign, layer), media_type=oci.DOCKER_MANIFEST)
    await store.images.create("docker.io/library/win:1", m)
    ar = read_archive(await save_bytes(store, tmp_path, ["win:1"]))
    assert foreign.digest.encoded not in ar.blob_hexes  # SAVE-1 skip_non_distributable
    assert layer.digest.encoded in ar.blob_hexes
    assert ar.docker[0]["Layers"] == [
        f"blobs/sha256/{foreign.digest.encoded}",
        f"blobs/sha256/{layer.digest.encoded}",
    ]


async def test_missing_foreign_layer_does_not_make_a_platform_incomplete(
    store: Root, tmp_path: Path
) -> None:
    c = await put_config(store, "windows", "amd64")
    foreign = oci.Descriptor(oci.DOCKER_LAYER_FOREIGN_GZIP, compute(b"never pulled"), 12)
    layer = await put(store, b"ordinary", oci.DOCKER_LAYER_GZIP)
    m = await put_manifest(store, c, (foreign, layer), media_type=oci.DOCKER_MANIFEST)
    await store.images.create("docker.io/library/win:2", m)
    # [castar] the archive never carries non-distributable layers (SAVE-1), so their
    # absence is no reason to leave out the rest or to fail
    result = await exporter.save(
        store, ["win:2"], tmp_path / "w.tar", exporter.SaveOptions.parse(missing="fail")
    )
    assert result.images[0].platforms[0].state == "complete"
    ar = read_archive((tmp_path / "w.tar").read_bytes())
    assert ar.blob_hexes == {c.digest.encoded, layer.digest.encoded, m.digest.encoded}


async def test_edge12_sha512_blobs_get_pax_names_and_their_own_directory(
    store: Root, tmp_path: Path
) -> None:
    c = await put_config(store, "linux", "amd64")
    data = b"a sha512 layer"
    d = await store.content.write_blob(
        data, digest="sha512:" + hashlib.sha512(data).hexdigest(), media_type=oci.OCI_LAYER_GZIP
    )
    layer = oci.Descriptor(d.media_type, d.digest, d.size)
    m = await put_manifest(store, c, (layer,))
    await store.images.create("docker.io/library/long:1", m)
    raw = await save_bytes(store, tmp_path, ["long:1"])
    ar = read_archive(raw)  # tarfile applies the PAX path record (TAR-2)
    assert ar.names[3:] == [
        "blobs",
        "blobs/sha256",
        *sorted(f"blobs/sha256/{x.digest.encoded}" for x in (c, m)),
        "blobs/sha512",
        f"blobs/sha512/{layer.digest.encoded}",
    ]
    assert b"path=blobs/sha512/" in raw


async def test_exp4_distribution_source_labels_become_entry_annotations(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    await store.content.update_labels(
        w.I.digest,
        {
            "containerd.io/distribution.source.docker.io": "library/alpine",
            "containerd.io/gc.ref.content.x": str(w.M1.digest),  # not a source label
        },
    )
    ar = read_archive(await save_bytes(store, tmp_path, [ALPINE]))
    (entry,) = ar.index["manifests"]  # type: ignore[misc]
    assert entry["annotations"] == {
        "containerd.io/distribution.source.docker.io": "library/alpine",
        "io.containerd.image.name": ALPINE,
        "org.opencontainers.image.ref.name": "latest",
    }


async def test_edge3_a_layer_used_twice_is_written_once_and_listed_twice(
    store: Root, tmp_path: Path
) -> None:
    c = await put_config(store, "linux", "amd64")
    layer = await put(store, b"the same layer", oci.OCI_LAYER_GZIP)
    m = await put_manifest(store, c, (layer, layer))
    await store.images.create("docker.io/library/twice:1", m)
    raw = await save_bytes(store, tmp_path, ["twice:1"])
    ar = read_archive(raw)
    assert ar.names.count(f"blobs/sha256/{layer.digest.encoded}") == 1
    assert ar.docker[0]["Layers"] == [f"blobs/sha256/{layer.digest.encoded}"] * 2
    without = read_archive(await save_bytes(store, tmp_path, ["twice:1"], docker_manifest=False))
    assert "manifest.json" not in without.names  # EXP-10: skip_docker_manifest
    assert without.blob_hexes == ar.blob_hexes


async def test_without_manifest_json_no_image_claims_a_docker_manifest(store: Root) -> None:
    # EXP-10 skip_docker_manifest: ImagePlan.docker_manifest names what manifest.json
    # points at, so with none written it is None for every kind of target, with no warning.
    w = await build_world(store)
    await store.images.create("docker.io/library/single:1", w.M1)
    await store.images.create("docker.io/library/broken:1", w.M2)
    await store.content.delete(w.L2.digest)
    plans = [
        await exporter.plan_save(
            store, names, exporter.SaveOptions.parse(docker_manifest=False, **kw)
        )  # type: ignore[arg-type]
        for names, kw in [
            (["single:1"], {}),
            (["broken:1"], {}),
            ([ALPINE], {}),
            ([ALPINE], {"platforms": ["linux/amd64"]}),
        ]
    ]
    assert [i.docker_manifest for p in plans for i in p.images] == [None] * 4
    assert [p.warnings for p in plans] == [()] * 4
    assert all("manifest.json" not in {m.name for m in p.members} for p in plans)
    with_it = await exporter.plan_save(store, ["single:1"], exporter.SaveOptions())
    assert with_it.images[0].docker_manifest == w.M1.digest


async def test_tv60_layer_target_raises_only_manifests_may_be_exported(
    store: Root, tmp_path: Path
) -> None:
    layer = await put(store, b"just a layer", oci.OCI_LAYER_GZIP)
    await store.images.create("docker.io/library/odd:1", layer)
    with pytest.raises(InvalidArgument, match="only manifests may be exported"):
        await exporter.save(store, ["odd:1"], tmp_path / "x.tar", exporter.SaveOptions())
    assert not (tmp_path / "x.tar").exists()


async def test_tv60_layer_named_by_digest_past_the_document_cap_is_invalid_argument(
    store: Root, tmp_path: Path
) -> None:
    # Too big to be a document (EDGE-13), so it cannot be a manifest: TV-60, not a size error.
    layer = await put(store, bytes(oci.MAX_DOCUMENT + 1), oci.OCI_LAYER_GZIP)
    with pytest.raises(InvalidArgument, match="only manifests may be exported"):
        await exporter.save(store, [str(layer.digest)], tmp_path / "x.tar", exporter.SaveOptions())
    assert not (tmp_path / "x.tar").exists()


async def test_save1_referrers_named_by_labels_are_walked_and_listed_in_index_json(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    empty = await put(store, b"{}", oci.OCI_EMPTY)
    sbom = await put(store, b'{"spdxVersion":"SPDX-2.3"}', "application/spdx+json")
    doc = oci.canonical_json(
        oci.Struct(
            schemaVersion=2,
            mediaType=oci.OCI_MANIFEST,
            artifactType="application/spdx+json",
            config=empty.to_json(),
            layers=[sbom.to_json()],
            subject=w.M1.to_json(),
        )
    )
    ref = await put(store, doc, oci.OCI_MANIFEST, (empty, sbom))
    key = f"containerd.io/gc.ref.content.referrer.sha256.{ref.digest.encoded[:12]}"
    await store.content.update_labels(w.M1.digest, {key: str(ref.digest)})

    ar = read_archive(
        await save_bytes(store, tmp_path, [ALPINE], platforms=["linux/amd64", "linux/riscv64"])
    )
    assert {ref.digest.encoded, empty.digest.encoded, sbom.digest.encoded} <= ar.blob_hexes
    top, extra = ar.index["manifests"]  # type: ignore[misc]
    assert top["digest"] == w.I.digest  # EXP-9: the entries first, then the referrers
    assert extra == {
        "mediaType": oci.OCI_MANIFEST,
        "digest": ref.digest,
        "size": ref.size,
        "annotations": {"io.containerd.manifest.subject": str(w.M1.digest)},
        "artifactType": "application/spdx+json",
    }
    # M2's subtree has no referrer: a save of arm64 alone carries none
    arm = read_archive(await save_bytes(store, tmp_path, [ALPINE], platforms=["linux/arm64"]))
    assert ref.digest.encoded not in arm.blob_hexes
    assert len(arm.index["manifests"]) == 1  # type: ignore[arg-type]


# -- determinism, names -------------------------------------------------------------------------


async def test_two_saves_give_identical_bytes(store: Root, tmp_path: Path) -> None:
    await build_world(store)
    first = await save_bytes(store, tmp_path, [ALPINE, "alpine"])
    second = await save_bytes(store, tmp_path, [ALPINE, "alpine"])
    assert first == second
    assert len(first) % 512 == 0
    assert first.endswith(bytes(1024))


async def test_save4_bare_repository_exports_every_tag_by_name(store: Root, tmp_path: Path) -> None:
    w = await build_world(store)
    await store.images.create("docker.io/library/alpine:3.18", w.I)
    await store.images.create("docker.io/library/other:1", w.I)
    ar = read_archive(await save_bytes(store, tmp_path, ["alpine"]))
    names = [e["annotations"]["io.containerd.image.name"] for e in ar.index["manifests"]]  # type: ignore[attr-defined]
    assert names == ["docker.io/library/alpine:3.18", ALPINE]
    refs = [e["annotations"]["org.opencontainers.image.ref.name"] for e in ar.index["manifests"]]  # type: ignore[attr-defined]
    assert refs == ["3.18", "latest"]
    # EXP-10: one manifest.json entry per manifest digest, with all names
    assert ar.docker[0]["RepoTags"] == ["alpine:3.18", "alpine:latest"]


@pytest.mark.parametrize("how", ["digest", "name@digest", "short-id"])
async def test_save4_digest_or_id_exports_without_names(
    store: Root, tmp_path: Path, how: str
) -> None:
    w = await build_world(store)
    ref = {
        "digest": str(w.I.digest),
        "name@digest": f"alpine@{w.I.digest}",
        "short-id": w.I.digest.encoded[:12],
    }[how]
    ar = read_archive(await save_bytes(store, tmp_path, [ref]))
    (entry,) = ar.index["manifests"]  # type: ignore[misc]
    assert entry["digest"] == w.I.digest
    assert "annotations" not in entry
    assert ar.docker[0]["RepoTags"] is None


async def test_exp10_unparseable_name_fails_manifest_json(store: Root, tmp_path: Path) -> None:
    w = await build_world(store)
    await store.images.create("Not/A/Reference:X", w.I)
    with pytest.raises(InvalidArgument, match='unable to create manifests file: failed to parse "'):
        await exporter.plan_save(store, ["Not/A/Reference:X"], exporter.SaveOptions())
    # without manifest.json the name only goes into index.json annotations
    plan = await exporter.plan_save(
        store, ["Not/A/Reference:X"], exporter.SaveOptions.parse(docker_manifest=False)
    )
    assert plan.images[0].name == "Not/A/Reference:X"


async def test_unknown_name_raises_not_found_before_writing(store: Root, tmp_path: Path) -> None:
    await build_world(store)
    out = tmp_path / "no.tar"
    with pytest.raises(NotFound, match='image "nosuch:1": not found'):
        await exporter.save(store, [ALPINE, "nosuch:1"], out, exporter.SaveOptions())
    assert not out.exists()


# -- missing content ----------------------------------------------------------------------------


async def test_sparse_keeps_original_index_and_writes_only_present_blobs(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    await store.content.delete(w.L2.digest)
    result, ar = await save_archive(store, tmp_path, [ALPINE])
    # EXP-7 skip-missing: M2 is written without its children; the index is the original
    assert ar.blob_hexes == w.hexes("I", "M1", "C1", "L1", "LS", "M2", "A1", "CA", "LA")
    assert ar.index["manifests"][0]["digest"] == w.I.digest  # type: ignore[index]
    assert [(s.platform, s.reason) for s in result.skipped] == [("linux/arm64/v8", "partial")]


async def test_edge1_manifest_json_points_at_best_available_platform(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    await store.content.delete(w.M1.digest)  # the host's platform is not in the store
    result, ar = await save_archive(store, tmp_path, [ALPINE])
    assert ar.docker[0]["Config"] == f"blobs/sha256/{w.C2.digest.encoded}"  # EDGE-1 [castar]
    assert w.M1.digest.encoded not in ar.blob_hexes
    assert ("linux/amd64", "missing") in {(s.platform, s.reason) for s in result.skipped}


async def test_edge1_no_available_platform_leaves_manifest_json_out_with_warning(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    await store.content.delete(w.C1.digest)
    await store.content.delete(w.C2.digest)
    result, ar = await save_archive(store, tmp_path, [ALPINE])
    assert "manifest.json" not in ar.names
    assert any("manifest.json has no entry" in x for x in result.warnings)


async def test_edge6_missing_top_level_blob_is_left_out_with_warning(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    await store.content.delete(w.I.digest)
    result, ar = await save_archive(store, tmp_path, [ALPINE])
    assert ar.names == ["oci-layout", "index.json"]
    assert ar.files["index.json"] == (
        b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",'
        b'"manifests":null}'
    )
    assert result.warnings


async def test_prune_writes_new_index_listing_only_complete_platforms(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    await store.content.delete(w.L2.digest)
    result, ar = await save_archive(store, tmp_path, [ALPINE], missing="prune")
    (image,) = result.images
    assert image.original == w.I.digest
    (entry,) = ar.index["manifests"]  # type: ignore[misc]
    assert entry["digest"] == image.digest != w.I.digest
    assert entry["annotations"]["io.containerd.image.name"] == ALPINE
    new_index = ar.files[f"blobs/sha256/{image.digest.encoded}"]
    doc = json.loads(new_index)
    # the attestation of M1 stays with M1; M2 (incomplete) is gone
    assert [m["digest"] for m in doc["manifests"]] == [w.M1.digest, w.A1.digest]
    assert oci.encode_index(oci.decode_index(new_index)) == new_index  # DESC-1/2
    assert compute(new_index) == image.digest
    assert w.I.digest.encoded not in ar.blob_hexes
    assert w.M2.digest.encoded not in ar.blob_hexes


async def test_prune_with_everything_present_keeps_the_original_index(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    sparse = await save_bytes(store, tmp_path, [ALPINE])
    pruned = await save_bytes(store, tmp_path, [ALPINE], missing="prune")
    assert pruned == sparse
    assert read_archive(pruned).index["manifests"][0]["digest"] == w.I.digest  # type: ignore[index]


async def test_prune_with_platforms_lists_only_requested_platforms(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    plan = await exporter.plan_save(
        store,
        [ALPINE],
        exporter.SaveOptions.parse(platforms=["linux/arm64", "linux/amd64"], missing="prune"),
    )
    (image,) = plan.images
    member = next(m for m in plan.members if m.digest == image.digest)
    assert member.data is not None
    doc = json.loads(member.data)
    assert [m["digest"] for m in doc["manifests"]] == [w.M1.digest, w.M2.digest]


async def test_fail_names_the_incomplete_platform_before_writing(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    await store.content.delete(w.L2.digest)
    out = tmp_path / "f.tar"
    with pytest.raises(NotFound) as err:
        await exporter.save(store, [ALPINE], out, exporter.SaveOptions.parse(missing="fail"))
    assert "platform linux/arm64/v8" in str(err.value)
    assert str(w.L2.digest) in str(err.value)
    assert not out.exists()


async def test_fail_names_a_requested_platform_absent_from_the_image(store: Root) -> None:
    await build_world(store)
    with pytest.raises(NotFound, match="platform linux/s390x not found"):
        await exporter.plan_save(
            store,
            [ALPINE],
            exporter.SaveOptions.parse(platforms=["linux/amd64", "linux/s390x"], missing="fail"),
        )


async def test_prune_of_an_incomplete_single_manifest_image_is_not_found(store: Root) -> None:
    w = await build_world(store)
    await store.images.create("docker.io/library/one:1", w.M2)
    await store.content.delete(w.L2.digest)
    with pytest.raises(NotFound, match="no platform is complete locally"):
        await exporter.plan_save(store, ["one:1"], exporter.SaveOptions.parse(missing="prune"))


async def test_the_same_name_twice_is_one_entry(store: Root) -> None:
    await build_world(store)
    plan = await exporter.plan_save(
        store, [ALPINE, "alpine:latest", "alpine"], exporter.SaveOptions()
    )
    assert [i.name for i in plan.images] == [ALPINE]


async def test_unknown_missing_policy_is_invalid_argument(store: Root) -> None:
    with pytest.raises(InvalidArgument, match="missing='lenient'"):
        await exporter.plan_save(store, [ALPINE], exporter.SaveOptions.parse(missing="lenient"))


# -- plan, verify, digest, progress -------------------------------------------------------------


async def test_plan_save_is_what_save_writes_and_serialises_to_json(
    store: Root, tmp_path: Path
) -> None:
    await build_world(store)
    plan = await exporter.plan_save(store, [ALPINE], exporter.SaveOptions())
    text = json.dumps(plan.to_json())
    assert json.loads(text)["size"] == plan.size
    data = await save_bytes(store, tmp_path, [ALPINE])
    assert len(data) == plan.size
    assert [m.name.rstrip("/") for m in plan.members] == read_archive(data).names


async def test_archive_digest_is_sha256_of_the_bytes_written(store: Root, tmp_path: Path) -> None:
    await build_world(store)
    out = tmp_path / "d.tar"
    seen: list[tuple[int, int | None, str]] = []
    result = await exporter.save(
        store,
        [ALPINE],
        out,
        exporter.SaveOptions.parse(archive_digest=True),
        progress=lambda done, total, item: seen.append((done, total, item)),
    )
    data = out.read_bytes()
    assert result.sha256 == "sha256:" + hashlib.sha256(data).hexdigest()
    assert result.size == len(data) == result.plan.size
    # done and total bytes, and the member being written: the last one at the end
    assert seen[-1] == (len(data), len(data), result.plan.members[-1].name)
    assert data == await save_bytes(store, tmp_path, [ALPINE])  # same bytes as zero-copy


async def test_verify_detects_a_corrupt_blob(store: Root, tmp_path: Path) -> None:
    w = await build_world(store)
    path = store.content.path(w.LS.digest)
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[100] ^= 1
    path.write_bytes(bytes(raw))
    out = tmp_path / "v.tar"
    with pytest.raises(DigestMismatch, match=r"unexpected digest sha256:\w+ copied"):
        await exporter.save(store, [ALPINE], out, exporter.SaveOptions.parse(verify=True))
    assert not out.exists()  # a partial archive save() created is removed


async def test_corrupt_manifest_document_fails_before_the_first_byte(
    store: Root, tmp_path: Path
) -> None:
    w = await build_world(store)
    path = store.content.path(w.M2.digest)
    path.chmod(0o644)
    path.write_bytes(path.read_bytes().replace(b"schemaVersion", b"schemaVersioN"))
    out = tmp_path / "c.tar"
    with pytest.raises(DigestMismatch):
        await exporter.save(store, [ALPINE], out, exporter.SaveOptions())
    assert not out.exists()


async def test_recorded_blob_missing_on_disk_is_data_loss(store: Root, tmp_path: Path) -> None:
    w = await build_world(store)
    store.content.path(w.LS.digest).unlink()
    out = tmp_path / "dl.tar"
    with pytest.raises(DataLoss, match="recorded but missing on disk"):
        await exporter.save(store, [ALPINE], out, exporter.SaveOptions())
    assert not out.exists()


async def test_edge5_nested_index_is_walked_completely(store: Root, tmp_path: Path) -> None:
    w = await build_world(store)
    inner = (w.M1, w.M2)
    nested = await put(store, oci.encode_index(oci.Index(manifests=inner)), oci.OCI_INDEX, inner)
    outer = await put(
        store, oci.encode_index(oci.Index(manifests=(nested,))), oci.OCI_INDEX, (nested,)
    )
    await store.images.create("docker.io/library/nested:1", outer)
    ar = read_archive(
        await save_bytes(store, tmp_path, ["nested:1"], platforms=["linux/amd64", "linux/riscv64"])
    )
    # the nested index has no platform, so it is walked, and completely (EXP-6, EDGE-5)
    assert {w.M1.digest.encoded, w.M2.digest.encoded, w.L2.digest.encoded} <= ar.blob_hexes


def _digest(d: str) -> Digest:
    return Digest(d)


# -- round trip through the importer ------------------------------------------------------------


@pytest.mark.parametrize("missing", ["sparse", "prune"])
async def test_save_load_save_round_trips_to_identical_bytes(
    store: Root, tmp_path: Path, missing: str
) -> None:
    from castar.engine.load import importer

    w = await build_world(store)
    await store.images.create("docker.io/library/alpine:3.18", w.I)
    await store.content.delete(w.L2.digest)  # a partial platform too
    first = await save_bytes(store, tmp_path, ["alpine"], missing=missing)
    archive = tmp_path / "first.tar"
    archive.write_bytes(first)
    async with open_root(tmp_path / "other") as other:
        roles = (other.content, other.images, other.leases)
        loaded = await importer.load(*roles, archive, importer.LoadOptions())
        assert sorted(i.name for i in loaded) == ["docker.io/library/alpine:3.18", ALPINE]
        second = await save_bytes(other, tmp_path, ["alpine"], missing=missing)
    assert second == first
