"""Leases through the public store: LEASE-1..7, and what they protect from GC."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

import anyio
import pytest

from castar.store import Root, current_lease
from castar.store.digest import compute
from castar.store.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    NotImplementedKind,
)

if TYPE_CHECKING:
    from conftest import Clock

D1 = compute(b"one")


async def test_random_id_shape_and_created_at(store: Root, clock: Clock) -> None:
    lease = await store.leases.create()
    assert re.fullmatch(r"[0-9]{1,9}-[A-Za-z0-9_-]{4}", lease.id)  # LEASE-1
    assert lease.created_at == clock.now
    assert lease.expires_at is None
    assert [x.id for x in await store.leases.list()] == [lease.id]


async def test_empty_id_and_duplicate_id(store: Root) -> None:
    with pytest.raises(InvalidArgument, match="lease id must be provided"):  # LEASE-1
        await store.leases.create("")
    await store.leases.create("x")
    with pytest.raises(AlreadyExists) as err:
        await store.leases.create("x")
    assert str(err.value) == 'lease "x": already exists'


async def test_expire_sets_second_precision_gc_expire_label(store: Root, clock: Clock) -> None:
    lease = await store.leases.create("e", expire=timedelta(hours=1), labels={"a": "b"})
    assert dict(lease.labels) == {  # LEASE-2
        "a": "b",
        "containerd.io/gc.expire": "2026-01-01T13:00:00Z",
    }
    assert lease.expires_at == datetime(2026, 1, 1, 13, tzinfo=UTC)
    assert (await store.leases.list())[0] == lease


async def test_flat_label(store: Root) -> None:
    lease = await store.leases.create("f", labels={"containerd.io/gc.flat": "1"})
    assert lease.flat  # LEASE-2


async def test_delete_missing_is_not_found(store: Root) -> None:
    with pytest.raises(NotFound) as err:  # LEASE-3
        await store.leases.delete("nope")
    assert str(err.value) == 'lease "nope": not found'


async def test_list_is_ascending_by_id(store: Root) -> None:
    for i in ("c", "a", "b"):
        await store.leases.create(i)
    assert [x.id for x in await store.leases.list()] == ["a", "b", "c"]  # LEASE-7


async def test_resources_validation_and_order(store: Root) -> None:
    await store.leases.create("r")
    await store.leases.add_resource("r", "ingests", "ref-1")
    await store.leases.add_resource("r", "images", "img")
    await store.leases.add_resource("r", "content", D1)
    assert await store.leases.list_resources("r") == [  # LEASE-4 order
        ("content", D1),
        ("images", "img"),
        ("ingests", "ref-1"),
    ]
    with pytest.raises(InvalidArgument, match="invalid content resource id"):
        await store.leases.add_resource("r", "content", "not-a-digest")
    with pytest.raises(InvalidArgument):
        await store.leases.add_resource("r", "content/x", D1)
    with pytest.raises(NotImplementedKind, match="resource type widgets not supported yet"):
        await store.leases.add_resource("r", "widgets", "w")
    with pytest.raises(NotFound):
        await store.leases.add_resource("missing", "content", D1)
    await store.leases.delete_resource("r", "images", "img")
    assert ("images", "img") not in await store.leases.list_resources("r")


async def test_add_resources_adds_many_of_one_type_or_none(store: Root) -> None:
    await store.leases.create("r")
    d2 = compute(b"two")
    await store.leases.add_resources("r", "content", [D1, d2, D1])
    assert await store.leases.list_resources("r") == sorted([("content", D1), ("content", d2)])
    with pytest.raises(InvalidArgument, match="invalid content resource id"):
        await store.leases.add_resources("r", "content", [compute(b"three"), "not-a-digest"])
    assert len(await store.leases.list_resources("r")) == 2  # checked before anything is added
    with pytest.raises(NotFound):
        await store.leases.add_resources("missing", "content", [D1])


async def test_lease_context_is_current_inherited_and_deleted(store: Root) -> None:
    assert current_lease() is None
    seen: list[str | None] = []

    async def child() -> None:
        lease = current_lease()
        seen.append(None if lease is None else lease.id)

    async with store.leases.hold() as outer:
        assert current_lease() == outer
        async with store.leases.hold() as inner:
            assert current_lease() == inner  # innermost wins
            async with anyio.create_task_group() as tg:
                tg.start_soon(child)  # child tasks inherit it
        assert current_lease() == outer
    assert current_lease() is None
    assert seen == [inner.id]
    assert await store.leases.list() == []  # both deleted at exit


async def test_lease_is_deleted_when_block_is_cancelled(store: Root) -> None:
    with anyio.move_on_after(0.05):
        async with store.leases.hold():
            await anyio.sleep_forever()
    assert await store.leases.list() == []
    assert current_lease() is None


async def test_content_written_under_lease_joins_it_and_is_protected(store: Root) -> None:
    async with store.leases.hold() as lease:
        desc = await store.content.write_blob(b"one")
        async with store.content.writer("open-ref") as w:
            await w.write(b"partial")
            assert await store.leases.list_resources(lease.id) == [  # LEASE-5
                ("content", desc.digest),
                ("ingests", "open-ref"),
            ]
            report = await store.gc()
            assert (report.removed, report.ingests_removed) == ([], [])
        assert await store.explain(desc.digest) == [f"lease {lease.id}", desc.digest]
    report = await store.gc()  # released: now garbage
    assert report.removed == [desc.digest]
    assert report.ingests_removed == ["open-ref"]


async def test_recorded_digest_opened_under_lease_joins_it(store: Root) -> None:
    desc = await store.content.write_blob(b"one")
    async with store.leases.hold() as lease:
        desc2 = await store.content.write_blob(b"unread", digest=desc.digest)  # ING-2
        assert desc2.digest == desc.digest
        assert await store.leases.list_resources(lease.id) == [("content", desc.digest)]
        assert (await store.gc()).removed == []


async def test_expired_lease_no_longer_protects(store: Root, clock: Clock) -> None:
    async with store.leases.hold(expire=timedelta(minutes=10)) as lease:
        desc = await store.content.write_blob(b"one")
        clock.now += timedelta(minutes=11)
        report = await store.gc()  # GC-3
        assert report.leases_removed == [lease.id]
        assert report.removed == [desc.digest]
    assert await store.leases.list() == []  # exit tolerates the lease GC removed


async def test_writing_under_a_vanished_lease_is_not_found(store: Root) -> None:
    async with store.leases.hold() as lease:
        await store.leases.delete(lease.id)
        with pytest.raises(NotFound, match="lease does not exist"):  # LEASE-5
            await store.content.write_blob(b"one")


async def test_operation_leases_skip_the_fsync_user_leases_keep_it(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LeaseManager.hold() guards one operation while it runs: its rows are written without the
    # WAL fsync. A lease made through LeaseManager (`castar lease create`) stays durable.
    from castar.store import sqlite

    seen: list[tuple[str, bool]] = []
    real = sqlite.run_txn

    def spy(conn, write, fn, args, durable=True):  # type: ignore[no-untyped-def]
        if fn.__name__.startswith("lease_"):
            seen.append((fn.__name__, durable))
        return real(conn, write, fn, args, durable)

    monkeypatch.setattr(sqlite, "run_txn", spy)
    async with store.leases.hold():
        pass
    await store.leases.create("kept")
    await store.leases.delete("kept")
    assert seen == [
        ("lease_create", False),
        ("lease_delete", False),
        ("lease_create", True),
        ("lease_delete", True),
    ]
