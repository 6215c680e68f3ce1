"""Leases (LEASE-1..7): ``LeaseManager`` and the current lease (a ContextVar children inherit)."""

from __future__ import annotations

import base64
import hashlib
import os
import time
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from datetime import timedelta
from typing import TYPE_CHECKING, Final, final

import anyio

from castar.store import _txn
from castar.store._schema import Lease
from castar.store.digest import parse
from castar.store.errors import (
    InvalidArgument,
    NotFound,
    NotImplementedKind,
    Unavailable,
    map_os_errors,
)
from castar.store.ingest import lock_dir, remove_dir, sweep_scratch
from castar.store.labels import EXPIRE, rfc3339
from castar.store.sqlite import Records, validate_labels

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterator, Callable, Iterable, Mapping
    from datetime import datetime
    from pathlib import Path

    from castar.store.sqlite import SQLiteMetadataDB

__all__ = [
    "RESOURCE_TYPES",
    "Lease",
    "LeaseManager",
    "current_lease",
    "current_lease_id",
    "dead_owners",
    "random_lease_id",
    "release_owners",
]

#: Resource types a lease can hold in castar (LEASE-4; snapshots are out of scope).
RESOURCE_TYPES: Final = ("content", "images", "ingests")


_current: ContextVar[Lease | None] = ContextVar("castar_current_lease", default=None)


def current_lease() -> Lease | None:
    """The lease of the innermost ``async with leases.hold()`` in this context, or None."""
    return _current.get()


def current_lease_id() -> str | None:
    """The id of :func:`current_lease`, or None: what the metadata DB records things under."""
    lease = _current.get()
    return None if lease is None else lease.id


def random_lease_id() -> str:
    """``<nanosecond field of now>-<base64url of 3 random bytes>`` (LEASE-1)."""
    ns = time.time_ns() % 1_000_000_000
    return f"{ns}-{base64.urlsafe_b64encode(os.urandom(3)).decode()}"


def _owners(root: Path) -> Path:
    return root / "owners"


def _claim(root: Path) -> tuple[str, Path, int]:
    """A fresh lease id and ``<root>/owners/<sha256 hex of it>`` locked for this process.

    A gc may take a new, still unrecorded lock as an orphan's and hold it for its whole
    sweep (LEASE-8): then the next id's directory, which no gc has listed, is taken instead.
    """
    for _ in range(8):
        id = random_lease_id()
        path = _owners(root) / hashlib.sha256(id.encode()).hexdigest()
        with map_os_errors(f'lease "{id}": owner lock {path}'), suppress(Unavailable):
            return id, path, lock_dir(path, id)
    raise Unavailable(f"owner locks in {_owners(root)}: every new lock was taken at once")


def dead_owners(root: Path) -> dict[str, int]:
    """The owner locks no live process holds, now locked here: owner -> fd (LEASE-8)."""
    out: dict[str, int] = {}
    with map_os_errors(f"owner locks in {_owners(root)}"):
        try:
            names = os.listdir(_owners(root))
        except FileNotFoundError:
            return out
        for name in names:
            if sweep_scratch(_owners(root) / name):  # a lock being made or removed (ING-16)
                continue
            with suppress(Unavailable, NotADirectoryError):
                out[name] = lock_dir(_owners(root) / name, name)
    return out


def release_owners(root: Path, owners: Mapping[str, int], remove: bool) -> None:
    """Close locks of :func:`dead_owners` or :func:`_claim`, removing their directories first."""
    for name, fd in owners.items():
        if remove:
            with suppress(OSError):
                remove_dir(_owners(root) / name)
        os.close(fd)


@final
class LeaseManager(Records):
    """Creates, lists and deletes leases and their resources; operation leases have owners."""

    def __init__(self, db: SQLiteMetadataDB, clock: Callable[[], datetime], root: Path) -> None:
        super().__init__(db, clock)
        self._root = root

    async def create(
        self,
        id: str | None = None,
        *,
        expire: timedelta | None = None,
        labels: Mapping[str, str] | None = None,
        durable: bool = True,
    ) -> Lease:
        """Create a lease (random id when None); ``durable=False`` skips the fsync."""
        return await self._create(id, expire, labels, durable, None)

    async def _create(
        self,
        id: str | None,
        expire: timedelta | None,
        labels: Mapping[str, str] | None,
        durable: bool,
        owner: str | None,
    ) -> Lease:
        if id is None:
            id = random_lease_id()
        if not id:
            raise InvalidArgument("lease id must be provided")
        now = self._clock()
        merged = dict(labels or {})
        if expire is not None:
            merged[EXPIRE] = rfc3339(now + expire)
        validate_labels(merged)
        return await self._db.write(_txn.lease_create, id, merged, now, owner, durable=durable)

    @asynccontextmanager
    async def hold(
        self,
        *,
        expire: timedelta | None = timedelta(hours=24),
        labels: Mapping[str, str] | None = None,
    ) -> AsyncIterator[Lease]:
        """Create a lease current for the block (child tasks too, LEASE-5); delete it on exit.

        This process holds the lease's owner lock until then: GC reaps it if we die (LEASE-8).
        """
        if self._db.read_only is not None:  # nothing on it can be collected: nothing to hold
            yield Lease(random_lease_id(), self._clock(), dict(labels or {}))
            return
        id, path, fd = await anyio.to_thread.run_sync(_claim, self._root)
        try:
            # Not durable: worthless after a power cut, and each durable commit costs an fsync.
            lease = await self._create(id, expire, labels, False, path.name)
            token = _current.set(lease)
            try:
                yield lease
            finally:
                _current.reset(token)
                with anyio.CancelScope(shield=True), suppress(NotFound):
                    await self.delete(lease.id, durable=False)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(release_owners, self._root, {path.name: fd}, True)

    async def list(self) -> builtins.list[Lease]:
        """All leases, ascending by id (LEASE-7)."""
        return await self._db.read(_txn.lease_list)

    async def delete(self, id: str, *, durable: bool = True) -> None:
        """Delete a lease; what only it protected becomes garbage (LEASE-3)."""
        await self._db.write(_txn.lease_delete, id, durable=durable)

    async def add_resource(self, id: str, type: str, resource: str) -> None:
        """Add ``resource`` of ``type`` (``content``, ``images``, ``ingests``) to lease ``id``."""
        await self.add_resources(id, type, [resource])

    async def add_resources(self, id: str, type: str, resources: Iterable[str]) -> None:
        """:meth:`add_resource` of many resources of one type in ONE transaction."""
        todo = list(resources)
        for resource in todo:
            _check_resource(type, resource)
        await self._db.write(_txn.lease_add, id, type, todo)

    async def delete_resource(self, id: str, type: str, resource: str) -> None:
        """Remove a resource from a lease (absent resources are ignored)."""
        _check_resource(type, resource)
        await self._db.write(_txn.lease_remove, id, type, resource)

    async def list_resources(self, id: str) -> builtins.list[tuple[str, str]]:
        """``(type, resource)`` pairs: content, then images, then ingests (LEASE-4)."""
        return await self._db.read(_txn.lease_resources, id)


def _check_resource(type: str, resource: str) -> None:
    if type.startswith("snapshots/"):
        raise NotImplementedKind(f"resource type {type} not supported yet")
    if "/" in type:
        raise InvalidArgument(f"invalid resource type {type}")
    if type not in RESOURCE_TYPES:
        raise NotImplementedKind(f"resource type {type} not supported yet")
    if type == "content":
        try:
            parse(resource)
        except InvalidArgument as exc:
            raise InvalidArgument(f"invalid content resource id {resource}: {exc}") from exc
