"""Exporter sinks, concurrency and leases: every sink kind gives the same bytes; a save
survives a concurrent image delete + GC (SAVE-5); many saves run at once (save_many);
a cancelled save leaves no lease behind. Host pinned to linux/amd64 (HOST-3).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import pytest

from castar.engine import oci
from castar.engine import platforms as plat
from castar.engine.save import exporter, write
from castar.store.errors import NotFound
from castar.store.root import Root, open_root

NAME = "docker.io/library/multi:1"
PLATFORMS = ("linux/amd64", "linux/arm64/v8", "linux/riscv64", "linux/s390x")


@pytest.fixture(autouse=True)
def _host() -> Iterator[None]:
    with plat.pinned_host(plat.Platform(os="linux", architecture="amd64")):
        yield


async def put(
    store: Root, data: bytes, media_type: str, children: tuple[oci.Descriptor, ...] = ()
) -> oci.Descriptor:
    labels = oci.children_labels(children) if children else None
    d = await store.content.write_blob(data, media_type=media_type, labels=labels)
    return oci.Descriptor(media_type, d.digest, d.size)


async def build(store: Root) -> list[oci.Descriptor]:
    """An index of four platforms, each with a small and a 600 KiB layer (zero-copy path)."""
    shared = await put(store, os.urandom(300_000), oci.OCI_LAYER_GZIP)
    entries = []
    for i, spec in enumerate(PLATFORMS):
        p = plat.parse(spec)
        cfg = await put(
            store,
            oci.canonical_json({"architecture": p.architecture, "os": p.os, "variant": p.variant}),
            oci.OCI_CONFIG,
        )
        small = await put(store, f"small-{i}".encode() * 50, oci.OCI_LAYER_GZIP)
        big = await put(store, bytes([i]) * (600 << 10), oci.OCI_LAYER_GZIP)
        layers = (small, big, shared)
        m = await put(
            store,
            oci.encode_manifest(oci.Manifest(config=cfg, layers=layers)),
            oci.OCI_MANIFEST,
            (cfg, *layers),
        )
        entries.append(oci.Descriptor(m.media_type, m.digest, m.size, platform=p))
    top = tuple(entries)
    index = await put(store, oci.encode_index(oci.Index(manifests=top)), oci.OCI_INDEX, top)
    await store.images.create(NAME, index)
    return entries


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Root]:
    async with open_root(tmp_path / "store") as s:
        await build(s)
        yield s


async def reference_bytes(store: Root, tmp_path: Path, **kw: object) -> bytes:
    out = tmp_path / "reference.tar"
    await exporter.save(store, [NAME], out, exporter.SaveOptions.parse(**kw))  # type: ignore[arg-type]
    return await anyio.Path(out).read_bytes()


def check_archive(data: bytes) -> list[str]:
    """tarfile reads it and every blob hashes to its name."""
    names = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
        for info in tf:
            names.append(info.name)
            if info.isfile() and info.name.startswith("blobs/"):
                f = tf.extractfile(info)
                assert f is not None
                _, alg, hex_ = info.name.split("/")
                assert hashlib.new(alg, f.read()).hexdigest() == hex_
    return names


class Collector(anyio.abc.ByteSendStream):
    """An anyio ByteSendStream that keeps what it is sent; optionally waits before the first."""

    def __init__(self, gate: anyio.Event | None = None) -> None:
        self.data = bytearray()
        self.sends = 0
        self.gate = gate
        self.started = anyio.Event()

    async def send(self, item: bytes) -> None:
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        self.sends += 1
        self.data += item

    async def aclose(self) -> None:
        pass


# -- sinks --------------------------------------------------------------------------------------


async def test_fd_of_a_regular_file_gets_the_same_bytes_and_stays_open(
    store: Root, tmp_path: Path
) -> None:
    expected = await reference_bytes(store, tmp_path)
    path = tmp_path / "fd.tar"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        await exporter.save(store, [NAME], fd, exporter.SaveOptions())
        os.write(fd, b"")  # still open: the caller owns it
    finally:
        os.close(fd)
    assert path.read_bytes() == expected


def _drain(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("blocking", [True, False])
async def test_pipe_fd_gets_the_same_bytes(store: Root, tmp_path: Path, blocking: bool) -> None:
    expected = await reference_bytes(store, tmp_path)
    r, w = os.pipe()
    os.set_blocking(w, blocking)  # non-blocking: the splice loop waits on EAGAIN
    got: list[bytes] = []
    try:

        async def reader() -> None:
            got.append(await anyio.to_thread.run_sync(_drain, r))

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            try:
                await exporter.save(store, [NAME], w, exporter.SaveOptions())
            finally:
                os.close(w)
    finally:
        os.close(r)
    assert got == [expected]


async def test_socket_fd_gets_the_same_bytes(store: Root, tmp_path: Path) -> None:
    expected = await reference_bytes(store, tmp_path)
    a, b = socket.socketpair()
    got: list[bytes] = []
    with a, b:

        async def reader() -> None:
            got.append(await anyio.to_thread.run_sync(_drain, b.fileno()))

        async with anyio.create_task_group() as tg:
            tg.start_soon(reader)
            try:
                await exporter.save(store, [NAME], a.fileno(), exporter.SaveOptions())
            finally:
                a.shutdown(socket.SHUT_WR)
    assert got == [expected]


ZERO_COPY = {"file": "copy_file_range", "pipe": "splice", "socket": "sendfile"}


@pytest.mark.parametrize("kind", ["file", "pipe", "socket"])
async def test_big_blob_bodies_go_zero_copy_by_the_call_each_fd_kind_takes(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    # EXP-8 / io-zero-copy: copy_file_range into files, splice into pipes, sendfile into
    # sockets; the five blobs over 256 KiB (4 x 600 KiB + 300 KB) never enter user space.
    moved = dict.fromkeys(ZERO_COPY.values(), 0)
    for call in moved:
        real = getattr(os, call)

        def spy(*args: Any, _real: Callable[..., int] = real, _call: str = call, **kw: Any) -> int:
            n = _real(*args, **kw)
            moved[_call] += n
            return n

        monkeypatch.setattr(os, call, spy)
    expected = await reference_bytes(store, tmp_path)
    moved.update(dict.fromkeys(moved, 0))  # the reference save's copies do not count
    big = 4 * (600 << 10) + 300_000
    if kind == "file":
        await exporter.save(store, [NAME], tmp_path / "z.tar", exporter.SaveOptions())
        got = (tmp_path / "z.tar").read_bytes()
    else:
        r, w = os.pipe() if kind == "pipe" else (s.detach() for s in socket.socketpair())
        try:
            async with anyio.create_task_group() as tg:
                box: list[bytes] = []

                async def reader() -> None:
                    box.append(await anyio.to_thread.run_sync(_drain, r))

                tg.start_soon(reader)
                try:
                    await exporter.save(store, [NAME], w, exporter.SaveOptions())
                finally:
                    if kind == "socket":  # EOF for the reader
                        with socket.socket(fileno=os.dup(w)) as sock:
                            sock.shutdown(socket.SHUT_WR)
                    os.close(w)
        finally:
            os.close(r)
        (got,) = box
    assert got == expected
    assert moved == {c: big if c == ZERO_COPY[kind] else 0 for c in moved}
    moved.update(dict.fromkeys(moved, 0))
    await exporter.save(store, [NAME], tmp_path / "v.tar", exporter.SaveOptions.parse(verify=True))
    assert moved == dict.fromkeys(moved, 0)  # verify hashes: every body through user space


@pytest.mark.parametrize("write_behind", [False, True])
async def test_a_file_opened_for_appending_gets_the_archive_at_its_end(
    store: Root, tmp_path: Path, write_behind: bool
) -> None:
    # A shell's `castar save IMAGE >> out.tar`: copy_file_range refuses O_APPEND (EBADF).
    expected = await reference_bytes(store, tmp_path)
    path = tmp_path / "appended.tar"
    path.write_bytes(b"earlier bytes\n")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    try:
        await exporter.save(
            store, [NAME], fd, exporter.SaveOptions.parse(write_behind=write_behind)
        )
    finally:
        os.close(fd)
    assert path.read_bytes() == b"earlier bytes\n" + expected


def _spy_fadvise(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record every posix_fadvise (offset, length); each must be DONTNEED."""
    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise

    def spy(fd: int, offset: int, length: int, advice: int) -> None:
        assert advice == os.POSIX_FADV_DONTNEED
        calls.append((offset, length))
        real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    return calls


@pytest.mark.parametrize("verify", [False, True])  # zero-copy, and bodies through user space
async def test_write_behind_starts_writeback_per_window_and_drops_only_older_windows(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, verify: bool
) -> None:
    expected = await reference_bytes(store, tmp_path)
    window = 256 << 10  # the archive (~3.3 MB) spans a dozen windows
    monkeypatch.setattr(write, "_WINDOW", window)
    calls = _spy_fadvise(monkeypatch)
    path = tmp_path / "behind.tar"
    prefix = b"not castar's" * 100  # an fd given past its start: offsets follow the archive
    path.write_bytes(prefix)
    fd = os.open(path, os.O_WRONLY)
    try:
        os.lseek(fd, 0, os.SEEK_END)
        await exporter.save(
            store, [NAME], fd, exporter.SaveOptions.parse(write_behind=True, verify=verify)
        )
    finally:
        os.close(fd)
    assert path.read_bytes() == prefix + expected  # advice never changes a byte
    start, end = len(prefix), len(prefix) + len(expected)
    *steps, last = calls
    kicked = dropped = start  # writeback started up to / pages dropped up to
    newest = start  # where the newest window whose writeback started begins
    for offset, length in steps:
        if offset == kicked:  # writeback of the window just written
            assert length >= window
            newest, kicked = kicked, kicked + length
            assert kicked <= end
        else:  # a drop: contiguous, and never the newest window nor the one before it
            assert offset == dropped
            dropped += length
            assert dropped < newest
    assert kicked >= end - window  # all but the last part window
    assert dropped > start  # older windows were dropped while the save ran
    assert last == (dropped, 0)  # at the end: the rest of the file, from the first kept byte


async def test_without_write_behind_no_advice_is_given(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(write, "_WINDOW", 64 << 10)
    calls = _spy_fadvise(monkeypatch)
    await exporter.save(store, [NAME], tmp_path / "plain.tar", exporter.SaveOptions())
    jobs = [
        exporter.SaveJob(
            [NAME], tmp_path / "many.tar", exporter.SaveOptions.parse(write_behind=True)
        )
    ]
    await exporter.save_many(store, jobs)
    assert calls  # save_many passes it on
    assert (tmp_path / "plain.tar").read_bytes() == (tmp_path / "many.tar").read_bytes()
    calls.clear()
    await exporter.save(store, [NAME], tmp_path / "plain.tar", exporter.SaveOptions())
    assert calls == []


async def test_write_behind_refused_by_the_file_system_is_given_up_quietly(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = await reference_bytes(store, tmp_path)
    monkeypatch.setattr(write, "_WINDOW", 64 << 10)
    refused: list[int] = []

    def refuse(fd: int, offset: int, length: int, advice: int) -> None:
        refused.append(offset)
        raise OSError(errno.EINVAL, "fadvise not supported")

    monkeypatch.setattr(os, "posix_fadvise", refuse)
    await exporter.save(
        store, [NAME], tmp_path / "r.tar", exporter.SaveOptions.parse(write_behind=True)
    )
    assert (tmp_path / "r.tar").read_bytes() == expected
    assert refused == [0]  # asked once, then never again


async def test_byte_send_stream_gets_the_same_bytes_in_mib_chunks(
    store: Root, tmp_path: Path
) -> None:
    expected = await reference_bytes(store, tmp_path)
    sink = Collector()
    result = await exporter.save(store, [NAME], sink, exporter.SaveOptions())
    assert bytes(sink.data) == expected
    assert result.size == len(expected)
    assert sink.sends <= len(expected) // (1 << 20) + 4  # coalesced to ~1 MiB sends


async def test_anyio_async_file_gets_the_same_bytes(store: Root, tmp_path: Path) -> None:
    expected = await reference_bytes(store, tmp_path)
    path = tmp_path / "async.tar"
    async with await anyio.open_file(path, "wb") as f:
        await exporter.save(store, [NAME], f, exporter.SaveOptions())
    assert path.read_bytes() == expected


async def test_aiofiles_or_trio_file_gets_the_same_bytes(
    store: Root, tmp_path: Path, anyio_backend: str
) -> None:
    expected = await reference_bytes(store, tmp_path)
    path = tmp_path / "native.tar"
    if anyio_backend == "asyncio":
        import aiofiles  # noqa: TID251 - asyncio-only: the asyncio leg

        async with aiofiles.open(path, "wb") as f:
            await exporter.save(store, [NAME], f, exporter.SaveOptions())
    else:
        import trio  # noqa: TID251 - the trio leg

        async with await trio.open_file(path, "wb") as f:
            await exporter.save(store, [NAME], f, exporter.SaveOptions())
    assert path.read_bytes() == expected


async def test_archive_digest_is_the_same_for_every_sink(store: Root, tmp_path: Path) -> None:
    expected = await reference_bytes(store, tmp_path)
    want = "sha256:" + hashlib.sha256(expected).hexdigest()
    sink = Collector()
    by_stream = await exporter.save(
        store, [NAME], sink, exporter.SaveOptions.parse(archive_digest=True)
    )
    by_file = await exporter.save(
        store, [NAME], tmp_path / "h.tar", exporter.SaveOptions.parse(archive_digest=True)
    )
    assert by_stream.sha256 == by_file.sha256 == want


# -- leases, GC, concurrency --------------------------------------------------------------------


async def test_save_survives_image_delete_and_gc_while_writing(store: Root, tmp_path: Path) -> None:
    expected = await reference_bytes(store, tmp_path)
    image = await store.images.get(NAME)
    gate = anyio.Event()
    sink = Collector(gate)
    async with anyio.create_task_group() as tg:
        tg.start_soon(exporter.save, store, [NAME], sink, exporter.SaveOptions())
        await sink.started.wait()  # planned, leased, writing
        await store.images.delete(NAME)
        report = await store.gc()
        assert report.removed == []  # SAVE-5: the export lease holds every blob
        gate.set()
    assert bytes(sink.data) == expected
    check_archive(bytes(sink.data))
    # the lease is gone with the save: now the content is garbage
    await store.gc()
    assert not await store.content.exists(image.target.digest)


async def test_cancelled_save_releases_its_lease(store: Root, tmp_path: Path) -> None:
    before = await store.leases.list()
    sink = Collector(anyio.Event())  # never opens: the save blocks on its first send
    with anyio.move_on_after(5) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(exporter.save, store, [NAME], sink, exporter.SaveOptions())
            await sink.started.wait()
            assert len(await store.leases.list()) == len(before) + 1
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught
    assert await store.leases.list() == before


async def test_save_many_runs_one_archive_per_platform_concurrently(
    store: Root, tmp_path: Path
) -> None:
    jobs = [
        exporter.SaveJob(
            [NAME],
            tmp_path / f"{spec.replace('/', '_')}.tar",
            exporter.SaveOptions.parse(platforms=[spec]),
        )
        for spec in PLATFORMS
    ]
    jobs.append(exporter.SaveJob([NAME], tmp_path / "all.tar", exporter.SaveOptions()))
    results = await exporter.save_many(store, jobs)
    assert [r.images[0].platforms[0].platform for r in results[:-1]] == list(PLATFORMS)
    for job, result in zip(jobs, results, strict=True):
        assert isinstance(job.sink, Path)
        data = job.sink.read_bytes()
        assert len(data) == result.size
        check_archive(data)
    # each one-platform archive is what a lone save of that platform writes
    alone = await reference_bytes(store, tmp_path, platforms=["linux/riscv64"])
    assert (tmp_path / "linux_riscv64.tar").read_bytes() == alone
    assert await store.leases.list() == []


class StepSpy:
    """Counts the writer's worker-thread steps, and how many run at once; ``held`` steps
    wait in their thread for ``release()``, so a test sees all the limiter lets start."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, held: bool = False) -> None:
        self.steps = 0
        self.running = 0
        self.peak = 0
        self.held = held
        self._cond = threading.Condition()
        self._real = real = anyio.to_thread.run_sync

        async def run_sync(func: Callable[..., object], *args: object, **kw: Any) -> object:
            if func is not next:  # not a writing step (store calls, sink opens, close)
                return await real(func, *args, **kw)
            self.steps += 1
            return await real(self._counted, *args, **kw)

        monkeypatch.setattr(anyio.to_thread, "run_sync", run_sync)

    def _counted(self, *args: Any) -> object:
        with self._cond:
            self.running += 1
            self.peak = max(self.peak, self.running)
            self._cond.notify_all()
            self._cond.wait_for(lambda: not self.held)
        try:
            return next(*args)
        finally:
            with self._cond:
                self.running -= 1

    async def wait_running(self, n: int) -> None:
        def wait() -> bool:  # the timeout only stops a broken save from hanging the suite
            with self._cond:
                return self._cond.wait_for(lambda: self.running >= n, timeout=30)

        assert await self._real(wait)

    def release(self) -> None:
        with self._cond:
            self.held = False
            self._cond.notify_all()


async def test_writing_hops_once_per_64_mib_into_fds_and_per_mib_into_streams(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # io-hops: 18 blobs, ~2.8 MB; an fd sink is written in one step (the writer knows
    # it is the last: no extra hop to meet the end), a stream gets one step per ~1 MiB
    # read, never one per blob or per member.
    spy = StepSpy(monkeypatch)
    result = await exporter.save(store, [NAME], tmp_path / "hops.tar", exporter.SaveOptions())
    assert len(result.plan.reads) == 18
    assert spy.steps == 1  # everything
    spy.steps = 0
    await exporter.save(store, [NAME], Collector(), exporter.SaveOptions())
    assert 2 <= spy.steps <= result.size // (1 << 20) + 2


@pytest.mark.parametrize(("limit", "peak"), [(1, 1), (None, 2)])
async def test_save_many_bounds_blob_work_across_its_jobs(
    store: Root, monkeypatch: pytest.MonkeyPatch, limit: int | None, peak: int
) -> None:
    # save_many: one CapacityLimiter(limit) for all jobs; default: the store's two
    # hashing hops (streams go through user space), however many jobs run.
    spy = StepSpy(monkeypatch, held=True)
    sinks = [Collector() for _ in range(6)]
    jobs = [exporter.SaveJob([NAME], s, exporter.SaveOptions()) for s in sinks]
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: exporter.save_many(store, jobs, limit=limit))
        await spy.wait_running(peak)  # `peak` saves are writing at once...
        await anyio.wait_all_tasks_blocked()  # ...and every other job waits for the limiter
        assert spy.running == peak
        spy.release()
    assert spy.peak == peak
    assert len({bytes(s.data) for s in sinks}) == 1


async def test_save_many_raises_the_first_failure(store: Root, tmp_path: Path) -> None:
    jobs = [
        exporter.SaveJob([NAME], tmp_path / "ok.tar", exporter.SaveOptions()),
        exporter.SaveJob(["nosuch:1"], tmp_path / "bad.tar", exporter.SaveOptions()),
    ]
    with pytest.raises(NotFound, match='image "nosuch:1"'):
        await exporter.save_many(store, jobs)


async def test_plan_under_a_lease_holds_what_no_label_reaches(store: Root) -> None:
    # SAVE-5: a manifest written without GC-7 child labels does not keep its layer, so
    # the export lease must name the layer itself; labelled subtrees need only the root.
    cfg = await put(store, b'{"architecture":"amd64","os":"linux"}', oci.OCI_CONFIG)
    layer = await put(store, os.urandom(1000), oci.OCI_LAYER_GZIP)
    doc = oci.encode_manifest(oci.Manifest(config=cfg, layers=(layer,)))
    m = await put(store, doc, oci.OCI_MANIFEST)  # no labels
    await store.images.create("docker.io/library/bare:1", m)
    labelled = await store.images.get(NAME)
    async with store.leases.hold() as lease:
        await exporter.plan_save(store, ["bare:1", NAME], exporter.SaveOptions())
        held = {r for _, r in await store.leases.list_resources(lease.id)}
        assert held == {m.digest, cfg.digest, layer.digest, labelled.target.digest}
        await store.images.delete("docker.io/library/bare:1")
        await store.images.delete(NAME)
        assert (await store.gc()).removed == []
    assert set((await store.gc()).removed) >= {m.digest, cfg.digest, layer.digest}


@pytest.mark.parametrize("blocking", [True, False])
async def test_save_into_a_pipe_nobody_reads_can_be_cancelled(
    store: Root, tmp_path: Path, blocking: bool
) -> None:
    r, w = os.pipe()
    os.set_blocking(w, blocking)
    try:
        with anyio.fail_after(10):  # a worker stuck in write/splice would hang here
            with anyio.move_on_after(0.5) as scope:
                await exporter.save(store, [NAME], w, exporter.SaveOptions())
    finally:
        os.close(w)
        os.close(r)
    assert scope.cancelled_caught
    assert await store.leases.list() == []
    # the limiter's tokens came back: the next saves run
    for _ in range(3):
        await exporter.save(store, [NAME], tmp_path / "after.tar", exporter.SaveOptions())


async def test_save_under_a_callers_lease_uses_it(store: Root, tmp_path: Path) -> None:
    # LEASE-6: with a current lease, save adds what it reads to it and creates none
    image = await store.images.get(NAME)
    async with store.leases.hold() as lease:
        seen: list[int] = []
        gate = anyio.Event()
        sink = Collector(gate)  # the save waits in its first send until counted

        async def count_leases() -> None:
            await sink.started.wait()
            seen.append(len(await store.leases.list()))
            gate.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(count_leases)
            await exporter.save(store, [NAME], sink, exporter.SaveOptions())
        assert seen == [1]
        held = {r for _, r in await store.leases.list_resources(lease.id)}
        assert image.target.digest in held


@pytest.mark.parametrize(
    ("names", "kw"),
    [
        (["nosuch:1"], {}),  # SAVE-4 unknown name
        ([NAME], {"platforms": ["linux/mips64le"]}),  # SAVE-2
        ([NAME], {"platforms": ["linux/mips64le", "windows/amd64"]}),  # EXP-6
        ([NAME], {"missing": "fail", "platforms": ["linux/amd64", "linux/mips64le"]}),
    ],
)
async def test_errors_come_before_the_first_byte_for_every_sink(
    store: Root, tmp_path: Path, names: list[str], kw: dict[str, object]
) -> None:
    stream = Collector()
    path = tmp_path / "untouched.tar"
    path.write_bytes(b"previous content")
    r, w = os.pipe()
    try:
        for sink in (stream, path, w):
            with pytest.raises(NotFound):
                await exporter.save(store, names, sink, exporter.SaveOptions.parse(**kw))  # type: ignore[arg-type]
        os.set_blocking(r, False)
        with pytest.raises(BlockingIOError):
            os.read(r, 1)  # nothing reached the pipe
    finally:
        os.close(r)
        os.close(w)
    assert stream.sends == 0
    assert path.read_bytes() == b"previous content"  # not even truncated


# -- a save to a path: put in place only when it succeeds ---------------------------------------


@pytest.mark.parametrize("tmpfile", [True, False], ids=["O_TMPFILE", "named-temp"])
@pytest.mark.parametrize("fail", [False, True], ids=["cancelled", "failing"])
async def test_an_interrupted_save_leaves_the_directory_as_it_was(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tmpfile: bool, fail: bool
) -> None:
    if not tmpfile:
        monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    out = anyio.Path(tmp_path / "out")
    await out.mkdir()
    await (out / "old.tar").write_bytes(b"old")
    written: list[int] = []

    async def write_then_stop(plan: object, content: object, sink: Any, *rest: object) -> None:
        await sink.send(b"x" * 100)
        await sink.flush()  # the first bytes reach the file
        written.append(os.fstat(sink.fileno()).st_size)
        if fail:
            raise KeyError("sink broke")
        scope.cancel()
        await anyio.lowlevel.checkpoint()

    monkeypatch.setattr(exporter, "write", write_then_stop)
    for target in (out / "old.tar", out / "new.tar"):
        with anyio.CancelScope() as scope:
            with pytest.raises(KeyError) if fail else contextlib.nullcontext():
                await exporter.save(store, [NAME], target, exporter.SaveOptions())
        assert written[-1] > 0
        assert [p.name async for p in out.iterdir()] == ["old.tar"]
        assert await (out / "old.tar").read_bytes() == b"old"


async def test_a_save_replaces_an_existing_file_whole(store: Root, tmp_path: Path) -> None:
    expected = await reference_bytes(store, tmp_path)
    out = tmp_path / "out.tar"
    out.write_bytes(b"x" * (len(expected) * 2))
    await exporter.save(store, [NAME], out, exporter.SaveOptions())
    assert out.read_bytes() == expected
    names = sorted([p.name async for p in anyio.Path(tmp_path).iterdir()])
    assert names == ["out.tar", "reference.tar", "store"]


async def test_without_o_tmpfile_stale_temps_of_dead_writers_go(
    store: Root, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)
    dead = subprocess.run(  # noqa: ASYNC221
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    stale = tmp_path / f".out.tar.castar-{dead.stdout.strip()}"
    live = tmp_path / f".out.tar.castar-{os.getppid()}"
    stale.write_bytes(b"torn")
    live.write_bytes(b"being written")
    await exporter.save(store, [NAME], tmp_path / "out.tar", exporter.SaveOptions())
    assert not stale.exists()
    assert live.read_bytes() == b"being written"


def test_writing_into_a_full_pipe_whose_reader_left_fails_at_once() -> None:
    # A full pipe keeps its bytes after the reader closes and selects writable: the write
    # must still be tried, so EPIPE ends `castar save | head -c 1000`.
    from castar.engine.save.sinks import write_all

    read, write = os.pipe()
    try:
        os.set_blocking(write, False)
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(write, b"\0" * 65536)
        os.set_blocking(write, True)
        os.close(read)
        outcome: list[BaseException] = []

        def run() -> None:
            try:
                write_all(write, b"archive bytes", "pipe")
            except BaseException as exc:  # handed to the test thread
                outcome.append(exc)

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        worker.join(60)  # a hang guard only
        assert not worker.is_alive(), "write_all spins on a full pipe with no reader"
        assert len(outcome) == 1
        assert isinstance(outcome[0], BrokenPipeError)
    finally:
        os.close(write)
