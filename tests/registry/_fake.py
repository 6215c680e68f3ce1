"""A fake registry (httpx MockTransport) serving a synthetic image, with a fault hook."""

from __future__ import annotations

import inspect
import json
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx

from castar.engine import synth
from castar.engine.load.importer import LoadOptions
from castar.engine.registry.client import Registry
from castar.engine.registry.pull import pull

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


def layout(spec: synth.SynthSpec, tmp_path: Path) -> tuple[dict[str, bytes], str]:
    """Every blob of ``spec`` by digest, and the digest of its image index."""
    synth.write_layout(spec, tmp_path / "layout")
    blobs = {
        f"sha256:{p.name}": p.read_bytes() for p in (tmp_path / "layout/blobs/sha256").iterdir()
    }
    index = json.loads((tmp_path / "layout/index.json").read_bytes())
    return blobs, index["manifests"][0]["digest"]


async def fake(
    spec: synth.SynthSpec, tmp_path: Path, fault: Callable[..., Any], **kw: Any
) -> tuple[Registry, dict[str, bytes], list[httpx.Request]]:
    """A client of a fake ``fake.test`` serving ``spec`` under its tag; its blobs; the requests."""
    blobs, top = await anyio.to_thread.run_sync(layout, spec, tmp_path)
    tag = spec.name.rpartition(":")[2]
    seen: list[httpx.Request] = []

    async def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        kind, ref = req.url.path.split("/")[-2:]
        digest = top if ref == tag else ref
        data = blobs[digest]
        headers = {"Docker-Content-Digest": digest, "Content-Length": str(len(data))}
        if kind == "manifests":
            headers["Content-Type"] = json.loads(data)["mediaType"]
        answer = fault(req, data, headers)
        if inspect.isawaitable(answer):
            answer = await answer
        if answer is not None:
            return answer
        if req.method == "HEAD":
            return httpx.Response(200, headers=headers)
        return httpx.Response(200, headers=headers, content=data)

    transport = httpx.MockTransport(handler)
    return Registry("fake.test", plain_http=True, transport=transport, **kw), blobs, seen


async def pull_from(store: Any, reg: Registry, ref: str, platforms: Any = None) -> Any:
    """``pull(ref)`` into ``store`` through ``reg``."""
    options = LoadOptions.parse(platforms)
    return await pull(store.content, store.images, store.leases, ref, options, registry=reg)
