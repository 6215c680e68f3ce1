"""Benchmark ``load()`` against a plain synchronous read + sha256 + write loop.

Run: ``.venv/bin/python -m bench.bench_load [--platforms 8 --layers 4 --layer-mib 64]``.

Every case runs in its own subprocess (fresh store under /tmp, peak RSS = that process's
``ru_maxrss``) while a 1 ms ticker measures the longest event-loop stall. Cases: load from
a file, from a pipe (``cat archive |``), a one-platform load of the same archive, the
sync baseline (design rule bench-baseline) over the same bytes (each member to a new file,
fsync'd like a durable per-blob commit, without fsync, and with one syncfs at the end: the
one-sync baseline), a small ~20 MiB archive for RSS, and 5,000 small layers against the same
baselines. Archives are cached in /tmp, never committed. Figures are medians of ``--runs``
runs.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tarfile
import time
from pathlib import Path

from bench._baseline import syncfs
from bench._workload import PLATFORMS

WORK = Path(os.environ.get("CASTAR_BENCH_DIR", "/tmp/castar-bench-load"))
ALL_PLATFORMS = PLATFORMS  # the harness's eight, so both benches load the same archives
MIB = 1 << 20
F_SETPIPE_SZ = 1031


# -- archives ------------------------------------------------------------------------------------


def make_archive(path: Path, platforms: int, layers: int, layer_size: int) -> tuple[int, str]:
    """Write (or reuse) a synth archive; return its size and its second platform."""
    from castar.engine import synth

    spec = synth.SynthSpec(
        name=f"bench/load:{platforms}x{layers}x{layer_size}",
        platforms=ALL_PLATFORMS[:platforms],
        layers=layers,
        layer_size=layer_size,
        order="castar",
    )
    image = synth.plan(spec)
    if not path.exists() or path.stat().st_size != image.size:
        print(f"writing {path} ({image.size / MIB:.0f} MiB)...", file=sys.stderr)
        tmp = path.with_suffix(".tmp")
        synth.write_path(image, tmp)
        tmp.rename(path)
    return image.size, ALL_PLATFORMS[min(1, platforms - 1)]


# -- child cases ------------------------------------------------------------------------------


def baseline(archive: Path, root: Path, *, fsync: bool, sync_end: bool = False) -> dict[str, float]:
    """Plain sync loop: each tar member read, sha256'd and written to a new file.

    ``fsync``: each file and the directory fsync'd (a per-blob durable commit); ``sync_end``:
    one ``syncfs`` after the last file instead (the one-sync baseline; ``load`` syncs only its
    own files, design rule io-sync).
    """
    out = root / "blobs"
    out.mkdir(parents=True)
    dir_fd = os.open(out, os.O_RDONLY)
    buf = bytearray(MIB)
    view = memoryview(buf)
    entries = 0
    t0 = time.perf_counter()
    with open(archive, "rb", buffering=0) as f:
        while True:
            header = f.read(512)
            if len(header) < 512 or header == bytes(512):
                break
            info = tarfile.TarInfo.frombuf(header, "utf-8", "surrogateescape")
            size = info.size
            if not info.isreg():
                f.seek(size + (-size % 512), os.SEEK_CUR)
                continue
            h = hashlib.sha256()
            tmp = out / f"tmp-{entries}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            left = size
            while left:
                n = f.readinto(view[: min(left, MIB)])
                if not n:
                    raise SystemExit("baseline: truncated archive")
                h.update(view[:n])
                os.write(fd, view[:n])
                left -= n
            if fsync:
                os.fsync(fd)
            os.close(fd)
            os.rename(tmp, out / h.hexdigest())
            if fsync:
                os.fsync(dir_fd)
            f.seek(-size % 512, os.SEEK_CUR)
            entries += 1
    if sync_end:
        syncfs(out)
    seconds = time.perf_counter() - t0
    os.close(dir_fd)
    return {"seconds": seconds, "entries": entries, "stall_ms": 0.0}


async def load_case(
    archive: Path, root: Path, *, pipe: bool, platform: str | None
) -> dict[str, float]:
    import anyio

    from castar.engine.load.importer import LoadOptions, load
    from castar.store import open_root

    worst = 0.0

    async def ticker() -> None:
        nonlocal worst
        while True:
            t = time.perf_counter()
            await anyio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    if pipe:
        with contextlib.suppress(OSError):  # a 1 MiB pipe (design rule io-chunk)
            fcntl.fcntl(0, F_SETPIPE_SZ, MIB)
    async with open_root(root) as store, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        await anyio.sleep(0.05)
        t0 = time.perf_counter()
        options = LoadOptions.parse(platform or None)
        roles = (store.content, store.images, store.leases)
        images = await load(*roles, "-" if pipe else archive, options)
        seconds = time.perf_counter() - t0
        tg.cancel_scope.cancel()
    assert images, "nothing loaded"
    return {"seconds": seconds, "stall_ms": worst * 1000}


def peak_rss_mib() -> float:
    """This process's peak RSS. ``ru_maxrss`` would include the forking parent's peak
    (Linux keeps it across exec); ``VmHWM`` belongs to this address space only."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def noise(stop: Path) -> dict[str, float]:
    """A bare 1 ms ticker in its own process until ``stop`` exists: the machine's stall floor."""
    import anyio

    worst = 0.0
    t0 = time.perf_counter()
    while not os.path.exists(stop):  # noqa: ASYNC240 - a stat per ms is the point
        t = time.perf_counter()
        await anyio.sleep(0.001)
        worst = max(worst, time.perf_counter() - t - 0.001)
    return {"seconds": time.perf_counter() - t0, "stall_ms": worst * 1000}


def child(args: argparse.Namespace) -> None:
    archive, root = Path(args.archive), Path(args.root)
    if args.child == "noise":
        import anyio

        result = anyio.run(noise, root)
    elif args.child in ("baseline", "baseline-nofsync", "baseline-syncfs"):
        result = baseline(
            archive,
            root,
            fsync=args.child == "baseline",
            sync_end=args.child == "baseline-syncfs",
        )
    else:
        import anyio

        result = anyio.run(
            lambda: load_case(
                archive, root, pipe=args.child == "pipe", platform=args.platform or None
            ),
            backend=args.backend,
        )
    result["maxrss_mib"] = peak_rss_mib()
    print(json.dumps(result))


# -- parent ----------------------------------------------------------------------------------


def _child_cmd(case: str, archive: Path, root: Path, backend: str, platform: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.bench_load",
        "--child",
        case,
        "--archive",
        str(archive),
        "--root",
        str(root),
        "--backend",
        backend,
        "--platform",
        platform,
    ]


def run_case(case: str, archive: Path, backend: str, platform: str = "") -> dict[str, float]:
    """One case in a fresh process and store; a bare ticker process runs beside it."""
    root = WORK / "root"
    stop = WORK / "noise.stop"
    shutil.rmtree(root, ignore_errors=True)
    stop.unlink(missing_ok=True)
    cmd = _child_cmd(case, archive, root, backend, platform)
    noise_cmd = _child_cmd("noise", archive, stop, backend, "")
    with subprocess.Popen(noise_cmd, stdout=subprocess.PIPE, text=True) as beside:
        time.sleep(0.3)
        if case == "pipe":
            with subprocess.Popen(["cat", str(archive)], stdout=subprocess.PIPE) as cat:
                out = subprocess.run(
                    cmd, stdin=cat.stdout, capture_output=True, text=True, check=False
                )
        else:
            out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        stop.touch()
        floor = json.loads(beside.communicate()[0].strip().splitlines()[-1])
    shutil.rmtree(root, ignore_errors=True)
    if out.returncode:
        raise SystemExit(f"case {case} failed:\n{out.stderr}")
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    result["noise_ms"] = floor["stall_ms"]
    return result


Case = tuple[str, str, Path, str]  # label, case, archive, platform


def interleaved(cases: list[Case], runs: int, backend: str) -> dict[str, dict[str, float]]:
    """Medians per case; runs are interleaved (all cases, then again) so noise spreads evenly."""
    results: dict[str, list[dict[str, float]]] = {label: [] for label, *_ in cases}
    for _ in range(runs):
        for label, case, archive, platform in cases:
            results[label].append(run_case(case, archive, backend, platform))
    out = {}
    for label, rs in results.items():
        m = {k: statistics.median(r[k] for r in rs) for k in rs[0]}
        m["min_s"] = min(r["seconds"] for r in rs)
        m["max_s"] = max(r["seconds"] for r in rs)
        out[label] = m
    return out


def row(label: str, r: dict[str, float], size: int, base: float | None, count: int = 0) -> None:
    rate = f"{size / r['seconds'] / 1e6:8.0f} MB/s"
    if count:
        rate = f"{count / r['seconds']:8.0f} ent/s"
    ratio = f"{base / r['seconds']:5.2f}x" if base else "     "
    print(
        f"{label:<34} {r['seconds']:7.2f} s ({r['min_s']:.2f}-{r['max_s']:.2f})  {rate}  "
        f"{ratio}  rss {r['maxrss_mib']:6.1f} MiB  stall {r['stall_ms']:6.1f} ms "
        f"(bare ticker beside it: {r['noise_ms']:5.1f} ms)"
    )


def big_cases(args: argparse.Namespace) -> None:
    big = WORK / f"big-{args.platforms}x{args.layers}x{args.layer_mib:g}.tar"
    size, one = make_archive(big, args.platforms, args.layers, int(args.layer_mib * MIB))
    print(
        f"archive {big}: {size / MIB:.0f} MiB ({args.platforms} platforms x {args.layers} layers"
        f" x {args.layer_mib:g} MiB), backend {args.backend}, medians of {args.runs} runs"
    )
    got = interleaved(
        [
            ("base", "baseline", big, ""),
            ("nofsync", "baseline-nofsync", big, ""),
            ("syncfs", "baseline-syncfs", big, ""),
            ("file", "file", big, ""),
            ("pipe", "pipe", big, ""),
            ("one", "file", big, one),
        ],
        args.runs,
        args.backend,
    )
    base, nofsync, full, pipe, single = (got[k] for k in ("base", "nofsync", "file", "pipe", "one"))
    row("baseline read+sha256+write+fsync", base, size, None)
    row("baseline without fsync", nofsync, size, None)
    row("baseline, one syncfs at the end", got["syncfs"], size, None)
    row("load from file", full, size, base["seconds"])
    row("load from pipe", pipe, size, base["seconds"])
    row(f"load one platform ({one})", single, size, None)
    print(
        f"targets: file {base['seconds'] / full['seconds']:.2f}x baseline (>= 1.2; "
        f"{nofsync['seconds'] / full['seconds']:.2f}x the no-fsync one), "
        f"pipe {base['seconds'] / pipe['seconds']:.2f}x (>= 0.8; "
        f"{nofsync['seconds'] / pipe['seconds']:.2f}x), "
        f"file {got['syncfs']['seconds'] / full['seconds']:.2f}x / pipe "
        f"{got['syncfs']['seconds'] / pipe['seconds']:.2f}x the one-syncfs baseline, "
        f"one platform {full['seconds'] / single['seconds']:.1f}x faster (>= 4), "
        f"stall max {max(full['stall_ms'], pipe['stall_ms']):.1f} ms (< 50)"
    )
    small = WORK / "small-2x2x5.tar"
    small_size, _ = make_archive(small, 2, 2, 5 * MIB)
    tiny = interleaved([("tiny", "file", small, "")], args.runs, args.backend)["tiny"]
    row(f"load {small_size / MIB:.0f} MiB archive", tiny, small_size, None)
    print(
        f"peak RSS: {tiny['maxrss_mib']:.1f} MiB (20 MiB), {full['maxrss_mib']:.1f} MiB "
        f"(2 GiB file), {pipe['maxrss_mib']:.1f} MiB (pipe); target < 100"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--platforms", type=int, default=8)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--layer-mib", type=float, default=64)
    p.add_argument("--small-layers", type=int, default=5000)
    p.add_argument("--small-kib", type=int, default=64)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    p.add_argument("--skip-small", action="store_true", help="no 5,000-small-layers case")
    p.add_argument("--skip-big", action="store_true", help="only the small-layers case")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--archive", help=argparse.SUPPRESS)
    p.add_argument("--root", help=argparse.SUPPRESS)
    p.add_argument("--platform", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args)
        return
    WORK.mkdir(parents=True, exist_ok=True)
    if not args.skip_big:
        big_cases(args)
    if args.skip_small:
        return
    many = WORK / f"many-{args.small_layers}x{args.small_kib}k.tar"
    many_size, _ = make_archive(many, 1, args.small_layers, args.small_kib * 1024)
    n = args.small_layers + 3  # layers + config + manifest + index
    got = interleaved(
        [
            ("base", "baseline", many, ""),
            ("nofsync", "baseline-nofsync", many, ""),
            ("syncfs", "baseline-syncfs", many, ""),
            ("file", "file", many, ""),
            ("pipe", "pipe", many, ""),
        ],
        args.runs,
        args.backend,
    )
    sbase, snofsync, sload, spipe = (got[k] for k in ("base", "nofsync", "file", "pipe"))
    row("small: baseline with fsync", sbase, many_size, None, n)
    row("small: baseline without fsync", snofsync, many_size, None, n)
    row("small: baseline, one syncfs at end", got["syncfs"], many_size, None, n)
    row("small: load from file", sload, many_size, got["syncfs"]["seconds"], n)
    row("small: load from pipe", spipe, many_size, got["syncfs"]["seconds"], n)
    print(
        # The like-for-like baseline is the one-syncfs one: load commits without per-blob
        # fsync and makes everything durable with one syncfs.
        f"targets: small entries/s vs the one-syncfs baseline: file"
        f" {got['syncfs']['seconds'] / sload['seconds']:.2f}x, pipe"
        f" {got['syncfs']['seconds'] / spipe['seconds']:.2f}x (>= 0.7); vs the fsync one:"
        f" file {sbase['seconds'] / sload['seconds']:.2f}x, pipe"
        f" {sbase['seconds'] / spipe['seconds']:.2f}x; vs the no-fsync one: file"
        f" {snofsync['seconds'] / sload['seconds']:.2f}x, pipe"
        f" {snofsync['seconds'] / spipe['seconds']:.2f}x"
    )


if __name__ == "__main__":
    main()
