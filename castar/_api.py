"""The facade: :func:`open_store` and :class:`Store` wire the store and the engine together."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, final

from castar.engine.images import ImageService
from castar.store.errors import InvalidArgument
from castar.store.root import Root, open_root

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator, Iterable, Sequence
    from pathlib import Path

    from castar.engine.platforms import Platform
    from castar.engine.registry.pull import PullResult
    from castar.engine.registry.push import PushResult
    from castar.engine.save.exporter import ExportResult, SaveJob, SaveOptions, SavePlan
    from castar.store.content import ContentStore
    from castar.store.images import Image
    from castar.store.leases import LeaseManager
    from castar.store.progress import ProgressCallback
    from castar.store.verify import VerifyReport

__all__ = ["Store", "open_store"]


@final
class Store:
    """An open store: ``root`` (its directory), ``content``, ``images``, ``leases``, gc, load, save.

    Get one from :func:`open_store`. Every coroutine runs on asyncio and trio.
    """

    def __init__(self, root: Root) -> None:
        self._root = root
        self.root: Path = root.root
        self.content: ContentStore = root.content
        self.images: ImageService = ImageService(root.images, root.content)
        self.leases: LeaseManager = root.leases
        # What needs no engine is the root's own (GC-1..10, LeaseManager.hold).
        self.lease = root.leases.hold
        self.gc = root.gc
        self.explain = root.explain
        self.aclose = root.aclose

    async def load(
        self,
        source: object,
        *,
        platforms: Sequence[str | Platform] | None = None,
        all_platforms: bool = False,
        skip_missing: bool | None = None,
        name: str | None = None,
        progress: ProgressCallback | None = None,
        max_size: int | None = None,
    ) -> list[Image]:
        """Import an OCI or Docker image archive; see :func:`castar.engine.load.importer.load`.

        The keywords are :class:`~castar.engine.load.importer.LoadOptions`' fields, with
        ``platforms`` given as specifiers or :class:`Platform` values.
        """
        from castar.engine.load import importer  # each command loads only its own engine part

        options = importer.LoadOptions.parse(
            platforms,
            all_platforms=all_platforms,
            skip_missing=skip_missing,
            name=name,
            max_size=max_size,
        )
        root = self._root
        return await importer.load(
            root.content, root.images, root.leases, source, options, progress=progress
        )

    async def pull(
        self,
        ref: str,
        *,
        platforms: Sequence[str | Platform] | None = None,
        all_platforms: bool = False,
        progress: ProgressCallback | None = None,
    ) -> list[Image]:
        """Pull ``ref`` from its registry; see :func:`castar.engine.registry.pull.pull`."""
        from castar.engine.load import importer
        from castar.engine.registry import pull as _pull  # httpx loads for registry work only

        options = importer.LoadOptions.parse(platforms, all_platforms=all_platforms)
        r = self._root

        return await _pull.pull(r.content, r.images, r.leases, ref, options, progress=progress)

    async def pull_many(
        self,
        refs: Sequence[str],
        *,
        platforms: Sequence[str | Platform] | None = None,
        all_platforms: bool = False,
        jobs: int = 4,
        progress: ProgressCallback | None = None,
    ) -> list[PullResult]:
        """Pull several references at once; see :func:`castar.engine.registry.pull.pull_many`."""
        from castar.engine.load import importer
        from castar.engine.registry import pull as _pull

        options = importer.LoadOptions.parse(platforms, all_platforms=all_platforms)
        r = self._root
        return await _pull.pull_many(
            r.content, r.images, r.leases, refs, options, jobs=jobs, progress=progress
        )

    async def save(
        self,
        names: Sequence[str],
        sink: object,
        *,
        platforms: Sequence[str | Platform] | None = None,
        missing: str = "sparse",
        docker_manifest: bool = True,
        progress: ProgressCallback | None = None,
        verify: bool = False,
        archive_digest: bool = False,
        write_behind: bool = False,
    ) -> ExportResult:
        """Export images as an OCI archive; see :func:`castar.engine.save.exporter.save`.

        The keywords are :class:`~castar.engine.save.exporter.SaveOptions`' fields, with
        ``platforms`` given as specifiers or :class:`Platform` values.
        """
        from castar.engine.save import exporter

        options = exporter.SaveOptions.parse(
            platforms,
            missing=missing,
            docker_manifest=docker_manifest,
            verify=verify,
            archive_digest=archive_digest,
            write_behind=write_behind,
        )
        await self._root.check_output(sink)
        return await exporter.save(self._root, names, sink, options, progress=progress)

    async def plan_save(self, names: Sequence[str], options: SaveOptions | None = None) -> SavePlan:
        """What :meth:`save` would write, without writing (``castar save --dry-run``)."""
        from castar.engine.save import exporter

        return await exporter.plan_save(self._root, names, options or exporter.SaveOptions())

    async def save_many(self, jobs: Sequence[SaveJob]) -> list[ExportResult]:
        """Run several exports concurrently; see :func:`castar.engine.save.exporter.save_many`."""
        from castar.engine.save import exporter

        for job in jobs:
            await self._root.check_output(job.sink)
        return await exporter.save_many(self._root, jobs)

    async def push(
        self,
        name: str,
        ref: str | None = None,
        *,
        platforms: Sequence[str | Platform] | None = None,
        jobs: int = 4,
        index: str = "new",
        progress: ProgressCallback | None = None,
    ) -> PushResult:
        """Push an image to a registry; see :func:`castar.engine.registry.push.push`.

        ``index``: with several ``platforms``, ``"new"`` pushes an index of just them,
        ``"sparse"`` the image's own index (which registries may refuse).
        """
        root = self._root
        from castar.engine.registry import push as _push  # httpx loads for registry work only

        if index not in ("new", "sparse"):
            raise InvalidArgument(f"push: index must be 'new' or 'sparse', not {index!r}")
        options = _push.PushOptions.parse(platforms, jobs, sparse=index == "sparse")
        return await _push.push(
            root.content, root.images, root.leases, name, ref, options, progress=progress
        )

    async def verify(
        self, names: Iterable[str] | None = None, *, progress: ProgressCallback | None = None
    ) -> VerifyReport:
        """Re-hash stored blobs: all of them, or the stored subtrees of the named images."""
        from castar.store import verify as _verify

        roots = (
            None if names is None else [(await self.images.resolve(n)).target.digest for n in names]
        )
        return await _verify.verify(self._root.content, roots, progress=progress)


@asynccontextmanager
async def open_store(root: str | os.PathLike[str] | None = None) -> AsyncIterator[Store]:
    """Open (creating it if needed) the store at ``root``, else :func:`default_root`."""
    async with open_root(root) as r:
        yield Store(r)
