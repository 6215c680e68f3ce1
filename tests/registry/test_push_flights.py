"""Concurrent pushes through one client send each blob and each document once (single flight)."""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from castar.engine.registry.client import Registry
from castar.engine.registry.push import PushOptions, push

if TYPE_CHECKING:
    from castar.store import Image, Root

pytestmark = pytest.mark.anyio


class _Manifests:
    """A fake registry holding every blob, that fails overlapping PUTs of one manifest.

    distribution 2.8 can answer one of two concurrent PUTs of the same manifest with
    ``DIGEST_INVALID``; this fake always does.
    """

    def __init__(self) -> None:
        self.stored: set[str] = set()
        self.active: Counter[str] = Counter()
        self.puts: Counter[str] = Counter()

    async def __call__(self, req: httpx.Request) -> httpx.Response:
        if "/manifests/" not in req.url.path:
            return httpx.Response(200)  # HEAD of a blob: the registry has it
        if req.method == "HEAD":
            present = req.url.path.rsplit("/", 1)[1] in self.stored
            return httpx.Response(200 if present else 404)
        body = await req.aread()
        digest = "sha256:" + hashlib.sha256(body).hexdigest()
        self.active[digest] += 1
        try:
            await anyio.sleep(0.01)  # the PUT takes a while: others may come in meanwhile
            if self.active[digest] > 1:
                return httpx.Response(400, json={"errors": [{"code": "DIGEST_INVALID"}]})
        finally:
            self.active[digest] -= 1
        self.stored.add(digest)
        self.puts[req.url.path.rsplit("/", 1)[1]] += 1
        return httpx.Response(201)


async def test_concurrent_pushes_put_each_document_once_and_never_two_at_a_time(
    store: Root, small_image: Image
) -> None:
    fake = _Manifests()
    reg = Registry("fake.test", plain_http=True, transport=httpx.MockTransport(fake))
    roles = (store.content, store.images, store.leases)
    results: list[Any] = []

    async def one(tag: str) -> None:
        options = PushOptions.parse(["linux/amd64"])
        results.append(
            await push(*roles, small_image.name, f"fake.test/r:{tag}", options, registry=reg)
        )

    async with reg, anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(one, str(i))
    documents = {str(d.digest) for r in results for d in (*r.pushed, *r.skipped)}
    assert {d for d in documents if fake.puts[d]} == set(fake.stored)
    assert all(fake.puts[d] == 1 for d in fake.stored)  # by digest: once, whoever pushed it
    assert all(fake.puts[str(i)] == 1 for i in range(4))  # and every tag
