"""Chunked, resumable uploads (PUSH-4): to the real registry, and faults from a fake one."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from castar.engine import oci
from castar.engine.registry.client import Registry
from castar.engine.registry.push import PushOptions, push
from castar.store.errors import InvalidArgument, Unavailable
from tests.registry._clients import Recording

if TYPE_CHECKING:
    from castar.store import Image, Root

pytestmark = pytest.mark.anyio

CHUNK = 3000  # below every layer of SMALL (8 KiB): each goes up in several chunks


async def _push(store: Root, name: str, ref: str, registry: Registry, chunk: int = CHUNK) -> Any:
    roles = (store.content, store.images, store.leases)
    options = PushOptions.parse(["linux/amd64"], chunk=chunk)
    return await push(*roles, name, ref, options, registry=registry)


async def test_big_blobs_go_up_in_patch_chunks_to_the_real_registry(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    ref = f"{registry.host}/chunks-{anyio_backend}/a:1"
    async with Recording(registry.host) as client:
        result = await _push(store, small_image.name, ref, client)
    patches = [h for (m, _), h in zip(client.calls, client.headers, strict=True) if m == "PATCH"]
    big = [d for d in result.pushed if d.size > CHUNK and not oci.is_manifest(d.media_type)]
    assert big
    assert len(patches) == sum(-(-d.size // CHUNK) for d in big)
    assert all(int(h["Content-Length"]) <= CHUNK for h in patches)
    async with Registry(registry.host) as again:  # every blob now there: nothing is sent
        second = await _push(store, small_image.name, ref, again)
    assert second.sent == 0
    assert {d.digest for d in second.skipped} == {d.digest for d in result.pushed}


class _Uploads:
    """A fake registry's upload side: PATCH appends, GET reports, PUT checks the digest."""

    def __init__(self, fault: Any) -> None:
        self.fault = fault
        self.data: dict[str, bytearray] = {}
        self.blobs: dict[str, bytes] = {}
        self.log: list[tuple[str, str]] = []

    async def __call__(self, req: httpx.Request) -> httpx.Response:
        path = req.url.path
        self.log.append((req.method, req.headers.get("Content-Range", "")))
        if "/manifests/" in path:
            return httpx.Response(404 if req.method == "HEAD" else 201)
        if req.method == "HEAD":
            return httpx.Response(200 if path.rsplit("/", 1)[1] in self.blobs else 404)
        if req.method == "POST":
            uid = f"u{len(self.data)}"
            self.data[uid] = bytearray()
            return httpx.Response(202, headers={"Location": f"/v2/r/blobs/uploads/{uid}"})
        uid = path.rsplit("/", 1)[1]
        got = self.data[uid]
        if req.method == "GET":
            last = f"0-{len(got) - 1}" if got else "0-0"
            return httpx.Response(204, headers={"Range": last, "Location": path})
        body = await req.aread()
        if req.method == "PATCH":
            start = int(req.headers["Content-Range"].split("-")[0])
            answer = self.fault(start, body, got)
            if answer is not None:
                return answer
            if start != len(got):
                return httpx.Response(416)
            got += body
            return httpx.Response(202, headers={"Location": path})
        digest = req.url.params["digest"]
        if "sha256:" + hashlib.sha256(bytes(got) + body).hexdigest() != digest:
            return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
        self.blobs[digest] = bytes(got) + body
        return httpx.Response(201)


async def _fake_push(store: Root, image: Image, fault: Any) -> tuple[Any, _Uploads]:
    fake = _Uploads(fault)
    transport = httpx.MockTransport(fake)
    reg = Registry("fake.test", plain_http=True, jobs=1, transport=transport)  # one at a time
    async with reg:
        return await _push(store, image.name, "fake.test/r:1", reg), fake


async def _sent(store: Root, result: Any) -> dict[str, bytes]:
    """The bytes of every blob ``result`` says it uploaded, from the store."""
    return {
        str(d.digest): await store.content.read_all(d.digest, limit=1 << 20)
        for d in result.pushed
        if not oci.is_manifest(d.media_type) and not oci.is_index(d.media_type)
    }


async def test_a_chunk_cut_off_resumes_where_the_registry_stopped(
    store: Root, small_image: Image
) -> None:
    cut: list[int] = []

    def fault(start: int, body: bytes, got: bytearray) -> httpx.Response | None:
        if start > 0 and not cut:  # the second chunk: half arrives, then the connection drops
            cut.append(start + len(body) // 2)
            got += body[: len(body) // 2]
            raise httpx.WriteError("connection reset by peer")
        return None

    result, fake = await _fake_push(store, small_image, fault)
    assert cut
    methods = [m for m, _ in fake.log]
    resumed = methods.index("GET") + 1  # the upload's status, then the rest of the chunk
    assert fake.log[resumed][0] == "PATCH"
    assert fake.log[resumed][1].startswith(f"{cut[0]}-")
    wanted = await _sent(store, result)
    assert {d: fake.blobs[d] for d in wanted} == wanted  # every byte, once, in order


async def test_a_refused_chunk_416_resumes_from_the_reported_offset(
    store: Root, small_image: Image
) -> None:
    refused: list[int] = []

    def fault(start: int, body: bytes, got: bytearray) -> httpx.Response | None:
        if start > 0 and not refused:
            refused.append(start)
            return httpx.Response(416)
        return None

    result, fake = await _fake_push(store, small_image, fault)
    assert refused
    wanted = await _sent(store, result)
    assert wanted
    assert {d: fake.blobs[d] for d in wanted} == wanted


async def test_an_upload_failing_every_time_gives_up_with_a_clear_error(
    store: Root, small_image: Image
) -> None:
    def fault(start: int, body: bytes, got: bytearray) -> httpx.Response | None:
        return httpx.Response(503) if start > 0 else None

    with pytest.raises(Unavailable, match=r"upload of sha256:\w+ failed 4 times"):
        await _fake_push(store, small_image, fault)


def test_a_chunk_size_below_one_byte_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="chunk size"):
        PushOptions.parse(chunk=0)
