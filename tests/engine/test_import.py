"""Importer: OCI archives from files and streams, verification, selection (behaviour.md "Load")."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import hashlib
import io
import json
import lzma
import os
import re
import tarfile
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import castar
from castar.engine import oci
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions, add_ref_prefix, filter_ref_prefix
from castar.engine.platforms import pinned_host
from castar.store import Image, Root, open_root
from castar.store.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    MalformedArchive,
    NotFound,
)


async def load(root: Root, source: object, progress: Any = None, **options: Any) -> list[Image]:
    """The importer over a whole root, its options as keywords."""
    options_ = LoadOptions.parse(**options)
    roles = (root.content, root.images, root.leases)
    return await importer.load(*roles, source, options_, progress=progress)


# -- archive builders (tarfile is the independent writer) ------------------------------------


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canon(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def desc(media_type: str, data: bytes, **extra: object) -> dict[str, object]:
    return {"mediaType": media_type, "digest": sha(data), "size": len(data), **extra}


def blob_name(data: bytes) -> str:
    return "blobs/sha256/" + hashlib.sha256(data).hexdigest()


@dataclass
class Member:
    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""


@dataclass
class Platformed:
    """One platform's manifest, config and layers."""

    platform: dict[str, str]
    manifest: bytes
    config: bytes
    layers: list[bytes]

    @property
    def blobs(self) -> list[bytes]:
        return [self.manifest, self.config, *self.layers]


@dataclass
class OciImage:
    index: bytes  # the image index (multi-platform)
    index_json: bytes  # the archive's index.json
    platforms: list[Platformed]
    members: list[Member] = field(default_factory=list)

    def platform(self, spec: str) -> Platformed:
        for p in self.platforms:
            if (
                "/".join(
                    v
                    for v in (
                        p.platform["os"],
                        p.platform["architecture"],
                        p.platform.get("variant", ""),
                    )
                    if v
                )
                == spec
            ):
                return p
        raise KeyError(spec)


def make_platform(
    os_: str,
    arch: str,
    variant: str = "",
    *,
    layers: int = 1,
    layer_size: int = 3000,
    seed: str = "",
) -> Platformed:
    plat = {"architecture": arch, "os": os_}
    if variant:
        plat["variant"] = variant
    layer_data = [
        (f"{seed}{os_}/{arch}/{variant} layer {i} ".encode() * (layer_size // 20 + 1))[:layer_size]
        for i in range(layers)
    ]
    config = canon({**plat, "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layer_data]}})
    manifest = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": desc(oci.OCI_CONFIG, config),
            "layers": [desc(oci.OCI_LAYER, x) for x in layer_data],
        }
    )
    return Platformed(plat, manifest, config, layer_data)


def make_oci(
    specs: list[str],
    *,
    name: str | None = "docker.io/library/img:1",
    ref_name: str | None = None,
    order: str = "meta-last",
    layers: int = 1,
    layer_size: int = 3000,
    seed: str = "",
    omit: tuple[str, ...] = (),
) -> OciImage:
    """An OCI archive of one multi-platform image; ``omit`` leaves platforms' blobs out."""
    plats = []
    for spec in specs:
        parts = spec.split("/")
        plats.append(make_platform(*parts, layers=layers, layer_size=layer_size, seed=seed))
    index = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [desc(oci.OCI_MANIFEST, p.manifest, platform=p.platform) for p in plats],
        }
    )
    annotations = {}
    if name:
        annotations[oci.ANNOTATION_IMAGE_NAME] = name
    if ref_name:
        annotations[oci.ANNOTATION_REF_NAME] = ref_name
    entry = desc(oci.OCI_INDEX, index, **({"annotations": annotations} if annotations else {}))
    index_json = canon({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": [entry]})
    blobs = {blob_name(index): index}
    for spec, p in zip(specs, plats, strict=True):
        if spec in omit:
            continue
        for b in p.blobs:
            blobs[blob_name(b)] = b
    meta = [
        Member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        Member("index.json", index_json),
    ]
    body = [Member("blobs/", type=tarfile.DIRTYPE), Member("blobs/sha256/", type=tarfile.DIRTYPE)]
    body += [Member(n, blobs[n]) for n in sorted(blobs)]
    members = meta + body if order == "meta-first" else body + meta
    return OciImage(index, index_json, plats, members)


def tar_bytes(members: list[Member], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = m.type
            info.linkname = m.linkname
            info.mode = 0o644
            if m.type == tarfile.REGTYPE:
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    return buf.getvalue()


def write(tmp_path: Path, data: bytes, name: str = "archive.tar") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# -- fixtures and store views -----------------------------------------------------------------


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store") as s:
        yield s


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with pinned_host("linux/amd64"):  # the vectors' convention
        yield


async def blob_set(store: Root) -> set[str]:
    return {str(i.digest) for i in await store.content.walk()}


async def image_map(store: Root) -> dict[str, str]:
    return {i.name: str(i.target.digest) for i in await store.images.list()}


async def state(store: Root) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
    """Images and every blob with its labels: what two equivalent imports must agree on."""
    infos = await store.content.walk()
    return await image_map(store), {str(i.digest): dict(i.labels) for i in infos}


class ChunkedReader:
    """An object with ``async read(n)`` handing out small, uneven pieces (not seekable)."""

    def __init__(self, data: bytes, piece: int = 7777) -> None:
        self._data = memoryview(data)
        self._piece = piece
        self.reads = 0

    async def read(self, n: int = -1) -> bytes:
        self.reads += 1
        await anyio.lowlevel.checkpoint()
        size = min(self._piece, len(self._data)) if n < 0 else min(n, self._piece)
        out, self._data = bytes(self._data[:size]), self._data[size:]
        return out


# -- OCI archives: order and sources (TV-63, IMP-3, IMP-5) -----------------------------------


@pytest.mark.parametrize("order", ["meta-last", "meta-first"])
async def test_tv63_oci_archive_loads_whatever_the_metadata_position(store, tmp_path, order):
    img = make_oci(["linux/amd64"], name="docker.io/lib/img:ok", order=order)
    images = await load(store, write(tmp_path, tar_bytes(img.members)))
    assert [(i.name, i.target.digest) for i in images] == [("docker.io/lib/img:ok", sha(img.index))]
    assert await image_map(store) == {"docker.io/lib/img:ok": sha(img.index)}
    assert images[0].target.media_type == oci.OCI_INDEX


@pytest.mark.parametrize("order", ["meta-last", "meta-first"])
async def test_tv63_stream_and_file_give_the_same_store_after_gc(tmp_path, order):
    img = make_oci(["linux/amd64", "linux/arm64/v8"], order=order)
    data = tar_bytes(img.members)
    path = write(tmp_path, data)
    states = []
    for i, source in enumerate([path, ChunkedReader(data)]):
        async with open_root(tmp_path / f"s{i}") as s:
            await load(s, source)
            await s.gc()
            states.append(await state(s))
    assert states[0] == states[1]
    _images, blobs = states[0]
    expected = {sha(img.index), *(sha(b) for p in img.platforms for b in p.blobs)}
    assert set(blobs) == expected  # index.json itself is garbage (GC-11)


async def test_gc7_labels_make_gc_keep_exactly_the_image_graph(store, tmp_path):
    img = make_oci(["linux/amd64", "linux/arm64"])
    await load(store, write(tmp_path, tar_bytes(img.members)))
    labels = {str(i.digest): dict(i.labels) for i in await store.content.walk()}
    amd = img.platform("linux/amd64")
    assert labels[sha(img.index)] == {
        "containerd.io/gc.ref.content.m.0": sha(img.platforms[0].manifest),
        "containerd.io/gc.ref.content.m.1": sha(img.platforms[1].manifest),
    }
    assert labels[sha(amd.manifest)] == {
        "containerd.io/gc.ref.content.config": sha(amd.config),
        "containerd.io/gc.ref.content.l.0": sha(amd.layers[0]),
    }
    report = await store.gc()
    assert report.removed == [sha(img.index_json)]


async def test_pipe_input_from_a_thread_fed_fd(store, tmp_path):
    img = make_oci(["linux/amd64"])
    data = tar_bytes(img.members)
    r, w = os.pipe()

    def feed() -> None:
        with open(w, "wb") as f:
            f.write(data)

    t = threading.Thread(target=feed)
    t.start()
    try:
        await load(store, r)
    finally:
        t.join()
        os.close(r)
    assert await image_map(store) == {"docker.io/library/img:1": sha(img.index)}


async def test_anyio_byte_receive_stream_source(store, tmp_path):
    img = make_oci(["linux/amd64"])
    data = tar_bytes(img.members)
    send, receive = anyio.create_memory_object_stream[bytes](4)

    class Bytes(anyio.abc.ByteReceiveStream):
        async def receive(self, max_bytes: int = 65536) -> bytes:
            return await receive.receive()

        async def aclose(self) -> None:
            await receive.aclose()

    async def produce() -> None:
        async with send:
            for i in range(0, len(data), 5000):
                await send.send(data[i : i + 5000])

    async with Bytes() as stream, anyio.create_task_group() as tg:
        tg.start_soon(produce)
        await load(store, stream)
    assert await image_map(store) == {"docker.io/library/img:1": sha(img.index)}


# -- names (TV-64, TV-74, IMP-11, IMP-15, LOAD-1) ---------------------------------------------


def two_ref_names(extra: tuple[str, ...] = ()) -> tuple[list[Member], dict[str, str]]:
    """An archive whose index.json entries only carry ``ref.name`` (EDGE-16)."""
    img = make_oci(["linux/amd64"], name=None)
    entry = json.loads(img.index_json)["manifests"][0]
    entries = []
    for ref in ("latest", "docker.io/lib/img:ok", *extra):
        entries.append({**entry, "annotations": {oci.ANNOTATION_REF_NAME: ref}})
    index_json = canon({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries})
    members = [
        m if m.name != "index.json" else Member("index.json", index_json) for m in img.members
    ]
    return members, {"target": sha(img.index)}


async def test_tv64_ref_names_without_translator_are_recorded_normalised(store, tmp_path):
    members, t = two_ref_names()
    images = await load(store, write(tmp_path, tar_bytes(members)))
    bare = "docker.io/library/latest:latest"  # IMG-7: the bare tag read as a reference
    assert [i.name for i in images] == [bare, "docker.io/lib/img:ok"]
    assert await image_map(store) == {bare: t["target"], "docker.io/lib/img:ok": t["target"]}


async def test_img7_a_name_that_is_no_reference_gives_only_the_dangling_record(store, tmp_path):
    img = make_oci(["linux/amd64"], name=None, ref_name="V1")
    images = await load(store, write(tmp_path, tar_bytes(img.members)))
    assert [i.name for i in images] == [f"moby-dangling@{sha(img.index)}"]


async def test_img7_a_familiar_image_name_retargets_the_normalised_record(store, tmp_path):
    """``io.containerd.image.name: x`` is ``docker.io/library/x:latest``; the old target stays."""
    old = make_oci(["linux/amd64"], name="docker.io/library/x:latest", seed="old")
    new = make_oci(["linux/amd64"], name="x", seed="new")
    await load(store, write(tmp_path, tar_bytes(old.members), "old.tar"))
    await load(store, write(tmp_path, tar_bytes(new.members), "new.tar"))
    assert await image_map(store) == {
        "docker.io/library/x:latest": sha(new.index),
        f"moby-dangling@{sha(old.index)}": sha(old.index),
    }


@pytest.mark.parametrize("how", ["string", "function"])
async def test_tv64_add_prefix_translator(store, tmp_path, how):
    members, _t = two_ref_names()
    name = "localhost:5000/myimage" if how == "string" else add_ref_prefix("localhost:5000/myimage")
    await load(store, write(tmp_path, tar_bytes(members)), name=name)
    assert sorted(await image_map(store)) == [
        "docker.io/lib/img:ok",
        "localhost:5000/myimage:latest",
    ]


async def test_tv64_filter_prefix_translator_drops_foreign_full_names(store, tmp_path):
    members, t = two_ref_names(("localhost:5000/myimage:old",))
    await load(
        store, write(tmp_path, tar_bytes(members)), name=filter_ref_prefix("localhost:5000/myimage")
    )
    names = sorted(n for n in await image_map(store) if not n.startswith("moby-dangling@"))
    assert names == ["localhost:5000/myimage:latest", "localhost:5000/myimage:old"]
    # the dropped entry has no name left, so LOAD-1 keeps its target as a dangling record
    assert f"moby-dangling@{t['target']}" in await image_map(store)


async def test_tv74_unnamed_entry_is_kept_as_a_dangling_record(store, tmp_path):
    img = make_oci(["linux/amd64"], name=None)
    images = await load(store, write(tmp_path, tar_bytes(img.members)))
    assert [i.name for i in images] == [f"moby-dangling@{sha(img.index)}"]
    await store.gc()
    assert sha(img.platforms[0].layers[0]) in await blob_set(store)  # GC keeps it (LOAD-1)


async def test_tv74_reimport_retargets_the_name_and_keeps_the_old_target_dangling(store, tmp_path):
    old = make_oci(["linux/amd64"], name="docker.io/library/x:1", seed="old")
    new = make_oci(["linux/amd64"], name="docker.io/library/x:1", seed="new")
    await load(store, write(tmp_path, tar_bytes(old.members), "old.tar"))
    first = await store.images.get("docker.io/library/x:1")
    await load(store, write(tmp_path, tar_bytes(new.members), "new.tar"))
    assert await image_map(store) == {
        "docker.io/library/x:1": sha(new.index),
        f"moby-dangling@{sha(old.index)}": sha(old.index),
    }
    again = await store.images.get("docker.io/library/x:1")
    assert again.created_at == first.created_at  # IMP-15: updated, not re-created
    await store.gc()
    assert sha(old.platforms[0].layers[0]) in await blob_set(store)


async def test_reimport_of_the_same_archive_adds_no_dangling_record(store, tmp_path):
    img = make_oci(["linux/amd64"])
    path = write(tmp_path, tar_bytes(img.members))
    await load(store, path)
    await load(store, path)
    assert await image_map(store) == {"docker.io/library/img:1": sha(img.index)}


# -- layout errors (TV-65, IMP-5/6, IMP-14) ---------------------------------------------------


async def test_tv65_unsupported_layout_version(store, tmp_path):
    img = make_oci(["linux/amd64"])
    members = [
        Member("oci-layout", b'{"imageLayoutVersion":"2.0.0"}') if m.name == "oci-layout" else m
        for m in img.members
    ]
    with pytest.raises(InvalidArgument, match=r"unsupported OCI version 2\.0\.0"):
        await load(store, write(tmp_path, tar_bytes(members)))
    assert await image_map(store) == {}


async def test_tv65_layout_without_index_json(store, tmp_path):
    img = make_oci(["linux/amd64"])
    members = [m for m in img.members if m.name != "index.json"]
    with pytest.raises(InvalidArgument, match=r"missing index\.json in OCI layout 1\.0\.0"):
        await load(store, write(tmp_path, tar_bytes(members)))


async def test_tv65_legacy_v1_archive_is_an_unrecognized_format(store, tmp_path):
    members = [
        Member("abc/json", b"{}"),
        Member("abc/layer.tar", b"x" * 100),
        Member("abc/VERSION", b"1.0"),
        Member("repositories", b'{"x":{"1":"abc"}}'),
    ]
    with pytest.raises(InvalidArgument, match="unrecognized image format"):
        await load(store, write(tmp_path, tar_bytes(members)))


async def test_imp14_empty_index_is_an_empty_walk(store, tmp_path):
    members = [
        Member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
        Member("index.json", canon({"schemaVersion": 2, "manifests": []})),
    ]
    with pytest.raises(NotFound, match="image might be filtered out"):
        await load(store, write(tmp_path, tar_bytes(members)))


# -- platform selection (TV-70, LOAD-2..4, EDGE-4/5/17/18) -----------------------------------


async def test_tv70_partial_archive_loads_with_default_skip_missing(store, tmp_path):
    img = make_oci(["linux/amd64", "linux/arm64"], omit=("linux/arm64",))
    images = await load(store, write(tmp_path, tar_bytes(img.members)))
    assert [i.target.digest for i in images] == [sha(img.index)]
    assert sha(img.platform("linux/arm64").manifest) not in await blob_set(store)


@pytest.mark.parametrize("stream", [False, True])
async def test_tv70_missing_manifest_without_skip_missing_is_not_found(store, tmp_path, stream):
    img = make_oci(["linux/amd64", "linux/arm64"], omit=("linux/arm64",))
    data = tar_bytes(img.members)
    source = ChunkedReader(data) if stream else write(tmp_path, data)
    m2 = sha(img.platform("linux/arm64").manifest)
    with pytest.raises(NotFound, match=f"content digest {m2}: not found"):
        await load(store, source, all_platforms=True, skip_missing=False)
    assert await image_map(store) == {}


async def test_tv70_missing_manifest_of_a_filtered_platform_is_never_read(store, tmp_path):
    img = make_oci(["linux/amd64", "linux/arm64"], omit=("linux/arm64",))
    images = await load(store, write(tmp_path, tar_bytes(img.members)), platforms=["linux/amd64"])
    assert [i.name for i in images] == ["docker.io/library/img:1"]


@pytest.mark.parametrize("stream", [False, True])
async def test_several_platforms_keep_exactly_their_subtrees(tmp_path, stream):
    img = make_oci(["linux/amd64", "linux/arm64/v8", "linux/s390x"])
    data = tar_bytes(img.members)
    async with open_root(tmp_path / "s") as s:
        source = ChunkedReader(data) if stream else write(tmp_path, data)
        await load(s, source, platforms=["linux/amd64", "linux/arm64/v8"])
        s390x = {sha(b) for b in img.platform("linux/s390x").blobs}
        if not stream:  # index-first: the filtered platform is never read (IMP, castar)
            assert not s390x & await blob_set(s)
        labels = (await s.content.info(sha(img.index))).labels
        assert sorted(labels.values()) == sorted(
            sha(img.platform(p).manifest) for p in ("linux/amd64", "linux/arm64/v8")
        )
        await s.gc()  # EDGE-17: a stream stored them, GC takes them
        kept = await blob_set(s)
        assert not s390x & kept
        for p in ("linux/amd64", "linux/arm64/v8"):
            assert {sha(b) for b in img.platform(p).blobs} <= kept


async def test_load3_requested_platform_absent(store, tmp_path):
    img = make_oci(["linux/amd64"])
    top = json.loads(img.index_json)
    top["manifests"][0]["platform"] = {"architecture": "amd64", "os": "linux"}
    members = [
        Member("index.json", canon(top)) if m.name == "index.json" else m for m in img.members
    ]
    with pytest.raises(NotFound) as err:
        await load(
            store, write(tmp_path, tar_bytes(members)), platforms=["linux/arm64", "linux/s390x"]
        )
    assert (
        "requested platform(s) ([linux/arm64 linux/s390x]) not found: image might be filtered out"
        in str(err.value)
    )


async def test_load3_requested_platform_found_but_content_missing(store, tmp_path):
    img = make_oci(["linux/amd64", "linux/arm64"], omit=("linux/arm64",))
    m2 = sha(img.platform("linux/arm64").manifest)
    with pytest.raises(NotFound) as err:
        await load(store, write(tmp_path, tar_bytes(img.members)), platforms=["linux/arm64"])
    assert (
        "requested platform(s) ([linux/arm64]) found, but some content is missing: "
        f"content digest {m2}: not found"
    ) in str(err.value)
    assert await image_map(store) == {}


async def test_load4_loaded_image_without_the_platform_content_fails_but_is_recorded(
    store, tmp_path
):
    img = make_oci(["linux/amd64", "linux/arm64"])
    arm = img.platform("linux/arm64")
    members = [m for m in img.members if m.name != blob_name(arm.layers[0])]
    with pytest.raises(NotFound) as err:
        await load(store, write(tmp_path, tar_bytes(members)), platforms=["linux/arm64"])
    assert (
        "image img:1 was loaded, but doesn't provide the requested platform ([linux/arm64])"
        in str(err.value)
    )
    assert await image_map(store) == {"docker.io/library/img:1": sha(img.index)}  # EDGE-18


async def test_edge4_attestations_kept_without_platforms_dropped_with_them(tmp_path):
    img = make_oci(["linux/amd64"])
    statement = b'{"_type":"https://in-toto.io/Statement/v0.1"}'
    att_config = b"{}"
    att = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": desc(oci.OCI_CONFIG, att_config),
            "layers": [desc(oci.IN_TOTO, statement)],
        }
    )
    index = json.loads(img.index)
    index["manifests"].append(
        desc(
            oci.OCI_MANIFEST,
            att,
            platform={"architecture": "unknown", "os": "unknown"},
            annotations={
                oci.ANNOTATION_REFERENCE_TYPE: "attestation-manifest",
                oci.ANNOTATION_REFERENCE_DIGEST: sha(img.platforms[0].manifest),
            },
        )
    )
    new_index = canon(index)
    top = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [
                desc(
                    oci.OCI_INDEX,
                    new_index,
                    annotations={oci.ANNOTATION_IMAGE_NAME: "docker.io/library/a:1"},
                )
            ],
        }
    )
    members = [m for m in img.members if m.name not in ("index.json", blob_name(img.index))]
    members += [Member(blob_name(b), b) for b in (new_index, att, att_config, statement)]
    members.append(Member("index.json", top))
    path = write(tmp_path, tar_bytes(members))
    for i, platforms in enumerate([None, ["linux/amd64"]]):
        async with open_root(tmp_path / f"s{i}") as s:
            await load(s, path, platforms=platforms)
            await s.gc()
            assert (sha(att) in await blob_set(s)) is (platforms is None)


async def test_edge5_nested_index_is_filtered_at_every_level(store, tmp_path):
    img = make_oci(["linux/amd64", "linux/arm64"])
    outer = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [desc(oci.OCI_INDEX, img.index)],
        }
    )
    top = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_INDEX,
            "manifests": [
                desc(
                    oci.OCI_INDEX,
                    outer,
                    annotations={oci.ANNOTATION_IMAGE_NAME: "docker.io/library/n:1"},
                )
            ],
        }
    )
    members = [m for m in img.members if m.name != "index.json"]
    members += [Member(blob_name(outer), outer), Member("index.json", top)]
    await load(store, write(tmp_path, tar_bytes(members)), platforms=["linux/arm64"])
    labels = (await store.content.info(sha(img.index))).labels
    assert list(labels.values()) == [sha(img.platform("linux/arm64").manifest)]
    assert dict((await store.content.info(sha(outer))).labels) == {
        "containerd.io/gc.ref.content.m.0": sha(img.index)
    } or dict((await store.content.info(sha(outer))).labels) == {
        "containerd.io/gc.ref.content.0": sha(img.index)
    }


# -- verification and failures leave the store as it was (TV-71, IMP-4, TAR-4) ---------------


async def assert_store_unchanged_after_gc(store: Root, before: set[str]) -> None:
    assert await image_map(store) == {}
    assert await store.leases.list() == []  # the import lease is gone
    await store.gc()
    assert await blob_set(store) == before
    assert await store.content.list_statuses() == []  # no ingest left behind


@pytest.mark.parametrize("stream", [False, True])
async def test_tv71_corrupt_blob_fails_with_digest_mismatch_and_no_image(store, tmp_path, stream):
    img = make_oci(["linux/amd64"])
    layer = img.platforms[0].layers[0]
    bad = b"b" + layer[1:]
    members = [Member(m.name, bad) if m.name == blob_name(layer) else m for m in img.members]
    data = tar_bytes(members)
    with pytest.raises(DigestMismatch) as err:
        await load(store, ChunkedReader(data) if stream else write(tmp_path, data))
    assert isinstance(err.value, FailedPrecondition)
    assert f"blob {blob_name(layer)}: unexpected digest {sha(bad)}, expected {sha(layer)}" in str(
        err.value
    )
    assert (err.value.expected, err.value.actual) == (sha(layer), sha(bad))
    await assert_store_unchanged_after_gc(store, set())


@pytest.mark.parametrize("stream", [False, True])
async def test_truncated_archive_is_malformed_and_leaves_nothing(store, tmp_path, stream):
    img = make_oci(["linux/amd64"], order="meta-first", layer_size=50_000)
    data = tar_bytes(img.members)
    cut = data[: len(data) - 1024 - 30_000]  # in the middle of the last blob's body
    with pytest.raises(MalformedArchive, match="truncated"):
        await load(store, ChunkedReader(cut) if stream else write(tmp_path, cut))
    await assert_store_unchanged_after_gc(store, set())


async def test_not_a_tar_is_malformed(store, tmp_path):
    with pytest.raises(MalformedArchive):
        await load(store, write(tmp_path, b"hello, this is not a tar archive" * 40))
    with pytest.raises(MalformedArchive, match="empty archive"):
        await load(store, ChunkedReader(b""))


class StallingReader:
    """Hands out ``data`` then blocks forever: a cancellation lands in mid-blob."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.stalled = anyio.Event()

    async def read(self, n: int = -1) -> bytes:
        if self._data:
            out, self._data = self._data[:n], self._data[n:]
            return out
        self.stalled.set()
        await anyio.sleep_forever()
        raise AssertionError


@pytest.mark.parametrize("compress", [None, "gzip"])
async def test_cancel_in_mid_blob_leaves_no_partial_blob(store, tmp_path, compress):
    img = make_oci(["linux/amd64"], order="meta-first", layer_size=3 << 20)
    data = tar_bytes(img.members)
    cut = data[: len(data) - (2 << 20)]
    if compress == "gzip":
        cut = gzip.compress(cut, compresslevel=1)[:-8]  # also no gzip trailer: never ends
    reader = StallingReader(cut)
    with anyio.move_on_after(10) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(load, store, reader)
            await reader.stalled.wait()
            await anyio.wait_all_tasks_blocked()  # load is waiting for more of the blob
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert (await store.content.list_statuses()) == []  # the ingest was aborted
    await assert_store_unchanged_after_gc(store, set())


async def test_cancel_during_an_index_first_file_copy(store, tmp_path):
    img = make_oci(["linux/amd64"], layers=6, layer_size=4 << 20)
    path = write(tmp_path, tar_bytes(img.members))
    seen: list[int] = []

    with anyio.CancelScope() as scope:

        def progress(done: int, total: int | None, entry: str) -> None:
            seen.append(done)
            if total and 0 < done < total:
                scope.cancel()

        await load(store, path, progress=progress)
    assert scope.cancelled_caught
    assert seen
    await assert_store_unchanged_after_gc(store, set())


async def test_blobs_already_stored_are_not_rewritten(store, tmp_path):
    img = make_oci(["linux/amd64"])
    path = write(tmp_path, tar_bytes(img.members))
    await load(store, path)
    layer = img.platforms[0].layers[0]
    before = store.content.path(sha(layer)).stat()
    for source in (path, ChunkedReader(path.read_bytes())):
        await load(store, source)
        after = store.content.path(sha(layer)).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_concurrent_imports_of_one_archive_both_succeed(store, tmp_path):
    img = make_oci(["linux/amd64", "linux/arm64"], layer_size=200_000)
    data = tar_bytes(img.members)
    path = write(tmp_path, data)
    async with anyio.create_task_group() as tg:  # ING-14: refs never collide
        tg.start_soon(load, store, path)
        tg.start_soon(load, store, ChunkedReader(data))
    assert await image_map(store) == {"docker.io/library/img:1": sha(img.index)}


# -- compression (TV-75, IMP-1) -----------------------------------------------------------------


def zstd_frames(data: bytes) -> bytes:
    """Two frames and a skippable frame in front (all must be read)."""
    c = zstandard.ZstdCompressor(level=1)
    half = len(data) // 2
    skippable = (0x184D2A50).to_bytes(4, "little") + (4).to_bytes(4, "little") + b"skip"
    return skippable + c.compress(data[:half]) + c.compress(data[half:])


@pytest.mark.parametrize("codec", ["gzip", "gzip-multimember", "zstd", "xz", "bzip2"])
@pytest.mark.parametrize("stream", [False, True])
async def test_tv75_compressed_archives_load_like_plain_ones(tmp_path, codec, stream):
    img = make_oci(["linux/amd64", "linux/arm64"], layer_size=300_000)
    data = tar_bytes(img.members)
    if codec == "gzip":
        packed = gzip.compress(data, compresslevel=1)
    elif codec == "gzip-multimember":
        packed = gzip.compress(data[:5000]) + gzip.compress(data[5000:])
    elif codec == "xz":
        packed = lzma.compress(data[:5000]) + lzma.compress(data[5000:])
    elif codec == "bzip2":
        packed = bz2.compress(data[:5000]) + bz2.compress(data[5000:])
    else:
        packed = zstd_frames(data)
    states = []
    for i, blob in enumerate([data, packed]):
        async with open_root(tmp_path / f"s{i}") as s:
            source = ChunkedReader(blob) if stream else write(tmp_path, blob, f"a{i}")
            await load(s, source)
            await s.gc()
            states.append(await state(s))
    assert states[0] == states[1]


@pytest.mark.parametrize("codec", ["gzip", "zstd", "xz", "bzip2"])
async def test_corrupt_compressed_archive_is_malformed(store, tmp_path, codec):
    img = make_oci(["linux/amd64"], layer_size=100_000)
    data = tar_bytes(img.members)
    pack = {"gzip": gzip.compress, "zstd": zstd_frames, "xz": lzma.compress, "bzip2": bz2.compress}
    packed = bytearray(pack[codec](data))
    packed[len(packed) // 2] ^= 0xFF
    packed[len(packed) // 2 + 1] ^= 0xFF
    with pytest.raises(MalformedArchive):
        await load(store, write(tmp_path, bytes(packed)))
    await assert_store_unchanged_after_gc(store, set())


# -- safety (EDGE-10, TAR-5, EDGE-13) ---------------------------------------------------------


@pytest.mark.parametrize("bad", ["../evil", "blobs/../../evil", "/abs/path", "/index.json"])
@pytest.mark.parametrize("stream", [False, True])
async def test_edge10_names_leaving_the_archive_root_are_refused(store, tmp_path, bad, stream):
    img = make_oci(["linux/amd64"])
    data = tar_bytes([Member(bad, b"x"), *img.members])
    with pytest.raises(MalformedArchive, match="unsafe tar entry name"):
        await load(store, ChunkedReader(data) if stream else write(tmp_path, data))
    assert not (tmp_path / "evil").exists()
    await assert_store_unchanged_after_gc(store, set())


async def test_tar5_hard_links_devices_and_fifos_are_ignored(store, tmp_path):
    img = make_oci(["linux/amd64"])
    layer = img.platforms[0].layers[0]
    extra = [
        Member("hard", type=tarfile.LNKTYPE, linkname=blob_name(layer)),
        Member("dev", type=tarfile.CHRTYPE),
        Member("blk", type=tarfile.BLKTYPE),
        Member("fifo", type=tarfile.FIFOTYPE),
        Member("./blobs/../blobs/sha256/", type=tarfile.DIRTYPE),
    ]
    for stream in (False, True):
        data = tar_bytes(extra + img.members)
        await load(store, ChunkedReader(data) if stream else write(tmp_path, data))
    assert await image_map(store) == {"docker.io/library/img:1": sha(img.index)}


@pytest.mark.parametrize("stream", [False, True])
async def test_max_size_refuses_larger_archives(store, tmp_path, stream):
    img = make_oci(["linux/amd64"], layer_size=100_000)
    data = tar_bytes(img.members)
    with pytest.raises(MalformedArchive, match="max_size"):
        await load(store, ChunkedReader(data) if stream else write(tmp_path, data), max_size=50_000)
    await load(store, write(tmp_path, data), max_size=len(data))


@pytest.mark.parametrize("stream", [False, True])
async def test_edge13_json_metadata_over_20_mib_is_refused(store, tmp_path, stream):
    layout = b'{"imageLayoutVersion":"1.0.0"}' + b" " * (oci.MAX_DOCUMENT)
    img = make_oci(["linux/amd64"])
    members = [Member("oci-layout", layout) if m.name == "oci-layout" else m for m in img.members]
    data = tar_bytes(members)
    with pytest.raises(InvalidArgument, match="exceeds"):
        await load(store, ChunkedReader(data, 1 << 20) if stream else write(tmp_path, data))


# -- tar dialects (TAR-4, EDGE-12) ------------------------------------------------------------


def sha512_layout() -> tuple[list[Member], str]:
    """A layout whose every blob is addressed by sha512: names need PAX or GNU long names."""

    def d512(data: bytes) -> str:
        return "sha512:" + hashlib.sha512(data).hexdigest()

    def n512(data: bytes) -> str:
        return "blobs/sha512/" + hashlib.sha512(data).hexdigest()

    layer = b"sha512 layer " * 1000
    config = canon({"architecture": "amd64", "os": "linux"})
    manifest = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": {"mediaType": oci.OCI_CONFIG, "digest": d512(config), "size": len(config)},
            "layers": [{"mediaType": oci.OCI_LAYER, "digest": d512(layer), "size": len(layer)}],
        }
    )
    index_json = canon(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": oci.OCI_MANIFEST,
                    "digest": d512(manifest),
                    "size": len(manifest),
                    "annotations": {oci.ANNOTATION_IMAGE_NAME: "docker.io/library/long:1"},
                }
            ],
        }
    )
    members = [Member(n512(b), b) for b in (layer, config, manifest)]
    members += [
        Member("index.json", index_json),
        Member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
    ]
    return members, d512(manifest)


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("stream", [False, True])
async def test_edge12_sha512_layout_with_pax_or_gnu_long_names(store, tmp_path, fmt, stream):
    members, manifest = sha512_layout()
    data = tar_bytes(members, fmt)
    images = await load(store, ChunkedReader(data) if stream else write(tmp_path, data))
    assert [(i.name, i.target.digest) for i in images] == [("docker.io/library/long:1", manifest)]
    await store.gc()
    assert len(await blob_set(store)) == 3


async def test_edge12_sha512_blob_is_verified_with_sha512(store, tmp_path):
    members, _ = sha512_layout()
    members[0] = Member(members[0].name, b"tampered" + members[0].data[8:])
    with pytest.raises(DigestMismatch, match="unexpected digest sha512:"):
        await load(store, write(tmp_path, tar_bytes(members)))


# -- progress ---------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_progress_reports_bytes_up_to_the_total(store, tmp_path, stream):
    img = make_oci(["linux/amd64"], layers=3, layer_size=1_500_000)
    data = tar_bytes(img.members)
    calls: list[tuple[int, int | None, str]] = []
    source = ChunkedReader(data, 1 << 20) if stream else write(tmp_path, data)
    await load(store, source, progress=lambda *a: calls.append(a))
    dones = [c[0] for c in calls]
    assert dones == sorted(dones)
    if stream:
        assert dones[-1] == len(data)
        assert all(c[1] is None for c in calls)
        assert len(calls) >= 4
    else:
        layers = sum(len(x) for x in img.platforms[0].layers)
        assert calls[-1][:2] == (dones[-1], dones[-1])
        assert dones[-1] >= layers


@pytest.mark.parametrize("stream", [False, True])
async def test_tar4_pax_record_over_1_mib_is_refused(store, tmp_path, stream):
    img = make_oci(["linux/amd64"])
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        info = tarfile.TarInfo("big-pax")
        info.pax_headers = {"comment": "x" * (1 << 20)}
        tf.addfile(info, io.BytesIO(b""))
    data = buf.getvalue()[:-1024] + tar_bytes(img.members)
    with pytest.raises(MalformedArchive, match="exceeds"):
        await load(store, ChunkedReader(data) if stream else write(tmp_path, data))


async def test_imp13_large_manifest_with_absent_layers_still_loads_and_labels(store, tmp_path):
    config = canon({"architecture": "amd64", "os": "linux"})
    layers = [
        {"mediaType": oci.OCI_LAYER, "digest": "sha256:" + f"{i:064x}", "size": 1}
        for i in range(4000)
    ]
    manifest = canon(
        {
            "schemaVersion": 2,
            "mediaType": oci.OCI_MANIFEST,
            "config": desc(oci.OCI_CONFIG, config),
            "layers": layers,
        }
    )
    assert len(manifest) > 256 << 10  # decoded in a worker thread
    entry = desc(oci.OCI_MANIFEST, manifest, annotations={oci.ANNOTATION_IMAGE_NAME: "x/big:1"})
    members = [
        Member(blob_name(config), config),
        Member(blob_name(manifest), manifest),
        Member("index.json", canon({"schemaVersion": 2, "manifests": [entry]})),
        Member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
    ]
    await load(store, write(tmp_path, tar_bytes(members)))
    labels = (await store.content.info(sha(manifest))).labels
    assert len(labels) == 4001
    assert labels["containerd.io/gc.ref.content.l.3999"] == layers[3999]["digest"]


# -- more sources and multi-image archives ------------------------------------------------------


async def test_async_file_objects_are_sources(store, tmp_path, anyio_backend):
    img = make_oci(["linux/amd64"])
    path = write(tmp_path, tar_bytes(img.members))
    f = await anyio.to_thread.run_sync(open, path, "rb")
    async with anyio.wrap_file(f) as af:
        await load(store, af)
    if anyio_backend == "trio":
        import trio  # noqa: TID251 - a trio file is a supported source

        async with await trio.open_file(path, "rb") as tf:
            await load(store, tf)
    else:
        import aiofiles  # noqa: TID251 - an aiofiles file is a supported source

        async with aiofiles.open(path, "rb") as af2:
            await load(store, af2)
    assert await image_map(store) == {"docker.io/library/img:1": sha(img.index)}


@pytest.mark.parametrize("stream", [False, True])
async def test_multi_image_archive_records_every_image(store, tmp_path, stream):
    a = make_oci(["linux/amd64", "linux/arm64"], name="docker.io/library/a:1", seed="a")
    b = make_oci(["linux/amd64"], name="docker.io/library/b:2", seed="b")
    entries = [json.loads(x.index_json)["manifests"][0] for x in (a, b)]
    index_json = canon({"schemaVersion": 2, "mediaType": oci.OCI_INDEX, "manifests": entries})
    blobs = {m.name: m for x in (a, b) for m in x.members if m.name.startswith("blobs/sha256/")}
    members = [*(blobs[n] for n in sorted(blobs)), Member("index.json", index_json)]
    members.append(Member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'))
    data = tar_bytes(members)
    images = await load(store, ChunkedReader(data) if stream else write(tmp_path, data))
    assert [(i.name, i.target.digest) for i in images] == [
        ("docker.io/library/a:1", sha(a.index)),
        ("docker.io/library/b:2", sha(b.index)),
    ]
    await store.gc()
    assert await blob_set(store) == {
        sha(x) for img in (a, b) for x in (img.index, *(y for p in img.platforms for y in p.blobs))
    }


# -- round trip with castar's own exporter (tests-roundtrip: load -> save -> load) -----------------


async def test_load_save_load_round_trip(tmp_path):
    from castar.engine.save import exporter

    img = make_oci(["linux/amd64", "linux/arm64"], order="meta-last")
    async with open_root(tmp_path / "a") as a:
        await load(a, write(tmp_path, tar_bytes(img.members)))
        await exporter.save(
            a, ["docker.io/library/img:1"], tmp_path / "saved.tar", exporter.SaveOptions()
        )
        await a.gc()
        first = await state(a)
    async with open_root(tmp_path / "b") as b:
        images = await load(b, tmp_path / "saved.tar")
        assert [(i.name, i.target.digest) for i in images] == [
            ("docker.io/library/img:1", sha(img.index))
        ]
        await b.gc()
        assert await state(b) == first


# -- properties: any chunking, any truncation (tests-properties) -----------------------------------

_PROP_IMG = make_oci(["linux/amd64", "linux/arm64"], layer_size=20_000, order="meta-last")
_PROP_DATA = tar_bytes(_PROP_IMG.members)


class PiecesReader:
    """Hands out the archive in the drawn piece sizes (cycled), never more than asked."""

    def __init__(self, data: bytes, pieces: list[int]) -> None:
        self._data = memoryview(data)
        self._pieces = pieces
        self._i = 0

    async def read(self, n: int = -1) -> bytes:
        size = self._pieces[self._i % len(self._pieces)]
        self._i += 1
        size = size if n < 0 else min(n, size)
        out, self._data = bytes(self._data[:size]), self._data[size:]
        return out


@settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(pieces=st.lists(st.integers(1, 70_000), min_size=1, max_size=5))
async def test_any_chunking_of_a_stream_loads_the_same_images(tmp_path, pieces):
    with tempfile.TemporaryDirectory(dir=tmp_path) as root:
        async with open_root(root) as s:
            images = await load(s, PiecesReader(_PROP_DATA, pieces))
            assert [(i.name, i.target.digest) for i in images] == [
                ("docker.io/library/img:1", sha(_PROP_IMG.index))
            ]


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.integers(0, len(_PROP_DATA) - 1), stream=st.booleans())
async def test_a_truncated_archive_fails_cleanly_or_loads_whole(tmp_path, cut, stream):
    data = _PROP_DATA[:cut]
    with tempfile.TemporaryDirectory(dir=tmp_path) as root:
        async with open_root(root) as s:
            source: object = PiecesReader(data, [30_000])
            if not stream:
                source = Path(root) / "cut.tar"
                source.write_bytes(data)
            try:
                images = await load(s, source)
            except (MalformedArchive, InvalidArgument, NotFound):
                await assert_store_unchanged_after_gc(s, set())
            else:  # only the end-of-archive blocks were cut
                assert cut >= len(_PROP_DATA) - 10240
                assert [i.target.digest for i in images] == [sha(_PROP_IMG.index)]


async def test_cancel_while_inflating_a_compressed_file(store, tmp_path):
    img = make_oci(["linux/amd64"], layers=2, layer_size=3 << 20, order="meta-first")
    path = write(tmp_path, gzip.compress(tar_bytes(img.members), compresslevel=1), "a.tar.gz")
    with anyio.CancelScope() as scope:
        await load(store, path, progress=lambda done, total, entry: scope.cancel())
    assert scope.cancelled_caught
    await assert_store_unchanged_after_gc(store, set())


# -- descriptors checked against the archive (IMP-16), same verdict from a file and a pipe ---------

_CFG = canon({"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": []}})


def checked_layer(*, big: bool = False) -> bytes:
    """The layer of ``checked``'s archive."""
    return (b"layer bytes " * (120_000 if big else 300))[: (1 << 20) + 7 if big else 3000]


def checked(manifest_edit: Any = None, entry_edit: Any = None, *, big: bool = False) -> bytes:
    """A one-manifest OCI archive, its manifest and index.json entry edited before hashing."""
    layer = checked_layer(big=big)
    manifest = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": desc(oci.OCI_CONFIG, _CFG),
        "layers": [desc(oci.OCI_LAYER, layer)],
    }
    if manifest_edit:
        manifest_edit(manifest)
    data = canon(manifest)
    entry = desc(oci.OCI_MANIFEST, data, annotations={oci.ANNOTATION_IMAGE_NAME: "docker.io/x/y:1"})
    if entry_edit:
        entry_edit(entry)
    index = canon({"schemaVersion": 2, "manifests": [entry]})
    blobs = [Member(blob_name(b), b) for b in (data, _CFG, layer)]
    return tar_bytes(
        [
            Member("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
            *blobs,
            Member("index.json", index),
        ]
    )


def _layer_size(n: int | None) -> Any:
    def edit(m: dict[str, Any]) -> None:
        m["layers"][0]["size"] = m["layers"][0]["size"] + n if n is not None else 0

    return edit


def _set(where: str, key: str, value: object) -> Any:
    return lambda d: (d[where][0] if where else d).update({key: value})


_BAD: dict[str, tuple[bytes, type[Exception], str]] = {
    "layer-huge": (
        checked(_set("layers", "size", 10**15)),
        castar.SizeMismatch,
        "1000000000000000",
    ),
    "layer+1": (checked(_layer_size(1)), castar.SizeMismatch, "3001"),
    "layer-1": (checked(_layer_size(-1)), castar.SizeMismatch, "2999"),
    "layer-0": (checked(_layer_size(None)), castar.SizeMismatch, "has 3000"),
    "big-layer+1": (checked(_layer_size(1), big=True), castar.SizeMismatch, "1048584"),
    "config+5": (
        checked(lambda m: m["config"].update(size=len(_CFG) + 5)),
        castar.SizeMismatch,
        str(len(_CFG) + 5),
    ),
    "entry+3": (
        checked(entry_edit=lambda e: e.update(size=e["size"] + 3)),
        castar.SizeMismatch,
        "index.json",
    ),
    "layer-without-size": (
        checked(lambda m: m["layers"][0].pop("size")),
        castar.MalformedManifest,
        "size: missing",
    ),
    "entry-is-a-config": (
        checked(entry_edit=lambda e: e.update(mediaType=oci.OCI_CONFIG)),
        castar.UnsupportedMediaType,
        "not a manifest or index",
    ),
    "sha384-entry": (
        checked(entry_edit=lambda e: e.update(digest="sha384:" + "a" * 96)),
        InvalidArgument,
        "unsupported digest algorithm sha384",
    ),
    "sha256+b64u-layer": (
        checked(
            _set("layers", "digest", "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564")
        ),
        InvalidArgument,
        "unsupported digest algorithm sha256+b64u",
    ),
}


def _twice(data: bytes, bad_first: bool) -> bytes:
    """The archive of ``data`` with the layer member given twice, one copy corrupt."""
    members = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for info in tf.getmembers():
            body = tf.extractfile(info)
            members.append(Member(info.name, body.read() if body else b""))
    layer = next(m for m in members if len(m.data) >= 3000)
    copies = [layer, Member(layer.name, b"X" + layer.data[1:])]
    at = members.index(layer)
    members[at : at + 1] = copies[::-1] if bad_first else copies
    return tar_bytes(members)


for _big in (False, True):
    for _first in (False, True):
        _BAD[f"twice-{'big' if _big else 'small'}-{'bad' if _first else 'good'}-first"] = (
            _twice(checked(big=_big), _first),
            castar.DigestMismatch,
            ": unexpected digest sha256:",
        )


@pytest.mark.parametrize("case", sorted(_BAD))
@pytest.mark.parametrize("stream", [False, True])
async def test_imp16_bad_archives_fail_alike_from_a_file_and_a_pipe(store, tmp_path, case, stream):
    data, error, text = _BAD[case]
    with pytest.raises(error, match=re.escape(text)):
        await load(store, ChunkedReader(data) if stream else write(tmp_path, data))
    assert await store.images.list() == []


async def test_imp16_size_mismatch_names_the_descriptor_and_both_sizes(store, tmp_path):
    data, _, _ = _BAD["config+5"]
    with pytest.raises(castar.SizeMismatch) as err:
        await load(store, write(tmp_path, data))
    n = len(_CFG)
    assert f"descriptor {sha(_CFG)} ({oci.OCI_CONFIG}) has size {n + 5}" in str(err.value)
    assert f"blob has {n}" in str(err.value)
    assert (err.value.expected, err.value.actual) == (n + 5, n)


def _with_unused(data: bytes, *bodies: bytes) -> tuple[bytes, list[str]]:
    """``data`` with blob members no image uses, each named for other bytes, first in the tar."""
    members = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for info in tf.getmembers():
            body = tf.extractfile(info)
            members.append(Member(info.name, body.read() if body else b""))
    bad = [Member(blob_name(b"promised " + body), body) for body in bodies]
    return tar_bytes([members[0], *bad, *members[1:]]), [m.name for m in bad]


_UNUSED = {
    "small": (b"s" * 500,),
    "two-small": (b"s" * 500, b"t" * 700),  # one batch: each mismatch is set aside in turn
    "big": (b"b" * ((1 << 20) + 3),),
}


@pytest.mark.parametrize("case", sorted(_UNUSED))
@pytest.mark.parametrize("stream", [False, True])
async def test_imp4_an_unused_corrupt_blob_member_loads_alike_from_a_file_and_a_pipe(
    store, tmp_path, case, stream
):
    """A file's load never reads a member no image needs; a pipe's hashes it as it passes and
    keeps the mismatch until the walk asks for it. Same bytes, same verdict: the image loads,
    the corrupt member is not stored and no ingest of it is left."""
    data, names = _with_unused(checked(), *_UNUSED[case])
    loaded = await load(store, ChunkedReader(data) if stream else write(tmp_path, data))
    assert [i.name for i in loaded] == ["docker.io/x/y:1"]
    stored = await blob_set(store)
    assert {sha(_CFG), sha(checked_layer())} <= stored
    assert not {"sha256:" + n.rsplit("/", 1)[1] for n in names} & stored
    assert await store.content.list_statuses() == []
    assert await store.leases.list() == []


@pytest.mark.parametrize("case", ["good", "good-big", *sorted(_BAD)])
async def test_what_a_load_lists_as_available_it_can_save(tmp_path, case):
    from castar.engine.images import ImageService
    from castar.engine.save import exporter

    data = {"good": checked(), "good-big": checked(big=True)}.get(case) or _BAD[case][0]
    async with open_root(tmp_path / "s") as s:
        with contextlib.suppress(castar.CastarError):
            await load(s, write(tmp_path, data))
        for tree in await ImageService(s.images, s.content).tree():
            for row in tree.manifests:
                if row.available:
                    for name in tree.names:
                        await exporter.save(s, [name], tmp_path / "out.tar", exporter.SaveOptions())
