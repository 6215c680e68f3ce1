"""Pull faults a real registry cannot be made to produce, from a fake one (MockTransport)."""

from __future__ import annotations

import json

import anyio.to_thread
import httpx
import pytest

from castar.engine import synth
from castar.engine.load.importer import LoadOptions
from castar.engine.registry import pull as pull_module
from castar.engine.registry.client import Registry
from castar.engine.registry.pull import pull
from castar.store.errors import DigestMismatch, NotFound, Unavailable

pytestmark = pytest.mark.anyio

SPEC = synth.SynthSpec(name="fake.test/fake:1", platforms=("linux/amd64",), layers=1)


class _Dropped(httpx.AsyncByteStream):
    """A body cut off after ``data``, as when the connection drops."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    async def __aiter__(self):
        yield self.data
        raise httpx.ReadError("connection reset by peer")


def _layout(tmp_path) -> tuple[dict[str, bytes], str]:
    """Every blob of ``SPEC`` by digest, and the digest of its image index."""
    synth.write_layout(SPEC, tmp_path / "layout")
    blobs = {
        f"sha256:{p.name}": p.read_bytes() for p in (tmp_path / "layout/blobs/sha256").iterdir()
    }
    index = json.loads((tmp_path / "layout/index.json").read_bytes())
    return blobs, index["manifests"][0]["digest"]


async def _fake(tmp_path, fault):
    blobs, top = await anyio.to_thread.run_sync(_layout, tmp_path)
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        kind, ref = req.url.path.split("/")[-2:]
        digest = top if ref == "1" else ref
        data = blobs[digest]
        headers = {"Docker-Content-Digest": digest, "Content-Length": str(len(data))}
        if kind == "manifests":
            headers["Content-Type"] = json.loads(data)["mediaType"]
            if req.method == "HEAD":
                return httpx.Response(200, headers=headers)
        return fault(req, data, headers) or httpx.Response(200, headers=headers, content=data)

    return Registry("fake.test", plain_http=True, transport=httpx.MockTransport(handler)), seen


async def _pull(store, reg, ref=SPEC.name, platforms=None):
    options = LoadOptions.parse(platforms)
    return await pull(store.content, store.images, store.leases, ref, options, registry=reg)


async def test_dropped_blob_resumes_with_range(store, tmp_path):
    dropped: list[int] = []

    def fault(req, data, headers):
        start = int(req.headers.get("Range", "bytes=0-")[6:-1])
        if len(data) > 1 << 16 and not dropped:
            dropped.append(len(data) // 3)
            return httpx.Response(200, headers=headers, stream=_Dropped(data[: len(data) // 3]))
        if start:
            return httpx.Response(206, content=data[start:])
        return None

    reg, seen = await _fake(tmp_path, fault)
    async with reg:
        (image,) = await _pull(store, reg)
    ranges = [r.headers["Range"] for r in seen if "Range" in r.headers]
    assert ranges == [f"bytes={dropped[0]}-"]  # the bytes before the drop are kept
    assert image.name == "fake.test/fake:1"
    assert await store.content.list_statuses() == []


async def test_corrupt_blob_fails_and_changes_nothing(store, tmp_path):
    def fault(req, data, headers):
        if len(data) > 1 << 16:
            return httpx.Response(200, headers=headers, content=b"x" + data[1:])
        return None

    reg, _ = await _fake(tmp_path, fault)
    async with reg:
        with pytest.raises(DigestMismatch):
            await _pull(store, reg)
    assert await store.images.list() == []
    assert await store.content.list_statuses() == []


class _Stalled(httpx.AsyncByteStream):
    """A body that sends ``data``, says so, then waits forever."""

    def __init__(self, data: bytes, started: anyio.Event) -> None:
        self.data = data
        self.started = started

    async def __aiter__(self):
        yield self.data
        self.started.set()
        await anyio.sleep_forever()


async def test_cancelled_pull_leaves_nothing(store, tmp_path):
    started = anyio.Event()

    def fault(req, data, headers):
        if len(data) > 1 << 16:
            return httpx.Response(200, headers=headers, stream=_Stalled(data[:100], started))
        return None

    reg, _ = await _fake(tmp_path, fault)
    async with reg, anyio.create_task_group() as tg:

        async def run() -> None:
            await _pull(store, reg)

        tg.start_soon(run)
        await started.wait()
        tg.cancel_scope.cancel()
    assert await store.images.list() == []
    assert await store.content.list_statuses() == []
    assert await store.leases.list() == []


async def test_lone_manifest_platform_checked(store, tmp_path):
    reg, _ = await _fake(tmp_path, lambda req, data, headers: None)
    (manifest,) = synth.plan(SPEC).platforms
    ref = f"fake.test/fake@{manifest.manifest.digest}"
    async with reg:
        with pytest.raises(NotFound, match="no manifest for the requested platform"):
            await _pull(store, reg, ref, ["linux/arm64"])
        (image,) = await _pull(store, reg, ref, ["linux/amd64"])
    assert image.target.digest == manifest.manifest.digest


async def test_undecodable_blob_is_unavailable_and_changes_nothing(store, tmp_path):
    tries: list[str] = []

    def fault(req, data, headers):
        if len(data) > 1 << 16:
            tries.append(req.url.path)
            headers["Content-Encoding"] = "gzip"
            return httpx.Response(200, headers=headers, content=data)  # not gzip
        return None

    reg, _ = await _fake(tmp_path, fault)
    async with reg:
        blob_url = r"GET http://fake\.test/v2/fake/blobs/sha256:\w+"
        with pytest.raises(Unavailable, match=blob_url + ": DecodingError"):
            await _pull(store, reg)
    assert len(tries) == pull_module._TRIES
    assert await store.images.list() == []
    assert await store.content.list_statuses() == []


@pytest.mark.parametrize("lie", ["body", "header"])
async def test_document_not_matching_its_digest(store, tmp_path, lie):
    def fault(req, data, headers):
        if "/manifests/" not in req.url.path:
            return None
        if lie == "header":
            headers["Docker-Content-Digest"] = "sha256:" + "0" * 64
            return httpx.Response(200, headers=headers, content=data)
        return httpx.Response(200, headers=headers, content=b" " + data[:-1])

    reg, _ = await _fake(tmp_path, fault)
    async with reg:
        with pytest.raises(DigestMismatch):
            await _pull(store, reg)
    assert await store.images.list() == []


async def test_blob_gets_follow_a_redirect_to_storage_without_the_credentials(store, tmp_path):
    # Docker Hub, ghcr.io and others answer a blob GET with 307 to a CDN: castar follows it,
    # and the registry's Authorization does not go to the other host.
    blobs, top = await anyio.to_thread.run_sync(_layout, tmp_path)
    cdn: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "cdn.test":
            cdn.append(req)
            return httpx.Response(200, content=blobs[req.url.path.rsplit("/", 1)[1]])
        if "Authorization" not in req.headers:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="fake"'})
        kind, ref = req.url.path.split("/")[-2:]
        digest = top if ref == "1" else ref
        if kind == "blobs":
            return httpx.Response(307, headers={"Location": f"https://cdn.test/b/{digest}?sig=x"})
        data = blobs[digest]
        media_type = json.loads(data)["mediaType"]
        headers = {"Docker-Content-Digest": digest, "Content-Type": media_type}
        if req.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Content-Length": str(len(data))})
        return httpx.Response(200, headers=headers, content=data)

    reg = Registry(
        "fake.test",
        plain_http=True,
        credentials=lambda _host: ("me", "secret"),
        transport=httpx.MockTransport(handler),
    )
    async with reg:
        (image,) = await _pull(store, reg)
    assert cdn
    assert all("Authorization" not in r.headers for r in cdn)
    assert {r.url.path.rsplit("/", 1)[1] for r in cdn} <= set(blobs)
    for digest in {r.url.path.rsplit("/", 1)[1] for r in cdn}:
        assert await store.content.read_all(digest, limit=1 << 24) == blobs[digest]
    assert image.name == SPEC.name
