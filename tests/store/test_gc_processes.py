"""GC against another OS process on the same root (GC-10, GC-11, LEASE-5, LEASE-8, ING-13).

A child process holds a lease with committed blobs and an in-flight ingest and keeps committing,
while this process runs ``gc()`` over and over: nothing the child protects may go, and every
blob the child reported as committed must stay readable. The two sides synchronise through the
child's stdout lines and a stop file, so the test is deterministic and bounded in time.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from castar.store import Root, open_root
from castar.store.digest import compute

CHILD = r"""
import sys, anyio
from castar.store import open_root

root, stop = sys.argv[1], anyio.Path(sys.argv[2])

def say(*words):
    print(*words, flush=True)

async def main():
    async with open_root(root) as store:
        async with store.leases.hold() as lease:
            for i in range(3):
                desc = await store.content.write_blob(f"held-{i}".encode())
                say("BLOB", desc.digest)
            async with store.content.writer("child-ingest") as w:
                await w.write(b"partial data")
                say("READY", lease.id)
                i = 0
                while not await stop.exists() and i < 5000:
                    desc = await store.content.write_blob(f"loop-{i}".encode())
                    say("BLOB", desc.digest)
                    i += 1
            say("HOLDING")
            while not await anyio.Path(sys.argv[2] + ".release").exists():
                await anyio.sleep(0.01)
        say("DONE")
        if len(sys.argv) > 3:  # crash mode: die holding a lease, a blob and an ingest
            from datetime import timedelta
            await store.leases.create("user", expire=timedelta(hours=1))
            async with store.leases.hold(), store.content.writer("crash-ingest") as w:
                desc = await store.content.write_blob(b"crash blob")
                await w.write(b"lost")
                say("CRASHME", desc.digest)
                await anyio.sleep_forever()

anyio.run(main)
"""


class Lines:
    """The child's stdout as lines."""

    def __init__(self, proc: Process) -> None:
        assert proc.stdout is not None
        self._buf = BufferedByteReceiveStream(proc.stdout)

    async def next(self) -> list[str]:
        with anyio.fail_after(10):
            line = await self._buf.receive_until(b"\n", 1 << 16)
        return line.decode().split()


@asynccontextmanager
async def child(root: Path, stop: Path, *extra: str) -> AsyncIterator[tuple[Process, Lines]]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    async with await anyio.open_process(
        [sys.executable, "-c", CHILD, str(root), str(stop), *extra],
        env=env,
        stderr=None,
    ) as proc:
        try:
            yield proc, Lines(proc)
        finally:
            if proc.returncode is None:
                proc.kill()
            with anyio.CancelScope(shield=True):
                await proc.wait()


async def assert_readable(store: Root, digests: list[str]) -> None:
    for d in digests:
        info = await store.content.info(d)
        data = await store.content.read_all(d, limit=64)
        assert (compute(data), info.size) == (d, len(data))


async def test_gc_in_parent_never_takes_what_child_protects(tmp_path: Path) -> None:
    root, stop = tmp_path / "root", tmp_path / "stop"
    with anyio.fail_after(15):
        async with open_root(root) as store, child(root, stop) as (proc, lines):
            committed: list[str] = []
            while (words := await lines.next())[0] != "READY":
                committed.append(words[1])
            lease_id = words[1]
            runs = 0
            while runs < 12 or len(committed) < 12:
                report = await store.gc()  # GC-10, concurrently with the child's commits
                runs += 1
                assert report.removed == []
                assert report.ingests_removed == []
                assert report.leases_removed == []
                await assert_readable(store, committed)
                assert "child-ingest" in [s.ref for s in await store.content.list_statuses()]
                words = await lines.next()
                if words[0] == "BLOB":
                    committed.append(words[1])
            await anyio.Path(stop).touch()
            while (words := await lines.next())[0] != "HOLDING":
                committed.append(words[1])
            report = await store.gc()  # the writer is closed, the lease still held
            assert (report.removed, report.ingests_removed) == ([], [])
            await assert_readable(store, committed)
            await anyio.Path(f"{stop}.release").touch()
            assert await lines.next() == ["DONE"]
            assert await proc.wait() == 0
            assert lease_id not in [x.id for x in await store.leases.list()]
            report = await store.gc()  # released: everything it held is garbage now
            assert sorted(report.removed) == sorted(set(committed))
            assert report.ingests_removed == ["child-ingest"]
            assert await store.content.walk() == []
            assert await store.content.list_statuses() == []


class Clock:
    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_a_killed_owner_s_lease_and_ingest_go_at_the_next_gc(tmp_path: Path) -> None:
    root, stop = tmp_path / "root", tmp_path / "stop"
    await anyio.Path(stop).touch()  # the child skips its commit loop
    await anyio.Path(f"{stop}.release").touch()  # and releases its first lease at once
    clock = Clock()
    with anyio.fail_after(15):
        async with (
            open_root(root, clock=clock) as store,
            child(root, stop, "crash") as (proc, lines),
        ):
            while (words := await lines.next())[0] != "CRASHME":
                pass
            blob = words[1]
            report = await store.gc()  # the first lease is gone: its ingest is garbage
            assert report.ingests_removed == ["child-ingest"]
            report = await store.gc()  # LEASE-8: a live owner elsewhere keeps its lease
            assert (report.leases_removed, report.ingests_removed, report.removed) == ([], [], [])
            assert "crash-ingest" in [s.ref for s in await store.content.list_statuses()]
            proc.send_signal(signal.SIGKILL)  # no cleanup runs: lease and ingest stay
            await proc.wait()
            assert len(await store.leases.list()) == 2
            report = await store.gc()  # LEASE-8: the dead owner's lease is expired at once
            assert len(report.leases_removed) == 1
            assert report.leases_removed != ["user"]
            assert report.ingests_removed == ["crash-ingest"]
            assert report.removed == [blob]  # unpinned with its lease
            assert await store.content.list_statuses() == []
            assert [le.id for le in await store.leases.list()] == ["user"]
            assert os.listdir(root / "owners") == []
            assert (await store.gc()).leases_removed == []  # a user lease keeps its expiry
            clock.offset = timedelta(hours=2)
            assert (await store.gc()).leases_removed == ["user"]
