"""The ``Collector``: runs :mod:`castar.store.gc` marking over one store's metadata and blobs."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, final

import anyio

from castar.store import _txn
from castar.store.digest import Digest
from castar.store.errors import NotFound
from castar.store.gc import GCReport, Node, decide, describe, path_to, roots_and_edges
from castar.store.leases import dead_owners, release_owners

if TYPE_CHECKING:
    from collections.abc import Callable
    from datetime import datetime

    from castar.store.ingest import LocalContentStore
    from castar.store.sqlite import SQLiteMetadataDB

__all__ = ["Collector"]


@final
class Collector:
    """Runs collections over one store's metadata DB and file backend (GC-10)."""

    def __init__(
        self,
        db: SQLiteMetadataDB,
        backend: LocalContentStore,
        clock: Callable[[], datetime],
    ) -> None:
        self._db = db
        self._backend = backend
        self._clock = clock
        self._lock = anyio.Lock()

    async def collect(self, *, dry_run: bool = False) -> GCReport:
        """Sweep the metadata in one write transaction, then the backend under the commit lock.

        Backend ingests are listed BEFORE the ingest rows are read; held ones are never aborted.
        Owner locks are taken before the sweep, so a lease made meanwhile is never dead.
        """
        self._db.check_writable()  # before the owner locks: a read-only store has none to take
        async with self._lock:
            now = self._clock()
            root = self._backend.root
            dead = await anyio.to_thread.run_sync(dead_owners, root)
            swept_ok = False
            try:
                graph, doomed = await self._db.write(
                    _txn.gc_sweep, lambda g: decide(g, now, dead), dry_run
                )
                swept_ok = not dry_run
            finally:  # their leases are gone from the metadata: then so may their locks
                with anyio.CancelScope(shield=True):
                    await anyio.to_thread.run_sync(release_owners, root, dead, swept_ok)
            swept = {Digest(k) for kind, k in doomed if kind == "content"}
            removed, orphan_bytes = await self._sweep_content(swept, dry_run)
            ingests = await self._sweep_ingests(
                [k for kind, k in doomed if kind == "ingest"], dry_run
            )
            return GCReport(
                removed=sorted(removed),
                bytes_freed=sum(graph.content[d][0] for d in swept) + orphan_bytes,
                images_removed=sorted(k for kind, k in doomed if kind == "image"),
                leases_removed=sorted(k for kind, k in doomed if kind == "lease"),
                ingests_removed=sorted(ingests),
                dry_run=dry_run,
            )

    async def _sweep_content(self, swept: set[Digest], dry_run: bool) -> tuple[set[Digest], int]:
        """Delete blob files no record nor ingest keeps; the digests gone and orphans' bytes."""
        removed = set(swept)
        orphan_bytes = 0
        async with self._backend.commit_lock(exclusive=True):
            blobs = await self._backend.walk()
            keep, _ = await self._db.read(_txn.gc_kept)
            if dry_run:
                keep -= swept
            for digest, size in blobs:
                if digest in keep:
                    continue
                if digest not in removed:  # a file with no record: a crash's leftover
                    orphan_bytes += size
                    removed.add(digest)
                if not dry_run:
                    with contextlib.suppress(NotFound):
                        await self._backend.delete(digest)
        return removed, orphan_bytes

    async def _sweep_ingests(self, swept: list[str], dry_run: bool) -> list[str]:
        """Abort backend ingests no row keeps, unless a writer holds them; all refs gone."""
        ingests = list(swept)
        backend_ingests = await self._backend.list_ingests()
        _, refs = await self._db.read(_txn.gc_kept)
        if dry_run:
            refs -= set(swept)
        for status in backend_ingests:
            if status.ref in refs:
                continue
            if dry_run:
                aborted = True
            else:
                try:
                    aborted = await self._backend.abort(status.ref, if_unlocked=True)
                except NotFound:
                    aborted = False
            if aborted and status.ref not in ingests:
                ingests.append(status.ref)
        return ingests + await self._backend.remove_unnamed(dry_run=dry_run)

    async def explain(self, digest: str) -> list[str]:
        """The path from a root to ``digest`` that keeps it alive; [] when it is garbage."""
        graph = await self._db.read(_txn.gc_graph)
        if digest not in graph.content:
            return []
        root = self._backend.root
        dead: dict[str, int] = {}
        if self._db.read_only is None:  # a read-only store: no lock to take, no owner to reap
            dead = await anyio.to_thread.run_sync(dead_owners, root)
            await anyio.to_thread.run_sync(release_owners, root, dead, False)
        roots, edges, _ = roots_and_edges(graph, self._clock(), dead)
        return [describe(n) for n in path_to(roots, edges, Node("content", digest))]
