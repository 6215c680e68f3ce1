"""The exporter ("save"): images from the store to an OCI + Docker image archive.

Owns the entry points (``plan_save``, ``save``, ``save_many``), the lease a save runs
under (SAVE-5, LEASE-6) and the sink's lifetime; plans with ``_export_lookup`` +
``_save_plan`` before the first byte, writes with ``_export_write``. Must not import
the importer, the images service or the facade.
"""

from __future__ import annotations

import os
from contextlib import AbstractAsyncContextManager, nullcontext, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, final

import anyio

from castar.engine import platforms as plat
from castar.engine._export_lookup import fetch, resolve, unlinked
from castar.engine._export_write import Limiters, store_limiters, write
from castar.engine._save_plan import (
    MISSING_POLICIES,
    ImagePlan,
    Member,
    Planner,
    PlatformPlan,
    SaveOptions,
    SavePlan,
    Skipped,
)
from castar.engine._streams import open_sink
from castar.store.errors import InvalidArgument
from castar.store.leases import current_lease

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castar.engine._export_plan import Target
    from castar.store.digest import Digest
    from castar.store.progress import ProgressCallback
    from castar.store.root import Root

__all__ = [
    "MISSING_POLICIES",
    "ExportResult",
    "ImagePlan",
    "Member",
    "PlatformPlan",
    "SaveJob",
    "SaveOptions",
    "SavePlan",
    "Skipped",
    "plan_save",
    "save",
    "save_many",
]

#: Plans in flight at once in save_many: the first job starts copying after one plan
#: instead of after all of them, interleaved.
_PLANS_AT_ONCE: Final = 2


@final
@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`save` wrote.

    Attributes:
        plan: the plan that was written (images, platforms, members, warnings).
        size: bytes written.
        sha256: sha256 of the archive bytes, when ``archive_digest`` was asked.
    """

    plan: SavePlan
    size: int
    sha256: Digest | None = None

    @property
    def images(self) -> tuple[ImagePlan, ...]:
        """The ``index.json`` entries written."""
        return self.plan.images

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """What was left out as missing (see :attr:`SavePlan.skipped`)."""
        return self.plan.skipped

    @property
    def warnings(self) -> tuple[str, ...]:
        """Warnings from planning."""
        return self.plan.warnings

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        out = self.plan.to_json()
        out["written"] = self.size
        out["sha256"] = self.sha256 and str(self.sha256)
        return out


@final
@dataclass(frozen=True, slots=True)
class SaveJob:
    """One export of :func:`save_many`; the fields are :func:`save`'s arguments."""

    names: Sequence[str]
    sink: object
    options: SaveOptions
    progress: ProgressCallback | None = None


async def plan_save(store: Root, names: Sequence[str], options: SaveOptions) -> SavePlan:
    """What :func:`save` would write, without writing anything.

    Resolves the names, walks the images, applies the platform filter and the
    missing-content policy and checks every blob against the store, so every error
    :func:`save` can raise before its first byte is raised here too. Under a lease
    (the caller's current one), adds to it every blob the archive reads (SAVE-5).

    Args:
        store: the store to read.
        names: image names, digests or image-id prefixes (SAVE-4).
        options: what to select (platforms, missing policy, ``manifest.json``).

    Returns:
        The plan; ``plan.to_json()`` is what ``castar save --dry-run --json`` prints.

    Raises:
        NotFound: an unknown name, no manifest for a platform, or missing content
            (with ``missing="fail"``).
        Conflict: an ambiguous id prefix or several manifests for one platform (SAVE-2).
        InvalidArgument: no names, or a non-manifest target (TV-60).
    """
    if isinstance(names, str):
        names = [names]
    if not names:
        raise InvalidArgument("save: no image names given")
    targets: list[Target] = []
    for ref in names:
        for t in await resolve(store, ref):
            if all((t.name, t.desc.digest) != (u.name, u.desc.digest) for u in targets):
                targets.append(t)
    lease = current_lease()
    if lease is not None:  # SAVE-5: protect the targets (and, by their edges, their subtrees)
        for t in targets:
            await store.leases.add_resource(lease.id, "content", t.desc.digest)
    nodes = await fetch(store.content, [t.desc for t in targets])
    planner = Planner(nodes, options, plat.host())
    images = [p for t in targets if (p := planner.add(t)) is not None]
    plan = planner.finish(images)
    if lease is not None:  # SAVE-5: the rest of what the archive reads, before the first byte
        for d in unlinked([t.desc.digest for t in targets], nodes, plan.reads):
            await store.leases.add_resource(lease.id, "content", d)
    return plan


async def save(
    store: Root,
    names: Sequence[str],
    sink: object,
    options: SaveOptions,
    *,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export images as one OCI image archive (with Docker's ``manifest.json``).

    Plans first (:func:`plan_save`), under a lease holding every blob it will read
    (SAVE-5; the caller's current lease when there is one, LEASE-6), so unknown
    names, unmatched platforms and missing content fail before the sink is opened.
    Then writes ``oci-layout``, ``index.json``, ``manifest.json`` and the blobs
    sorted by name, with fixed headers (TAR-1..3) and canonical JSON (DESC-2): the
    same content, names and options give the same bytes.

    Platforms (SAVE-1..3): none → every platform, ``manifest.json`` pointing at the
    host's preferred *available* one (EDGE-1 fixed); one → that platform's manifest,
    matched strictly, is the archive's only entry (SAVE-2); several → the image index
    with only those platforms' subtrees. Attestations go whenever platforms are given.

    Blob work shares the store's budgets with its other saves (one zero-copy hop and
    two hashing hops in flight).

    Args:
        store: the store to read.
        names: image names, digests or image-id prefixes (SAVE-4).
        sink: a path, a file descriptor, ``"-"`` (stdout), an anyio ``ByteSendStream``
            or any object with ``async write(b)``. Bodies go zero-copy to fds
            (``copy_file_range``/``splice``/``sendfile``), in 1 MiB chunks to streams.
        options: what to select and how to write (see :class:`SaveOptions`).
        progress: called on the event loop after each hop with the bytes written,
            the archive's size and the name of the member being written.

    Returns:
        What was written: images, platforms, what was skipped, size, sha256.

    Raises:
        NotFound, Conflict, InvalidArgument: see :func:`plan_save`, before any byte.
        DigestMismatch: with ``verify``, a stored blob does not hash to its digest.
        SizeMismatch: a stored blob does not have its recorded size.
        DataLoss: a recorded blob's file is missing from disk.
    """
    job = SaveJob(names, sink, options, progress)
    return await _save(store, job, store_limiters(store), None)


async def _save(
    store: Root, job: SaveJob, limiters: Limiters, planning: anyio.CapacityLimiter | None
) -> ExportResult:
    """:func:`save` of ``job``; ``planning`` bounds how many plans run at once."""
    lease: AbstractAsyncContextManager[object] = (
        nullcontext()  # LEASE-6: the caller's lease holds what we read
        if current_lease() is not None
        else store.leases.hold(expire=timedelta(hours=24), labels={"castar.export": "1"})
    )
    async with lease:
        async with planning if planning is not None else nullcontext():
            plan = await plan_save(store, job.names, job.options)
        paths = {d: str(store.content.path(d)) for d in plan.reads}
        sink = job.sink
        ours = None  # a regular file save() created from a path: removed if writing fails
        try:
            out = open_sink(sink)
            async with limiters.hash:  # opens count as blob work: no burst of thread starts
                await out.open()
            async with out:
                if isinstance(sink, str | os.PathLike) and sink != "-" and out.kind == "file":
                    ours = anyio.Path(os.fspath(sink))
                size, sha = await write(plan, out, paths, job.options, limiters, job.progress)
        except BaseException:
            if ours is not None:
                with anyio.CancelScope(shield=True), suppress(OSError):
                    await ours.unlink()
            raise
    return ExportResult(plan, size, sha)


async def save_many(
    store: Root, jobs: Sequence[SaveJob], *, limit: int | None = None
) -> list[ExportResult]:
    """Run several exports concurrently against one store.

    Each job runs :func:`save` under its own lease (or all under the caller's current
    lease, LEASE-6: one durable lease commit instead of two per job). Blob work shares
    the store's budgets, or one ``CapacityLimiter(limit)`` when ``limit`` is given.
    Two jobs plan at a time, so the first starts writing after one plan while the
    others plan beside its copies. The first failure cancels the others and is raised
    (never as an ExceptionGroup).

    Returns:
        The results in job order.
    """
    one = anyio.CapacityLimiter(limit) if limit else None  # both kinds of hop take it
    limiters = Limiters(one, one) if one is not None else store_limiters(store)
    planning = anyio.CapacityLimiter(_PLANS_AT_ONCE)
    results: list[ExportResult | None] = [None] * len(jobs)
    failure: list[BaseException] = []

    async def run(i: int, job: SaveJob, scope: anyio.CancelScope) -> None:
        try:
            results[i] = await _save(store, job, limiters, planning)
        except Exception as exc:
            failure.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for i, job in enumerate(jobs):
            tg.start_soon(run, i, job, tg.cancel_scope)
    if failure:
        raise failure[0]
    return [r for r in results if r is not None]
