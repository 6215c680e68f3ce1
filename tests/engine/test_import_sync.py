"""The importer's commits: no fsync per blob, ONE sync of what it wrote, before any record.

io-sync: every blob is committed with ``sync=False``; ``store.content.sync()`` (``fdatasync``
of each new file, ``fsync`` of its directory, never ``syncfs``) runs once, after the last blob
and before labels (GC-7) and image records (IMP-15), so an image never points at content a
crash could tear. Small entries skip ingest directories.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest

from castar.engine import synth
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.engine.platforms import pinned_host
from castar.store import Image, Root, open_root
from castar.store.blobs import CommitResult, SmallBatch
from castar.store.content import ContentStore
from castar.store.images import ImageStore
from castar.store.ingest import LocalContentStore, LocalWriter

SMALL = synth.SynthSpec(
    name="sync/small:1", platforms=("linux/amd64", "linux/arm64"), layers=3, layer_size=4096
)
BIG = synth.SynthSpec(
    name="sync/big:1", platforms=("linux/amd64",), layers=2, layer_size=(1 << 20) + 4096
)


async def load(root: Root, source: object, progress: Any = None, **options: Any) -> list[Image]:
    """The importer over a whole root, its options as keywords."""
    options_ = LoadOptions.parse(**options)
    roles = (root.content, root.images, root.leases)
    return await importer.load(*roles, source, options_, progress=progress)


class Stream:
    """A non-seekable source: an object with ``async read(n)``."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def read(self, n: int) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        return bytes(out)


class Spy:
    """What the store was asked to do during a load, in order."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.events: list[str] = []
        self.commit_syncs: list[bool] = []
        self.ingests = 0

        def record(cls: type, name: str, event: str) -> None:
            real = getattr(cls, name)

            async def spy(*args: object, **kw: object) -> object:
                self.events.append(event)
                return await real(*args, **kw)

            monkeypatch.setattr(cls, name, spy)

        record(ContentStore, "sync", "sync")
        record(ContentStore, "update_labels_many", "label")
        record(ImageStore, "create", "image")
        record(ImageStore, "update", "image")
        real_commit = LocalWriter.commit
        real_small = LocalContentStore.commit_small_batch
        real_open = LocalContentStore.open_writer

        async def commit(
            w: LocalWriter, size: int, expected: str | None, *, sync: bool = True
        ) -> CommitResult:
            self.commit_syncs.append(sync)
            self.events.append("blob")
            return await real_commit(w, size, expected, sync=sync)

        def small(
            backend: LocalContentStore, items: list[object], **kw: bool
        ) -> AbstractAsyncContextManager[SmallBatch]:
            # one commit of many small blobs (or of one): a commit per blob, as above
            self.commit_syncs += [kw["sync"]] * len(items)
            self.events += ["blob"] * len(items)
            return real_small(backend, items, **kw)  # type: ignore[arg-type]

        async def open_writer(backend: LocalContentStore, ref: str, **kw: object) -> LocalWriter:
            self.ingests += 1
            return await real_open(backend, ref, **kw)  # type: ignore[arg-type]

        monkeypatch.setattr(LocalWriter, "commit", commit)
        monkeypatch.setattr(LocalContentStore, "commit_small_batch", small)
        monkeypatch.setattr(LocalContentStore, "open_writer", open_writer)


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with pinned_host("linux/amd64"):
        yield


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store", boot_id="boot-1") as s:
        yield s


def unsynced(root: Path) -> list[str]:
    conn = sqlite3.connect(root / "meta.db")
    try:
        return [
            d for (d,) in conn.execute("SELECT digest FROM content WHERE unsynced_boot IS NOT NULL")
        ]
    finally:
        conn.close()


async def archive(tmp_path: Path, spec: synth.SynthSpec) -> tuple[Path, bytes]:
    """The archive of ``spec`` as a file and as bytes (written in a worker thread)."""
    path = tmp_path / "archive.tar"
    await anyio.to_thread.run_sync(synth.write_path, spec, path)
    return path, await anyio.Path(path).read_bytes()


@pytest.mark.parametrize("spec", [SMALL, BIG], ids=["small", "big"])
@pytest.mark.parametrize("kind", ["file", "stream"])
async def test_load_syncs_once_after_the_last_blob_and_before_any_record(
    store: Root,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: str,
    spec: synth.SynthSpec,
) -> None:
    path, data = await archive(tmp_path, spec)
    spy = Spy(monkeypatch)
    source: object = path if kind == "file" else Stream(data)
    images = await load(store, source)
    assert [i.name for i in images] == [spec.name]
    assert spy.events.count("sync") == 1
    first_record = min(spy.events.index(e) for e in ("label", "image") if e in spy.events)
    last_blob = len(spy.events) - 1 - spy.events[::-1].index("blob")
    assert last_blob < spy.events.index("sync") < first_record
    assert spy.commit_syncs
    assert not any(spy.commit_syncs)  # no per-blob fsync
    assert unsynced(store.root) == []  # the one sync made them all durable


@pytest.mark.parametrize("kind", ["file", "stream"])
async def test_load_flushes_exactly_its_blobs_and_never_the_whole_file_system(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    path, data = await archive(tmp_path, BIG)  # big layers through ingests, small documents
    flushed: list[str] = []
    real = os.fdatasync

    def fdatasync(fd: int) -> None:
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    def forbidden(*_: object) -> None:
        raise AssertionError("a load synced the whole file system")

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "sync", forbidden)
    monkeypatch.setattr(os, "syncfs", forbidden, raising=False)
    await load(store, path if kind == "file" else Stream(data))
    stored = sorted(str(p) for p in (store.root / "blobs" / "sha256").iterdir())
    assert sorted(flushed) == stored
    assert unsynced(store.root) == []


async def test_small_entries_are_stored_without_ingest_directories(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, data = await archive(tmp_path, SMALL)
    spy = Spy(monkeypatch)
    await load(store, Stream(data))
    assert spy.ingests == 0
    assert len(spy.commit_syncs) >= len(synth.plan(SMALL).blobs)  # every blob, plus the index


async def test_a_failed_sync_records_no_image_and_its_unsynced_blobs_are_gone(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failure before the sync: no image, and the unsynced blobs it recorded go (LOAD-10).
    path, _ = await archive(tmp_path, SMALL)
    spy = Spy(monkeypatch)

    async def broken(self: ContentStore, digests: object = None) -> int:
        raise OSError(5, "sync failed")

    monkeypatch.setattr(ContentStore, "sync", broken)
    with pytest.raises(OSError, match="sync failed"):
        await load(store, path)
    assert "image" not in spy.events
    assert "label" not in spy.events
    assert await store.images.list() == []
    assert unsynced(store.root) == []
    assert await store.content.walk() == []
