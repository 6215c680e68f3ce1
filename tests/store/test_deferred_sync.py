"""Deferred sync and the small-blob path (io-sync, io-small-blobs; ING-8, ING-11, GC-9).

A commit with ``sync=False`` skips the fsyncs but is verified, visible and recorded at once,
marked with the boot id until ``ContentStore.sync()``; a store re-opened in another boot
(a machine crash since) forgets unsynced rows and their files. ``write_blob`` of small bytes
writes a temp file and renames it, with no ingest directory.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from castar.store import Root, blobs, open_root
from castar.store._schema import MIGRATIONS
from castar.store.content import SMALL_BLOB
from castar.store.digest import compute
from castar.store.errors import DigestMismatch
from castar.store.ingest import LocalContentStore

BOOT = "boot-1"
BIG = bytes(range(256)) * ((SMALL_BLOB + 4096) // 256)  # > 1 MiB: the ingest path


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "root", boot_id=BOOT) as s:
        yield s


def marks(root: Path) -> dict[str, str | None]:
    """digest -> unsynced_boot, read straight from the metadata DB."""
    conn = sqlite3.connect(root / "meta.db")
    try:
        return dict(conn.execute("SELECT digest, unsynced_boot FROM content"))
    finally:
        conn.close()


def ingest_entries(root: Path) -> list[str]:
    try:
        return os.listdir(root / "ingest")
    except FileNotFoundError:
        return []


def blob_file(root: Path, digest: str) -> Path:
    return root / "blobs" / "sha256" / digest.split(":")[1]


async def read_all(store: Root, digest: str) -> bytes:
    return b"".join([c async for c in store.content.read(digest)])


class SyncSpy:
    """Records what a sync flushes: ``os.fdatasync`` per file, ``os.fsync`` per directory.

    ``os.sync`` and ``os.syncfs`` fail the test: they flush every dirty page of the file
    system, other processes' too (design rule io-sync).
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.files: list[str] = []
        self.dirs: list[str] = []
        real_data, real_sync = os.fdatasync, os.fsync

        def fdatasync(fd: int) -> None:
            self.files.append(os.readlink(f"/proc/self/fd/{fd}"))
            real_data(fd)

        def fsync(fd: int) -> None:
            if os.path.isdir(path := os.readlink(f"/proc/self/fd/{fd}")):
                self.dirs.append(path)
            real_sync(fd)

        def forbidden(*_: object) -> None:
            raise AssertionError("a whole-file-system sync")

        monkeypatch.setattr(os, "fdatasync", fdatasync)
        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "sync", forbidden)
        monkeypatch.setattr(os, "syncfs", forbidden, raising=False)


# -- deferred sync ---------------------------------------------------------------------------


async def test_unsynced_commit_is_readable_recorded_and_marked_with_the_boot(
    store: Root,
) -> None:
    async with store.content.writer("big", size=len(BIG)) as w:
        await w.write(BIG)
        big = await w.commit(len(BIG), compute(BIG), sync=False)
    small = (await store.content.write_blob(b"small", sync=False)).digest
    durable = (await store.content.write_blob(b"durable")).digest
    assert await read_all(store, big) == BIG  # visible at once, verified (ING-8)
    assert await read_all(store, small) == b"small"
    assert (await store.content.info(big)).size == len(BIG)
    assert marks(store.root) == {big: BOOT, small: BOOT, durable: None}


async def test_sync_flushes_exactly_the_unsynced_blobs_and_their_directory(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.content.write_blob(b"durable")  # synced at commit: not again
    digests = [(await store.content.write_blob(b"%d" % i, sync=False)).digest for i in range(5)]
    spy = SyncSpy(monkeypatch)
    assert await store.content.sync() == 5
    assert sorted(spy.files) == sorted(str(blob_file(store.root, d)) for d in digests)
    assert spy.dirs == [str(store.root / "blobs" / "sha256")]
    assert set(marks(store.root).values()) == {None}
    assert await store.content.sync() == 0  # nothing left: no sync at all
    assert len(spy.files) == 5
    assert [await read_all(store, d) for d in digests] == [b"%d" % i for i in range(5)]


async def test_sync_skips_a_blob_collected_before_it(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = (await store.content.write_blob(b"gone", sync=False)).digest
    kept = (await store.content.write_blob(b"kept", sync=False)).digest
    blob_file(store.root, gone).unlink()
    spy = SyncSpy(monkeypatch)
    await store.content.sync()
    assert spy.files == [str(blob_file(store.root, kept))]


async def test_sync_of_given_digests_clears_only_those(store: Root) -> None:
    a = (await store.content.write_blob(b"a", sync=False)).digest
    b = (await store.content.write_blob(b"b", sync=False)).digest
    assert await store.content.sync([a]) == 1
    assert marks(store.root) == {a: None, b: BOOT}


async def test_reopening_in_another_boot_drops_unsynced_rows_and_their_files(
    tmp_path: Path,
) -> None:
    # A different boot id means a machine crash since: unsynced data may be torn.
    root = tmp_path / "root"
    async with open_root(root, boot_id=BOOT) as s:
        synced = (await s.content.write_blob(b"synced", sync=False)).digest
        await s.content.sync()
        durable = (await s.content.write_blob(b"durable")).digest
        async with s.leases.hold() as lease:
            torn = (await s.content.write_blob(b"torn", sync=False)).digest
            async with s.content.writer("big") as w:
                await w.write(BIG)
                torn_big = await w.commit(0, None, sync=False)
            lease_id = lease.id
            async with open_root(root, boot_id="boot-2") as after:
                assert not await after.content.exists(torn)
                assert not await after.content.exists(torn_big)
                assert not blob_file(root, torn).exists()
                assert not blob_file(root, torn_big).exists()
                assert await read_all(after, synced) == b"synced"
                assert await read_all(after, durable) == b"durable"
                assert await after.leases.list_resources(lease_id) == []  # it left the lease
                assert {str(i.digest) for i in await after.content.walk()} == {synced, durable}
                assert not {torn, torn_big} & set((await after.gc()).removed)  # already gone


async def test_reopening_in_the_same_boot_keeps_unsynced_rows(tmp_path: Path) -> None:
    # Page cache is shared by live processes: only a crash loses unsynced data.
    root = tmp_path / "root"
    async with open_root(root, boot_id=BOOT) as s:
        d = (await s.content.write_blob(b"kept", sync=False)).digest
    async with open_root(root, boot_id=BOOT) as s:
        assert await read_all(s, d) == b"kept"
        assert marks(root) == {d: BOOT}


async def test_a_version_1_database_migrates_with_its_rows_durable(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    conn = sqlite3.connect(root / "meta.db")
    for stmt in MIGRATIONS[0]:
        conn.execute(stmt)
    conn.execute("INSERT INTO content VALUES ('sha256:' || hex(zeroblob(32)), 1, 'x', 'x')")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    async with open_root(root, boot_id=BOOT):
        pass
    assert list(marks(root).values()) == [None]  # not dropped: it predates deferred sync


# -- the small-blob path ---------------------------------------------------------------------


async def test_small_write_blob_makes_no_ingest_directory(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    real = LocalContentStore.open_writer

    async def spy(backend: LocalContentStore, ref: str, **kw: object) -> object:
        opened.append(ref)
        return await real(backend, ref, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(LocalContentStore, "open_writer", spy)
    data = os.urandom(SMALL_BLOB)
    desc = await store.content.write_blob(data, digest=compute(data), size=len(data))
    assert opened == []
    assert ingest_entries(store.root) == []  # no ingest dir, no temp file left
    assert await read_all(store, desc.digest) == data
    assert os.stat(blob_file(store.root, desc.digest)).st_mode & 0o777 == 0o444
    await store.content.write_blob(os.urandom(SMALL_BLOB + 1))
    assert len(opened) == 1  # over 1 MiB: an ingest as before


async def test_small_write_blob_of_bad_bytes_leaves_nothing(store: Root) -> None:
    with pytest.raises(DigestMismatch, match="unexpected commit digest"):
        await store.content.write_blob(b"bad", digest=compute(b"good"))
    assert ingest_entries(store.root) == []
    assert await store.content.walk() == []
    assert not blob_file(store.root, compute(b"bad")).exists()


async def test_small_write_blob_replaces_a_torn_file_at_its_address(store: Root) -> None:
    # A crash after an unsynced rename can leave a short file with no row: never trusted.
    path = blob_file(store.root, compute(b"whole data"))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"who")
    desc = await store.content.write_blob(b"whole data", sync=False)
    assert await read_all(store, desc.digest) == b"whole data"


@pytest.mark.parametrize("size", [10, 3 << 20], ids=["small", "ingest"])
async def test_a_same_size_torn_file_with_no_row_is_replaced_not_adopted(
    store: Root, size: int
) -> None:
    # Right size, wrong bytes: what an unsynced commit can leave after a machine crash if
    # the crash came before its row. Both commit paths must replace it with verified bytes.
    data = os.urandom(size)
    path = blob_file(store.root, compute(data))
    path.parent.mkdir(parents=True)
    path.write_bytes(bytes(size))
    if size <= SMALL_BLOB:
        desc = await store.content.write_blob(data, sync=False)
        digest = desc.digest
    else:
        async with store.content.writer("torn-ref") as w:
            await w.write(data)
            digest = await w.commit(size, compute(data), sync=False)
    assert await read_all(store, digest) == data
    assert path.read_bytes() == data


async def test_cancelled_small_write_waiting_for_gc_leaves_no_blob(store: Root) -> None:
    gc_side = LocalContentStore(store.root)
    async with gc_side.commit_lock(exclusive=True):
        with anyio.move_on_after(0.2) as scope:
            await store.content.write_blob(b"never", sync=False)
    assert scope.cancelled_caught
    assert not blob_file(store.root, compute(b"never")).exists()
    assert await store.content.walk() == []
    assert ingest_entries(store.root) == []


def test_cancel_inside_the_small_write_removes_its_temp_file(tmp_path: Path) -> None:
    class Cancelled(Exception):
        pass

    def cancel() -> None:
        raise Cancelled

    with pytest.raises(Cancelled):
        blobs.put_small(tmp_path, b"data", None, "sha256", False, cancel)
    assert ingest_entries(tmp_path) == []
    assert not blob_file(tmp_path, compute(b"data")).exists()


async def test_gc_removes_a_stray_temp_file_but_not_under_a_live_small_writer(
    store: Root,
) -> None:
    # GC-9: a crashed small writer's temp file is garbage; a live writer holds the lock shared.
    stray = store.root / "ingest" / f"{blobs.TMP_PREFIX}999-dead"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"partial")
    assert await store.content.list_statuses() == []  # not taken for an ingest
    writer_side = LocalContentStore(store.root)
    done = anyio.Event()

    async def collect() -> None:
        await store.gc()
        done.set()

    async with anyio.create_task_group() as tg:
        async with writer_side.commit_lock(exclusive=False):
            tg.start_soon(collect)
            await anyio.wait_all_tasks_blocked()  # gc is waiting for the lock
            assert stray.exists()
            assert not done.is_set()
        await done.wait()
    assert not stray.exists()


async def test_unknown_boot_id_makes_every_commit_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("castar.store.root.current_boot_id", lambda: None)
    async with open_root(tmp_path / "root") as s:
        d = (await s.content.write_blob(b"x", sync=False)).digest
        assert marks(s.root) == {d: None}
        assert await s.content.sync() == 0
