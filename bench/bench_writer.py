"""LocalWriter throughput: 1 MiB writes + commit of one big blob, against hashlib.sha256.

Run: ``.venv/bin/python -m bench.bench_writer [--size-mib 1024] [--backend asyncio|trio|both]
[--repeat N] [--dir DIR]``. The data is one seeded pseudo-random 1 MiB block whose first
8 bytes carry the block counter (so every MiB differs), changed in place: nothing is
generated inside the timed region. For each backend it prints the writer's MB/s (write
loop alone, and write + commit with its fsync), the single-thread ``hashlib.sha256`` rate
over the same bytes measured in the same run and the ratio, the same hash + write loop
done synchronously into a new file (design rule bench-baseline; on this VM new-file page-cache
writes, not hashing, bound both) and the ratio to it, the longest stall and the p99 of a
1 ms ticker task beside the writer (and the same ticker's worst stall with nothing else
running, to tell machine noise from loop blocking), and the peak RSS (``ru_maxrss``).
A plain ``os.write`` loop of the same bytes (no hash) gives the bound that page-cache
writes set: a writer that hashes and writes in parallel cannot beat min(sha256, write).
Every case runs in three page states (design rule fact-fresh-pages), set untimed right before it:
*new file, warm* (a file of the same size was written and unlinked just before: the new
pages are guest pages freed a moment ago), *new file, cold* (4 s idle first: this VM has
handed part of the freed pages back to the host, which must fault them in again; the rest
goes over tens of seconds, see ``bench_save.PAGES``) and *overwrite*
(the destination pre-filled: no page is new). Overwrite is the design's own CPU cost;
the new-file states bracket what this VM allows.
Targets: writer >= 0.85 x sha256, RSS < 100 MiB, stall < 50 ms.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

from castar.store.ingest import LocalContentStore, ingest_dir

MiB = 1 << 20


def blocks(size_mib: int) -> tuple[bytearray, list[bytes]]:
    block = bytearray(random.Random(size_mib).randbytes(MiB))
    return block, [i.to_bytes(8, "little") for i in range(size_mib)]


def sha256_rate(size_mib: int) -> tuple[float, str]:
    """Single-thread hashlib over exactly the bytes the writer gets."""
    block, counters = blocks(size_mib)
    h = hashlib.sha256()
    t0 = time.perf_counter()
    for c in counters:
        block[:8] = c
        h.update(block)
    elapsed = time.perf_counter() - t0
    return size_mib * MiB / elapsed / 1e6, f"sha256:{h.hexdigest()}"


def prefill(path: Path, size_mib: int) -> None:
    """Give ``path`` ``size_mib`` MiB of cached pages (untimed), so later writes overwrite them."""
    zeros = bytes(MiB)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        for i in range(size_mib):
            os.pwrite(fd, zeros, i * MiB)
    finally:
        os.close(fd)


def sync_write_rate(
    root: Path, size_mib: int, *, overwrite: bool = False, hash_: bool = True
) -> float:
    """The same hash + os.write loop in one plain thread (design rule bench-baseline).

    Into a new file, or with ``overwrite`` over a pre-filled one from offset 0. Without
    ``hash_``: the writes alone, the bound that page-cache writes put on any writer.
    """
    block, counters = blocks(size_mib)
    h = hashlib.sha256() if hash_ else None
    path = root / "baseline"
    if overwrite:
        prefill(path, size_mib)
    fd = os.open(path, os.O_WRONLY | (0 if overwrite else os.O_CREAT | os.O_EXCL), 0o644)
    try:
        t0 = time.perf_counter()
        for c in counters:
            block[:8] = c
            if h is not None:
                h.update(block)
            os.write(fd, block)
        elapsed = time.perf_counter() - t0
    finally:
        os.close(fd)
        os.unlink(path)
    return size_mib * MiB / elapsed / 1e6


@dataclass
class Result:
    write_mbps: float
    commit_mbps: float
    stall_ms: float  # the ticker's longest lateness beside the writer
    p99_ms: float
    idle_stall_ms: float  # the same ticker with nothing else running (machine noise)
    digest: str


class Ticker:
    """A task that sleeps 1 ms at a time and records how late each wake-up is."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self.stop = anyio.Event()

    async def run(self) -> None:
        last = time.perf_counter()
        while not self.stop.is_set():
            await anyio.sleep(0.001)
            now = time.perf_counter()
            self.late.append(now - last - 0.001)
            last = now

    def worst_ms(self) -> float:
        return max(self.late, default=0.0) * 1000

    def p99_ms(self) -> float:
        late = sorted(self.late)
        return late[int(len(late) * 0.99)] * 1000 if late else 0.0


async def idle_stall() -> float:
    ticker = Ticker()
    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        await anyio.sleep(1.0)
        ticker.stop.set()
    return ticker.worst_ms()


async def run_writer(root: Path, size_mib: int, overwrite: bool = False) -> Result:
    block, counters = blocks(size_mib)
    store = LocalContentStore(root)
    ticker = Ticker()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker.run)
        await anyio.sleep(0.01)
        w = await store.open_writer("bench", total=size_mib * MiB)
        if overwrite:  # the writer's fd is at offset 0 of an empty data file: fill it behind it
            await anyio.to_thread.run_sync(prefill, ingest_dir(root, "bench") / "data", size_mib)
        t0 = time.perf_counter()
        for c in counters:
            block[:8] = c  # safe: a >= 1 MiB write returns after its hop used the buffer
            await w.write(block)
        t1 = time.perf_counter()
        result = await w.commit(size_mib * MiB, None)
        t2 = time.perf_counter()
        ticker.stop.set()
    # After the timed run, not before: a second of idling lets this VM hand freed pages
    # back to the host, and the writer would then pay fresh-page faults that the sync
    # baselines, run right after the previous file was unlinked, do not (design rule
    # fact-fresh-pages).
    idle = await idle_stall()
    size = size_mib * MiB / 1e6
    return Result(
        size / (t1 - t0),
        size / (t2 - t0),
        ticker.worst_ms(),
        ticker.p99_ms(),
        idle,
        result.digest,
    )


#: How the destination's page-cache pages start out, per case (design rule fact-fresh-pages).
MODES = ("new file, warm", "new file, cold", "overwrite")
#: Idle seconds after which this VM has handed freed guest pages back to the host.
COLD_S = 4.0


def prepare(mode: str, root: Path, size_mib: int) -> None:
    """Put the page pool in ``mode``'s state right before a timed case (untimed).

    warm: a file of the same size written and unlinked just before, so the case's new
    pages are guest pages freed a moment ago; cold: ``COLD_S`` s idle first, so many of
    them are pages the host must fault in again (a partial state: the VM hands freed pages
    back over tens of seconds); overwrite: nothing (the case pre-fills its file).
    """
    if mode == "new file, warm":
        path = root / "warm"
        prefill(path, size_mib)
        path.unlink()
    elif mode == "new file, cold":
        time.sleep(COLD_S)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--backend", choices=["asyncio", "trio", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--dir", default=None, help="where to put the store (default: tmp)")
    args = parser.parse_args()
    backends = ["asyncio", "trio"] if args.backend == "both" else [args.backend]
    size = args.size_mib

    print(f"LocalWriter: {size} MiB in 1 MiB writes, then commit; repeat {args.repeat}")
    for backend in backends:
        results: dict[str, list[Result]] = {m: [] for m in MODES}
        syncs: dict[str, list[float]] = {m: [] for m in MODES}
        writes: dict[str, list[float]] = {m: [] for m in MODES}
        hash_rates: list[float] = []
        for _ in range(args.repeat):
            rate, want = sha256_rate(size)
            hash_rates.append(rate)
            for mode in MODES:
                overwrite = mode == "overwrite"
                root = Path(tempfile.mkdtemp(prefix="castar-bench-", dir=args.dir))
                try:
                    prepare(mode, root, size)
                    writes[mode].append(
                        sync_write_rate(root, size, overwrite=overwrite, hash_=False)
                    )
                    prepare(mode, root, size)
                    syncs[mode].append(sync_write_rate(root, size, overwrite=overwrite))
                    prepare(mode, root, size)
                    res = anyio.run(run_writer, root, size, overwrite, backend=backend)
                finally:
                    shutil.rmtree(root, ignore_errors=True)
                assert res.digest == want, (res.digest, want)
                results[mode].append(res)
        hash_mbps = statistics.median(hash_rates)
        print(f"{backend:8} sha256 alone {hash_mbps:5.0f} MB/s")
        for mode in MODES:
            runs = results[mode]
            write = statistics.median(r.write_mbps for r in runs)
            commit = statistics.median(r.commit_mbps for r in runs)
            stall = statistics.median(r.stall_ms for r in runs)
            p99 = statistics.median(r.p99_ms for r in runs)
            idle = statistics.median(r.idle_stall_ms for r in runs)
            sync = statistics.median(syncs[mode])
            wrote = statistics.median(writes[mode])
            bound = min(hash_mbps, wrote)
            print(
                f"  {mode}: writer {write:5.0f} MB/s (write+commit {commit:5.0f})  "
                f"ratio to sha256 {write / hash_mbps:.2f} (with commit {commit / hash_mbps:.2f})"
                f"  | sync hash+write {sync:5.0f}, ratio {write / sync:.2f}\n"
                f"    os.write alone {wrote:5.0f} MB/s: bound min(sha256, write) "
                f"{bound:5.0f}, writer {write / bound:.2f}x of it\n"
                f"    ticker beside the writer: max stall {stall:.1f} ms, p99 {p99:.1f} ms;"
                f" alone (1 s, machine noise): max {idle:.1f} ms"
            )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS {rss:.0f} MiB (whole process, all backends)")


if __name__ == "__main__":
    main()
