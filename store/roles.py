"""The roles castar.engine needs from a root, as typing Protocols (the narrowest one is taken).

``ContentStore`` plays ``BlobReader`` and ``BlobIngester``, ``ImageStore`` ``ImageRecords``
and ``LeaseManager`` ``Leases``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import builtins
    from collections.abc import AsyncIterable, AsyncIterator, Iterable, Mapping
    from contextlib import AbstractAsyncContextManager
    from datetime import timedelta
    from pathlib import Path

    from castar.store.content import Descriptor, Info, SmallBlob, Writer
    from castar.store.digest import Buffer, Digest
    from castar.store.images import DescriptorLike, Image
    from castar.store.leases import Lease

__all__ = ["BlobIngester", "BlobReader", "ImageRecords", "Leases"]


class BlobReader(Protocol):
    """Reads blobs and their records by digest (``NotFound`` when absent)."""

    async def info(self, digest: str) -> Info: ...  # noqa: D102
    async def infos(self, digests: Iterable[str]) -> dict[Digest, Info]: ...  # noqa: D102
    async def exists(self, digest: str) -> bool: ...  # noqa: D102
    async def walk(self) -> list[Info]: ...  # noqa: D102
    async def read_at(self, digest: str, offset: int, n: int) -> bytes: ...  # noqa: D102
    async def read_all(self, digest: str, *, limit: int) -> bytes: ...  # noqa: D102
    def path(self, digest: str) -> Path: ...  # noqa: D102
    def read(  # noqa: D102
        self, digest: str, *, offset: int = 0, length: int | None = None, chunk_size: int = ...
    ) -> AsyncIterator[bytes]: ...


class BlobIngester(BlobReader, Protocol):
    """Writes, labels, syncs and deletes blobs; aborts ingests."""

    def writer(  # noqa: D102
        self, ref: str, *, size: int | None = None, digest: str | None = None
    ) -> AbstractAsyncContextManager[Writer]: ...
    async def write_blob(  # noqa: D102
        self,
        data: Buffer | AsyncIterable[Buffer],
        *,
        digest: str | None = None,
        size: int | None = None,
        labels: Mapping[str, str] | None = None,
        media_type: str = ...,
        ref: str | None = None,
        sync: bool = True,
    ) -> Descriptor: ...
    async def write_small_blobs(  # noqa: D102
        self, blobs: Iterable[SmallBlob], *, sync: bool = True, created: set[Digest] | None = None
    ) -> list[Descriptor]: ...
    async def update_labels(self, digest: str, labels: Mapping[str, str]) -> Info: ...  # noqa: D102
    async def update_labels_many(  # noqa: D102
        self, updates: Iterable[tuple[str, Mapping[str, str]]]
    ) -> dict[Digest, Info]: ...
    async def sync(self, digests: Iterable[str] | None = None) -> int: ...  # noqa: D102
    async def delete(self, digest: str) -> None: ...  # noqa: D102
    async def drop_unused(self, digests: Iterable[str]) -> list[Digest]: ...  # noqa: D102
    def free_space(self) -> int: ...  # noqa: D102
    async def abort(self, ref: str) -> None: ...  # noqa: D102


class ImageRecords(Protocol):
    """Image name → target records (IMG-1..6)."""

    async def get(self, name: str) -> Image: ...  # noqa: D102
    async def list(self) -> list[Image]: ...  # noqa: D102
    async def create(  # noqa: D102
        self, name: str, target: DescriptorLike, *, labels: Mapping[str, str] | None = None
    ) -> Image: ...
    async def update(  # noqa: D102
        self,
        name: str,
        *,
        target: DescriptorLike | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Image: ...
    async def delete(self, name: str, *, target: str | None = None) -> None: ...  # noqa: D102
    async def get_many(self, names: Iterable[str]) -> dict[str, Image]: ...  # noqa: D102
    async def put_many(  # noqa: D102
        self,
        targets: Iterable[tuple[str, DescriptorLike]],
        *,
        keep: Iterable[tuple[str, DescriptorLike, Mapping[str, str]]] = (),
    ) -> builtins.list[Image]: ...


class Leases(Protocol):
    """Holds a lease for a block and adds resources to leases."""

    def hold(  # noqa: D102
        self, *, expire: timedelta | None = ..., labels: Mapping[str, str] | None = None
    ) -> AbstractAsyncContextManager[Lease]: ...
    async def add_resources(self, id: str, type: str, resources: Iterable[str]) -> None: ...  # noqa: D102
