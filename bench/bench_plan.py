"""Benchmark planning a save of an image with many small layers (the lookup's store reads).

``.venv/bin/python -m bench.bench_plan [--backend asyncio|trio] [--layers 2000] [--runs 5]``

Fills a fresh store under /tmp with one manifest of ``--layers`` tiny layers, then prints
medians of ``plan_save`` (names resolved, one ``content.info`` per blob, documents read)
and of a whole ``save`` into a file, and the planning cost per blob. The store is removed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from castar.engine import exporter, oci
from castar.store._store import Store, open_store

NAME = "docker.io/library/many:1"


async def fill(store: Store, layers: int) -> None:
    async with store.lease():
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


async def main(layers: int, runs: int) -> None:
    root = Path(tempfile.mkdtemp(prefix="castar-bench-plan-"))
    try:
        async with open_store(root / "store") as store:
            await fill(store, layers)
            plans, saves = [], []
            for _ in range(runs):
                t0 = time.perf_counter()
                plan = await exporter.plan_save(store, [NAME])
                t1 = time.perf_counter()
                await exporter.save(store, [NAME], root / "out.tar")
                t2 = time.perf_counter()
                plans.append(t1 - t0)
                saves.append(t2 - t1)
        plan_s, save_s = statistics.median(plans), statistics.median(saves)
        print(f"{layers} layers, {len(plan.reads)} blobs read, medians of {runs} runs")
        print(f"plan_save  {plan_s * 1000:7.1f} ms  ({plan_s / len(plan.reads) * 1e6:.0f} µs/blob)")
        print(f"save       {save_s * 1000:7.1f} ms  (plan {plan_s / save_s:.0%} of it)")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--layers", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    anyio.run(main, args.layers, args.runs, backend=args.backend)
