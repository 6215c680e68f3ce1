"""``ContentStore.write_small_blobs``: many small blobs, one write hop, one record transaction.

What the importer's small-layer path relies on (design-rules io-small-blobs; ING-2, ING-11,
TV-44, GC-9): every blob verified before it is renamed, already-stored blobs a success that
joins the lease, a mismatch named by its digests, a failure or a cancel leaving every
renamed blob recorded and nothing else, and no ``mkdir``/``chmod``/``utime`` per blob.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest

from castar.store import Root, _schema, _txn, open_root
from castar.store.blobs import TMP_PREFIX, _umask_keeps_read_bits
from castar.store.content import SMALL_BLOB, SmallBlob
from castar.store.digest import compute
from castar.store.errors import DigestMismatch, InvalidArgument, MalformedArchive, NotFound
from castar.store.ingest import LocalContentStore

BOOT = "boot-1"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "root", boot_id=BOOT) as s:
        yield s


def blobs(n: int, tag: str = "b") -> list[bytes]:
    return [f"{tag}-{i}-".encode() * (i + 1) for i in range(n)]


def marks(root: Path) -> dict[str, str | None]:
    """digest -> unsynced_boot, straight from the metadata DB."""
    conn = sqlite3.connect(root / "meta.db")
    try:
        return dict(conn.execute("SELECT digest, unsynced_boot FROM content"))
    finally:
        conn.close()


def files(root: Path) -> set[str]:
    """Every file at a blob address."""
    base = root / "blobs" / "sha256"
    return {f"sha256:{n}" for n in os.listdir(base)} if base.exists() else set()


def temp_files(root: Path) -> list[str]:
    try:
        return [n for n in os.listdir(root / "ingest") if n.startswith(TMP_PREFIX)]
    except FileNotFoundError:
        return []


async def recorded(store: Root) -> set[str]:
    return {str(i.digest) for i in await store.content.walk()}


def hop_counter(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """Record every ``anyio.to_thread.run_sync`` call (one worker-thread hop each)."""
    calls: list[Callable[..., Any]] = []
    real = anyio.to_thread.run_sync

    async def counting(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        calls.append(fn)
        return await real(fn, *args, **kw)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return calls


# -- the contract ------------------------------------------------------------------------------


async def test_a_batch_is_one_write_hop_and_one_record_transaction(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = blobs(40)
    await store.content.write_blob(b"warm-up")  # the store's directories exist
    hops = hop_counter(monkeypatch)
    descs = await store.content.write_small_blobs([SmallBlob(d, compute(d)) for d in data])
    assert len(hops) == 2  # backend hop + one SQLite transaction, for 40 blobs
    assert [(d.digest, d.size) for d in descs] == [(compute(d), len(d)) for d in data]
    for d in data:
        assert await store.content.read_all(compute(d), limit=1 << 20) == d


async def test_mixed_batch_new_recorded_and_tv44_all_succeed_and_join_the_lease(
    store: Root,
) -> None:
    old = b"stored before"
    await store.content.write_blob(old)
    new1, new2 = b"new one", b"new two"
    tv44 = b"bytes that do not hash to the recorded digest"
    batch = [
        SmallBlob(new1, media_type="t/new"),  # no expected digest: computed
        SmallBlob(old, compute(old)),  # ING-11: recorded already
        SmallBlob(tv44, compute(old), media_type="t/tv44"),  # TV-44: digest recorded
        SmallBlob(new2, compute(new2), labels={"k": "v"}),
    ]
    async with store.leases.hold() as lease:
        descs = await store.content.write_small_blobs(batch)
        resources = await store.leases.list_resources(lease.id)
    assert [(d.media_type, d.digest, d.size) for d in descs] == [
        ("t/new", compute(new1), len(new1)),
        ("application/octet-stream", compute(old), len(old)),
        ("t/tv44", compute(old), len(old)),  # the recorded blob, not the bytes given
        ("application/octet-stream", compute(new2), len(new2)),
    ]
    # ING-2: the recorded blob joins the lease like the new ones
    assert {r for t, r in resources if t == "content"} == {
        compute(new1),
        compute(old),
        compute(new2),
    }
    assert dict((await store.content.info(compute(new2))).labels) == {"k": "v"}
    assert not (store.root / "blobs" / "sha256" / compute(tv44).encoded).exists()
    assert temp_files(store.root) == []


async def test_existing_file_at_the_address_is_kept_not_rewritten(store: Root) -> None:
    data = b"already here"
    await store.content.write_blob(data)
    before = store.content.path(compute(data)).stat()
    (desc,) = await store.content.write_small_blobs([SmallBlob(data, compute(data))])
    after = store.content.path(compute(data)).stat()
    assert desc.digest == compute(data)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_mismatch_names_both_digests_and_only_verified_blobs_are_recorded(
    store: Root,
) -> None:
    good1, good2, bad, claimed = b"good 1", b"good 2", b"corrupt bytes", b"what was promised"
    batch = [SmallBlob(good1), SmallBlob(bad, compute(claimed)), SmallBlob(good2)]
    async with store.leases.hold():
        with pytest.raises(DigestMismatch) as err:
            await store.content.write_small_blobs(batch)
        # verified blobs are recorded (in the lease); the bad bytes are nowhere
        assert await recorded(store) == {compute(good1), compute(good2)}
    assert (err.value.expected, err.value.actual) == (compute(claimed), compute(bad))
    assert f"unexpected commit digest {compute(bad)}, expected {compute(claimed)}" in str(err.value)
    assert files(store.root) == {compute(good1), compute(good2)}
    assert temp_files(store.root) == []
    await store.gc()  # nothing references them once the lease is gone: GC takes all
    assert await recorded(store) == set()
    assert files(store.root) == set()


async def test_blobs_under_a_lease_survive_gc_until_it_ends(store: Root) -> None:
    data = blobs(5)
    async with store.leases.hold():
        await store.content.write_small_blobs([SmallBlob(d) for d in data], sync=False)
        await store.gc()
        assert await recorded(store) == {compute(d) for d in data}
    await store.gc()
    assert await recorded(store) == set()


async def test_unsynced_batch_is_marked_until_sync(store: Root) -> None:
    data = blobs(3)
    await store.content.write_small_blobs([SmallBlob(d) for d in data], sync=False)
    assert marks(store.root) == {compute(d): BOOT for d in data}
    assert await store.content.sync() == 3
    assert marks(store.root) == {compute(d): None for d in data}


async def test_synced_batch_carries_no_mark(store: Root) -> None:
    data = blobs(3)
    await store.content.write_small_blobs([SmallBlob(d) for d in data])
    assert marks(store.root) == {compute(d): None for d in data}


async def test_bad_arguments_are_refused_before_anything_is_written(store: Root) -> None:
    with pytest.raises(InvalidArgument, match="over the"):
        await store.content.write_small_blobs([SmallBlob(b"ok"), SmallBlob(bytes(SMALL_BLOB + 1))])
    with pytest.raises(InvalidArgument, match="label"):
        await store.content.write_small_blobs(
            [SmallBlob(b"ok"), SmallBlob(b"x", labels={"k": "v" * 5000})]
        )
    with pytest.raises(InvalidArgument):
        await store.content.write_small_blobs([SmallBlob(b"ok"), SmallBlob(b"x", "sha256:nope")])
    assert files(store.root) == set()
    assert await store.content.write_small_blobs([]) == []


async def test_readers_are_called_in_the_write_hop_one_at_a_time(store: Root) -> None:
    data = blobs(4)
    threads: list[bool] = []

    def reader(d: bytes) -> Callable[[], bytes]:
        def read() -> bytes:
            try:  # only a worker thread may call into the event loop
                anyio.from_thread.check_cancelled()
                threads.append(True)
            except RuntimeError:
                threads.append(False)
            return d

        return read

    descs = await store.content.write_small_blobs([SmallBlob(reader(d)) for d in data])
    assert threads == [True] * 4
    assert [d.digest for d in descs] == [compute(d) for d in data]


async def test_a_failing_reader_stops_the_batch_and_earlier_blobs_stay_recorded(
    store: Root,
) -> None:
    data = blobs(5)

    def broken() -> bytes:
        raise MalformedArchive("truncated archive: 3 bytes of member body missing")

    items = [SmallBlob(d) for d in data[:2]] + [SmallBlob(broken)] + [SmallBlob(data[2])]
    with pytest.raises(MalformedArchive, match="truncated"):
        await store.content.write_small_blobs(items)
    # like a run of write_blob calls stopped at the failure: the first two, nothing after
    assert await recorded(store) == {compute(d) for d in data[:2]}
    assert files(store.root) == {compute(d) for d in data[:2]}
    assert temp_files(store.root) == []


# -- cancellation ------------------------------------------------------------------------------


async def test_cancel_mid_batch_records_every_renamed_blob_and_nothing_else(store: Root) -> None:
    data = blobs(6)
    with anyio.CancelScope() as scope:

        def cancelling() -> bytes:
            anyio.from_thread.run_sync(scope.cancel)  # lands before this blob's rename
            return data[3]

        items = [SmallBlob(d) for d in data[:3]] + [SmallBlob(cancelling)]
        items += [SmallBlob(d) for d in data[4:]]
        await store.content.write_small_blobs(items, sync=False)
    assert scope.cancelled_caught
    # no renamed-but-unrecorded blob, no recorded-but-missing one, no temp file
    assert await recorded(store) == {compute(d) for d in data[:3]}
    assert files(store.root) == {compute(d) for d in data[:3]}
    assert temp_files(store.root) == []


async def test_cancel_while_gc_holds_the_lock_writes_nothing(store: Root) -> None:
    gc_side = LocalContentStore(store.root)
    async with gc_side.commit_lock(exclusive=True):
        with anyio.move_on_after(0.2) as scope:
            await store.content.write_small_blobs([SmallBlob(d) for d in blobs(3)])
    assert scope.cancelled_caught
    assert await recorded(store) == set()
    assert files(store.root) == set()
    assert temp_files(store.root) == []


async def test_a_batch_waits_for_gc_then_writes(store: Root) -> None:
    gc_side = LocalContentStore(store.root)
    data = blobs(3)
    async with anyio.create_task_group() as tg, gc_side.commit_lock(exclusive=True):
        tg.start_soon(store.content.write_small_blobs, [SmallBlob(d) for d in data])
        await anyio.wait_all_tasks_blocked()  # the batch is waiting for the lock
        assert files(store.root) == set()
    assert await recorded(store) == {compute(d) for d in data}


# -- no redundant syscalls per blob -------------------------------------------------------------


async def test_no_mkdir_chmod_or_utime_per_blob(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    await store.content.write_blob(b"warm-up")  # blobs/sha256 and ingest/ exist now
    calls: list[str] = []
    for name in ("mkdir", "fchmod", "utime", "chmod"):
        real = getattr(os, name)

        def spy(*args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            calls.append(_name)
            return _real(*args, **kw)

        monkeypatch.setattr(os, name, spy)
    data = blobs(20)
    await store.content.write_small_blobs([SmallBlob(d) for d in data], sync=False)
    await store.content.write_blob(b"one more", sync=False)
    expected_chmods = 0 if _umask_keeps_read_bits() else 21
    assert calls.count("mkdir") == 0
    assert calls.count("utime") == 0
    assert calls.count("fchmod") + calls.count("chmod") == expected_chmods
    for d in data:
        st = store.content.path(compute(d)).stat()
        assert st.st_mode & 0o777 == 0o444  # LAY-1: committed files read-only


async def test_missing_algorithm_directory_is_made_on_demand(store: Root) -> None:
    await store.content.write_blob(b"first")
    os.chmod(store.content.path(compute(b"first")), 0o644)
    os.unlink(store.content.path(compute(b"first")))
    (store.root / "blobs" / "sha256").rmdir()  # gone under us: the rename makes it again
    await store.content.write_small_blobs([SmallBlob(b"second")])
    assert files(store.root) == {compute(b"second")}


# -- the record transaction alone (no loop) ----------------------------------------------------


def test_the_batch_record_txn_creates_joins_and_checks_the_lease_once(tmp_path: Path) -> None:
    conn = _schema.connect(tmp_path / "meta.db")
    now = datetime(2026, 1, 1, tzinfo=UTC)
    a, b, c, gone = (str(compute(x)) for x in (b"a", b"b", b"c", b"gone"))
    try:
        _schema.run_txn(conn, True, _txn.lease_create, ("L", {}, now))
        _schema.run_txn(conn, True, _txn.content_commit, (None, a, 1, {}, None, now))
        labels = {"containerd.io/gc.ref.content.l.0": c}
        created, joined = _schema.run_txn(
            conn,
            True,
            _txn.content_commit_batch,
            ([(a, 1, {"x": "y"}), (b, 1, labels)], [a, gone], "L", now, "boot"),
        )
        assert created == [False, True]  # a was recorded: its labels are not replaced
        assert joined == [1, None]
        assert _txn.content_info(conn, a).labels == {}  # type: ignore[union-attr]
        assert _txn.content_info(conn, b).labels == labels  # type: ignore[union-attr]
        edges = conn.execute("SELECT owner, dst FROM edges WHERE owner_kind = 'content'")
        assert list(edges) == [(b, c)]  # GC-6: the label is an edge
        assert set(_txn.lease_resources(conn, "L")) == {("content", a), ("content", b)}
        assert _txn.content_unsynced(conn, "boot") == [b]  # only the row it created
        with pytest.raises(NotFound, match="lease does not exist"):
            _schema.run_txn(
                conn, True, _txn.content_commit_batch, ([(c, 1, {})], [], "no-such", now, None)
            )
        assert _txn.content_info(conn, c) is None  # rolled back whole
    finally:
        conn.close()
