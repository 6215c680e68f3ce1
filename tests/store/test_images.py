"""Image records through the public store: IMG-1..6, DESC-5."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING

import pytest

from castar.store import Descriptor, Root
from castar.store.digest import compute
from castar.store.errors import AlreadyExists, InvalidArgument, NotFound

if TYPE_CHECKING:
    from conftest import Clock

D1 = compute(b"one")
D2 = compute(b"two")
MT = "application/vnd.oci.image.index.v1+json"


@dataclass(frozen=True)
class RichDescriptor:
    """Like castar.engine.oci.Descriptor: more fields than an image record keeps."""

    media_type: str
    digest: str
    size: int
    annotations: Mapping[str, str] = field(default_factory=dict)
    urls: tuple[str, ...] = ("https://example.invalid/blob",)
    platform: str = "linux/amd64"
    data: bytes = b"x"


async def test_create_get_list_delete(store: Root, clock: Clock) -> None:
    img = await store.images.create("b:1", Descriptor(MT, D1, 10), labels={"l": "v"})
    assert (img.name, img.target, dict(img.labels)) == ("b:1", Descriptor(MT, D1, 10), {"l": "v"})
    assert img.created_at == img.updated_at == clock.now  # IMG-2
    await store.images.create("a:1", Descriptor(MT, D2, 20))
    assert await store.images.get("b:1") == img
    assert [i.name for i in await store.images.list()] == ["a:1", "b:1"]  # IMG-5
    await store.images.delete("b:1")
    with pytest.raises(NotFound) as err:
        await store.images.get("b:1")
    assert str(err.value) == 'image "b:1": not found'
    assert [i.name for i in await store.images.list()] == ["a:1"]


async def test_only_four_target_fields_are_kept(store: Root) -> None:
    rich = RichDescriptor(MT, D1, 10, {"org.opencontainers.image.ref.name": "1"})
    img = await store.images.create("x", rich)  # DESC-5
    assert img.target == Descriptor(MT, D1, 10, {"org.opencontainers.image.ref.name": "1"})
    assert (await store.images.get("x")).target == img.target


async def test_duplicate_name_is_already_exists(store: Root) -> None:
    await store.images.create("x", Descriptor(MT, D1, 10))
    with pytest.raises(AlreadyExists) as err:  # IMG-2
        await store.images.create("x", Descriptor(MT, D2, 10))
    assert str(err.value) == 'image "x": already exists'
    assert (await store.images.get("x")).target.digest == D1


@pytest.mark.parametrize(
    ("name", "target", "text"),
    [
        ("", Descriptor(MT, D1, 1), "image name must not be empty"),
        ("", RichDescriptor("", "sha256:zz", 0), "image name must not be empty"),  # name first
        ("x", RichDescriptor("", "sha256:zz", 0), 'target.Digest "sha256:zz" invalid: '),
        ("x", RichDescriptor(MT, "sha256:zz", 1), 'target.Digest "sha256:zz" invalid: '),
        ("x", Descriptor(MT, D1, 0), "target.Size must be greater than zero"),
        ("x", Descriptor("", D1, 1), "target.MediaType must be set"),
    ],
)
async def test_invalid_image_is_invalid_argument(
    store: Root, name: str, target: RichDescriptor | Descriptor, text: str
) -> None:
    with pytest.raises(InvalidArgument) as err:  # IMG-1
        await store.images.create(name, target)
    assert str(err.value).startswith(text)
    assert await store.images.list() == []


async def test_image_label_over_limit_is_invalid_argument(store: Root) -> None:
    with pytest.raises(InvalidArgument, match="greater than maximum size"):  # LBL-1
        await store.images.create("x", Descriptor(MT, D1, 1), labels={"k": "v" * 4096})


async def test_update_keeps_created_at(store: Root, clock: Clock) -> None:
    first = await store.images.create("x", Descriptor(MT, D1, 10), labels={"a": "1"})
    clock.now += timedelta(minutes=1)
    img = await store.images.update("x", target=Descriptor(MT, D2, 20))  # IMG-3
    assert (img.target.digest, dict(img.labels)) == (D2, {"a": "1"})
    assert (img.created_at, img.updated_at) == (first.created_at, clock.now)
    img = await store.images.update("x", labels={"b": "2"})
    assert (img.target.digest, dict(img.labels)) == (D2, {"b": "2"})
    assert await store.images.get("x") == img


async def test_update_of_missing_image_is_not_found(store: Root) -> None:
    with pytest.raises(NotFound, match='image "nope": not found'):  # IMG-3
        await store.images.update("nope", labels={})


async def test_delete_with_target_guard(store: Root) -> None:
    await store.images.create("x", Descriptor(MT, D1, 10))
    with pytest.raises(NotFound) as err:  # IMG-4
        await store.images.delete("x", target=D2)
    assert str(err.value) == f'image "x" has target {D1}, not {D2}: not found'
    await store.images.delete("x", target=D1)
    with pytest.raises(NotFound):
        await store.images.delete("x")


async def test_image_is_a_gc_root_for_its_target(store: Root) -> None:
    desc = await store.content.write_blob(b"one")
    await store.images.create("x", Descriptor(MT, desc.digest, desc.size))
    assert (await store.gc()).removed == []  # IMG-6
    assert await store.explain(desc.digest) == ["image x", desc.digest]
    await store.images.delete("x")
    assert (await store.gc()).removed == [desc.digest]


async def test_expiring_image_created_under_lease_joins_it(store: Root, clock: Clock) -> None:
    expire = (clock.now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    async with store.leases.hold() as lease:
        await store.images.create(
            "tmp", Descriptor(MT, D1, 1), labels={"containerd.io/gc.expire": expire}
        )
        await store.images.create("plain", Descriptor(MT, D2, 1))
        assert await store.leases.list_resources(lease.id) == [("images", "tmp")]  # IMG-6


async def test_expired_image_is_deleted_by_gc(store: Root, clock: Clock) -> None:
    past = (clock.now - timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    await store.images.create(
        "old", Descriptor(MT, D1, 1), labels={"containerd.io/gc.expire": past}
    )
    await store.images.create(
        "bad", Descriptor(MT, D1, 1), labels={"containerd.io/gc.expire": "not-a-time"}
    )
    report = await store.gc()  # GC-3; an unparsable expiry is not expired (GC-2b)
    assert report.images_removed == ["old"]
    assert [i.name for i in await store.images.list()] == ["bad"]
