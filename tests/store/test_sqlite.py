"""SQLiteMetadataDB: schema versioning, edges derived from labels, transactions (LAY-4, GC-5).

The ``_txn`` functions are plain sync code, so most of this runs without an event loop.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from castar.store import _schema, _txn, open_root
from castar.store import sqlite as db
from castar.store.digest import compute
from castar.store.errors import (
    AlreadyExists,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)
A, B, C = compute(b"a"), compute(b"b"), compute(b"c")
REF = "containerd.io/gc.ref.content"


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sqlite3.Connection]:
    c = _schema.connect(tmp_path / "meta.db")
    yield c
    c.close()


def edges(conn: sqlite3.Connection) -> set[tuple[str, str, str, str]]:
    rows = conn.execute("SELECT src_kind, src, dst_kind, dst FROM edges").fetchall()
    return {tuple(r) for r in rows}


def write(conn: sqlite3.Connection, fn, *args):  # type: ignore[no-untyped-def]
    return _schema.run_txn(conn, True, fn, args)


def test_schema_is_versioned_and_reopen_is_idempotent(tmp_path: Path) -> None:
    first = _schema.connect(tmp_path / "meta.db")
    assert first.execute("PRAGMA user_version").fetchone() == (len(_schema.MIGRATIONS),)
    assert first.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    first.close()
    again = _schema.connect(tmp_path / "meta.db")  # no migration runs twice
    assert again.execute("PRAGMA user_version").fetchone() == (len(_schema.MIGRATIONS),)
    again.close()


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    raw = sqlite3.connect(tmp_path / "meta.db")
    raw.execute(f"PRAGMA user_version = {len(_schema.MIGRATIONS) + 1}")
    raw.close()
    with pytest.raises(DataLoss, match="newer than this castar"):
        _schema.connect(tmp_path / "meta.db")


def test_a_file_that_is_not_a_database_is_data_loss(tmp_path: Path) -> None:
    # sqlite3 errors are translated once, at the connection too (design-rules errors-seam)
    (tmp_path / "meta.db").write_bytes(b"not a database, " * 256)
    with pytest.raises(DataLoss, match="metadata database: file is not a database"):
        _schema.connect(tmp_path / "meta.db")


def test_label_writes_rederive_edges(conn: sqlite3.Connection) -> None:
    write(conn, _txn.content_commit, "r", A, 1, {f"{REF}.l.0": B}, None, NOW)
    assert edges(conn) == {("content", A, "content", B)}  # GC-5
    write(conn, _txn.content_labels, {A: {f"{REF}.l.0": "", f"{REF}/x": C}}, False, NOW)
    assert edges(conn) == {("content", A, "content", C)}
    write(conn, _txn.content_labels, {A: {"containerd.io/gc.bref.content": B}}, True, NOW)
    assert edges(conn) == {("content", B, "content", A)}  # GC-6: B keeps A
    write(conn, _txn.content_delete, A, None)
    assert edges(conn) == set()


def test_failed_transaction_rolls_back(conn: sqlite3.Connection) -> None:
    target = _schema.Descriptor("m", A, 1, {})
    write(conn, _txn.image_put, "x", target, {f"{REF}.a": B}, True, None, NOW)
    with pytest.raises(AlreadyExists):
        write(conn, _txn.image_put, "x", target, {f"{REF}.a": C}, True, None, NOW)
    assert edges(conn) == {("image", "x", "content", B)}
    assert not conn.in_transaction


def test_commit_of_recorded_digest_reports_false_and_drops_ingest(
    conn: sqlite3.Connection,
) -> None:
    assert write(conn, _txn.ingest_open, "r1", None, None, NOW, NOW) is False
    assert write(conn, _txn.content_commit, "r1", A, 1, {}, None, NOW) is True
    assert write(conn, _txn.ingest_open, "r2", None, None, NOW, NOW) is False
    assert write(conn, _txn.content_commit, "r2", A, 1, {}, None, NOW) is False  # ING-8.6
    assert conn.execute("SELECT count(*) FROM ingests").fetchone() == (0,)
    assert write(conn, _txn.ingest_open, "r3", A, None, NOW, NOW) is True  # ING-2


def test_lease_membership_requires_the_lease(conn: sqlite3.Connection) -> None:
    with pytest.raises(NotFound, match="lease does not exist"):  # LEASE-5
        write(conn, _txn.ingest_open, "r", None, "gone", None, NOW)
    assert conn.execute("SELECT count(*) FROM ingests").fetchone() == (0,)


def test_validate_labels_counts_utf8_bytes() -> None:
    db.validate_labels({"k": "é" * 2047})  # 1 + 4094 bytes
    with pytest.raises(InvalidArgument, match=r"\(4097 bytes\)"):  # LBL-1
        db.validate_labels({"kk": "é" * 2047 + "x"})


async def test_use_after_close_is_failed_precondition(tmp_path: Path) -> None:
    async with open_root(tmp_path / "root") as store:
        pass
    with pytest.raises(FailedPrecondition, match="metadata database"):
        await store.images.list()


async def test_opening_an_existing_store_writes_nothing(tmp_path: Path) -> None:
    # LAY-5: the schema check is one read; a write would reach meta.db at the closing checkpoint
    async with open_root(tmp_path / "root"):
        pass
    meta = tmp_path / "root" / "meta.db"
    os.utime(meta, ns=(0, 0))  # any write sets the mtime to now
    before = meta.read_bytes()
    async with open_root(tmp_path / "root") as store:
        assert await store.images.list() == []
    assert meta.stat().st_mtime_ns == 0
    assert meta.read_bytes() == before


class _Locked:
    """A connection whose WAL switch meets ``fails`` locks first (a root being created)."""

    def __init__(self, fails: int, message: str = "database is locked") -> None:
        self.fails, self.message, self.calls = fails, message, 0

    def execute(self, sql: str) -> None:
        assert sql == "PRAGMA journal_mode = WAL"
        self.calls += 1
        if self.calls <= self.fails:
            raise sqlite3.OperationalError(self.message)


def test_the_wal_switch_waits_out_other_processes_creating_the_root() -> None:
    # SQLite does not wait under busy_timeout for the exclusive lock this pragma takes, so
    # processes opening one new root at once met "database is locked" (a stress finding).
    conn = _Locked(fails=3)
    _schema._wal(conn)  # type: ignore[arg-type]
    assert conn.calls == 4


def test_the_wal_switch_raises_other_errors_at_once() -> None:
    conn = _Locked(fails=1, message="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        _schema._wal(conn)  # type: ignore[arg-type]
    assert conn.calls == 1


def test_the_wal_switch_gives_up_after_the_busy_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_schema, "_BUSY_SECONDS", 0)
    conn = _Locked(fails=1 << 30)
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        _schema._wal(conn)  # type: ignore[arg-type]
    assert conn.calls <= 2
