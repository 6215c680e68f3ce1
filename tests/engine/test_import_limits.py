"""Loads that cannot fill the disk, leave nothing the selection does not use and nothing when
they fail (LOAD-7, LOAD-8, LOAD-10); a blob member given twice (IMP-3).

Archives are generated here (engine.synth, tarfile); sources are files and non-seekable streams.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from castar._cli import main
from castar.engine import synth
from castar.engine.load import archive, importer
from castar.engine.load.importer import LoadOptions
from castar.store import ContentStore, Image, Root, open_root
from castar.store.content import Descriptor
from castar.store.digest import compute
from castar.store.errors import DataLoss, DigestMismatch, MalformedArchive, Unavailable
from castar.store.sqlite import SQLiteMetadataDB
from castar.store.verify import verify

BIG = 2 << 20  # over the 1 MiB small-member limit: these go through an ingest
SPEC = synth.SynthSpec(
    name="limits/img:1",
    platforms=("linux/amd64", "linux/arm64", "linux/arm/v7"),
    layers=2,
    layer_size=BIG,
    order="containerd",  # blobs first: a stream meets every blob before index.json
)


async def load(root: Root, source: object, **options: Any) -> list[Image]:
    roles = (root.content, root.images, root.leases)
    return await importer.load(*roles, source, LoadOptions.parse(**options))


class Stream:
    """A non-seekable source: an object with ``async read(n)``."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def read(self, n: int) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        await anyio.lowlevel.checkpoint()
        return bytes(out)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store") as s:
        yield s


def synth_bytes(spec: synth.SynthSpec) -> bytes:
    buf = io.BytesIO()
    synth.write(spec, buf)
    return buf.getvalue()


def source(tmp_path: Path, data: bytes, stream: bool) -> object:
    """The archive as a non-seekable stream, or as a file."""
    if not stream:
        (tmp_path / "archive.tar").write_bytes(data)
    return Stream(data) if stream else tmp_path / "archive.tar"


async def blobs(root: Root) -> set[str]:
    return {str(i.digest) for i in await root.content.walk()}


def ingest_dirs(root: Root) -> list[str]:
    ingest = root.root / "ingest"  # made by the first ingest
    return [p.name for p in ingest.iterdir()] if ingest.exists() else []


# -- LOAD-8: a filtered load from a stream leaves what the same load from a file leaves -------


async def test_load8_filtered_stream_load_leaves_the_file_loads_blob_set(tmp_path):
    data = synth_bytes(SPEC)
    sets = []
    for stream in (False, True):
        async with open_root(tmp_path / f"s{stream}") as root:
            images = await load(root, source(tmp_path, data, stream), platforms="linux/arm64")
            assert [i.name for i in images] == ["docker.io/limits/img:1"]
            sets.append(await blobs(root))
            assert await root.leases.list() == []
            index_json = str(compute(synth.plan(SPEC).index_json))
            assert (await root.gc()).removed == [index_json]  # only the archive's index (GC-11)
    assert sets[0] == sets[1]
    assert 0 < len(sets[0]) < len(synth.plan(SPEC).blobs)


async def test_load8_blobs_other_images_leases_or_the_store_hold_are_kept(store, tmp_path):
    # amd64 loaded from a file; arm/v7's config stored before (unused by any image); a lease
    # names one arm/v7 layer, an open ingest expects the other. A filtered stream load of
    # arm64 then drops only arm/v7's manifest.
    data = synth_bytes(SPEC)
    await load(store, source(tmp_path, data, False), platforms="linux/amd64")
    plan = synth.plan(SPEC)
    v7 = plan.platforms[2]
    config = b"".join(plan.blob_chunks(v7.config.digest))
    await store.content.write_blob(config, digest=v7.config.digest)
    before = await blobs(store)
    leased, ingested = str(v7.layers[0].digest), str(v7.layers[1].digest)
    async with store.leases.hold() as lease, store.content.writer("other", digest=ingested):
        await store.leases.add_resources(lease.id, "content", [leased])
        await load(store, Stream(data), platforms="linux/arm64")
        after = await blobs(store)
    arm64 = plan.platforms[1]
    assert before | {leased, ingested} <= after  # an open ingest expects the second layer
    assert {str(d.digest) for d in (arm64.manifest, arm64.config, *arm64.layers)} <= after
    assert str(v7.manifest.digest) not in after  # written by the stream, unused: gone
    assert str(plan.index.digest) in after  # the image's own index


# -- LOAD-7: a member never fills the disk; --max-size from member headers ------------------


@pytest.mark.parametrize("stream", [False, True])
async def test_load7_a_member_over_the_free_space_is_refused_before_a_byte(
    store, tmp_path, monkeypatch, stream
):
    free = BIG + archive.RESERVE - 1  # one byte short for any 2 MiB layer
    monkeypatch.setattr(ContentStore, "free_space", lambda self: free)
    with pytest.raises(Unavailable) as err:
        await load(store, source(tmp_path, synth_bytes(SPEC), stream))
    message = str(err.value)
    assert message.startswith("blob blobs/sha256/")
    assert f"of {BIG} bytes" in message
    assert f"{archive.RESERVE}-byte reserve" in message
    assert f"({free} bytes free)" in message
    assert ingest_dirs(store) == []  # the partial ingest is gone when the load returns
    assert await store.images.list() == []


@pytest.mark.parametrize("stream", [False, True])
async def test_load7_a_truncated_member_is_refused_as_such_before_the_free_space(
    store, tmp_path, monkeypatch, stream
):
    # The same bytes, the same verdict: a file sees the member end past its end before any
    # copy; a stream reads the member on without writing it once the free space is short.
    free = BIG + archive.RESERVE - 1
    monkeypatch.setattr(ContentStore, "free_space", lambda self: free)
    data = synth_bytes(SPEC)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        first = next(m for m in tf.getmembers() if m.size == BIG)
    cut = data[: first.offset_data + BIG // 2]
    with pytest.raises(MalformedArchive, match=r"^truncated archive: ") as err:
        await load(store, source(tmp_path, cut, stream))
    assert err.value.member == first.name
    assert ingest_dirs(store) == []
    assert await store.images.list() == []


@pytest.mark.parametrize("stream", [False, True])
async def test_load7_free_space_is_checked_again_as_a_member_streams(
    store, tmp_path, monkeypatch, stream
):
    # Another writer fills the disk while a 72 MiB member is being written: the load stops
    # within the next check, long before the member's end.
    member = 72 << 20
    spec = synth.SynthSpec(platforms=("linux/amd64",), layers=1, layer_size=member)
    calls: list[int] = []

    def free_space(self: ContentStore) -> int:
        calls.append(1)
        return (1 << 40) if len(calls) == 1 else archive.RESERVE

    monkeypatch.setattr(ContentStore, "free_space", free_space)
    with pytest.raises(Unavailable, match="still to write"):
        await load(store, source(tmp_path, synth_bytes(spec), stream))
    assert len(calls) == 2
    assert ingest_dirs(store) == []


async def test_load7_max_size_refuses_a_stream_at_the_member_header(store, monkeypatch):
    opened: list[str] = []
    real = ContentStore.writer

    def writer(self: ContentStore, ref: str, **kw: Any) -> Any:
        opened.append(ref)
        return real(self, ref, **kw)

    monkeypatch.setattr(ContentStore, "writer", writer)
    data = synth_bytes(SPEC)
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        second = [m for m in tf.getmembers() if m.size == BIG][1]
    limit = second.offset_data + BIG // 2  # the archive is read 1 MiB past it before its end
    with pytest.raises(MalformedArchive, match=f"larger than the {limit}-byte limit"):
        await load(store, Stream(data), max_size=limit)
    assert len(opened) == 1  # the second layer's header is over the limit: never opened
    assert await store.images.list() == []


def test_load7_cli_max_size_takes_human_sizes(tmp_path, capsys):
    path = tmp_path / "archive.tar"
    path.write_bytes(synth_bytes(SPEC))
    root = str(tmp_path / "cli")
    assert main(["--root", root, "load", "-q", "-i", str(path), "--max-size", "1M"]) == 4
    assert "larger than the 1048576-byte limit (max_size)" in capsys.readouterr().err
    for bad, why in (("ten", 'bad size "ten"'), ("9" * 400 + "G", "is too large")):
        other = str(tmp_path / "unused")  # a usage error (ERR-8): no store is opened
        with pytest.raises(SystemExit) as exit_:
            main(["--root", other, "load", "-q", "-i", str(path), "--max-size", bad])
        assert exit_.value.code == 2
        assert why in capsys.readouterr().err
        assert not os.path.exists(other)
    assert main(["--root", root, "load", "-q", "-i", str(path), "--max-size", "10G"]) == 0
    assert "Loaded image: limits/img:1" in capsys.readouterr().out


# -- LOAD-9: members no image can use are streamed past --------------------------------------


def with_extra(data: bytes, extra: dict[str, bytes]) -> bytes:
    """``data`` with ``extra`` members added right after its ``oci-layout``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as tf:
        for m in src.getmembers():
            tf.addfile(m, src.extractfile(m) if m.isfile() else None)
            if m.name == "oci-layout":
                for name, body in extra.items():
                    tf.addfile(_info(name, body), io.BytesIO(body))
    return out.getvalue()


def _info(name: str, body: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = len(body)
    return info


@pytest.mark.parametrize("stream", [False, True])
async def test_load9_non_blob_members_after_an_oci_layout_are_never_written(
    store, tmp_path, monkeypatch, stream
):
    junk = {"junk/big.bin": b"j" * BIG, "repositories": b'{"a":{"1":"x"}}', "notes.txt": b"hi"}
    data = with_extra(synth_bytes(synth.SynthSpec(platforms=("linux/amd64",), layers=1)), junk)
    written: list[object] = []  # ingest refs (they carry the member name) and small bodies
    real_writer, real_small = ContentStore.writer, ContentStore.write_small_blobs

    def writer(self: ContentStore, ref: str, **kw: Any) -> Any:
        written.append(ref)
        return real_writer(self, ref, **kw)

    async def small(self: ContentStore, blobs: Any, **kw: Any) -> Any:
        blobs = list(blobs)
        written.extend(bytes(b.data() if callable(b.data) else b.data) for b in blobs)
        return await real_small(self, blobs, **kw)

    monkeypatch.setattr(ContentStore, "writer", writer)
    monkeypatch.setattr(ContentStore, "write_small_blobs", small)
    images = await load(store, source(tmp_path, data, stream))
    assert [i.name for i in images] == ["docker.io/library/synth:latest"]
    assert not any("junk" in str(w) for w in written)
    assert junk["repositories"] not in written
    assert junk["notes.txt"] not in written


# -- many records, many members: batched (issue 15's time blow-ups) -------------------------


def many_names(n: int) -> bytes:
    """An OCI archive whose index.json gives one small manifest ``n`` names."""
    spec = synth.SynthSpec(platforms=("linux/amd64", "linux/arm64"), layers=1, layer_size=100)
    data = synth_bytes(spec)
    plan = synth.plan(spec)
    entry = {"mediaType": plan.index.media_type, "digest": plan.index.digest}
    entries = [
        {**entry, "size": plan.index.size, "annotations": {"io.containerd.image.name": f"m/x:{i}"}}
        for i in range(n)
    ]
    index = json.dumps({"schemaVersion": 2, "manifests": entries}).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(data)) as src, tarfile.open(fileobj=out, mode="w") as tf:
        for m in src.getmembers():
            if m.name == "index.json":
                tf.addfile(_info(m.name, index), io.BytesIO(index))
            elif m.name != "manifest.json":
                tf.addfile(m, src.extractfile(m) if m.isfile() else None)
    return out.getvalue()


@pytest.mark.parametrize("stream", [False, True])
async def test_imp15_many_image_records_are_written_in_one_transaction(
    store, tmp_path, monkeypatch, stream
):
    n = 1_000
    writes: list[str] = []
    real = SQLiteMetadataDB.write

    async def write(self: SQLiteMetadataDB, fn: Any, *args: Any, **kw: Any) -> Any:
        writes.append(fn.__name__)
        return await real(self, fn, *args, **kw)

    monkeypatch.setattr(SQLiteMetadataDB, "write", write)
    images = await load(store, source(tmp_path, many_names(n), stream))
    assert len(images) == n
    assert len(await store.images.list()) == n
    assert [w for w in writes if w.startswith("image")] == ["image_put_many"]
    writes.clear()
    await load(store, source(tmp_path, many_names(n), stream))  # a reload re-targets them all
    assert [w for w in writes if w.startswith("image")] == ["image_put_many"]


async def test_many_empty_members_from_a_stream_are_written_once_a_batch(store, monkeypatch):
    # Before the oci-layout nothing tells a stream which members are unused (LOAD-9): 2,000
    # empty ones are stored, but the same bytes only once per batch, and dropped at the end.
    n = 2_000
    data = synth_bytes(synth.SynthSpec(platforms=("linux/amd64",), layers=1, layer_size=100))
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for i in range(n):
            tf.addfile(_info(f"e/{i}", b""), io.BytesIO(b""))
        with tarfile.open(fileobj=io.BytesIO(data)) as src:
            for m in src.getmembers():
                tf.addfile(m, src.extractfile(m) if m.isfile() else None)
    sizes: list[int] = []
    real = ContentStore.write_small_blobs

    async def small(self: ContentStore, blobs: Any, **kw: Any) -> Any:
        blobs = list(blobs)
        sizes.append(len(blobs))
        return await real(self, blobs, **kw)

    monkeypatch.setattr(ContentStore, "write_small_blobs", small)
    images = await load(store, Stream(out.getvalue()))
    assert [i.name for i in images] == ["docker.io/library/synth:latest"]
    assert sum(sizes) <= n // archive.BATCH_ENTRIES + 1 + len(synth.plan(SPEC).blobs)
    assert str(compute(b"")) not in await blobs(store)  # unused, new: gone (LOAD-8)


async def test_imp15_put_many_keeps_labels_and_created_at_like_update(store):
    t1 = Descriptor("application/vnd.oci.image.index.v1+json", compute(b"1"), 10)
    t2 = Descriptor("application/vnd.oci.image.index.v1+json", compute(b"2"), 10)
    labels = {"k": "v", "containerd.io/gc.ref.content.m": str(compute(b"3"))}
    old = await store.images.create("x", t1, labels=labels)
    kept = (str(compute(b"4")), t1, {"a": "b"})
    put = await store.images.put_many([("x", t2), ("y", t1), ("y", t2)], keep=[kept, ("x", t1, {})])
    assert [(i.name, i.target.digest) for i in put] == [
        ("x", t2.digest),
        ("y", t1.digest),
        ("y", t2.digest),
    ]
    x, y = await store.images.get("x"), await store.images.get("y")
    assert (x.target.digest, x.labels, x.created_at) == (t2.digest, labels, old.created_at)
    assert (y.target.digest, y.labels) == (t2.digest, {})
    assert (await store.images.get(kept[0])).labels == {"a": "b"}


# -- a load that fails: one castar error, no record, its space given back (LOAD-10) ---------

SMALL = synth.SynthSpec(
    name="limits/small:1", platforms=("linux/amd64", "linux/arm64"), layers=3, layer_size=4096
)


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_fsync_is_one_data_loss_naming_the_blob(
    store, tmp_path, monkeypatch, stream
):
    # Every blob's fdatasync fails, in each of the sync's threads: one error, not a group.
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(DataLoss, match=r"^syncing .*/blobs/sha256/[0-9a-f]{64}: injected") as err:
        await load(store, source(tmp_path, synth_bytes(SMALL), stream))
    assert isinstance(err.value.__cause__, OSError)
    assert await store.images.list() == []
    assert await store.content.walk() == []  # LOAD-10
    monkeypatch.undo()
    images = await load(store, source(tmp_path, synth_bytes(SMALL), stream))  # a retry loads it
    assert [i.name for i in images] == ["docker.io/limits/small:1"]


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_load10_a_failed_load_deletes_what_it_created_and_nothing_else(
    store, tmp_path, monkeypatch, stream, how
):
    # The second big member's free-space check fails or cancels the load. Kept: a layer
    # stored before, one another lease names, one an open ingest expects.
    plan = synth.plan(SPEC)
    amd64, arm64, _ = plan.platforms
    stored = amd64.layers[0].digest
    await store.content.write_blob(b"".join(plan.blob_chunks(stored)), digest=stored)
    leased, ingested = str(arm64.layers[0].digest), str(arm64.config.digest)
    checks: list[str] = []
    scope = anyio.CancelScope()

    def room(self: archive.Session, entry: object, left: int) -> None:
        checks.append(str(entry))
        if len(checks) == 2 and how == "cancel":
            anyio.from_thread.run_sync(scope.cancel)
        elif len(checks) == 2:
            raise Unavailable("injected")

    monkeypatch.setattr(archive.Session, "room", room)
    async with store.leases.hold() as lease, store.content.writer("other", digest=ingested):
        await store.leases.add_resources(lease.id, "content", [leased])
        with scope, pytest.raises(Unavailable) if how == "error" else contextlib.nullcontext():
            await load(store, source(tmp_path, synth_bytes(SPEC), stream))
        assert scope.cancelled_caught == (how == "cancel")
        assert str(stored) in await blobs(store)
        assert await blobs(store) <= {str(stored), leased, ingested}
        assert [s.ref for s in await store.content.list_statuses()] == ["other"]
        assert [x.id for x in await store.leases.list()] == [lease.id]
    assert await store.images.list() == []
    monkeypatch.undo()
    images = await load(store, source(tmp_path, synth_bytes(SPEC), stream))
    assert [i.name for i in images] == ["docker.io/limits/img:1"]


# -- IMP-3: a blob member given twice ---------------------------------------------------------


def twice(spec: synth.SynthSpec, bad: str) -> tuple[bytes, str]:
    """The archive with its first layer member given twice; ``bad`` names the changed copy."""
    layer = synth.plan(spec).platforms[0].layers[0]
    name = f"blobs/sha256/{layer.digest.encoded}"
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=io.BytesIO(synth_bytes(spec))) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for m in src:
            if m.name != name:
                dst.addfile(m, src.extractfile(m) if m.isfile() else None)
                continue
            body = src.extractfile(m).read()  # type: ignore[union-attr]
            other = bytes(len(body))
            for copy in (other if bad == "first" else body, other if bad == "second" else body):
                dst.addfile(m, io.BytesIO(copy))
    return out.getvalue(), name


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("size", [4096, 2 << 20])
async def test_imp3_an_identical_second_copy_of_a_blob_is_accepted(store, tmp_path, stream, size):
    spec = synth.SynthSpec(name="limits/twice:1", platforms=("linux/amd64",), layer_size=size)
    data, _ = twice(spec, bad="none")
    images = await load(store, source(tmp_path, data, stream))
    assert [i.name for i in images] == ["docker.io/limits/twice:1"]
    assert not (await verify(store.content)).problems


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("size", [4096, 2 << 20])
@pytest.mark.parametrize("bad", ["first", "second"])
async def test_imp3_a_differing_copy_of_a_blob_is_a_digest_mismatch(
    store, tmp_path, stream, size, bad
):
    spec = synth.SynthSpec(name="limits/twice:1", platforms=("linux/amd64",), layer_size=size)
    data, name = twice(spec, bad=bad)
    zeros = str(compute(bytes(size)))
    with pytest.raises(DigestMismatch) as err:
        await load(store, source(tmp_path, data, stream))
    want = f"blob {name}: unexpected digest {zeros}, expected sha256:{name.rsplit('/', 1)[1]}"
    assert str(err.value).startswith(want)
    assert await store.images.list() == []
    assert await store.content.walk() == []  # LOAD-10
