"""The metadata DB's tables and migrations, its rows, and ``run_txn`` (sync, for threads)."""

from __future__ import annotations

import contextlib
import random
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar, final

from castar.store.errors import (
    CastarError,
    DataLoss,
    FailedPrecondition,
    Unavailable,
    UsageError,
    shorten,
)
from castar.store.labels import EXPIRE, FLAT, parse_expire

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence
    from pathlib import Path

    from castar.store.digest import Digest
    from castar.store.labels import Edge

__all__ = [
    "MIGRATIONS",
    "Descriptor",
    "GCGraph",
    "Image",
    "Info",
    "Lease",
    "connect",
    "from_ts",
    "run_txn",
    "to_ts",
]

T = TypeVar("T")

#: How long a statement waits for another process's lock on the database (busy_timeout).
_BUSY_SECONDS: Final = 60

#: Each entry moves the schema from version ``i`` to ``i + 1`` (``PRAGMA user_version``).
MIGRATIONS: Final[list[list[str]]] = [
    [
        """CREATE TABLE content (
            digest TEXT PRIMARY KEY, size INTEGER NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        """CREATE TABLE content_labels (
            digest TEXT NOT NULL REFERENCES content(digest) ON DELETE CASCADE,
            key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (digest, key))""",
        # One row per reference label (GC-5, GC-6): owner is the labelled object, the edge runs
        # src -> dst (for back references src is the referenced object, dst the owner).
        """CREATE TABLE edges (
            owner_kind TEXT NOT NULL, owner TEXT NOT NULL, key TEXT NOT NULL,
            src_kind TEXT NOT NULL, src TEXT NOT NULL, dst_kind TEXT NOT NULL, dst TEXT NOT NULL,
            PRIMARY KEY (owner_kind, owner, key))""",
        "CREATE INDEX edges_src ON edges (src_kind, src)",
        """CREATE TABLE images (
            name TEXT PRIMARY KEY, media_type TEXT NOT NULL, digest TEXT NOT NULL,
            size INTEGER NOT NULL, annotations TEXT NOT NULL,
            created_at TEXT NOT NULL, updated_at TEXT NOT NULL)""",
        """CREATE TABLE image_labels (
            name TEXT NOT NULL REFERENCES images(name) ON DELETE CASCADE,
            key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (name, key))""",
        "CREATE TABLE leases (id TEXT PRIMARY KEY, created_at TEXT NOT NULL)",
        """CREATE TABLE lease_labels (
            id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
            key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (id, key))""",
        """CREATE TABLE lease_resources (
            id TEXT NOT NULL REFERENCES leases(id) ON DELETE CASCADE,
            type TEXT NOT NULL, resource TEXT NOT NULL, PRIMARY KEY (id, type, resource))""",
        """CREATE TABLE ingests (
            ref TEXT PRIMARY KEY, expected TEXT, expires_at TEXT, created_at TEXT NOT NULL)""",
    ],
    [
        # Deferred sync: a blob committed without fsync carries the boot id it was written in
        # until ContentStore.sync() has synced the filesystem; a row whose boot id is not the
        # running one outlived a machine crash and its data may be torn (open_root drops it).
        "ALTER TABLE content ADD COLUMN unsynced_boot TEXT",
        "CREATE INDEX content_unsynced ON content (unsynced_boot) WHERE unsynced_boot IS NOT NULL",
    ],
    [
        # LEASE-8: an operation lease names its owner lock (``<root>/owners/<owner>/lock``);
        # NULL (every lease of an older store, and user leases) means it has no owner.
        "ALTER TABLE leases ADD COLUMN owner TEXT",
    ],
]


@final
@dataclass(frozen=True, slots=True)
class Descriptor:
    """What the store keeps of a target (DESC-5): media type, digest, size, annotations."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class Info:
    """A recorded blob (CS-1)."""

    digest: Digest
    size: int
    labels: Mapping[str, str]
    created_at: datetime
    updated_at: datetime


@final
@dataclass(frozen=True, slots=True)
class Image:
    """An image record (IMG-1)."""

    name: str
    target: Descriptor
    labels: Mapping[str, str]
    created_at: datetime
    updated_at: datetime


@final
@dataclass(frozen=True, slots=True)
class Lease:
    """A lease: ``id``, creation time (UTC) and labels (LEASE-1)."""

    id: str
    created_at: datetime
    labels: Mapping[str, str]

    @property
    def expires_at(self) -> datetime | None:
        """The ``containerd.io/gc.expire`` time, or None when absent or unparsable."""
        value = self.labels.get(EXPIRE)
        return None if value is None else parse_expire(value)

    @property
    def flat(self) -> bool:
        """True when labelled ``containerd.io/gc.flat`` (GC-4: only the listed objects live)."""
        return bool(self.labels.get(FLAT))


@dataclass(frozen=True, slots=True)
class GCGraph:
    """Everything GC needs, read in one transaction."""

    leases: Sequence[Lease]
    resources: Sequence[tuple[str, str, str]]  # (lease id, type, resource)
    images: Sequence[tuple[str, Digest, Mapping[str, str]]]  # (name, target digest, labels)
    content: Mapping[Digest, tuple[int, Mapping[str, str]]]  # digest -> (size, labels)
    ingests: Sequence[tuple[str, str | None, datetime | None]]  # (ref, expected, expires_at)
    edges: Sequence[Edge] = ()
    owners: Mapping[str, str] = field(default_factory=dict)  # lease id -> owner (LEASE-8)


def to_ts(dt: datetime) -> str:
    """How a timestamp is stored: ISO 8601 in UTC (sorts as text)."""
    return dt.astimezone(UTC).isoformat()


def from_ts(text: str) -> datetime:
    """A stored timestamp back as an aware datetime."""
    return datetime.fromisoformat(text)


@contextlib.contextmanager
def _map_sqlite_errors() -> Iterator[None]:
    """Translate ``sqlite3`` errors into castar's categories, once, here (errors-seam)."""
    try:
        yield
    except CastarError:
        raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise Unavailable(f"metadata database: {exc}") from exc
        raise CastarError(f"metadata database: {exc}") from exc
    except sqlite3.ProgrammingError as exc:  # e.g. used after aclose()
        raise FailedPrecondition(f"metadata database: {exc}") from exc
    except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
        raise DataLoss(f"metadata database: {exc}") from exc


def _migrate(conn: sqlite3.Connection) -> None:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > len(MIGRATIONS):
        raise DataLoss(f"metadata schema version {version} is newer than this castar")
    for i in range(version, len(MIGRATIONS)):
        for stmt in MIGRATIONS[i]:
            conn.execute(stmt)
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")


def connect(path: Path, read_only: bool = False) -> sqlite3.Connection:
    """Open ``path`` in WAL mode with foreign keys on and migrate it to ``len(MIGRATIONS)``.

    ``read_only``: open it as it is (a read-only root), never writing, not even at open.
    """
    where = f"store root {shorten(str(path.parent))}"
    with _map_sqlite_errors():
        if read_only:
            return _connect_read_only(path, where)
        try:
            conn = sqlite3.connect(
                path, isolation_level=None, check_same_thread=False, timeout=_BUSY_SECONDS
            )
        except sqlite3.OperationalError as exc:  # /proc, a directory: no store can live there
            raise UsageError(f"{where}: cannot create {path.name}: {exc}") from exc
        try:
            conn.execute(f"PRAGMA busy_timeout = {_BUSY_SECONDS * 1000}")
            _wal(conn)
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            # LAY-5: a current schema costs this one read; only a migration writes
            if conn.execute("PRAGMA user_version").fetchone() != (len(MIGRATIONS),):
                run_txn(conn, True, _migrate, ())
        except BaseException:
            conn.close()
            raise
    return conn


def _wal(conn: sqlite3.Connection) -> None:
    """Switch a new database to WAL, waiting out other processes creating it at once.

    Turning a rollback-journal database into WAL takes an exclusive lock that SQLite does
    not wait for under ``busy_timeout``: several processes opening one new root at once get
    "database is locked" from this pragma alone. Once a database is WAL it stays WAL, so
    this waits only while a root is being created.
    """
    deadline = time.monotonic() + _BUSY_SECONDS
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.005 + 0.02 * random.random())


def _connect_read_only(path: Path, where: str) -> sqlite3.Connection:
    if not path.exists():
        raise UsageError(f"{where}: read-only, and holds no store")
    uri = f"file:{urllib.parse.quote(str(path))}"
    try:  # through the -wal and -shm files of a live writer
        return _open_read_only(f"{uri}?mode=ro", path)
    except sqlite3.OperationalError:  # none: a read-only directory can have no writer
        return _open_read_only(f"{uri}?immutable=1", path)


def _open_read_only(uri: str, path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version != len(MIGRATIONS):
            raise FailedPrecondition(
                f"store is read-only: {path.parent}: schema {version}, not {len(MIGRATIONS)}"
            )
    except BaseException:
        conn.close()
        raise
    return conn


def run_txn(
    conn: sqlite3.Connection,
    write: bool,
    fn: Callable[..., T],
    args: tuple[object, ...],
    durable: bool = True,
) -> T:
    """Run ``fn(conn, *args)`` as one transaction: committed if it returns, rolled back if not.

    Writes ``BEGIN IMMEDIATE`` so two processes never deadlock; non-durable skips the WAL fsync.
    """
    with _map_sqlite_errors():
        if not durable:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
            try:
                result = fn(conn, *args)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous = FULL")
    return result
