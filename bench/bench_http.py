"""The HTTP client for registry work (issue 13): httpx against httpx2 over loopback.

``python -m bench.bench_http [--mib 128] [--rounds 3]`` starts the harness's registry
(``bench._peers.DockerRegistry``: distribution on 127.0.0.1, storage in a temp dir),
stores one blob of N MiB of random bytes, then in every round, for each client and anyio
backend (the order reversed every other round), times in this process a streamed GET of
the blob (``aiter_bytes``, as castar's pull reads a blob) and a POST + one streamed PUT of
it (1 MiB pieces under a ``Content-Length``, as castar's push sends one), each through an
``AsyncClient`` made before the clock starts. It prints every round's MB/s and the client
process's CPU seconds per GB, the medians, and each client's import plus first
``AsyncClient()`` in a fresh interpreter (what every CLI run pays). A client that is not
installed is skipped with a note. Imports no castar.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.metadata
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from bench._peers import REGISTRY, DockerRegistry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    import httpx  # httpx2's AsyncClient has the same API

CLIENTS = ("httpx", "httpx2")
BACKENDS = ("asyncio", "trio")
PIECE = 1 << 20
REPO = "bench/http"


def _store_blob(reg: DockerRegistry, data: bytes, digest: str) -> None:
    base = f"{reg.url}/v2/{REPO}/blobs/uploads/"
    with urllib.request.urlopen(urllib.request.Request(base, method="POST")) as resp:
        location = resp.headers["Location"]
    put = urllib.request.Request(f"{location}&digest={digest}", data=data, method="PUT")
    put.add_header("Content-Type", "application/octet-stream")
    with urllib.request.urlopen(put) as resp:
        assert resp.status == 201, resp.status


async def _get(client: httpx.AsyncClient, url: str, size: int) -> float:
    t0 = time.perf_counter()
    n = 0
    async with client.stream("GET", url) as resp:
        resp.raise_for_status()
        async for chunk in resp.aiter_bytes():
            n += len(chunk)
    seconds = time.perf_counter() - t0
    if n != size:
        raise SystemExit(f"bench_http: GET gave {n} bytes, not {size}")
    return seconds


async def _put(client: httpx.AsyncClient, reg: DockerRegistry, data: bytes, digest: str) -> float:
    async def body() -> AsyncIterator[bytes]:
        view = memoryview(data)
        for i in range(0, len(data), PIECE):
            yield bytes(view[i : i + PIECE])  # a fresh piece, as a read from a file gives

    t0 = time.perf_counter()
    started = await client.post(f"{reg.url}/v2/{REPO}/blobs/uploads/")
    started.raise_for_status()
    headers = {"Content-Type": "application/octet-stream", "Content-Length": str(len(data))}
    resp = await client.put(
        f"{started.headers['Location']}&digest={digest}", content=body(), headers=headers
    )
    resp.raise_for_status()
    return time.perf_counter() - t0


def _measure(
    name: str, backend: str, reg: DockerRegistry, data: bytes, digest: str
) -> dict[str, tuple[float, float]]:
    """One GET and one PUT through ``name``'s client on ``backend``: seconds and CPU seconds."""
    mod = importlib.import_module(name)
    out: dict[str, tuple[float, float]] = {}

    async def run() -> None:
        async with mod.AsyncClient(timeout=120) as client:
            url = f"{reg.url}/v2/{REPO}/blobs/{digest}"
            for direction in ("get", "put"):
                cpu = time.process_time()
                if direction == "get":
                    seconds = await _get(client, url, len(data))
                else:
                    seconds = await _put(client, reg, data, digest)
                out[direction] = (seconds, time.process_time() - cpu)

    anyio.run(run, backend=backend)
    return out


def _start_cost(name: str, runs: int = 3) -> float:
    """Median seconds of ``import name`` and the first ``AsyncClient()``, fresh interpreter."""
    code = (
        "import time; t = time.perf_counter(); import "
        f"{name}; {name}.AsyncClient(); print(time.perf_counter() - t)"
    )
    env = dict(os.environ)  # bytecode cached as for an installed program (bench/README.md)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    times = []
    with tempfile.TemporaryDirectory() as cache:
        env["PYTHONPYCACHEPREFIX"] = cache
        for i in range(runs + 1):  # the first run, untimed, fills the cache
            argv = [sys.executable, "-c", code]
            out = subprocess.run(argv, capture_output=True, text=True, check=True, env=env)
            if i:
                times.append(float(out.stdout))
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_http")
    p.add_argument("--mib", type=int, default=128, help="blob size in MiB (default 128)")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    if not Path(REGISTRY).exists():
        print(f"bench_http: {REGISTRY} is not installed", file=sys.stderr)
        return 2
    clients = [c for c in CLIENTS if importlib.util.find_spec(c) is not None]
    for c in set(CLIENTS) - set(clients):
        print(f"- {c} is not installed: not measured")
    data = os.urandom(args.mib << 20)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    base = Path(tempfile.mkdtemp(prefix="castar-bench-http-"))
    reg = DockerRegistry(base)
    combos = [(c, b) for c in clients for b in BACKENDS]
    rounds: dict[tuple[str, str, str], list[tuple[float, float]]] = {}
    try:
        reg.start()
        _store_blob(reg, data, digest)
        for r in range(args.rounds):
            for c, b in combos if r % 2 == 0 else combos[::-1]:
                for direction, one in _measure(c, b, reg, data, digest).items():
                    rounds.setdefault((c, b, direction), []).append(one)
    finally:
        reg.stop()
        shutil.rmtree(base, ignore_errors=True)

    mb = len(data) / 1e6
    versions = ", ".join(f"{c} {importlib.metadata.version(c)}" for c in clients)
    print(f"## {args.mib} MiB over loopback from docker-registry ({versions})\n")
    print("| client | backend | direction | MB/s median | MB/s rounds | CPU s/GB median |")
    print("|---|---|---|---:|---|---:|")
    medians: dict[tuple[str, str, str], float] = {}
    cpus: dict[tuple[str, str, str], float] = {}
    for (c, b, direction), got in rounds.items():
        rates = [mb / s for s, _ in got]
        medians[c, b, direction] = statistics.median(rates)
        cpus[c, b, direction] = cpu = statistics.median(u / (mb / 1e3) for _, u in got)
        each = " / ".join(f"{x:,.0f}" for x in rates)
        print(
            f"| {c} | {b} | {direction.upper()} | {medians[c, b, direction]:,.0f} | {each} "
            f"| {cpu:.2f} |"
        )
    if len(clients) == 2:
        print("\n| backend | direction | httpx2 / httpx: MB/s | CPU s/GB |\n|---|---|---:|---:|")
        for b in BACKENDS:
            for d in ("get", "put"):
                rate = medians["httpx2", b, d] / medians["httpx", b, d]
                cpu = cpus["httpx2", b, d] / cpus["httpx", b, d]
                print(f"| {b} | {d.upper()} | {rate:.2f}x | {cpu:.2f}x |")
    print("\n| client | import + first AsyncClient() (median of 3, fresh interpreter) |")
    print("|---|---:|")
    for c in clients:
        print(f"| {c} | {_start_cost(c) * 1000:.0f} ms |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
