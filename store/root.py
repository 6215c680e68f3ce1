"""``Root``: one root directory's content, images, leases and GC; ``open_root``; the boot id."""

from __future__ import annotations

import functools
import os
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, final

import anyio
import anyio.to_thread

from castar.store.content import ContentStore
from castar.store.errors import InvalidArgument, UsageError, shorten
from castar.store.images import ImageStore
from castar.store.ingest import LocalContentStore
from castar.store.leases import LeaseManager
from castar.store.sqlite import SQLiteMetadataDB

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from castar.store.collector import Collector
    from castar.store.gc import GCReport

__all__ = ["Root", "current_boot_id", "default_root", "open_root"]


def _utcnow() -> datetime:
    return datetime.now(UTC)


_BOOT_ID: Final = Path("/proc/sys/kernel/random/boot_id")


def current_boot_id() -> str | None:
    """This machine boot's id (Linux ``/proc/sys/kernel/random/boot_id``); None if unknown."""
    try:
        return _BOOT_ID.read_text().strip() or None
    except OSError:
        return None


def default_root() -> Path:
    """``$CASTAR_ROOT``, else ``$XDG_DATA_HOME/castar``, else ``~/.local/share/castar``."""
    if root := os.environ.get("CASTAR_ROOT"):
        return Path(root)
    if xdg := os.environ.get("XDG_DATA_HOME"):
        return Path(xdg) / "castar"
    home = os.environ["HOME"] if "HOME" in os.environ else os.path.expanduser("~")
    if not os.path.isabs(home):  # never the current directory
        raise UsageError("empty store root: set --root, CASTAR_ROOT or HOME")
    return Path(home) / ".local" / "share" / "castar"


@final
class Root:
    """One root directory's ``content``, ``images``, ``leases`` and GC; see :func:`open_root`.

    Several ``Root`` objects, in this process or others, may share a directory safely.
    """

    def __init__(
        self, root: Path, db: SQLiteMetadataDB, clock: Callable[[], datetime], boot_id: str | None
    ) -> None:
        backend = LocalContentStore(root)  # does no I/O: the first write creates its folders
        self.root = root
        self._db = db
        self.content = ContentStore(backend, db, clock, boot_id)
        self.images = ImageStore(db, clock)
        self.leases = LeaseManager(db, clock, root)
        self._gc_parts = (db, backend, clock)

    async def check_output(self, target: object) -> None:
        """Refuse an output path inside this root (symlinks followed): it would wreck the store."""
        if not isinstance(target, str | os.PathLike) or target == "-":
            return
        path, root = await anyio.to_thread.run_sync(
            lambda: (Path(target).resolve(), self.root.resolve())
        )
        if path.is_relative_to(root):
            raise InvalidArgument(f"output {os.fspath(target)} is inside the store root {root}")

    @functools.cached_property
    def _collector(self) -> Collector:
        from castar.store.collector import Collector  # start-up: only gc and explain mark

        return Collector(*self._gc_parts)

    async def gc(self, *, dry_run: bool = False) -> GCReport:
        """Collect garbage now (GC-1..10); with ``dry_run`` only report what would go."""
        return await self._collector.collect(dry_run=dry_run)

    async def explain(self, digest: str) -> list[str]:
        """The path from a GC root to ``digest`` (``["image a:1", "sha256:…"]``); [] if garbage."""
        return await self._collector.explain(digest)

    async def aclose(self) -> None:
        """Close the metadata database."""
        await self._db.aclose()


def _prepare(path: Path) -> bool:
    """Make the root if needed (a bad one is a UsageError naming it); True if it is read-only."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UsageError(f"store root {shorten(str(path))}: not a directory") from None
    except OSError as exc:
        why = (exc.strerror or str(exc)).lower()
        raise UsageError(f"store root {shorten(str(path))}: {why}") from exc
    for part in ("blobs", "ingest", "owners", "meta.db"):  # the store would write through a link
        if (path / part).is_symlink():
            raise InvalidArgument(f"store root {path}: {part} is a symlink")
    db = path / "meta.db"
    return not os.access(path, os.W_OK) or (db.exists() and not os.access(db, os.W_OK))


@asynccontextmanager
async def open_root(
    root: str | os.PathLike[str] | None = None,
    *,
    clock: Callable[[], datetime] | None = None,
    boot_id: str | None = None,
) -> AsyncIterator[Root]:
    """Open (creating it if needed) the root at ``root``, else at :func:`default_root`.

    Blobs committed unsynced in an earlier boot (a machine crash since) are forgotten: their
    data may be torn. Tests inject ``clock`` (aware UTC now) and ``boot_id``.
    """
    if root is not None and not os.fspath(root):
        raise UsageError("empty store root")
    path = Path(root) if root is not None else default_root()
    read_only = await anyio.to_thread.run_sync(_prepare, path)
    if boot_id is None:
        boot_id = await anyio.to_thread.run_sync(current_boot_id)
    db = await SQLiteMetadataDB.open(path / "meta.db", read_only=read_only)
    store = Root(path, db, clock or _utcnow, boot_id)
    try:
        if not read_only:  # a read-only store is read as it is: nothing there can change
            await store.content.drop_stale()
        yield store
    finally:
        with anyio.CancelScope(shield=True):
            await store.aclose()
