"""The public content store through its API: CS-1..7, LBL-1, ING-1..13, TV-41..46."""

from __future__ import annotations

import errno
import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.lowlevel
import pytest

from castar.store import Root, default_root, open_root
from castar.store.digest import compute
from castar.store.errors import (
    AlreadyExists,
    DataLoss,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SizeMismatch,
    Unavailable,
)
from castar.store.ingest import LocalContentStore, LocalWriter, ingest_dir

if TYPE_CHECKING:
    from conftest import Clock

HELLO = b"hello"
H_HELLO = compute(HELLO)
H_WORLD = compute(b"world")


def blob_file(store: Root, digest: str) -> Path:
    return store.root / "blobs" / "sha256" / digest.split(":")[1]


async def read_all(store: Root, digest: str) -> bytes:
    return b"".join([c async for c in store.content.read(digest)])


class Untouchable:
    """An async source that fails the test when read (TV-44)."""

    def __aiter__(self) -> Untouchable:
        return self

    async def __anext__(self) -> bytes:
        raise AssertionError("write_blob read a source it did not need")


async def test_write_blob_records_and_reads_back(store: Root, clock: Clock) -> None:
    desc = await store.content.write_blob(HELLO, media_type="text/plain")
    assert (desc.digest, desc.size, desc.media_type) == (H_HELLO, 5, "text/plain")
    info = await store.content.info(H_HELLO)  # CS-1
    assert (info.digest, info.size, dict(info.labels)) == (H_HELLO, 5, {})
    assert info.created_at == info.updated_at == clock.now
    assert await read_all(store, H_HELLO) == HELLO
    assert [c async for c in store.content.read(H_HELLO, offset=1, length=3)] == [b"ell"]
    assert await store.content.read_at(H_HELLO, 3, 100) == b"lo"  # CS-2: short at the end
    assert await store.content.read_all(H_HELLO, limit=5) == HELLO
    assert store.content.path(H_HELLO).read_bytes() == HELLO
    assert await store.content.exists(H_HELLO)  # CS-7


async def test_write_blob_from_async_chunks(store: Root) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for part in (b"he", b"", b"llo"):
            yield part

    desc = await store.content.write_blob(chunks(), digest=H_HELLO, size=5)
    assert desc.digest == H_HELLO
    assert await read_all(store, H_HELLO) == HELLO


async def test_read_all_over_limit_is_invalid_argument(store: Root) -> None:
    await store.content.write_blob(HELLO)
    with pytest.raises(InvalidArgument, match="exceeds the limit"):
        await store.content.read_all(H_HELLO, limit=4)


async def test_info_of_absent_blob_is_not_found_with_cs1_text(store: Root) -> None:
    with pytest.raises(NotFound) as err:
        await store.content.info(H_WORLD)
    assert str(err.value) == f"content digest {H_WORLD}: not found"  # CS-1
    assert not await store.content.exists(H_WORLD)  # CS-7
    with pytest.raises(NotFound):
        await store.content.read_at(H_WORLD, 0, 1)
    with pytest.raises(NotFound):
        await read_all(store, H_WORLD)


async def test_invalid_digest_is_invalid_argument(store: Root) -> None:
    with pytest.raises(InvalidArgument):
        await store.content.info("sha256:nothex")


async def test_update_labels_merges_and_empty_value_deletes(store: Root, clock: Clock) -> None:
    await store.content.write_blob(HELLO, labels={"keep": "1"})
    created = clock.now
    clock.now += timedelta(seconds=5)
    info = await store.content.update_labels(H_HELLO, {"a": "1"})
    assert dict(info.labels) == {"keep": "1", "a": "1"}
    assert (info.created_at, info.updated_at) == (created, clock.now)  # CS-5
    info = await store.content.update_labels(H_HELLO, {"a": ""})  # TV-45: "" deletes
    assert dict(info.labels) == {"keep": "1"}
    assert dict((await store.content.info(H_HELLO)).labels) == {"keep": "1"}


async def test_set_labels_replaces_the_map(store: Root) -> None:
    await store.content.write_blob(HELLO, labels={"old": "1"})
    info = await store.content.set_labels(H_HELLO, {"new": "2"})
    assert dict(info.labels) == {"new": "2"}
    assert dict((await store.content.info(H_HELLO)).labels) == {"new": "2"}


async def test_update_labels_of_absent_blob_is_not_found(store: Root) -> None:
    with pytest.raises(NotFound):
        await store.content.update_labels(H_WORLD, {"a": "1"})


async def test_update_labels_many_is_one_transaction_skipping_unrecorded(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.content.write_blob(HELLO, labels={"keep": "1", "a": "0"})
    await store.content.write_blob(b"other")
    db = store.content._db
    writes = []
    real_write = db.write
    monkeypatch.setattr(db, "write", lambda *a, **k: writes.append(a[0]) or real_write(*a, **k))
    got = await store.content.update_labels_many(
        [(H_HELLO, {"a": ""}), (compute(b"other"), {"b": "2"}), (H_WORLD, {"c": "3"})]
    )
    assert len(writes) == 1
    assert {d: dict(i.labels) for d, i in got.items()} == {
        H_HELLO: {"keep": "1"},
        compute(b"other"): {"b": "2"},
    }
    assert dict((await store.content.info(H_HELLO)).labels) == {"keep": "1"}
    with pytest.raises(InvalidArgument):  # LBL-1, before anything is written
        await store.content.update_labels_many([(H_HELLO, {"k": "v" * 5000})])
    assert len(writes) == 1


async def test_label_over_4096_bytes_is_invalid_argument(store: Root) -> None:
    await store.content.write_blob(HELLO)
    with pytest.raises(InvalidArgument) as err:  # TV-46, LBL-1
        await store.content.update_labels(H_HELLO, {"k": "x" * 4096})
    assert str(err.value) == (
        "label key and value length (4097 bytes) greater than maximum size (4096 bytes), "
        "key: k: invalid argument"
    )
    await store.content.update_labels(H_HELLO, {"k": "x" * 4095})  # exactly 4096 is fine


async def test_commit_with_invalid_label_or_digest_records_nothing_and_closes(
    store: Root,
) -> None:
    async with store.content.writer("r") as w:
        await w.write(HELLO)
        with pytest.raises(InvalidArgument):
            await w.commit(5, H_HELLO, {"k": "x" * 5000})
        with pytest.raises(FailedPrecondition, match="closed writer"):  # ING-8: always closes
            await w.commit(5, H_HELLO)
    async with store.content.writer("r") as w:  # released, resumable
        assert w.offset == 5
        with pytest.raises(InvalidArgument):
            await w.commit(5, "sha256:bad")
    assert not await store.content.exists(H_HELLO)
    assert not blob_file(store, H_HELLO).exists()
    async with store.content.writer("r") as w:
        assert w.offset == 5


async def test_delete_forgets_at_once(store: Root) -> None:
    await store.content.write_blob(HELLO)
    await store.content.delete(H_HELLO)
    with pytest.raises(NotFound):  # CS-6: Info/ReaderAt report NotFound immediately
        await store.content.info(H_HELLO)
    with pytest.raises(NotFound):
        await store.content.read_at(H_HELLO, 0, 1)
    with pytest.raises(NotFound):
        await store.content.delete(H_HELLO)
    report = await store.gc()  # CS-6 [c8d]: the file goes at the next GC
    assert report.removed == [H_HELLO]
    assert not blob_file(store, H_HELLO).exists()


async def test_walk_is_ascending_by_digest(store: Root) -> None:
    datas = [bytes([i]) * (i + 1) for i in range(6)]
    for d in datas:
        await store.content.write_blob(d)
    infos = await store.content.walk()  # CS-3
    assert [i.digest for i in infos] == sorted(compute(d) for d in datas)
    assert {i.digest: i.size for i in infos} == {compute(d): len(d) for d in datas}


async def test_writer_commit_then_commit_again_is_closed_writer(store: Root) -> None:
    async with store.content.writer("ref-a") as w:
        await w.write(HELLO)
        assert w.offset == 5
        assert w.digest() == H_HELLO
        assert await w.commit(5, H_HELLO, {"x": "y"}) == H_HELLO
        with pytest.raises(FailedPrecondition, match="cannot commit on closed writer"):
            await w.commit(5, H_HELLO)  # TV-43
    assert dict((await store.content.info(H_HELLO)).labels) == {"x": "y"}
    with pytest.raises(NotFound):  # the ingest is gone
        await store.content.status("ref-a")


async def test_writer_with_empty_ref_is_invalid_argument(store: Root) -> None:
    with pytest.raises(InvalidArgument) as err:
        async with store.content.writer(""):
            pass
    assert str(err.value) == "ref must not be empty: invalid argument"  # TV-41


async def test_writer_for_recorded_digest_is_already_exists_at_open(store: Root) -> None:
    await store.content.write_blob(HELLO)
    with pytest.raises(AlreadyExists) as err:  # ING-2
        async with store.content.writer("r2", digest=H_HELLO):
            pass
    assert str(err.value) == f"content {H_HELLO}: already exists"
    assert await store.content.list_statuses() == []


async def test_second_ref_same_bytes_commit_is_already_exists(store: Root) -> None:
    async with store.content.writer("one") as w1, store.content.writer("two") as w2:
        await w1.write(HELLO)
        await w2.write(HELLO)
        await w1.commit(5, H_HELLO)
        with pytest.raises(AlreadyExists, match=r"content .*: already exists"):  # ING-8.6
            await w2.commit(5, H_HELLO)  # TV-44, ING-12
    assert await store.content.list_statuses() == []  # the loser's ingest is removed
    assert await read_all(store, H_HELLO) == HELLO


async def test_write_blob_of_recorded_digest_does_not_read_source(store: Root) -> None:
    await store.content.write_blob(HELLO)
    desc = await store.content.write_blob(Untouchable(), digest=H_HELLO, size=5)  # TV-44
    assert (desc.digest, desc.size) == (H_HELLO, 5)


async def test_write_blob_of_same_bytes_twice_without_digest_succeeds(store: Root) -> None:
    # ING-8.6 + ING-11: the second commit meets AlreadyExists, which write_blob counts as success
    first = await store.content.write_blob(HELLO, labels={"a": "1"})
    second = await store.content.write_blob(HELLO, labels={"b": "2"})
    assert first == second
    assert dict((await store.content.info(H_HELLO)).labels) == {"a": "1"}  # the record is kept
    assert await store.content.list_statuses() == []


async def test_concurrent_write_blob_of_one_digest_both_succeed(store: Root) -> None:
    async def source() -> AsyncIterator[bytes]:
        for _ in range(20):
            await anyio.lowlevel.checkpoint()
            yield b"x" * 100

    data = b"x" * 2000
    results = []

    async def put() -> None:
        results.append(await store.content.write_blob(source(), digest=compute(data), size=2000))

    async with anyio.create_task_group() as tg:  # ING-4 retry, ING-12 first commit wins
        tg.start_soon(put)
        tg.start_soon(put)
    assert [r.digest for r in results] == [compute(data)] * 2
    assert await store.content.list_statuses() == []


async def test_ingest_open_retries_when_its_directory_vanishes_after_mkdir(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The race above made deterministic: the loser's made directory cannot take the name
    # because the winner's is there, and the winner's commit removes it before the loser
    # opens its lock file; the loser tries again and makes it.
    path = ingest_dir(store.root, "r")
    real_rename = os.rename
    raced = []

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if Path(dst) == path and not raced:
            raced.append(dst)
            shutil.rmtree(src)
            raise OSError(errno.ENOTEMPTY, os.strerror(errno.ENOTEMPTY), str(dst))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)

    async def source() -> AsyncIterator[bytes]:
        yield HELLO

    desc = await store.content.write_blob(source(), digest=H_HELLO, ref="r")
    assert raced
    assert desc.digest == H_HELLO
    assert await store.content.list_statuses() == []
    assert not list((store.root / "ingest").iterdir())  # no scratch directory is left


async def test_size_mismatch_leaves_nothing(store: Root) -> None:
    async with store.content.writer("r") as w:
        await w.write(HELLO)
        with pytest.raises(SizeMismatch) as err:  # TV-43
            await w.commit(6, None)
    assert str(err.value) == "unexpected commit size 5, expected 6: failed precondition"
    assert (err.value.expected, err.value.actual) == (6, 5)
    assert not await store.content.exists(H_HELLO)
    assert not blob_file(store, H_HELLO).exists()
    assert await store.content.list_statuses() == []
    report = await store.gc()
    assert report.ingests_removed == []  # no row was left behind either


async def test_digest_mismatch_leaves_nothing(store: Root) -> None:
    async with store.content.writer("r") as w:
        await w.write(HELLO)
        with pytest.raises(DigestMismatch) as err:  # TV-43
            await w.commit(5, H_WORLD)
    assert str(err.value) == (
        f"unexpected commit digest {H_HELLO}, expected {H_WORLD}: failed precondition"
    )
    assert not await store.content.exists(H_HELLO)
    assert not await store.content.exists(H_WORLD)
    assert not blob_file(store, H_HELLO).exists()
    assert not blob_file(store, H_WORLD).exists()
    assert await store.content.list_statuses() == []


async def test_commit_failing_for_another_reason_keeps_the_ingest_resumable(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only bad data (size or digest) drops the ingest; a disk refusing the rename does not.
    async def refused(
        self: LocalWriter, size: int, expected: str | None, *, sync: bool = True
    ) -> None:
        await self.close()
        raise FailedPrecondition("committing: Read-only file system")

    async with store.content.writer("ro") as w:
        await w.write(HELLO)
        monkeypatch.setattr(LocalWriter, "commit", refused)
        with pytest.raises(FailedPrecondition, match="Read-only"):
            await w.commit(5, H_HELLO)
    monkeypatch.undo()
    assert [(s.ref, s.offset) for s in await store.content.list_statuses()] == [("ro", 5)]
    async with store.content.writer("ro") as w:
        assert await w.commit(5, H_HELLO) == H_HELLO


async def test_write_blob_short_source_is_short_read(store: Root) -> None:
    with pytest.raises(SizeMismatch, match="short read: expected 10 bytes but got 5"):  # ING-11
        await store.content.write_blob(HELLO, size=10, ref="short")
    assert not await store.content.exists(H_HELLO)


async def test_write_blob_wrong_digest_is_digest_mismatch(store: Root) -> None:
    with pytest.raises(DigestMismatch):
        await store.content.write_blob(HELLO, digest=H_WORLD)
    assert await store.content.walk() == []
    assert await store.content.list_statuses() == []


async def test_closed_writer_resumes_and_write_blob_skips_held_bytes(store: Root) -> None:
    async with store.content.writer("res", size=5, digest=H_HELLO) as w:
        await w.write(b"hel")
    status = await store.content.status("res")  # ING-5, ING-6
    assert (status.ref, status.offset, status.total) == ("res", 3, 5)
    async with store.content.writer("res", size=5, digest=H_HELLO) as w:
        assert w.offset == 3
    desc = await store.content.write_blob(HELLO, digest=H_HELLO, size=5, ref="res")  # ING-11
    assert desc.digest == H_HELLO
    assert await read_all(store, H_HELLO) == HELLO


async def test_second_open_of_held_ref_is_unavailable(store: Root) -> None:
    async with store.content.writer("held") as w:
        await w.write(HELLO)
        with pytest.raises(Unavailable):  # ING-3
            async with store.content.writer("held"):
                pass


async def test_abort_removes_ingest_and_unknown_ref_is_not_found(store: Root) -> None:
    async with store.content.writer("gone") as w:
        await w.write(HELLO)
    await store.content.abort("gone")  # ING-10
    with pytest.raises(NotFound):
        await store.content.status("gone")
    with pytest.raises(NotFound) as err:
        await store.content.abort("gone")
    assert str(err.value) == "reference gone: not found"


async def test_recorded_blob_missing_on_disk_is_data_loss(store: Root) -> None:
    await store.content.write_blob(HELLO)
    os.unlink(blob_file(store, H_HELLO))
    with pytest.raises(DataLoss):
        await store.content.read_at(H_HELLO, 0, 5)
    with pytest.raises(DataLoss):
        await read_all(store, H_HELLO)


async def cancel_mid_write(
    store: Root,
    ref: str,
    *,
    lease: bool,
    before_cancel: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Write 1000 bytes to ingest ``ref`` (under a fresh lease if asked), then cancel the task."""
    wrote = anyio.Event()

    async def write_forever() -> None:
        async with AsyncExitStack() as stack:
            if lease:
                await stack.enter_async_context(store.leases.hold())
            w = await stack.enter_async_context(store.content.writer(ref, size=10 << 20))
            await w.write(b"x" * 1000)
            wrote.set()
            await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(write_forever)
        await wrote.wait()
        if before_cancel is not None:
            await before_cancel()
        tg.cancel_scope.cancel()
    assert await store.content.walk() == []  # no partial blob is visible
    assert [p for p in (store.root / "blobs").rglob("*") if p.is_file()] == []
    assert [s.ref for s in await store.content.list_statuses()] == [ref]  # resumable (ING-5)


async def test_cancel_mid_write_leaves_no_blob_and_gc_reaps_after_expiry(
    store: Root, clock: Clock
) -> None:
    await cancel_mid_write(store, "cancelled", lease=False)
    report = await store.gc()  # ING-13: the ingest is alive for 24 h
    assert report.ingests_removed == []
    assert [s.ref for s in await store.content.list_statuses()] == ["cancelled"]
    clock.now += timedelta(hours=24, seconds=1)
    report = await store.gc()
    assert report.ingests_removed == ["cancelled"]
    assert await store.content.list_statuses() == []


async def test_cancel_mid_write_under_lease_is_reaped_when_lease_ends(store: Root) -> None:
    async def gc_keeps_it() -> None:
        assert (await store.gc()).ingests_removed == []  # LEASE-5: held by the lease

    await cancel_mid_write(store, "leased", lease=True, before_cancel=gc_keeps_it)
    assert await store.leases.list() == []  # the lease was deleted at exit, shielded
    report = await store.gc()
    assert report.ingests_removed == ["leased"]
    assert await store.content.list_statuses() == []


async def test_commit_cancelled_while_gc_holds_lock_releases_ref(store: Root) -> None:
    backend = LocalContentStore(store.root)
    async with store.content.writer("waits") as w:
        await w.write(HELLO)
        async with backend.commit_lock(exclusive=True):  # as GC's content sweep holds it
            with anyio.move_on_after(0.2) as scope:
                await w.commit(5, H_HELLO)
            assert scope.cancelled_caught
    assert not await store.content.exists(H_HELLO)
    async with store.content.writer("waits") as again:  # the ref was released (ING-3)
        assert again.offset == 5  # and kept resumable (ING-5)
        assert await again.commit(5, H_HELLO) == H_HELLO
    assert await read_all(store, H_HELLO) == HELLO


def test_default_root_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CASTAR_ROOT", str(tmp_path / "explicit"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_root() == tmp_path / "explicit"
    monkeypatch.delenv("CASTAR_ROOT")
    assert default_root() == tmp_path / "xdg" / "castar"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert default_root() == tmp_path / "home" / ".local" / "share" / "castar"


async def test_open_store_creates_the_default_root(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("CASTAR_ROOT", str(tmp_path / "a" / "b"))
    async with open_root() as s:
        assert s.root == tmp_path / "a" / "b"
        await s.content.write_blob(HELLO)
    async with open_root(tmp_path / "a" / "b") as s:  # reopened: same records
        assert [i.digest for i in await s.content.walk()] == [H_HELLO]
