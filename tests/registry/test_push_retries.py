"""A failed whole-blob upload starts over, bounded; a 401 mid-upload renews the token (PUSH-7)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from castar.engine import oci
from castar.engine.registry import client
from castar.engine.registry.client import Registry
from castar.engine.registry.push import PushOptions, push
from castar.store.errors import Unauthenticated, Unavailable

if TYPE_CHECKING:
    from castar.store import Image, Root

pytestmark = pytest.mark.anyio

_BEARER = 'Bearer realm="http://auth.test/token",service="fake"'


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(client, "_BACKOFF", 0.0)


class _Registry:
    """Bearer tokens ``t1``, ``t2``…; ``fault(n, req)`` may answer the n-th blob PUT instead."""

    def __init__(self, fault: Any) -> None:
        self.fault = fault
        self.tokens = 0
        self.valid = "Bearer t1"
        self.blobs: dict[str, bytes] = {}
        self.puts = 0
        self.posts = 0

    async def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.test":
            self.tokens += 1
            self.valid = f"Bearer t{self.tokens}"
            return httpx.Response(200, json={"token": f"t{self.tokens}"})
        if req.headers.get("Authorization") != self.valid:
            await req.aread()
            return httpx.Response(401, headers={"WWW-Authenticate": _BEARER})
        path = req.url.path
        if "/manifests/" in path:
            await req.aread()
            return httpx.Response(404 if req.method == "HEAD" else 201)
        if req.method == "HEAD":
            return httpx.Response(200 if path.rsplit("/", 1)[1] in self.blobs else 404)
        if req.method == "POST":
            self.posts += 1
            return httpx.Response(202, headers={"Location": f"/v2/r/blobs/uploads/u{self.posts}"})
        body = await req.aread()  # the whole body is sent before any answer
        self.puts += 1
        answer = self.fault(self.puts, self)
        if answer is not None:
            return answer
        digest = req.url.params["digest"]
        assert "sha256:" + hashlib.sha256(body).hexdigest() == digest
        self.blobs[digest] = body
        return httpx.Response(201)


async def _push(store: Root, image: Image, fake: _Registry) -> Any:
    roles = (store.content, store.images, store.leases)
    seen: list[int] = []
    reg = Registry("fake.test", plain_http=True, jobs=1, transport=httpx.MockTransport(fake))
    options = PushOptions.parse(["linux/amd64"])

    def progress(done: int, total: int, digest: str) -> None:
        seen.append(done)

    async with reg:
        result = await push(
            *roles, image.name, "fake.test/r:1", options, registry=reg, progress=progress
        )
    blobs = [d for d in (*result.pushed, *result.skipped) if not _is_document(d)]
    assert seen[-1] == sum(d.size for d in blobs)  # what a failed try sent is not counted
    return result


def _is_document(d: oci.Descriptor) -> bool:
    return oci.is_manifest(d.media_type) or oci.is_index(d.media_type)


def _fails(times: int, answer: Any) -> Any:
    def fault(n: int, fake: _Registry) -> httpx.Response | None:
        if n > times:
            return None
        if isinstance(answer, Exception):
            raise answer
        return answer(fake) if callable(answer) else answer

    return fault


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "0"}),
        httpx.WriteError("connection reset by peer"),
    ],
    ids=["503", "429", "reset"],
)
async def test_a_failed_blob_upload_starts_over(store: Root, small_image: Image, answer) -> None:
    fake = _Registry(_fails(1, answer))
    result = await _push(store, small_image, fake)
    blobs = [d for d in result.pushed if not _is_document(d)]
    assert {str(d.digest) for d in blobs} == set(fake.blobs)
    for d in blobs:
        assert fake.blobs[d.digest] == await store.content.read_all(d.digest, limit=1 << 20)
    assert fake.posts == len(blobs) + 1  # the failed one started over with a fresh POST


async def test_a_blob_upload_failing_every_time_is_unavailable(
    store: Root, small_image: Image
) -> None:
    fake = _Registry(_fails(1000, httpx.Response(503)))
    with pytest.raises(Unavailable, match="503"):
        await _push(store, small_image, fake)
    assert fake.puts == 3  # bounded


def _expire(fake: _Registry) -> httpx.Response:
    fake.valid = "expired"
    return httpx.Response(401, headers={"WWW-Authenticate": _BEARER})


async def test_an_expired_token_mid_upload_is_renewed_once(store: Root, small_image: Image) -> None:
    fake = _Registry(_fails(1, _expire))
    result = await _push(store, small_image, fake)
    assert fake.tokens == 2
    assert {str(d.digest) for d in result.pushed if not _is_document(d)} == set(fake.blobs)


async def test_a_token_refused_again_mid_upload_is_unauthenticated(
    store: Root, small_image: Image
) -> None:
    fake = _Registry(_fails(1000, _expire))
    with pytest.raises(Unauthenticated):
        await _push(store, small_image, fake)
    assert fake.puts == 2
