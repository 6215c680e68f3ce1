"""Benchmark planning a save of an image with many small layers (the lookup's store reads).

``.venv/bin/python -m bench.bench_plan [--backend asyncio|trio] [--layers 2000] [--runs 5]``

Fills a fresh store under /tmp with one manifest of ``--layers`` tiny layers, then prints
medians of ``plan_save`` (names resolved, one ``content.infos`` round per document level,
documents read) and of a whole ``save`` into a file, and the planning cost per blob. The
baseline, measured in the same run, is planning with one ``content.info`` hop per blob (what
the lookup did before ``infos``). The store is removed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING
from unittest.mock import patch

import anyio

from castar.engine import oci
from castar.engine.save import exporter
from castar.store.errors import NotFound
from castar.store.root import Root, open_root

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Iterable

    from castar.store.content import ContentStore, Info
    from castar.store.digest import Digest

NAME = "docker.io/library/many:1"


async def fill(store: Root, layers: int) -> None:
    async with store.leases.hold():
        descs = []
        for i in range(layers):
            d = await store.content.write_blob(f"layer {i}".encode(), media_type=oci.OCI_LAYER)
            descs.append(oci.Descriptor(oci.OCI_LAYER, d.digest, d.size))
        c = await store.content.write_blob(
            b'{"architecture":"amd64","os":"linux"}', media_type=oci.OCI_CONFIG
        )
        cfg = oci.Descriptor(oci.OCI_CONFIG, c.digest, c.size)
        m = await store.content.write_blob(
            oci.encode_manifest(oci.Manifest(config=cfg, layers=tuple(descs))),
            media_type=oci.OCI_MANIFEST,
            labels=oci.children_labels([cfg, *descs]),
        )
        await store.images.create(NAME, m)


def per_blob(content: ContentStore) -> Callable[[Iterable[str]], Awaitable[dict[Digest, Info]]]:
    """``infos`` as one ``info`` hop per digest: the baseline's cost model."""

    async def infos(digests: Iterable[str]) -> dict[Digest, Info]:
        out = {}
        for d in digests:
            with suppress(NotFound):
                info = await content.info(d)
                out[info.digest] = info
        return out

    return infos


async def main(layers: int, runs: int, backend: str) -> None:
    root = Path(tempfile.mkdtemp(prefix="castar-bench-plan-"))
    try:
        async with open_root(root / "store") as store:
            await fill(store, layers)
            plans, bases, saves = [], [], []
            plan = None
            for _ in range(runs):  # interleaved, so both see the same machine load
                t0 = time.perf_counter()
                plan = await exporter.plan_save(store, [NAME], exporter.SaveOptions())
                t1 = time.perf_counter()
                await exporter.save(store, [NAME], root / "out.tar", exporter.SaveOptions())
                t2 = time.perf_counter()
                with patch.object(store.content, "infos", per_blob(store.content)):
                    base = await exporter.plan_save(store, [NAME], exporter.SaveOptions())
                t3 = time.perf_counter()
                assert base == plan
                plans.append(t1 - t0)
                saves.append(t2 - t1)
                bases.append(t3 - t2)
        plan_s, save_s = statistics.median(plans), statistics.median(saves)
        base_s = statistics.median(bases)
        assert plan is not None
        n = len(plan.reads)
        print(f"{layers} layers, {n} blobs read, medians of {runs} runs, {backend}")
        print(f"plan_save  {plan_s * 1000:7.1f} ms  ({plan_s / n * 1e6:.0f} µs/blob)")
        print(
            f"baseline   {base_s * 1000:7.1f} ms  ({base_s / n * 1e6:.0f} µs/blob, one info hop"
            f" per blob; {base_s / plan_s:.1f}x plan_save)"
        )
        print(f"save       {save_s * 1000:7.1f} ms  (plan {plan_s / save_s:.0%} of it)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--layers", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.layers, args.runs, args.backend, backend=args.backend)
