"""Cancelling a LocalWriter's write or commit leaves no blob at its address (cancel-safe).

After a cancel the ingest is resumable (reopen, finish, commit with the right digest) or
reclaimable by abort (ING-5, ING-10). Cancels are injected deterministically: either
before the thread hop starts, or from inside the worker thread of the commit.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.lowlevel
import pytest

from castar.store import ingest
from castar.store.digest import compute
from castar.store.ingest import LocalContentStore, LocalWriter

MiB = 1 << 20
DATA = bytes(range(256)) * (12 * MiB // 256 + 3)  # 12 MiB + 768 bytes


def no_blobs(root: Path) -> bool:
    blobs = root / "blobs"
    return not blobs.exists() or all(not os.listdir(d) for d in blobs.iterdir())


async def finish(store: LocalContentStore, ref: str, data: bytes, alg: str = "sha256") -> None:
    """Resume ``ref`` and commit ``data``: the resumed hash must match what is on disk."""
    w = await store.open_writer(ref)
    assert w.offset <= len(data)
    assert w.digest() == compute(data[: w.offset])
    await w.write(data[w.offset :])
    result = await w.commit(len(data), compute(data, alg))
    assert store.blob_path(result.digest).read_bytes() == data


async def test_write_cancelled_before_its_hop_accepts_nothing(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("w")
    await w.write(DATA[:10])
    with anyio.CancelScope() as scope:
        scope.cancel()
        await w.write(DATA[10 : 2 * MiB])
    assert scope.cancelled_caught
    assert w.offset == 10
    await w.write(DATA[10 : 3 * MiB])
    assert w.digest() == compute(DATA[: 3 * MiB])
    await w.close()
    assert no_blobs(tmp_path)
    await finish(store, "w", DATA)


async def test_write_cancelled_midway_keeps_offset_and_hash_consistent(tmp_path: Path) -> None:
    # a stream of 1 MiB writes cancelled at an arbitrary point: offset == bytes accepted,
    # and the ingest resumes from what reached the disk
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("mid")
    with anyio.move_on_after(0.02):
        for pos in range(0, len(DATA), MiB):
            await w.write(DATA[pos : pos + MiB])
            await anyio.sleep(0.005)
    assert w.digest() == compute(DATA[: w.offset])
    await w.close()
    assert no_blobs(tmp_path)
    status = await store.ingest_status("mid")
    assert status.offset == w.offset  # close flushed the buffer
    await finish(store, "mid", DATA)


async def test_commit_cancelled_before_its_hop_keeps_a_resumable_ingest(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("c0")
    await w.write(DATA[: MiB + 7])
    await w.write(DATA[MiB + 7 : MiB + 20])  # buffered
    with anyio.CancelScope() as scope:
        scope.cancel()
        await w.commit(len(DATA), compute(DATA))
    assert scope.cancelled_caught
    assert no_blobs(tmp_path)
    assert (await store.ingest_status("c0")).offset == MiB + 20  # buffered bytes flushed
    await finish(store, "c0", DATA)


@pytest.mark.parametrize("where", ["after flush", "during rehash"])
async def test_commit_cancelled_inside_its_thread_leaves_no_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    # The cancel arrives while the commit's worker thread runs; it is honoured at the next
    # check before the rename. Nothing at blobs/<alg>/<hex>, the ingest resumes or aborts.
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("c1")
    await w.write(DATA)
    alg = "sha512" if where == "during rehash" else "sha256"
    scope = anyio.CancelScope()

    def cancel_from_thread() -> None:
        anyio.from_thread.run_sync(scope.cancel)

    if where == "after flush":
        real_flush = w._flush_sync

        def flush(extra: memoryview | None = None) -> None:
            real_flush(extra)
            cancel_from_thread()

        monkeypatch.setattr(w, "_flush_sync", flush)
    else:
        real_rehash = ingest.rehash

        def rehash(fd: int, h: hashlib._Hash, check=None) -> int:  # type: ignore[no-untyped-def]
            if check is not None:  # the commit's re-hash, not a resume
                cancel_from_thread()
            return real_rehash(fd, h, check)

        monkeypatch.setattr(ingest, "rehash", rehash)
    with scope:
        await w.commit(len(DATA), compute(DATA, alg))
        pytest.fail("the commit was not cancelled")
    assert scope.cancelled_caught
    assert no_blobs(tmp_path)
    assert (await store.ingest_status("c1")).offset == len(DATA)
    monkeypatch.undo()
    if where == "after flush":
        await finish(store, "c1", DATA, alg)
    else:
        assert await store.abort("c1") is True  # reclaimable; the lock was released
        assert await store.list_ingests() == []


async def test_commit_cancelled_at_the_rename_completes_with_a_whole_blob(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A cancel that arrives once the rename is under way cannot undo it: the commit finishes,
    # the blob is whole (never torn) and the ingest is gone. The caller sees the cancel at
    # its next checkpoint (or as the commit returns).
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("late")
    await w.write(DATA)
    real_rename = os.rename
    scope = anyio.CancelScope()

    def rename(src: str, dst: str) -> None:
        anyio.from_thread.run_sync(scope.cancel)
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with scope:
        await w.commit(len(DATA), compute(DATA))
        await anyio.lowlevel.checkpoint()
        pytest.fail("the cancel was lost")
    monkeypatch.undo()
    assert scope.cancelled_caught
    assert store.blob_path(compute(DATA)).read_bytes() == DATA
    assert await store.list_ingests() == []


async def test_writer_dropped_without_close_does_not_keep_the_ref_locked(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    w: LocalWriter | None = await store.open_writer("dropped")
    del w
    import gc

    gc.collect()
    w2 = await store.open_writer("dropped")
    await w2.close()


async def test_open_cancelled_while_rehashing_a_resumed_ingest_releases_the_ref(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ING-5's re-hash of a large partial ingest stops at a cancel; the ref is not left locked
    store = LocalContentStore(tmp_path)
    async with await store.open_writer("big") as w:
        await w.write(DATA[: 3 * MiB])
    scope = anyio.CancelScope()
    real_rehash = ingest.rehash

    def rehash(fd: int, h: hashlib._Hash, check=None) -> int:  # type: ignore[no-untyped-def]
        anyio.from_thread.run_sync(scope.cancel)
        return real_rehash(fd, h, check)

    monkeypatch.setattr(ingest, "rehash", rehash)
    with scope:
        await store.open_writer("big")
        pytest.fail("the open was not cancelled")
    assert scope.cancelled_caught
    monkeypatch.undo()
    await finish(store, "big", DATA)
