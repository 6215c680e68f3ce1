"""A document larger than its descriptor says is refused before it is all read (PULL-7)."""

from __future__ import annotations

import json

import httpx
import pytest

from castar.engine import synth
from castar.store.errors import SizeMismatch
from tests.registry._fake import fake, pull_from

pytestmark = pytest.mark.anyio

SPEC = synth.SynthSpec(name="fake.test/docs:1", platforms=("linux/amd64",), layers=1, layer_size=64)


class _Padded(httpx.AsyncByteStream):
    """A JSON document followed by 4 MiB of spaces; counts the bytes sent."""

    def __init__(self, start: bytes) -> None:
        self.start = start
        self.sent = 0

    async def __aiter__(self):
        yield self.start
        for _ in range(64):
            self.sent += 1 << 16
            yield b" " * (1 << 16)


# Reading stops mid-body: httpx's inner body generators are left to the collector, which trio
# reports as a ResourceWarning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_an_oversized_document_is_refused_naming_its_digest(store, tmp_path):
    (amd64,) = synth.plan(SPEC).platforms
    digest = amd64.manifest.digest
    bodies: list[_Padded] = []

    def fault(req, data, headers):
        if req.method == "GET" and req.url.path.endswith(digest):
            bodies.append(_Padded(data))
            del headers["Content-Length"]
            return httpx.Response(200, headers=headers, stream=bodies[-1])
        return None

    reg, _, _ = await fake(SPEC, tmp_path, fault)
    async with reg:
        with pytest.raises(SizeMismatch, match=f"{digest}: the answer is larger than"):
            await pull_from(store, reg, SPEC.name)
    assert bodies
    assert all(b.sent <= 2 << 16 for b in bodies)  # stopped at the descriptor's size
    assert await store.images.list() == []
    assert not await store.content.exists(digest)
    assert json.loads(bodies[0].start)["mediaType"]
