"""The file backend across processes: ref locks (ING-3) and crash recovery (ING-5).

A child interpreter runs a small script against the same root. SIGKILL stands in for a
crash: the kernel drops the child's flock, the ingest resumes from what reached the disk,
and no torn file ever appears at a blob address; through the public store the ingest row
also keeps the killed ingest from GC until it expires.
"""

from __future__ import annotations

import hashlib
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from anyio.abc import Process
from anyio.streams.buffered import BufferedByteReceiveStream

from castar.store import open_root
from castar.store._pump import DEPTH
from castar.store.errors import Unavailable
from castar.store.ingest import LocalContentStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="flock and SIGKILL")

MiB = 1 << 20
BLOCKS = 48

CHILD = textwrap.dedent(
    """
    import hashlib, sys
    from pathlib import Path
    import anyio
    from castar.store import open_root
    from castar.store.ingest import LocalContentStore

    def block(i):
        return hashlib.sha512(str(i).encode()).digest() * (1024 * 1024 // 64)

    async def write_blocks(w, n):
        for i in range(n):
            await w.write(block(i))
            print(i, flush=True)
            await anyio.sleep(0.002)
        print("done", flush=True)
        await anyio.sleep(3600)

    async def main():
        root, ref, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        if sys.argv[4:] == ["store"]:  # through the public store: ingest row and all
            async with open_root(root) as store:
                async with store.content.writer(ref, size=n * 1024 * 1024) as w:
                    await write_blocks(w, n)
        else:  # the file backend alone
            w = await LocalContentStore(root).open_writer(ref, total=n * 1024 * 1024)
            print("locked", flush=True)
            await write_blocks(w, n)

    anyio.run(main)
    """
)


def block(i: int) -> bytes:
    return hashlib.sha512(str(i).encode()).digest() * (MiB // 64)


def expected_bytes(start: int, end: int) -> bytes:
    first, last = start // MiB, (end + MiB - 1) // MiB
    joined = b"".join(block(i) for i in range(first, last))
    return joined[start - first * MiB : end - first * MiB]


async def read_line(stream: BufferedByteReceiveStream) -> str:
    return (await stream.receive_until(b"\n", 1024)).decode()


async def start_child(
    root: Path, ref: str, *extra: str
) -> tuple[Process, BufferedByteReceiveStream]:
    proc = await anyio.open_process(
        [sys.executable, "-c", CHILD, str(root), ref, str(BLOCKS), *extra],
        stderr=None,
    )
    assert proc.stdout is not None
    return proc, BufferedByteReceiveStream(proc.stdout)


async def kill(proc: Process) -> None:
    with anyio.CancelScope(shield=True):
        if proc.returncode is None:
            proc.send_signal(signal.SIGKILL)
        await proc.wait()
        await proc.aclose()


async def kill_mid_write(proc: Process, out: BufferedByteReceiveStream) -> None:
    """SIGKILL the child once it has written 9 of its blocks (well before its last)."""
    try:
        with anyio.fail_after(30):
            while (line := await read_line(out)) not in {"8", "done"}:
                pass
        assert line == "8", "the child finished before it could be killed"
    finally:
        await kill(proc)
    assert proc.returncode == -signal.SIGKILL


async def test_ref_held_by_another_process_is_unavailable(tmp_path: Path) -> None:
    # ING-3 across processes: flock on ingest/<sha256(ref)>/lock
    store = LocalContentStore(tmp_path)
    proc, out = await start_child(tmp_path, "shared-ref")
    try:
        with anyio.fail_after(30):
            assert await read_line(out) == "locked"
        with pytest.raises(Unavailable, match=r"^ref shared-ref locked for .+ \(since .+\)"):
            await store.open_writer("shared-ref")
        # other refs are independent
        async with await store.open_writer("other-ref") as w:
            await w.write(b"ok")
    finally:
        await kill(proc)


async def test_sigkilled_writer_leaves_a_resumable_ingest_and_no_torn_blob(tmp_path: Path) -> None:
    # ING-5 after a crash: the kernel released the lock; resume at offset = data size, the
    # re-built hash matches the bytes on disk, and the committed blob is whole.
    store = LocalContentStore(tmp_path)
    await kill_mid_write(*await start_child(tmp_path, "crash"))
    blobs = tmp_path / "blobs"
    assert not blobs.exists() or not any(p.is_file() for p in blobs.rglob("*"))

    status = await store.ingest_status("crash")
    total = BLOCKS * MiB
    assert status.total == total
    assert (9 - DEPTH) * MiB <= status.offset < total  # up to DEPTH steps in flight
    w = await store.open_writer("crash", total=total)
    assert w.offset == status.offset
    assert w.digest() == "sha256:" + hashlib.sha256(expected_bytes(0, w.offset)).hexdigest()
    await w.write(expected_bytes(w.offset, total))
    whole = hashlib.sha256()
    for i in range(BLOCKS):
        whole.update(block(i))
    result = await w.commit(total, f"sha256:{whole.hexdigest()}")
    assert not result.existed
    assert await store.stat(result.digest) == total
    assert await store.list_ingests() == []


async def test_torn_tail_after_a_crash_is_resumed_or_truncated(tmp_path: Path) -> None:
    # A crash mid-os.write leaves a prefix that is not block-aligned; resuming re-hashes it
    # exactly, and ING-14 callers that do not want to resume truncate(0) instead.
    store = LocalContentStore(tmp_path)
    async with await store.open_writer("torn", total=3 * MiB) as w:
        await w.write(expected_bytes(0, MiB))
    data = store.root / "ingest" / hashlib.sha256(b"torn").hexdigest() / "data"
    with data.open("ab") as f:  # what a torn second write would have left
        f.write(expected_bytes(MiB, MiB + 12345))
    w = await store.open_writer("torn", total=3 * MiB)
    assert w.offset == MiB + 12345
    await w.write(expected_bytes(w.offset, 3 * MiB))
    want = "sha256:" + hashlib.sha256(expected_bytes(0, 3 * MiB)).hexdigest()
    assert (await w.commit(3 * MiB, want)).digest == want

    async with await store.open_writer("torn2") as w:
        await w.write(b"garbage from a crashed run")
    w = await store.open_writer("torn2")
    await w.truncate(0)
    await w.write(b"clean")
    assert (await w.commit(5, None)).size == 5


LOCK_HOLDER = textwrap.dedent(
    """
    import fcntl, os, sys, time
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    print("held", flush=True)
    time.sleep(3600)
    """
)


async def test_commit_lock_excludes_another_process_until_it_dies(tmp_path: Path) -> None:
    # commit_lock is a cross-process flock: GC's exclusive hold in one process keeps a
    # commit's shared hold in another waiting (cancellably), and a crash releases it.
    store = LocalContentStore(tmp_path)
    proc = await anyio.open_process(
        [sys.executable, "-c", LOCK_HOLDER, str(tmp_path / "commit.lock")], stderr=None
    )
    try:
        assert proc.stdout is not None
        with anyio.fail_after(30):
            assert await read_line(BufferedByteReceiveStream(proc.stdout)) == "held"
        with anyio.move_on_after(0.2) as scope:
            async with store.commit_lock(exclusive=False):
                pytest.fail("took the commit lock while another process held it")
        assert scope.cancelled_caught
    finally:
        await kill(proc)
    with anyio.fail_after(5):
        async with store.commit_lock(exclusive=True):
            pass


async def test_sigkill_mid_write_leaves_the_public_store_consistent(tmp_path: Path) -> None:
    # The same crash through the public store: no record and no file at any blob address, the
    # ingest's row keeps it from GC for 24 h (ING-13), and reopening the ref resumes (ING-5).
    root = tmp_path / "root"
    await kill_mid_write(*await start_child(root, "killed", "store"))
    total = BLOCKS * MiB
    async with open_root(root) as store:
        assert await store.content.walk() == []
        assert not any(p.is_file() for p in (root / "blobs").rglob("*"))
        offset = (await store.content.status("killed")).offset
        assert (9 - DEPTH) * MiB <= offset < total  # up to DEPTH steps in flight
        report = await store.gc()
        assert (report.removed, report.ingests_removed) == ([], [])
        async with store.content.writer("killed", size=total) as w:
            assert w.offset == offset
            await w.write(expected_bytes(offset, total))
            want = "sha256:" + hashlib.sha256(expected_bytes(0, total)).hexdigest()
            assert await w.commit(total, want) == want
        assert (await store.content.info(want)).size == total
        assert await store.content.list_statuses() == []
