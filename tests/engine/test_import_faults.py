"""A load that fails: one castar error, no record, its space given back (LOAD-10).

Archives are generated here (engine.synth); sources are files and non-seekable streams.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from castar.engine import synth
from castar.engine.load import archive, importer
from castar.engine.load.importer import LoadOptions
from castar.store import Image, Root, open_root
from castar.store.digest import compute
from castar.store.errors import DataLoss, DigestMismatch, Unavailable
from castar.store.verify import verify

SPEC = synth.SynthSpec(
    name="faults/img:1", platforms=("linux/amd64", "linux/arm64"), layers=3, layer_size=4096
)
BIG = synth.SynthSpec(
    name="faults/big:1",
    platforms=("linux/amd64", "linux/arm64"),
    layers=2,
    layer_size=2 << 20,  # over the 1 MiB small-member limit: these go through an ingest
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


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_fsync_is_one_data_loss_naming_the_blob(
    store, tmp_path, monkeypatch, stream
):
    # Every blob's fdatasync fails, in each of the sync's threads: one error, not a group.
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(DataLoss, match=r"^syncing .*/blobs/sha256/[0-9a-f]{64}: injected") as err:
        await load(store, source(tmp_path, synth_bytes(SPEC), stream))
    assert isinstance(err.value.__cause__, OSError)
    assert await store.images.list() == []
    assert await store.content.walk() == []  # LOAD-10
    monkeypatch.undo()
    images = await load(store, source(tmp_path, synth_bytes(SPEC), stream))  # a retry loads it
    assert [i.name for i in images] == ["docker.io/faults/img:1"]


async def blobs(root: Root) -> set[str]:
    return {str(i.digest) for i in await root.content.walk()}


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("how", ["error", "cancel"])
async def test_load10_a_failed_load_deletes_what_it_created_and_nothing_else(
    store, tmp_path, monkeypatch, stream, how
):
    # The second big member's free-space check fails or cancels the load. Kept: a layer
    # stored before, one another lease names, one an open ingest expects.
    plan = synth.plan(BIG)
    amd64, arm64 = plan.platforms
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
            await load(store, source(tmp_path, synth_bytes(BIG), stream))
        assert scope.cancelled_caught == (how == "cancel")
        assert str(stored) in await blobs(store)
        assert await blobs(store) <= {str(stored), leased, ingested}
        assert [s.ref for s in await store.content.list_statuses()] == ["other"]
        assert [x.id for x in await store.leases.list()] == [lease.id]
    assert await store.images.list() == []
    monkeypatch.undo()
    images = await load(store, source(tmp_path, synth_bytes(BIG), stream))
    assert [i.name for i in images] == ["docker.io/faults/big:1"]


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
    spec = synth.SynthSpec(name="faults/twice:1", platforms=("linux/amd64",), layer_size=size)
    data, _ = twice(spec, bad="none")
    images = await load(store, source(tmp_path, data, stream))
    assert [i.name for i in images] == ["docker.io/faults/twice:1"]
    assert not (await verify(store.content)).problems


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("size", [4096, 2 << 20])
@pytest.mark.parametrize("bad", ["first", "second"])
async def test_imp3_a_differing_copy_of_a_blob_is_a_digest_mismatch(
    store, tmp_path, stream, size, bad
):
    spec = synth.SynthSpec(name="faults/twice:1", platforms=("linux/amd64",), layer_size=size)
    data, name = twice(spec, bad=bad)
    zeros = str(compute(bytes(size)))
    with pytest.raises(DigestMismatch) as err:
        await load(store, source(tmp_path, data, stream))
    want = f"blob {name}: unexpected digest {zeros}, expected sha256:{name.rsplit('/', 1)[1]}"
    assert str(err.value).startswith(want)
    assert await store.images.list() == []
    assert await store.content.walk() == []  # LOAD-10
