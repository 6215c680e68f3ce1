"""SQLiteMetadataDB: a store's metadata (content records, labels, images, leases, ingests, edges).

Owns the schema, its ``user_version`` migrations and one transaction per public method. Each
method runs a plain sync ``_txn_*(conn, ...)`` function in a worker thread behind a
``CapacityLimiter(1)`` (STYLE §3.2 seam 3), so SQL never runs on the event loop. Imports the pure
label vocabulary from ``castar.store.gc``; never imports the file backend or anything of OCI.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, TypeVar, final

import anyio
import anyio.to_thread

from castar.store.digest import Digest
from castar.store.errors import (
    AlreadyExists,
    CastarError,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from castar.store.gc import Edge, label_edges

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from pathlib import Path

__all__ = [
    "MAX_LABEL",
    "ContentRecord",
    "GCGraph",
    "ImageRecord",
    "ImageTarget",
    "LeaseRecord",
    "SQLiteMetadataDB",
    "validate_labels",
]

T = TypeVar("T")

#: LBL-1: a label's key plus value may not exceed this many bytes.
MAX_LABEL: Final = 4096

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
]


def validate_labels(labels: Mapping[str, str]) -> None:
    """Check every label against LBL-1 (content, image and lease labels alike).

    Raises:
        InvalidArgument: a key plus its value is longer than 4096 bytes.
    """
    for key, value in labels.items():
        n = len(key.encode()) + len(value.encode())
        if n > MAX_LABEL:
            raise InvalidArgument(
                f"label key and value length ({n} bytes) greater than maximum size "
                f"({MAX_LABEL} bytes), key: {key[:64]}"
            )


@dataclass(frozen=True, slots=True)
class ContentRecord:
    """A content row: what ``ContentStore.info`` returns as ``Info``."""

    digest: Digest
    size: int
    labels: Mapping[str, str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ImageRecord:
    """An image row; the target is kept as its four DESC-5 fields."""

    name: str
    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str]
    labels: Mapping[str, str]
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class ImageTarget:
    """The four fields of a target descriptor an image record keeps (DESC-5)."""

    media_type: str
    digest: Digest
    size: int
    annotations: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    """A lease row with its labels."""

    id: str
    created_at: datetime
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class GCGraph:
    """Everything GC needs, read in one transaction."""

    leases: Sequence[LeaseRecord]
    resources: Sequence[tuple[str, str, str]]  # (lease id, type, resource)
    images: Sequence[tuple[str, Digest, Mapping[str, str]]]  # (name, target digest, labels)
    content: Mapping[Digest, tuple[int, Mapping[str, str]]]  # digest -> (size, labels)
    ingests: Sequence[tuple[str, str | None, datetime | None]]  # (ref, expected, expires_at)
    edges: Sequence[Edge] = ()


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat()


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text)


# --- transactions: plain sync functions, one per public operation -------------------------------


def _labels(conn: sqlite3.Connection, table: str, col: str, key: str) -> dict[str, str]:
    rows = conn.execute(f"SELECT key, value FROM {table} WHERE {col} = ? ORDER BY key", (key,))
    return dict(rows.fetchall())


def _set_labels(
    conn: sqlite3.Connection, table: str, col: str, owner: str, labels: Mapping[str, str]
) -> None:
    conn.execute(f"DELETE FROM {table} WHERE {col} = ?", (owner,))
    conn.executemany(
        f"INSERT INTO {table} ({col}, key, value) VALUES (?, ?, ?)",
        [(owner, k, v) for k, v in labels.items()],
    )


def _set_edges(
    conn: sqlite3.Connection, owner_kind: str, owner: str, labels: Mapping[str, str]
) -> None:
    conn.execute("DELETE FROM edges WHERE owner_kind = ? AND owner = ?", (owner_kind, owner))
    conn.executemany(
        "INSERT INTO edges VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            (owner_kind, owner, e.key, e.src_kind, e.src, e.dst_kind, e.dst)
            for e in label_edges(owner_kind, owner, labels)
        ],
    )


def _txn_content_info(conn: sqlite3.Connection, digest: str) -> ContentRecord | None:
    row = conn.execute(
        "SELECT size, created_at, updated_at FROM content WHERE digest = ?", (digest,)
    ).fetchone()
    if row is None:
        return None
    labels = _labels(conn, "content_labels", "digest", digest)
    return ContentRecord(Digest(digest), row[0], labels, _dt(row[1]), _dt(row[2]))


def _txn_content_list(conn: sqlite3.Connection) -> list[ContentRecord]:
    labels: dict[str, dict[str, str]] = {}
    for d, k, v in conn.execute("SELECT digest, key, value FROM content_labels"):
        labels.setdefault(d, {})[k] = v
    rows = conn.execute("SELECT digest, size, created_at, updated_at FROM content ORDER BY digest")
    return [ContentRecord(Digest(d), s, labels.get(d, {}), _dt(c), _dt(u)) for d, s, c, u in rows]


def _txn_content_labels(
    conn: sqlite3.Connection, digest: str, labels: Mapping[str, str], replace: bool, now: datetime
) -> ContentRecord:
    current = _txn_content_info(conn, digest)
    if current is None:
        raise NotFound(f"content digest {digest}")
    merged = {} if replace else dict(current.labels)
    for k, v in labels.items():
        if v:
            merged[k] = v
        else:
            merged.pop(k, None)
    _set_labels(conn, "content_labels", "digest", digest, merged)
    _set_edges(conn, "content", digest, merged)
    conn.execute("UPDATE content SET updated_at = ? WHERE digest = ?", (_ts(now), digest))
    return ContentRecord(current.digest, current.size, merged, current.created_at, now)


def _lease_exists(conn: sqlite3.Connection, lease: str) -> None:
    if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is None:
        raise NotFound("lease does not exist")


def _add_resource(conn: sqlite3.Connection, lease: str, type_: str, resource: str) -> None:
    _lease_exists(conn, lease)
    conn.execute("INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?)", (lease, type_, resource))


def _txn_content_delete(conn: sqlite3.Connection, digest: str, lease: str | None) -> None:
    if conn.execute("DELETE FROM content WHERE digest = ?", (digest,)).rowcount == 0:
        raise NotFound(f"content digest {digest}")
    conn.execute("DELETE FROM edges WHERE owner_kind = 'content' AND owner = ?", (digest,))
    if lease is not None:  # CS-6: the digest leaves the context lease
        conn.execute(
            "DELETE FROM lease_resources WHERE id = ? AND type = 'content' AND resource = ?",
            (lease, digest),
        )


def _txn_ingest_open(
    conn: sqlite3.Connection,
    ref: str,
    expected: str | None,
    lease: str | None,
    expires_at: datetime | None,
    now: datetime,
) -> bool:
    """Record an ingest before its backend writer opens; True when ``expected`` is recorded."""
    if lease is not None:
        _lease_exists(conn, lease)
    if expected is not None:
        hit = conn.execute("SELECT 1 FROM content WHERE digest = ?", (expected,)).fetchone()
        if hit is not None:  # ING-2: join the lease first, so a concurrent delete cannot orphan it
            if lease is not None:
                _add_resource(conn, lease, "content", expected)
            return True
    conn.execute(
        "INSERT INTO ingests (ref, expected, expires_at, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (ref) DO UPDATE SET expected = excluded.expected,"
        " expires_at = CASE WHEN ingests.expires_at IS NULL OR excluded.expires_at IS NULL"
        " THEN NULL ELSE max(ingests.expires_at, excluded.expires_at) END",
        (ref, expected, None if lease is not None else _ts(expires_at or now), _ts(now)),
    )
    if lease is not None:
        _add_resource(conn, lease, "ingests", ref)
    return False


def _txn_content_commit(
    conn: sqlite3.Connection,
    ref: str,
    digest: str,
    size: int,
    labels: Mapping[str, str],
    lease: str | None,
    now: datetime,
) -> bool:
    """Record a committed blob; False when it was recorded already (ING-8.6)."""
    conn.execute("DELETE FROM ingests WHERE ref = ?", (ref,))
    conn.execute("DELETE FROM lease_resources WHERE type = 'ingests' AND resource = ?", (ref,))
    created = conn.execute(
        "INSERT OR IGNORE INTO content VALUES (?, ?, ?, ?)", (digest, size, _ts(now), _ts(now))
    ).rowcount
    if created:
        _set_labels(conn, "content_labels", "digest", digest, labels)
        _set_edges(conn, "content", digest, labels)
    if lease is not None:
        _add_resource(conn, lease, "content", digest)
    return bool(created)


def _txn_ingest_delete(conn: sqlite3.Connection, ref: str) -> bool:
    conn.execute("DELETE FROM lease_resources WHERE type = 'ingests' AND resource = ?", (ref,))
    return conn.execute("DELETE FROM ingests WHERE ref = ?", (ref,)).rowcount > 0


def _image_row(conn: sqlite3.Connection, row: tuple[str, ...]) -> ImageRecord:
    name, mt, d, size, ann, c, u = row
    labels = _labels(conn, "image_labels", "name", name)
    return ImageRecord(name, mt, Digest(d), int(size), json.loads(ann), labels, _dt(c), _dt(u))


_IMAGE_COLS: Final = "name, media_type, digest, size, annotations, created_at, updated_at"


def _txn_image_get(conn: sqlite3.Connection, name: str) -> ImageRecord | None:
    row = conn.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE name = ?", (name,)).fetchone()
    return None if row is None else _image_row(conn, row)


def _txn_image_list(conn: sqlite3.Connection) -> list[ImageRecord]:
    rows = conn.execute(f"SELECT {_IMAGE_COLS} FROM images ORDER BY name").fetchall()
    return [_image_row(conn, r) for r in rows]


def _txn_image_put(
    conn: sqlite3.Connection,
    name: str,
    target: ImageTarget | None,
    labels: Mapping[str, str] | None,
    create: bool,
    lease: str | None,
    now: datetime,
) -> ImageRecord:
    """Create (``create``) or update an image; on update, None keeps the target or labels."""
    old = _txn_image_get(conn, name)
    if create and old is not None:
        raise AlreadyExists(f'image "{name}"')
    if old is None and not create:
        raise NotFound(f'image "{name}"')
    if target is None:
        assert old is not None  # creating always passes a target
        target = ImageTarget(old.media_type, old.digest, old.size, old.annotations)
    if labels is None:
        labels = {} if old is None else old.labels
    created = now if old is None else old.created_at
    rec = ImageRecord(
        name,
        target.media_type,
        target.digest,
        target.size,
        dict(target.annotations),
        dict(labels),
        created,
        now,
    )
    conn.execute(
        "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            rec.name,
            rec.media_type,
            rec.digest,
            rec.size,
            json.dumps(dict(rec.annotations), sort_keys=True),
            _ts(rec.created_at),
            _ts(rec.updated_at),
        ),
    )
    _set_labels(conn, "image_labels", "name", name, rec.labels)
    _set_edges(conn, "image", name, rec.labels)
    if lease is not None and "containerd.io/gc.expire" in rec.labels:  # IMG-6
        _add_resource(conn, lease, "images", name)
    return rec


def _txn_image_delete(conn: sqlite3.Connection, name: str, target: str | None) -> None:
    row = conn.execute("SELECT digest FROM images WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f'image "{name}"')
    if target is not None and row[0] != target:
        raise NotFound(f'image "{name}" has target {row[0]}, not {target}')
    conn.execute("DELETE FROM images WHERE name = ?", (name,))
    conn.execute("DELETE FROM edges WHERE owner_kind = 'image' AND owner = ?", (name,))


def _txn_lease_create(
    conn: sqlite3.Connection, id_: str, labels: Mapping[str, str], now: datetime
) -> LeaseRecord:
    try:
        conn.execute("INSERT INTO leases VALUES (?, ?)", (id_, _ts(now)))
    except sqlite3.IntegrityError:
        raise AlreadyExists(f'lease "{id_}"') from None
    _set_labels(conn, "lease_labels", "id", id_, labels)
    return LeaseRecord(id_, now, dict(labels))


def _lease_labels_all(conn: sqlite3.Connection) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for i, k, v in conn.execute("SELECT id, key, value FROM lease_labels"):
        out.setdefault(i, {})[k] = v
    return out


def _txn_lease_list(conn: sqlite3.Connection) -> list[LeaseRecord]:
    labels = _lease_labels_all(conn)
    rows = conn.execute("SELECT id, created_at FROM leases ORDER BY id").fetchall()
    return [LeaseRecord(i, _dt(c), labels.get(i, {})) for i, c in rows]


def _txn_lease_delete(conn: sqlite3.Connection, id_: str) -> None:
    if conn.execute("DELETE FROM leases WHERE id = ?", (id_,)).rowcount == 0:
        raise NotFound(f'lease "{id_}"')


def _txn_lease_resources(conn: sqlite3.Connection, id_: str) -> list[tuple[str, str]]:
    if conn.execute("SELECT 1 FROM leases WHERE id = ?", (id_,)).fetchone() is None:
        raise NotFound(f'lease "{id_}"')
    order = {"content": 0, "images": 1, "ingests": 2}
    rows = conn.execute(
        "SELECT type, resource FROM lease_resources WHERE id = ? ORDER BY resource", (id_,)
    ).fetchall()
    return sorted(((t, r) for t, r in rows), key=lambda tr: (order.get(tr[0], 3), tr[0], tr[1]))


def _txn_lease_add(conn: sqlite3.Connection, id_: str, type_: str, resource: str) -> None:
    if conn.execute("SELECT 1 FROM leases WHERE id = ?", (id_,)).fetchone() is None:
        raise NotFound(f'lease "{id_}"')
    _add_resource(conn, id_, type_, resource)


def _txn_lease_remove(conn: sqlite3.Connection, id_: str, type_: str, resource: str) -> None:
    conn.execute(
        "DELETE FROM lease_resources WHERE id = ? AND type = ? AND resource = ?",
        (id_, type_, resource),
    )


def _txn_gc_graph(conn: sqlite3.Connection) -> GCGraph:
    lease_labels = _lease_labels_all(conn)
    leases = [
        LeaseRecord(i, _dt(c), lease_labels.get(i, {}))
        for i, c in conn.execute("SELECT id, created_at FROM leases ORDER BY id")
    ]
    resources = [
        (i, t, r) for i, t, r in conn.execute("SELECT id, type, resource FROM lease_resources")
    ]
    image_labels: dict[str, dict[str, str]] = {}
    for n, k, v in conn.execute("SELECT name, key, value FROM image_labels"):
        image_labels.setdefault(n, {})[k] = v
    images = [
        (n, Digest(d), image_labels.get(n, {}))
        for n, d in conn.execute("SELECT name, digest FROM images ORDER BY name")
    ]
    content_labels: dict[str, dict[str, str]] = {}
    for d, k, v in conn.execute("SELECT digest, key, value FROM content_labels"):
        content_labels.setdefault(d, {})[k] = v
    content = {
        Digest(d): (s, content_labels.get(d, {}))
        for d, s in conn.execute("SELECT digest, size FROM content ORDER BY digest")
    }
    ingests = [
        (r, e, None if x is None else _dt(x))
        for r, e, x in conn.execute("SELECT ref, expected, expires_at FROM ingests ORDER BY ref")
    ]
    edges = [
        Edge(k, sk, s, dk, d)
        for k, sk, s, dk, d in conn.execute("SELECT key, src_kind, src, dst_kind, dst FROM edges")
    ]
    return GCGraph(leases, resources, images, content, ingests, edges)


def _txn_gc_sweep(
    conn: sqlite3.Connection, decide: Callable[[GCGraph], Iterable[tuple[str, str]]], dry_run: bool
) -> tuple[GCGraph, list[tuple[str, str]]]:
    """Read the graph, let ``decide`` pick the nodes to remove, remove them: one write txn."""
    graph = _txn_gc_graph(conn)
    doomed = list(decide(graph))
    if dry_run:
        return graph, doomed
    for kind, key in doomed:
        if kind == "content":
            conn.execute("DELETE FROM content WHERE digest = ?", (key,))
            conn.execute("DELETE FROM edges WHERE owner_kind = 'content' AND owner = ?", (key,))
            conn.execute(
                "DELETE FROM lease_resources WHERE type = 'content' AND resource = ?", (key,)
            )
        elif kind == "image":
            conn.execute("DELETE FROM images WHERE name = ?", (key,))
            conn.execute("DELETE FROM edges WHERE owner_kind = 'image' AND owner = ?", (key,))
            conn.execute(
                "DELETE FROM lease_resources WHERE type = 'images' AND resource = ?", (key,)
            )
        elif kind == "lease":
            conn.execute("DELETE FROM leases WHERE id = ?", (key,))
        elif kind == "ingest":
            _txn_ingest_delete(conn, key)
    return graph, doomed


def _txn_gc_kept(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    """Digests the content sweep must keep (recorded or expected by an ingest) and ingest refs."""
    keep = {d for (d,) in conn.execute("SELECT digest FROM content")}
    refs: set[str] = set()
    for ref, expected in conn.execute("SELECT ref, expected FROM ingests"):
        refs.add(ref)
        if expected is not None:
            keep.add(expected)
    return keep, refs


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = conn.execute("PRAGMA user_version").fetchone()
        if version > len(MIGRATIONS):
            raise DataLoss(f"metadata schema version {version} is newer than this castar")
        for i in range(version, len(MIGRATIONS)):
            for stmt in MIGRATIONS[i]:
                conn.execute(stmt)
        conn.execute(f"PRAGMA user_version = {len(MIGRATIONS)}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=60)
    try:
        conn.execute("PRAGMA busy_timeout = 60000")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA foreign_keys = ON")
        _migrate(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def _in_txn(
    conn: sqlite3.Connection,
    write: bool,
    fn: Callable[..., T],
    args: tuple[object, ...],
    durable: bool = True,
) -> T:
    # Write transactions take the RESERVED lock up front (BEGIN IMMEDIATE) so two processes never
    # deadlock upgrading read locks; busy_timeout makes the loser wait instead of failing.
    # A non-durable write skips the WAL fsync (synchronous=NORMAL): it may be lost in a power
    # cut, never reordered after a later durable commit, and the database stays consistent.
    try:
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
    except CastarError:
        raise
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise Unavailable(f"metadata database: {exc}") from exc
        raise CastarError(f"metadata database: {exc}") from exc
    except sqlite3.ProgrammingError as exc:  # e.g. used after aclose()
        raise FailedPrecondition(f"metadata database: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise DataLoss(f"metadata database: {exc}") from exc
    return result


@final
class SQLiteMetadataDB:
    """The metadata database at ``<root>/meta.db`` (SQLite in WAL mode, LAY-4).

    Every method is one transaction, run in a worker thread; a ``CapacityLimiter(1)`` serialises
    this process's use of its single connection. Several processes may open the same file: write
    transactions start with ``BEGIN IMMEDIATE`` and wait on ``busy_timeout``.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._limiter = anyio.CapacityLimiter(1)

    @classmethod
    async def open(cls, path: Path) -> SQLiteMetadataDB:
        """Open (creating and migrating as needed) the database file at ``path``."""
        conn = await anyio.to_thread.run_sync(_connect, path)
        return cls(conn)

    async def aclose(self) -> None:
        """Close the connection."""
        await anyio.to_thread.run_sync(self._conn.close, limiter=self._limiter)

    async def _run(self, write: bool, fn: Callable[..., T], *args: object) -> T:
        return await anyio.to_thread.run_sync(
            _in_txn, self._conn, write, fn, args, limiter=self._limiter
        )

    async def _run_lazy(self, fn: Callable[..., T], *args: object) -> T:
        """A write whose loss in a power cut is harmless (ingest bookkeeping): no WAL fsync."""
        return await anyio.to_thread.run_sync(
            _in_txn, self._conn, True, fn, args, False, limiter=self._limiter
        )

    # content
    async def content_info(self, digest: str) -> ContentRecord | None:
        """The content record of ``digest``, or None."""
        return await self._run(False, _txn_content_info, digest)

    async def content_list(self) -> list[ContentRecord]:
        """All content records in ascending digest order."""
        return await self._run(False, _txn_content_list)

    async def content_labels(
        self, digest: str, labels: Mapping[str, str], *, replace: bool, now: datetime
    ) -> ContentRecord:
        """Merge (or replace) labels, ``""`` deleting a key; re-derives the edges."""
        return await self._run(True, _txn_content_labels, digest, dict(labels), replace, now)

    async def content_delete(self, digest: str, *, lease: str | None) -> None:
        """Remove a content record (CS-6); NotFound when absent."""
        await self._run(True, _txn_content_delete, digest, lease)

    async def content_commit(
        self,
        ref: str,
        digest: str,
        size: int,
        labels: Mapping[str, str],
        *,
        lease: str | None,
        now: datetime,
    ) -> bool:
        """Record a committed blob and drop its ingest row; False when it was recorded already."""
        return await self._run(
            True, _txn_content_commit, ref, digest, size, dict(labels), lease, now
        )

    async def ingest_open(
        self,
        ref: str,
        *,
        expected: str | None,
        lease: str | None,
        expires_at: datetime | None,
        now: datetime,
    ) -> bool:
        """Record an ingest (ING-13); True, recording nothing, when ``expected`` exists (ING-2)."""
        # Losing this row in a power cut is harmless: no writer survives it, and GC aborts an
        # unrecorded, unlocked ingest. A later durable commit persists it anyway.
        return await self._run_lazy(_txn_ingest_open, ref, expected, lease, expires_at, now)

    async def ingest_delete(self, ref: str) -> bool:
        """Forget an ingest row; False when there was none."""
        return await self._run_lazy(_txn_ingest_delete, ref)

    # images
    async def image_get(self, name: str) -> ImageRecord | None:
        """The image record named ``name``, or None."""
        return await self._run(False, _txn_image_get, name)

    async def image_list(self) -> list[ImageRecord]:
        """All image records in ascending name order."""
        return await self._run(False, _txn_image_list)

    async def image_put(
        self,
        name: str,
        *,
        target: ImageTarget | None,
        labels: Mapping[str, str] | None,
        create: bool,
        lease: str | None,
        now: datetime,
    ) -> ImageRecord:
        """Create (AlreadyExists) or update (NotFound; None keeps a field) an image record."""
        return await self._run(
            True,
            _txn_image_put,
            name,
            target,
            None if labels is None else dict(labels),
            create,
            lease,
            now,
        )

    async def image_delete(self, name: str, *, target: str | None) -> None:
        """Delete an image record (IMG-4)."""
        await self._run(True, _txn_image_delete, name, target)

    # leases
    async def lease_create(
        self, id: str, labels: Mapping[str, str], *, now: datetime
    ) -> LeaseRecord:
        """Insert a lease; AlreadyExists on a duplicate id."""
        return await self._run(True, _txn_lease_create, id, dict(labels), now)

    async def lease_list(self) -> list[LeaseRecord]:
        """All leases in ascending id order."""
        return await self._run(False, _txn_lease_list)

    async def lease_delete(self, id: str) -> None:
        """Delete a lease and its resource list; NotFound when absent."""
        await self._run(True, _txn_lease_delete, id)

    async def lease_add(self, id: str, type: str, resource: str) -> None:
        """Add a resource to a lease; NotFound when the lease is absent."""
        await self._run(True, _txn_lease_add, id, type, resource)

    async def lease_remove(self, id: str, type: str, resource: str) -> None:
        """Remove a resource from a lease (absent is fine)."""
        await self._run(True, _txn_lease_remove, id, type, resource)

    async def lease_resources(self, id: str) -> list[tuple[str, str]]:
        """A lease's resources, content first, then images, then ingests (LEASE-4)."""
        return await self._run(False, _txn_lease_resources, id)

    # gc
    async def gc_graph(self) -> GCGraph:
        """The whole reference graph, read in one transaction."""
        return await self._run(False, _txn_gc_graph)

    async def gc_sweep(
        self, decide: Callable[[GCGraph], Iterable[tuple[str, str]]], *, dry_run: bool
    ) -> tuple[GCGraph, list[tuple[str, str]]]:
        """The metadata sweep in ONE write transaction (GC-10); ``decide`` must be pure."""
        return await self._run(True, _txn_gc_sweep, decide, dry_run)

    async def gc_kept(self) -> tuple[set[str], set[str]]:
        """Recorded (or ingest-expected) digests, and recorded ingest refs."""
        return await self._run(False, _txn_gc_kept)
