"""Importer (load): OCI archives from files and streams, verification, selection (SEMANTICS §15)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from castar.engine import oci
from castar.engine.importer import load
from castar.engine.platforms import pinned_host
from castar.store import Store, open_store

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
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with open_store(tmp_path / "store") as s:
        yield s


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with pinned_host("linux/amd64"):  # SEMANTICS §18 convention
        yield


async def blob_set(store: Store) -> set[str]:
    return {str(i.digest) for i in await store.content.walk()}


async def image_map(store: Store) -> dict[str, str]:
    return {i.name: str(i.target.digest) for i in await store.images.list()}


async def state(store: Store) -> tuple[dict[str, str], dict[str, dict[str, str]]]:
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
        async with open_store(tmp_path / f"s{i}") as s:
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
