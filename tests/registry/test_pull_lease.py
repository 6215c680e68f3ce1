"""A pull leases what it finds already stored before skipping it (PULL-6)."""

from __future__ import annotations

import anyio
import pytest

from castar.engine import synth
from tests.registry._fake import fake, pull_from

pytestmark = pytest.mark.anyio

SPEC = synth.SynthSpec(
    name="fake.test/lease:1", platforms=("linux/amd64",), layers=2, layer_size=64 << 10
)


async def test_stored_blobs_and_documents_survive_a_gc_during_the_pull(store, tmp_path):
    (amd64,) = synth.plan(SPEC).platforms
    kept, stalled = amd64.layers
    fetching, go = anyio.Event(), anyio.Event()

    async def fault(req, data, headers):
        if req.method == "GET" and req.url.path.endswith(stalled.digest):
            fetching.set()
            await go.wait()
        return None

    reg, blobs, seen = await fake(SPEC, tmp_path, fault)
    # Stored before the pull and referenced by nothing: garbage to a GC not told otherwise.
    for digest in (kept.digest, amd64.manifest.digest):
        await store.content.write_blob(blobs[digest], digest=digest)
    async with reg, anyio.create_task_group() as tg:
        tg.start_soon(pull_from, store, reg, SPEC.name)
        with anyio.fail_after(30):  # a hang guard only
            await fetching.wait()
        await store.gc()
        go.set()
    assert await store.content.exists(kept.digest)
    assert await store.content.exists(amd64.manifest.digest)
    (image,) = await store.images.list()
    fetched = {r.url.path.rsplit("/", 1)[1] for r in seen if r.method == "GET"}
    assert kept.digest not in fetched
    assert amd64.manifest.digest not in fetched
    assert image.name == SPEC.name


async def test_stored_documents_survive_a_gc_during_the_walk(store, tmp_path):
    spec = synth.SynthSpec(
        name="fake.test/walk:1", platforms=("linux/amd64", "linux/arm64"), layers=1, layer_size=64
    )
    plan = synth.plan(spec).platforms
    fetching, go = anyio.Event(), anyio.Event()

    async def fault(req, data, headers):
        if req.method == "GET" and req.url.path.endswith(plan[1].manifest.digest):
            fetching.set()
            await go.wait()
        return None

    reg, blobs, seen = await fake(spec, tmp_path, fault)
    # The walk reads the stored amd64 manifest, then stalls fetching the arm64 one.
    await store.content.write_blob(blobs[plan[0].manifest.digest], digest=plan[0].manifest.digest)
    async with reg, anyio.create_task_group() as tg:
        tg.start_soon(pull_from, store, reg, spec.name)
        with anyio.fail_after(30):
            await fetching.wait()
        await store.gc()
        go.set()
    assert await store.content.exists(plan[0].manifest.digest)
    assert not [r for r in seen if r.url.path.endswith(plan[0].manifest.digest)]
    assert len(await store.images.list()) == 1
