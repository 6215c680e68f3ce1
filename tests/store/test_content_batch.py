"""``ContentStore.infos``: many records in one hop (CS-1 per blob, absent ones left out).

What the exporter's planning relies on: every record ``info`` would return, in ONE worker-
thread hop and one read transaction, whatever the number of digests (the ``IN`` lists are
chunked under SQLite's host-parameter limit); a malformed digest is refused before anything
is read; an absent digest is not an error.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import pytest

from castar.store import Root, _txn
from castar.store.digest import Digest, compute
from castar.store.errors import InvalidArgument

if TYPE_CHECKING:
    from conftest import Clock


def hop_counter(monkeypatch: pytest.MonkeyPatch) -> list[Callable[..., Any]]:
    """Record every ``anyio.to_thread.run_sync`` call (one worker-thread hop each)."""
    calls: list[Callable[..., Any]] = []
    real = anyio.to_thread.run_sync

    async def counting(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await real(fn, *args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    return calls


async def test_infos_of_present_blobs_equal_what_info_returns(store: Root, clock: Clock) -> None:
    a = await store.content.write_blob(b"a", labels={"k": "1", "z": "2"})
    b = await store.content.write_blob(b"bb")
    got = await store.content.infos([a.digest, b.digest])
    assert list(got) == [a.digest, b.digest]
    for d in (a.digest, b.digest):
        assert got[d] == await store.content.info(d)  # CS-1: same record, labels included
    assert dict(got[a.digest].labels) == {"k": "1", "z": "2"}
    assert got[b.digest].size == 2
    assert got[a.digest].created_at == clock.now


async def test_infos_leaves_absent_digests_out_instead_of_raising(store: Root) -> None:
    assert await store.content.infos([compute(b"never"), compute(b"stored")]) == {}


async def test_infos_of_mixed_and_repeated_digests_returns_each_present_once(
    store: Root,
) -> None:
    a = await store.content.write_blob(b"a")
    absent = compute(b"absent")
    got = await store.content.infos([absent, a.digest, str(a.digest), absent])
    assert list(got) == [a.digest]
    assert got[a.digest].size == 1


async def test_infos_of_a_deleted_blob_leaves_it_out(store: Root) -> None:
    a = await store.content.write_blob(b"a")
    await store.content.delete(a.digest)  # CS-6: Info reports it gone at once
    assert await store.content.infos([a.digest]) == {}


async def test_infos_with_a_malformed_digest_is_invalid_argument_before_any_read(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = await store.content.write_blob(b"a")
    hops = hop_counter(monkeypatch)
    with pytest.raises(InvalidArgument):
        await store.content.infos([a.digest, "sha256:nothex"])
    assert hops == []


async def test_infos_makes_one_worker_thread_hop_and_none_for_no_digests(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    blobs = [await store.content.write_blob(b"x" * i) for i in range(1, 6)]
    hops = hop_counter(monkeypatch)
    got = await store.content.infos(d.digest for d in blobs)  # any iterable
    assert len(got) == 5
    assert len(hops) == 1
    assert await store.content.infos([]) == {}
    assert len(hops) == 1


async def test_infos_of_thousands_of_digests_chunks_under_sqlites_variable_limit(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The old SQLite default (999 host parameters): one IN list of 2,500 would fail here.
    store._db._conn.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)
    wanted = [compute(f"absent {i}".encode()) for i in range(2500)]
    present: dict[Digest, int] = {}
    for pos in (0, _txn.IN_CHUNK - 1, _txn.IN_CHUNK, 2 * _txn.IN_CHUNK + 7, 2499):
        desc = await store.content.write_blob(f"blob {pos}".encode(), labels={"pos": str(pos)})
        wanted[pos] = desc.digest
        present[desc.digest] = pos
    hops = hop_counter(monkeypatch)
    got = await store.content.infos(wanted)
    assert len(hops) == 1
    assert list(got) == list(present)  # request order, across chunks
    for d, pos in present.items():
        assert dict(got[d].labels) == {"pos": str(pos)}  # each chunk's labels, not another's
        assert got[d].size == len(f"blob {pos}")


def test_content_infos_txn_returns_present_records_in_request_order() -> None:
    """The plain transaction function, without a loop: order, duplicates and absence."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    conn.execute(
        "CREATE TABLE content (digest TEXT PRIMARY KEY, size INTEGER NOT NULL,"
        " created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    conn.execute("CREATE TABLE content_labels (digest TEXT, key TEXT, value TEXT)")
    ts = "2026-01-01T12:00:00+00:00"
    ds = [compute(bytes([i])) for i in range(3)]  # validated Digests, as infos() passes them
    for i, d in enumerate(ds[:2]):
        conn.execute("INSERT INTO content VALUES (?, ?, ?, ?)", (d, i + 10, ts, ts))
    conn.execute("INSERT INTO content_labels VALUES (?, 'b', '2'), (?, 'a', '1')", (ds[1], ds[1]))
    recs = _txn.content_infos(conn, [ds[1], ds[2], ds[0], ds[1]])
    assert [(r.digest, r.size, dict(r.labels)) for r in recs] == [
        (ds[1], 11, {"a": "1", "b": "2"}),
        (ds[0], 10, {}),
    ]
