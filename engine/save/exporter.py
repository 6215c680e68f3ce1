"""The exporter ("save"): images to an OCI + Docker archive under a lease (SAVE-5, LEASE-6)."""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, nullcontext
from dataclasses import dataclass, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, cast, final

import anyio

from castar.engine import platforms as plat
from castar.engine.save.lookup import fetch, resolve, unlinked
from castar.engine.save.plan import Planner, SaveOptions, SavePlan
from castar.engine.save.sinks import open_sink
from castar.engine.save.write import Limiters, store_limiters, write
from castar.store.errors import InvalidArgument
from castar.store.leases import current_lease

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castar.engine.save.lookup import Roles
    from castar.engine.save.plan import ImagePlan, Skipped, Target
    from castar.store.digest import Digest
    from castar.store.progress import ProgressCallback
    from castar.store.roles import BlobIngester

__all__ = ["ExportResult", "SaveJob", "SaveOptions", "SavePlan", "plan_save", "save", "save_many"]

#: save_many's plans in flight: the first job copies after one plan, not after all.
_PLANS_AT_ONCE: Final = 2


@final
@dataclass(frozen=True, slots=True)
class ExportResult:
    """What :func:`save` wrote: the plan, the bytes written, their sha256 if asked."""

    plan: SavePlan
    size: int
    sha256: Digest | None = None

    @property
    def images(self) -> tuple[ImagePlan, ...]:
        """The ``index.json`` entries written."""
        return self.plan.images

    @property
    def skipped(self) -> tuple[Skipped, ...]:
        """See :attr:`SavePlan.skipped`."""
        return self.plan.skipped

    @property
    def warnings(self) -> tuple[str, ...]:
        """Warnings from planning."""
        return self.plan.warnings

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            **self.plan.to_json(),
            "written": self.size,
            "sha256": self.sha256 and str(self.sha256),
        }


@final
@dataclass(frozen=True, slots=True)
class SaveJob:
    """One export of :func:`save_many`: :func:`save`'s arguments."""

    names: Sequence[str]
    sink: object
    options: SaveOptions
    progress: ProgressCallback | None = None


async def plan_save(store: Roles, names: Sequence[str], options: SaveOptions) -> SavePlan:
    """What :func:`save` would write; the current lease gets every blob read (SAVE-4, SAVE-5).

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
        await store.leases.add_resources(lease.id, "content", [t.desc.digest for t in targets])
    nodes = await fetch(store.content, [t.desc for t in targets])
    planner = Planner(nodes, options, plat.host())
    images = [p for t in targets if (p := planner.add(t)) is not None]
    plan = planner.finish(images)
    if lease is not None:  # SAVE-5: the rest of what the archive reads, before the first byte
        rest = unlinked([t.desc.digest for t in targets], nodes, plan.reads)
        await store.leases.add_resources(lease.id, "content", rest)
    return plan


async def save(
    store: Roles,
    names: Sequence[str],
    sink: object,
    options: SaveOptions,
    *,
    progress: ProgressCallback | None = None,
) -> ExportResult:
    """Export images as one OCI archive, planned first (TAR-1..3, DESC-2, SAVE-1..3, EDGE-1).

    ``sink``: see :func:`~castar.engine.save.sinks.open_sink`; ``progress`` runs after each hop.

    Raises:
        NotFound, Conflict, InvalidArgument: see :func:`plan_save`, before any byte.
        DigestMismatch, SizeMismatch, DataLoss: a stored blob is not what its record says.
    """
    return await _save(
        store, SaveJob(names, sink, options, progress), store_limiters(store.content)
    )


async def _save(
    store: Roles, job: SaveJob, limiters: Limiters, planning: anyio.CapacityLimiter | None = None
) -> ExportResult:
    """:func:`save` of ``job``; ``planning`` bounds the plans at once."""
    lease: AbstractAsyncContextManager[object] = (
        nullcontext()  # LEASE-6: the caller's lease holds what we read
        if current_lease() is not None
        else store.leases.hold(expire=timedelta(hours=24), labels={"castar.export": "1"})
    )
    options = job.options
    async with lease:
        if options.missing == "fetch":  # SAVE-7: complete first; then anything missing fails
            await _fetch_missing(store, job.names, options)
            options = replace(options, missing="fail")
        async with planning or nullcontext():
            plan = await plan_save(store, job.names, options)
        out = open_sink(job.sink)  # a path is put in place only if writing succeeds
        async with limiters.hash:  # opens count as blob work: no burst of thread starts
            await out.open()
        async with out:
            size, sha = await write(plan, store.content, out, options, limiters, job.progress)
    return ExportResult(plan, size, sha)


async def _fetch_missing(store: Roles, names: Sequence[str], options: SaveOptions) -> None:
    """SAVE-7: pull what the store lacks of each target's selection from where it came."""
    from castar.engine.load.importer import LoadOptions  # httpx loads for a fetch only
    from castar.engine.registry.pull import fetch_missing

    content = cast("BlobIngester", store.content)  # a save that fetches runs on a whole root
    done: set[str] = set()
    for ref in [names] if isinstance(names, str) else names:
        for t in await resolve(store, ref):
            if t.desc.digest not in done:
                done.add(t.desc.digest)
                await fetch_missing(
                    content, store.leases, t.desc, LoadOptions(options.platforms), who=t.who
                )


async def save_many(
    store: Roles, jobs: Sequence[SaveJob], *, limit: int | None = None
) -> list[ExportResult]:
    """Run :func:`save` jobs concurrently; the first failure cancels the rest and is raised."""
    one = anyio.CapacityLimiter(limit) if limit else None  # both kinds of hop take it
    limiters = Limiters(one, one) if one is not None else store_limiters(store.content)
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
