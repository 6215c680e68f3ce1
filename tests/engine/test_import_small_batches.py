"""The importer stores small members in batches (issue 4's small-layer target; io-small-blobs).

From a seekable file the small blobs the walk keeps are read and written a batch per worker-
thread hop; from a stream small members are gathered as they pass. Either way a batch holds
at most 64 members and 4 MiB, a corrupt member is IMP-4's error naming the entry and both
digests, and file and stream give the same store.
"""

from __future__ import annotations

import hashlib
import tarfile
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import pytest

from castar.engine import synth
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.engine.platforms import pinned_host
from castar.store import Image, Root, open_root
from castar.store.blobs import SmallBatch
from castar.store.content import ContentStore
from castar.store.errors import DigestMismatch
from castar.store.ingest import LocalContentStore

MANY = synth.SynthSpec(
    name="batch/many:1", platforms=("linux/amd64", "linux/arm64"), layers=80, layer_size=2048
)


async def load(root: Root, source: object, progress: Any = None, **options: Any) -> list[Image]:
    """The importer over a whole root, its options as keywords."""
    options_ = LoadOptions.parse(**options)
    roles = (root.content, root.images, root.leases)
    return await importer.load(*roles, source, options_, progress=progress)


class Stream:
    """A non-seekable source: an object with ``async read(n)``."""

    def __init__(self, data: bytes, chunk: int = 1 << 20) -> None:
        self._data = memoryview(data)
        self._chunk = chunk

    async def read(self, n: int) -> bytes:
        n = min(n, self._chunk)
        out, self._data = self._data[:n], self._data[n:]
        return bytes(out)


class BatchSpy:
    """The size (members, bytes when known) of every small-blob batch the backend writes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[list[int]] = []
        real = LocalContentStore.commit_small_batch

        def spy(
            backend: LocalContentStore, items: list[Any], **kw: bool
        ) -> AbstractAsyncContextManager[SmallBatch]:
            self.batches.append([0 if callable(d) else len(d) for d, _ in items])
            return real(backend, items, **kw)

        monkeypatch.setattr(LocalContentStore, "commit_small_batch", spy)


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with pinned_host("linux/amd64"):
        yield


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store", boot_id="boot-1") as s:
        yield s


async def archive(tmp_path: Path, spec: synth.SynthSpec) -> Path:
    path = tmp_path / "archive.tar"
    await anyio.to_thread.run_sync(synth.write_path, spec, path)
    return path


async def state(store: Root) -> tuple[dict[str, int], dict[str, str]]:
    blobs = {str(i.digest): i.size for i in await store.content.walk()}
    images = {i.name: str(i.target.digest) for i in await store.images.list()}
    return blobs, images


@pytest.mark.parametrize("kind", ["file", "stream"])
async def test_small_layers_are_stored_in_few_bounded_batches(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = await archive(tmp_path, MANY)
    spy = BatchSpy(monkeypatch)
    source: object = path if kind == "file" else Stream(path.read_bytes())
    await load(store, source)
    blobs = len(synth.plan(MANY).blobs)  # 160 layers, 2 configs, 2 manifests, the index
    stored = sum(len(b) for b in spy.batches)
    assert stored >= blobs
    # a handful of batches, not one commit per blob (documents the walk reads come singly)
    assert len(spy.batches) <= blobs // 64 + 8
    assert max(len(b) for b in spy.batches) == 64
    assert all(sum(b) <= 4 << 20 for b in spy.batches)  # bytes held by a stream batch


async def test_file_and_stream_give_the_same_store(tmp_path: Path) -> None:
    path = await archive(tmp_path, MANY)
    got = []
    for i, source in enumerate([path, Stream(path.read_bytes())]):
        async with open_root(tmp_path / f"s{i}", boot_id="boot-1") as s:
            await load(s, source)
            await s.gc()  # the stream kept everything; the walk kept all of it too
            got.append(await state(s))
    assert got[0] == got[1]
    assert len(got[0][0]) == len(synth.plan(MANY).blobs)


def corrupt_layer(path: Path, index: int) -> tuple[str, str, str]:
    """Flip one byte of the ``index``-th layer-sized blob; its name, expected and actual digest."""
    with tarfile.open(path) as tf:
        layers = [m for m in tf.getmembers() if m.name.startswith("blobs/") and m.size == 2048]
        member = layers[index]
    raw = bytearray(path.read_bytes())
    raw[member.offset_data] ^= 0xFF
    path.write_bytes(raw)
    body = bytes(raw[member.offset_data : member.offset_data + member.size])
    expected = "sha256:" + member.name.rsplit("/", 1)[1]
    return member.name, expected, "sha256:" + hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("kind", ["file", "stream"])
async def test_imp4_corrupt_member_in_a_later_batch_names_entry_and_digests(
    store: Root, tmp_path: Path, kind: str
) -> None:
    path = await archive(tmp_path, MANY)
    name, expected, actual = corrupt_layer(path, 100)  # past the first batch of 64
    source: object = path if kind == "file" else Stream(path.read_bytes())
    with pytest.raises(DigestMismatch) as err:
        await load(store, source)
    assert str(err.value).startswith(
        f"blob {name}: unexpected digest {actual}, expected {expected}"
    )
    assert (err.value.expected, err.value.actual) == (expected, actual)
    assert await store.images.list() == []
    assert await store.leases.list() == []
    await store.gc()  # every blob stored before the failure was only held by the lease
    assert await state(store) == ({}, {})
    assert not any((store.root / "blobs" / "sha256").iterdir())


async def test_progress_reaches_the_total_for_a_file_of_small_layers(
    store: Root, tmp_path: Path
) -> None:
    path = await archive(tmp_path, MANY)
    seen: list[tuple[int, int | None]] = []
    await load(store, path, progress=lambda done, total, entry: seen.append((done, total)))
    assert seen
    done, total = seen[-1]
    assert total is not None
    assert done == total
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)


@pytest.mark.parametrize("kind", ["file", "stream"])
async def test_cancel_among_small_batches_leaves_no_blob_behind(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path = await archive(tmp_path, MANY)
    recorded: set[str] = set()  # the blobs the load recorded before the cancel
    real = ContentStore.write_small_blobs

    async def small(self: ContentStore, blobs: Any, **kw: Any) -> Any:
        created = kw.setdefault("created", set())
        try:
            return await real(self, blobs, **kw)
        finally:
            recorded.update(created)

    monkeypatch.setattr(ContentStore, "write_small_blobs", small)
    size = path.stat().st_size
    source: object = path if kind == "file" else Stream(path.read_bytes(), chunk=16 << 10)
    with anyio.CancelScope() as scope:

        def progress(done: int, total: int | None, entry: str) -> None:
            if done > size // 2:  # past the first batch of 64 layers, before the last
                scope.cancel()

        await load(store, source, progress=progress)
    assert scope.cancelled_caught
    blob_dir = store.root / "blobs" / "sha256"
    on_disk = {f"sha256:{p.name}" for p in blob_dir.iterdir()} if blob_dir.exists() else set()
    assert on_disk == set()  # no renamed-but-unrecorded file, the recorded ones gone (LOAD-10)
    if kind == "file":
        assert len(recorded) >= 64  # the cancel landed after a whole batch was stored
    assert [p.name for p in (store.root / "ingest").glob(".tmp-*")] == []
    assert await state(store) == ({}, {})
