"""Image records (IMG-1..6): a name pointing at a target descriptor (DESC-5), a GC root."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, final

from castar.store import _txn
from castar.store._schema import Image
from castar.store.content import Descriptor
from castar.store.digest import parse
from castar.store.errors import InvalidArgument, NotFound
from castar.store.leases import current_lease_id
from castar.store.sqlite import Records, validate_labels

if TYPE_CHECKING:
    import builtins
    from collections.abc import Iterable, Mapping

__all__ = ["DescriptorLike", "Image", "ImageStore"]


class DescriptorLike(Protocol):
    """Anything with the four fields an image record keeps (castar.engine.oci.Descriptor is one)."""

    @property
    def media_type(self) -> str: ...  # noqa: D102
    @property
    def digest(self) -> str: ...  # noqa: D102
    @property
    def size(self) -> int: ...  # noqa: D102
    @property
    def annotations(self) -> Mapping[str, str]: ...  # noqa: D102


def _target(target: DescriptorLike) -> Descriptor:
    """The four fields an image keeps of ``target`` (DESC-5), checked as IMG-1 says."""
    try:
        digest = parse(target.digest)
    except InvalidArgument as exc:
        raise InvalidArgument(f'target.Digest "{target.digest}" invalid: {exc}') from exc
    if target.size <= 0:
        raise InvalidArgument("target.Size must be greater than zero")
    if not target.media_type:
        raise InvalidArgument("target.MediaType must be set")
    return Descriptor(target.media_type, digest, target.size, dict(target.annotations or {}))


@final
class ImageStore(Records):
    """Image records: create, get, list (by name), update, delete."""

    async def _put(
        self,
        name: str,
        target: DescriptorLike | None,
        labels: Mapping[str, str] | None,
        *,
        create: bool,
    ) -> Image:
        # IMG-1's order: the name, then the target, then the labels.
        self._name(name)
        checked = None if target is None else _target(target)
        if labels is not None:
            validate_labels(labels)
        return await self._db.write(
            _txn.image_put,
            name,
            checked,
            None if labels is None else dict(labels),
            create,
            current_lease_id(),
            self._clock(),
        )

    async def create(
        self, name: str, target: DescriptorLike, *, labels: Mapping[str, str] | None = None
    ) -> Image:
        """Record image ``name`` → ``target`` (IMG-1, IMG-2; IMG-6 under a lease)."""
        return await self._put(name, target, labels or {}, create=True)

    async def get(self, name: str) -> Image:
        """The image named ``name``; NotFound ``image "<name>": not found``."""
        rec = await self._db.read(_txn.image_get, name)
        if rec is None:
            raise NotFound(f'image "{name}"')
        return rec

    async def list(self) -> builtins.list[Image]:
        """All images, ascending by name (IMG-5)."""
        return await self._db.read(_txn.image_list)

    async def update(
        self,
        name: str,
        *,
        target: DescriptorLike | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> Image:
        """Replace the target and/or the labels of an image (IMG-3); created_at is kept."""
        return await self._put(name, target, labels, create=False)

    async def get_many(self, names: Iterable[str]) -> dict[str, Image]:
        """The images of ``names`` that exist, by name, in ONE read transaction."""
        return await self._db.read(_txn.image_get_many, list(names))

    async def put_many(
        self,
        targets: Iterable[tuple[str, DescriptorLike]],
        *,
        keep: Iterable[tuple[str, DescriptorLike, Mapping[str, str]]] = (),
    ) -> builtins.list[Image]:
        """Put images in ONE transaction: the images of ``targets``, in order.

        Each ``keep`` image is created unless its name exists; then each of ``targets`` is
        re-targeted as :meth:`update` does, or created without labels.
        """
        kept = [(self._name(n), _target(t), dict(labels)) for n, t, labels in keep]
        for _, _, labels in kept:
            validate_labels(labels)
        todo = [(self._name(n), _target(t)) for n, t in targets]
        return await self._db.write(
            _txn.image_put_many, kept, todo, current_lease_id(), self._clock()
        )

    @staticmethod
    def _name(name: str) -> str:
        if not name:
            raise InvalidArgument("image name must not be empty")
        return name

    async def delete(self, name: str, *, target: str | None = None) -> None:
        """Delete an image; with ``target`` only if it still points there (IMG-4)."""
        await self._db.write(_txn.image_delete, name, target)
