"""The metadata DB's transactions: one sync ``<family>_<op>(conn, ...)`` per operation.

Each runs in one ``run_txn`` (design rule seam-txn); label writes re-derive edges (GC-5, GC-6).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final

from castar.store._schema import (
    Descriptor,
    GCGraph,
    Image,
    Info,
    Lease,
    from_ts,
    to_ts,
)
from castar.store.digest import Digest
from castar.store.errors import AlreadyExists, NotFound
from castar.store.labels import EXPIRE, Edge, label_edges

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Callable, Iterable, Mapping, Sequence
    from datetime import datetime

#: The label table of each labelled kind, and its owner column.
_LABELS: Final = {
    "content": ("content_labels", "digest"),
    "image": ("image_labels", "name"),
    "lease": ("lease_labels", "id"),
}


def _labels(conn: sqlite3.Connection, kind: str, owner: str) -> dict[str, str]:
    table, col = _LABELS[kind]
    rows = conn.execute(f"SELECT key, value FROM {table} WHERE {col} = ? ORDER BY key", (owner,))
    return dict(rows.fetchall())


def _all_labels(conn: sqlite3.Connection, kind: str) -> dict[str, dict[str, str]]:
    """Every owner's labels of one kind, in one query (owner -> labels)."""
    table, col = _LABELS[kind]
    out: dict[str, dict[str, str]] = {}
    for owner, k, v in conn.execute(f"SELECT {col}, key, value FROM {table}"):
        out.setdefault(owner, {})[k] = v
    return out


def _set_labels(conn: sqlite3.Connection, kind: str, owner: str, labels: Mapping[str, str]) -> None:
    """Replace an object's labels and the GC edges they declare."""
    table, col = _LABELS[kind]
    conn.execute(f"DELETE FROM {table} WHERE {col} = ?", (owner,))
    conn.executemany(
        f"INSERT INTO {table} ({col}, key, value) VALUES (?, ?, ?)",
        [(owner, k, v) for k, v in labels.items()],
    )
    if kind != "lease":  # a lease's labels (gc.expire, gc.flat) are read directly, not edges
        conn.execute("DELETE FROM edges WHERE owner_kind = ? AND owner = ?", (kind, owner))
        conn.executemany(
            "INSERT INTO edges VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                (kind, owner, e.key, e.src_kind, e.src, e.dst_kind, e.dst)
                for e in label_edges(kind, owner, labels)
            ],
        )


def _require_lease(conn: sqlite3.Connection, lease: str, message: str) -> None:
    if conn.execute("SELECT 1 FROM leases WHERE id = ?", (lease,)).fetchone() is None:
        raise NotFound(message)


def _add_resources(
    conn: sqlite3.Connection,
    lease: str,
    type_: str,
    resources: Iterable[str],
    missing: str = "lease does not exist",
) -> None:
    """Add to a lease (LEASE-5, the context lease's by default): NotFound ``missing`` if gone."""
    _require_lease(conn, lease, missing)
    conn.executemany(
        "INSERT OR IGNORE INTO lease_resources VALUES (?, ?, ?)",
        [(lease, type_, r) for r in resources],
    )


#: The table, key column and lease resource type of each kind ``_drop`` deletes.
_DROP: Final = {"content": ("content", "digest", "content"), "image": ("images", "name", "images")}


def _drop(conn: sqlite3.Connection, kind: str, key: str, *, leases: bool) -> int:
    """Delete a row (labels cascade), its edges and with ``leases`` its memberships; the count."""
    table, col, type_ = _DROP[kind]
    n = conn.execute(f"DELETE FROM {table} WHERE {col} = ?", (key,)).rowcount
    conn.execute("DELETE FROM edges WHERE owner_kind = ? AND owner = ?", (kind, key))
    if leases:
        conn.execute("DELETE FROM lease_resources WHERE type = ? AND resource = ?", (type_, key))
    return n


def content_info(conn: sqlite3.Connection, digest: str) -> Info | None:
    row = conn.execute(
        "SELECT size, created_at, updated_at FROM content WHERE digest = ?", (digest,)
    ).fetchone()
    if row is None:
        return None
    labels = _labels(conn, "content", digest)
    return Info(Digest(digest), row[0], labels, from_ts(row[1]), from_ts(row[2]))


#: Digests per ``IN (...)`` list: well under SQLite's host-parameter limit (999 before 3.32).
IN_CHUNK: Final = 500


def content_infos(conn: sqlite3.Connection, digests: Sequence[Digest]) -> list[Info]:
    """The records of those ``digests`` that exist, in order, duplicates once."""
    unique = list(dict.fromkeys(digests))
    labels: dict[str, dict[str, str]] = {}
    rows: dict[str, tuple[int, str, str]] = {}
    for i in range(0, len(unique), IN_CHUNK):
        part = unique[i : i + IN_CHUNK]
        marks = ", ".join("?" * len(part))
        for d, k, v in conn.execute(
            f"SELECT digest, key, value FROM content_labels WHERE digest IN ({marks})"
            " ORDER BY digest, key",
            part,
        ):
            labels.setdefault(d, {})[k] = v
        for d, s, c, u in conn.execute(
            f"SELECT digest, size, created_at, updated_at FROM content WHERE digest IN ({marks})",
            part,
        ):
            rows[d] = (s, c, u)
    return [
        Info(d, row[0], labels.get(d, {}), from_ts(row[1]), from_ts(row[2]))
        for d in unique
        if (row := rows.get(d)) is not None
    ]


def content_list(conn: sqlite3.Connection) -> list[Info]:
    labels = _all_labels(conn, "content")
    rows = conn.execute("SELECT digest, size, created_at, updated_at FROM content ORDER BY digest")
    return [Info(Digest(d), s, labels.get(d, {}), from_ts(c), from_ts(u)) for d, s, c, u in rows]


def content_labels(
    conn: sqlite3.Connection,
    updates: Mapping[Digest, Mapping[str, str]],
    replace: bool,
    now: datetime,
) -> dict[Digest, Info]:
    """Merge (or replace) blobs' labels; an empty value deletes the key (CS-5); skip unrecorded."""
    out = {}
    for digest, labels in updates.items():
        current = content_info(conn, digest)
        if current is None:
            continue
        merged = {} if replace else dict(current.labels)
        for k, v in labels.items():
            if v:
                merged[k] = v
            else:
                merged.pop(k, None)
        _set_labels(conn, "content", digest, merged)
        conn.execute("UPDATE content SET updated_at = ? WHERE digest = ?", (to_ts(now), digest))
        out[current.digest] = Info(current.digest, current.size, merged, current.created_at, now)
    return out


def content_delete(conn: sqlite3.Connection, digest: str, lease: str | None) -> None:
    if not _drop(conn, "content", digest, leases=False):
        raise NotFound(f"content digest {digest}")
    if lease is not None:  # CS-6: the digest leaves the context lease
        conn.execute(
            "DELETE FROM lease_resources WHERE id = ? AND type = 'content' AND resource = ?",
            (lease, digest),
        )


def ingest_open(
    conn: sqlite3.Connection,
    ref: str,
    expected: str | None,
    lease: str | None,
    expires_at: datetime | None,
    now: datetime,
) -> bool:
    """Record an ingest before its backend writer opens; True when ``expected`` is recorded."""
    if lease is not None:
        _require_lease(conn, lease, "lease does not exist")
    if expected is not None:
        hit = conn.execute("SELECT 1 FROM content WHERE digest = ?", (expected,)).fetchone()
        if hit is not None:  # ING-2: join the lease first, so a concurrent delete cannot orphan it
            if lease is not None:
                _add_resources(conn, lease, "content", [expected])
            return True
    # Under a lease the row has no expiry (the lease keeps it, ING-13); reopening keeps the
    # later of two expiries, and no expiry wins over any.
    conn.execute(
        "INSERT INTO ingests (ref, expected, expires_at, created_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT (ref) DO UPDATE SET expected = excluded.expected,"
        " expires_at = CASE WHEN ingests.expires_at IS NULL OR excluded.expires_at IS NULL"
        " THEN NULL ELSE max(ingests.expires_at, excluded.expires_at) END",
        (ref, expected, None if lease is not None else to_ts(expires_at or now), to_ts(now)),
    )
    if lease is not None:
        _add_resources(conn, lease, "ingests", [ref])
    return False


def ingest_delete(conn: sqlite3.Connection, ref: str) -> bool:
    conn.execute("DELETE FROM lease_resources WHERE type = 'ingests' AND resource = ?", (ref,))
    return conn.execute("DELETE FROM ingests WHERE ref = ?", (ref,)).rowcount > 0


def content_commit(
    conn: sqlite3.Connection,
    ref: str | None,
    digest: str,
    size: int,
    labels: Mapping[str, str],
    lease: str | None,
    now: datetime,
    unsynced_boot: str | None = None,
) -> bool:
    """Record a committed blob, drop its ingest and join the lease; False if recorded (ING-8)."""
    if ref is not None:
        ingest_delete(conn, ref)
    created = _insert_content(conn, digest, size, labels, now, unsynced_boot)
    if lease is not None:
        _add_resources(conn, lease, "content", [digest])
    return created


def _insert_content(
    conn: sqlite3.Connection,
    digest: str,
    size: int,
    labels: Mapping[str, str],
    now: datetime,
    unsynced_boot: str | None,
) -> bool:
    """Insert a content row unless it exists, with its labels and edges; True when inserted."""
    created = conn.execute(
        "INSERT OR IGNORE INTO content (digest, size, created_at, updated_at, unsynced_boot)"
        " VALUES (?, ?, ?, ?, ?)",
        (digest, size, to_ts(now), to_ts(now), unsynced_boot),
    ).rowcount
    # A new row has no labels nor edges yet: only labels to add cost statements.
    if created and labels:
        _set_labels(conn, "content", digest, labels)
    return bool(created)


def content_commit_batch(
    conn: sqlite3.Connection,
    blobs: Sequence[tuple[str, int, Mapping[str, str]]],
    joins: Sequence[str],
    lease: str | None,
    now: datetime,
    unsynced_boot: str | None = None,
) -> tuple[list[bool], list[int | None]]:
    """Record ``(digest, size, labels)`` blobs and join the ``joins`` digests (TV-44) at once."""
    created = [_insert_content(conn, d, n, labels, now, unsynced_boot) for d, n, labels in blobs]
    joined: list[int | None] = []
    for d in joins:
        row = conn.execute("SELECT size FROM content WHERE digest = ?", (d,)).fetchone()
        joined.append(None if row is None else int(row[0]))
    if lease is not None:
        members = [d for d, _, _ in blobs]
        members += [d for d, n in zip(joins, joined, strict=True) if n is not None]
        _add_resources(conn, lease, "content", members)
    return created, joined


def content_unsynced(conn: sqlite3.Connection, boot: str) -> list[str]:
    """Digests committed without fsync in boot ``boot`` and not synced since."""
    rows = conn.execute("SELECT digest FROM content WHERE unsynced_boot = ?", (boot,))
    return [d for (d,) in rows]


def content_mark_synced(conn: sqlite3.Connection, digests: Iterable[str]) -> int:
    """Clear the unsynced mark of ``digests`` (their data is on disk); how many were marked."""
    return conn.executemany(
        "UPDATE content SET unsynced_boot = NULL WHERE digest = ? AND unsynced_boot IS NOT NULL",
        [(d,) for d in digests],
    ).rowcount


def content_stale(conn: sqlite3.Connection, boot: str) -> list[str]:
    """Digests committed unsynced in a boot other than ``boot`` (a machine crash since)."""
    rows = conn.execute(
        "SELECT digest FROM content WHERE unsynced_boot IS NOT NULL AND unsynced_boot != ?",
        (boot,),
    )
    return [d for (d,) in rows]


def content_drop_stale(conn: sqlite3.Connection, boot: str) -> list[str]:
    """Delete the rows :func:`content_stale` finds (data maybe torn: leases too); their digests."""
    stale = content_stale(conn, boot)
    for d in stale:
        _drop(conn, "content", d, leases=True)
    return stale


_IMAGE_COLS: Final = "name, media_type, digest, size, annotations, created_at, updated_at"


def _image_row(row: tuple[str, ...], labels: Mapping[str, str]) -> Image:
    name, mt, d, size, ann, c, u = row
    target = Descriptor(mt, Digest(d), int(size), json.loads(ann))
    return Image(name, target, labels, from_ts(c), from_ts(u))


def image_get(conn: sqlite3.Connection, name: str) -> Image | None:
    row = conn.execute(f"SELECT {_IMAGE_COLS} FROM images WHERE name = ?", (name,)).fetchone()
    return None if row is None else _image_row(row, _labels(conn, "image", name))


def image_list(conn: sqlite3.Connection) -> list[Image]:
    labels = _all_labels(conn, "image")
    rows = conn.execute(f"SELECT {_IMAGE_COLS} FROM images ORDER BY name").fetchall()
    return [_image_row(r, labels.get(r[0], {})) for r in rows]


def image_put(
    conn: sqlite3.Connection,
    name: str,
    target: Descriptor | None,
    labels: Mapping[str, str] | None,
    create: bool,
    lease: str | None,
    now: datetime,
) -> Image:
    """Create (``create``) or update an image; on update, None keeps the target or labels."""
    old = image_get(conn, name)
    if create and old is not None:
        raise AlreadyExists(f'image "{name}"')
    if old is None and not create:
        raise NotFound(f'image "{name}"')
    if target is None:
        assert old is not None  # creating always passes a target
        target = old.target
    if labels is None:
        labels = {} if old is None else old.labels
    created = now if old is None else old.created_at  # IMG-3: created_at is kept
    rec = Image(name, target, dict(labels), created, now)
    conn.execute(
        "INSERT OR REPLACE INTO images VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            name,
            target.media_type,
            target.digest,
            target.size,
            json.dumps(dict(target.annotations), sort_keys=True),
            to_ts(rec.created_at),
            to_ts(rec.updated_at),
        ),
    )
    _set_labels(conn, "image", name, rec.labels)
    if lease is not None and EXPIRE in rec.labels:  # IMG-6
        _add_resources(conn, lease, "images", [name])
    return rec


def image_get_many(conn: sqlite3.Connection, names: Sequence[str]) -> dict[str, Image]:
    return {n: rec for n in names if (rec := image_get(conn, n)) is not None}


def image_put_many(
    conn: sqlite3.Connection,
    keep: Sequence[tuple[str, Descriptor, Mapping[str, str]]],
    targets: Sequence[tuple[str, Descriptor]],
    lease: str | None,
    now: datetime,
) -> list[Image]:
    """Create each ``keep`` image unless its name exists, then re-target or create ``targets``.

    A target keeps its labels (and so its edges) or has none: only the image rows change.
    """
    for name, target, labels in keep:
        if image_get(conn, name) is None:
            image_put(conn, name, target, labels, True, lease, now)
    put: dict[str, Image] = {}
    out = []
    for name, target in targets:
        old = put.get(name) or image_get(conn, name)
        labels = {} if old is None else old.labels
        rec = put[name] = Image(name, target, labels, now if old is None else old.created_at, now)
        out.append(rec)
        if lease is not None and EXPIRE in labels:  # IMG-6
            _add_resources(conn, lease, "images", [name])
    conn.executemany(  # an upsert: REPLACE would cascade-delete the kept labels
        "INSERT INTO images VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET"
        " media_type = excluded.media_type, digest = excluded.digest, size = excluded.size,"
        " annotations = excluded.annotations, updated_at = excluded.updated_at",
        [
            (r.name, r.target.media_type, r.target.digest, r.target.size,
             json.dumps(dict(r.target.annotations), sort_keys=True),
             to_ts(r.created_at), to_ts(r.updated_at))
            for r in put.values()
        ],
    )  # fmt: skip
    return out


def image_delete(conn: sqlite3.Connection, name: str, target: str | None) -> None:
    row = conn.execute("SELECT digest FROM images WHERE name = ?", (name,)).fetchone()
    if row is None:
        raise NotFound(f'image "{name}"')
    if target is not None and row[0] != target:
        raise NotFound(f'image "{name}" has target {row[0]}, not {target}')
    _drop(conn, "image", name, leases=False)


def lease_create(
    conn: sqlite3.Connection,
    id_: str,
    labels: Mapping[str, str],
    now: datetime,
    owner: str | None = None,
) -> Lease:
    sql = "INSERT OR IGNORE INTO leases (id, created_at, owner) VALUES (?, ?, ?)"
    if conn.execute(sql, (id_, to_ts(now), owner)).rowcount == 0:
        raise AlreadyExists(f'lease "{id_}"')
    _set_labels(conn, "lease", id_, labels)
    return Lease(id_, now, dict(labels))


def lease_list(conn: sqlite3.Connection) -> list[Lease]:
    labels = _all_labels(conn, "lease")
    rows = conn.execute("SELECT id, created_at FROM leases ORDER BY id").fetchall()
    return [Lease(i, from_ts(c), labels.get(i, {})) for i, c in rows]


def lease_delete(conn: sqlite3.Connection, id_: str) -> None:
    if conn.execute("DELETE FROM leases WHERE id = ?", (id_,)).rowcount == 0:
        raise NotFound(f'lease "{id_}"')


#: LEASE-4: the order ``list_resources`` returns resource types in.
_RESOURCE_ORDER: Final = {"content": 0, "images": 1, "ingests": 2}


def lease_resources(conn: sqlite3.Connection, id_: str) -> list[tuple[str, str]]:
    _require_lease(conn, id_, f'lease "{id_}"')
    rows = conn.execute("SELECT type, resource FROM lease_resources WHERE id = ?", (id_,))
    return sorted(rows, key=lambda tr: (_RESOURCE_ORDER.get(tr[0], 3), tr[0], tr[1]))


def lease_add(conn: sqlite3.Connection, id_: str, type_: str, resources: Iterable[str]) -> None:
    _add_resources(conn, id_, type_, resources, f'lease "{id_}"')


def lease_remove(conn: sqlite3.Connection, id_: str, type_: str, resource: str) -> None:
    conn.execute(
        "DELETE FROM lease_resources WHERE id = ? AND type = ? AND resource = ?",
        (id_, type_, resource),
    )


def gc_graph(conn: sqlite3.Connection) -> GCGraph:
    """The whole reference graph (GC-1..6) as one consistent snapshot."""
    resources = list(conn.execute("SELECT id, type, resource FROM lease_resources"))
    image_labels = _all_labels(conn, "image")
    images = [
        (n, Digest(d), image_labels.get(n, {}))
        for n, d in conn.execute("SELECT name, digest FROM images ORDER BY name")
    ]
    content_labels = _all_labels(conn, "content")
    content = {
        Digest(d): (s, content_labels.get(d, {}))
        for d, s in conn.execute("SELECT digest, size FROM content ORDER BY digest")
    }
    ingests = [
        (r, e, None if x is None else from_ts(x))
        for r, e, x in conn.execute("SELECT ref, expected, expires_at FROM ingests ORDER BY ref")
    ]
    edges = [
        Edge(*row) for row in conn.execute("SELECT key, src_kind, src, dst_kind, dst FROM edges")
    ]
    owners = dict(conn.execute("SELECT id, owner FROM leases WHERE owner IS NOT NULL"))
    return GCGraph(lease_list(conn), resources, images, content, ingests, edges, owners)


def gc_sweep(
    conn: sqlite3.Connection, decide: Callable[[GCGraph], Iterable[tuple[str, str]]], dry_run: bool
) -> tuple[GCGraph, list[tuple[str, str]]]:
    """Read the graph, let ``decide`` pick the nodes to remove, remove them: one write txn."""
    graph = gc_graph(conn)
    doomed = list(decide(graph))
    if dry_run:
        return graph, doomed
    for kind, key in doomed:
        if kind in _DROP:
            _drop(conn, kind, key, leases=True)
        elif kind == "lease":
            conn.execute("DELETE FROM leases WHERE id = ?", (key,))
        elif kind == "ingest":
            ingest_delete(conn, key)
    return graph, doomed


def gc_kept(conn: sqlite3.Connection) -> tuple[set[str], set[str]]:
    """Digests the content sweep must keep (recorded or expected by an ingest) and ingest refs."""
    keep = {d for (d,) in conn.execute("SELECT digest FROM content")}
    refs: set[str] = set()
    for ref, expected in conn.execute("SELECT ref, expected FROM ingests"):
        refs.add(ref)
        if expected is not None:
            keep.add(expected)
    return keep, refs
