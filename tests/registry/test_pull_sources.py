"""A pull adds its repository to the source label's list, sorted, no duplicates (PULL-8)."""

from __future__ import annotations

import pytest

from castar.engine import synth
from castar.store.labels import SOURCE
from tests.registry._fake import fake, pull_from

pytestmark = pytest.mark.anyio

SPEC = synth.SynthSpec(
    name="fake.test/b/img:1", platforms=("linux/amd64",), layers=1, layer_size=64
)


async def test_pulls_from_two_repositories_list_both(store, tmp_path):
    (amd64,) = synth.plan(SPEC).platforms
    reg, _, _ = await fake(SPEC, tmp_path, lambda req, data, headers: None)
    async with reg:
        for ref in ("fake.test/b/img:1", "fake.test/a/img:1", "fake.test/b/img:1"):
            await pull_from(store, reg, ref)
    for digest in (amd64.manifest.digest, amd64.layers[0].digest, amd64.config.digest):
        info = await store.content.info(digest)
        assert info.labels[SOURCE + "fake.test"] == "a/img,b/img"
