"""A load that fails in the store: one castar error, no record.

Archives are generated here (engine.synth); sources are files and non-seekable streams.
"""

from __future__ import annotations

import errno
import io
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from castar.engine import synth
from castar.engine.load import importer
from castar.engine.load.importer import LoadOptions
from castar.store import Image, Root, open_root
from castar.store.errors import DataLoss

SPEC = synth.SynthSpec(
    name="faults/img:1", platforms=("linux/amd64", "linux/arm64"), layers=3, layer_size=4096
)


async def load(root: Root, source: object, **options: Any) -> list[Image]:
    roles = (root.content, root.images, root.leases)
    return await importer.load(*roles, source, LoadOptions.parse(**options))


class Stream:
    """A non-seekable source: an object with ``async read(n)``."""

    def __init__(self, data: bytes) -> None:
        self._data = memoryview(data)

    async def read(self, n: int) -> bytes:
        out, self._data = self._data[:n], self._data[n:]
        await anyio.lowlevel.checkpoint()
        return bytes(out)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store") as s:
        yield s


def synth_bytes(spec: synth.SynthSpec) -> bytes:
    buf = io.BytesIO()
    synth.write(spec, buf)
    return buf.getvalue()


def source(tmp_path: Path, data: bytes, stream: bool) -> object:
    """The archive as a non-seekable stream, or as a file."""
    if not stream:
        (tmp_path / "archive.tar").write_bytes(data)
    return Stream(data) if stream else tmp_path / "archive.tar"


@pytest.mark.parametrize("stream", [False, True])
async def test_a_failing_fsync_is_one_data_loss_naming_the_blob(
    store, tmp_path, monkeypatch, stream
):
    # Every blob's fdatasync fails, in each of the sync's threads: one error, not a group.
    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "fdatasync", fail)
    with pytest.raises(DataLoss, match=r"^syncing .*/blobs/sha256/[0-9a-f]{64}: injected") as err:
        await load(store, source(tmp_path, synth_bytes(SPEC), stream))
    assert isinstance(err.value.__cause__, OSError)
    assert await store.images.list() == []
    monkeypatch.undo()
    images = await load(store, source(tmp_path, synth_bytes(SPEC), stream))  # a retry loads it
    assert [i.name for i in images] == ["docker.io/faults/img:1"]
