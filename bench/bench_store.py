"""Metadata cost of the public store: small blobs per second and GC time, against the backend.

Run: ``.venv/bin/python -m bench.bench_store [--blobs 500] [--size 4096] [--gc-blobs 5000]
[--backend asyncio|trio] [--repeat 3]``. Prints medians of the runs, each in a fresh store:

- ``backend``: the file backend alone (open_writer, write, commit) per blob: the baseline;
- ``store``: ``store.content.write_blob`` per blob (ingest row, backend, record txn);
- ``store+lease``: the same under ``store.leases.hold()`` (adds the lease resource rows);
- GC wall time over ``--gc-blobs`` recorded blobs all kept by one lease (a full mark and a
  content sweep that deletes nothing), and over the same after the lease is gone (all deleted).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import anyio

from castar.store import open_root
from castar.store.ingest import LocalContentStore


async def run_backend(root: Path, n: int, size: int) -> float:
    backend = LocalContentStore(root)
    t = time.perf_counter()
    for i in range(n):
        w = await backend.open_writer(f"r{i}")
        await w.write(i.to_bytes(8, "little") * (size // 8))
        await w.commit(0, None)
    return time.perf_counter() - t


async def run_store(root: Path, n: int, size: int, lease: bool) -> float:
    async with open_root(root) as store:
        t = time.perf_counter()
        if lease:
            async with store.leases.hold():
                for i in range(n):
                    await store.content.write_blob(i.to_bytes(8, "little") * (size // 8))
        else:
            for i in range(n):
                await store.content.write_blob(i.to_bytes(8, "little") * (size // 8))
        return time.perf_counter() - t


async def main_async(args: argparse.Namespace) -> None:
    rows: dict[str, list[float]] = {"backend": [], "store": [], "store+lease": []}
    gc_kept: list[float] = []
    gc_all: list[float] = []
    for r in range(args.repeat):
        with tempfile.TemporaryDirectory(dir=args.dir) as d:
            # Rotate the order each round: the machine is shared and fsync times drift.
            order = ["backend", "store", "store+lease"]
            for name in order[r % 3 :] + order[: r % 3]:
                root = Path(d) / name
                if name == "backend":
                    rows[name].append(await run_backend(root, args.blobs, args.size))
                else:
                    lease = name == "store+lease"
                    rows[name].append(await run_store(root, args.blobs, args.size, lease))
            async with open_root(Path(d) / "g") as store:
                async with store.leases.hold():
                    for i in range(args.gc_blobs):
                        await store.content.write_blob(i.to_bytes(8, "little"))
                    t = time.perf_counter()
                    report = await store.gc()
                    gc_kept.append(time.perf_counter() - t)
                    assert report.removed == []
                t = time.perf_counter()
                report = await store.gc()
                gc_all.append(time.perf_counter() - t)
                assert len(report.removed) == args.gc_blobs
    base = statistics.median(rows["backend"])
    print(f"{args.blobs} blobs of {args.size} B ({args.backend}), median of {args.repeat}:")
    for name, times in rows.items():
        med = statistics.median(times)
        print(
            f"  {name:12s} {args.blobs / med:8.0f} blobs/s  {med / args.blobs * 1e3:6.2f} ms/blob"
            f"  x{med / base:4.2f} of backend"
        )
    print(f"gc over {args.gc_blobs} recorded blobs, median of {args.repeat}:")
    print(f"  all kept by a lease   {statistics.median(gc_kept) * 1e3:8.1f} ms")
    print(f"  all collected         {statistics.median(gc_all) * 1e3:8.1f} ms")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--blobs", type=int, default=500)
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--gc-blobs", type=int, default=5000)
    p.add_argument("--backend", choices=["asyncio", "trio"], default="asyncio")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dir", default=None)
    args = p.parse_args()
    anyio.run(main_async, args, backend=args.backend)


if __name__ == "__main__":
    main()
