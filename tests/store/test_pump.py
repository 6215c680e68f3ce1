"""The writer's pump: steps hashed and written in order, ahead of the caller, bounded.

``LocalWriter.write`` returns once its 1 MiB steps are queued; these tests hold the pump's
thread at a gate to see what is in flight, what a cancel keeps, and that a caller's
buffer may be reused as soon as ``write`` returns.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from castar.store import _pump
from castar.store._pump import DEPTH
from castar.store.digest import compute
from castar.store.ingest import LocalContentStore

MiB = 1 << 20
DATA = random.Random(7).randbytes(8 * MiB + 123)


class Gate:
    """Holds every pump step's write until opened (the test's view of a slow disk)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = threading.Event()
        self.started = threading.Semaphore(0)
        self.finished = 0  # steps written past the gate
        real = _pump.write_all

        def gated(fd: int, data: object) -> None:
            self.started.release()
            self.open.wait(10)
            real(fd, data)  # type: ignore[arg-type]
            self.finished += 1

        monkeypatch.setattr(_pump, "write_all", gated)


async def test_mixed_writes_land_in_order_with_the_right_digest(tmp_path: Path) -> None:
    # ING-3: whatever the sizes and buffer types, the file and the hash see the bytes in order
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("mixed")
    sizes = [10, MiB - 10, 3 * MiB + 5, 7, 2 * MiB, MiB + 1]
    pos = 0
    for i, size in enumerate(sizes):
        piece = DATA[pos : pos + size]
        await w.write(piece if i % 2 else bytearray(piece))
        pos += size
        assert w.offset == pos
    await w.write(memoryview(DATA[pos:]))
    result = await w.commit(len(DATA), compute(DATA))
    assert store.blob_path(result.digest).read_bytes() == DATA


async def test_a_reused_buffer_may_change_as_soon_as_write_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the pump copies buffers it does not own; the steps run only after the caller changed them
    gate = Gate(monkeypatch)
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("reuse")
    buf = bytearray(MiB)
    expected = b""
    for i in range(DEPTH):
        buf[:] = DATA[i * MiB : (i + 1) * MiB]
        await w.write(buf)
        buf[:] = bytes(MiB)  # scribble over it while the step is still queued
        expected += DATA[i * MiB : (i + 1) * MiB]
    gate.open.set()
    result = await w.commit(len(expected), compute(expected))
    assert store.blob_path(result.digest).read_bytes() == expected


async def cancel_then_open(
    scope: anyio.CancelScope, gate: Gate, check: Callable[[], Awaitable[None]]
) -> None:
    """Cancel ``scope`` while the pump is held, then let the pump go on."""
    await anyio.wait_all_tasks_blocked()  # the write under ``scope`` is stuck
    await check()
    scope.cancel()
    await anyio.wait_all_tasks_blocked()  # ...and has unwound
    gate.open.set()


async def test_write_waits_while_depth_steps_are_in_flight(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # memory stays bounded: a writer never holds more than DEPTH steps ahead of the disk
    gate = Gate(monkeypatch)
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("depth")
    for i in range(DEPTH):
        await w.write(DATA[i * MiB : (i + 1) * MiB])
    assert w.offset == DEPTH * MiB

    async def blocked() -> None:
        assert w.offset == DEPTH * MiB  # the next step waits for room
        assert (await store.ingest_status("depth")).offset == 0  # nothing on disk yet

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_then_open, scope, gate, blocked)
        with scope:
            await w.write(DATA[DEPTH * MiB : (DEPTH + 1) * MiB])
    assert scope.cancelled_caught
    assert w.offset == DEPTH * MiB  # the cancelled step was not accepted
    await w.write(DATA[DEPTH * MiB :])
    assert w.digest() == compute(DATA)
    await w.close()
    assert (await store.ingest_status("depth")).offset == len(DATA)


@pytest.mark.parametrize("kind", [bytes, bytearray])
async def test_cancelled_multi_step_write_accepts_whole_steps_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: type[bytes] | type[bytearray]
) -> None:
    # a cancel mid-call keeps the steps already queued, and offset says exactly how many.
    # A copied buffer is topped up to a whole step; bytes are queued as they are, after
    # the buffered bytes as a step of their own.
    gate = Gate(monkeypatch)
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("partial")
    await w.write(DATA[:100])  # buffered
    queued = DEPTH * MiB if kind is bytearray else 100 + (DEPTH - 1) * MiB

    async def blocked() -> None:
        assert w.offset == queued  # three steps queued, the fourth waits

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(cancel_then_open, scope, gate, blocked)
        with scope:
            await w.write(kind(DATA[100 : 6 * MiB]))
    assert scope.cancelled_caught
    assert w.offset == queued
    assert w.digest() == compute(DATA[: w.offset])
    await w.write(DATA[w.offset :])
    result = await w.commit(len(DATA), compute(DATA))
    assert store.blob_path(result.digest).read_bytes() == DATA


async def test_bytes_go_to_the_pump_uncopied_whatever_their_alignment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a tar stream's member bodies are views of the received bytes at any offset: they
    # are queued as they are (pieces of 256 KiB or more), only small tails are buffered
    seen: list[object] = []
    real = _pump.hash_and_write

    def spy(fd: int, h: object, data: memoryview) -> None:
        seen.append(data.obj)
        real(fd, h, data)  # type: ignore[arg-type]

    monkeypatch.setattr(_pump, "hash_and_write", spy)
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("aligned")
    received = [DATA[i : i + MiB] for i in range(0, len(DATA), MiB)]
    await w.write(memoryview(received[0])[512:])  # a body starting after a header
    for chunk in received[1:]:
        await w.write(memoryview(chunk))
    result = await w.commit(len(DATA) - 512, compute(DATA[512:]))
    assert store.blob_path(result.digest).read_bytes() == DATA[512:]
    assert sum(type(o) is bytes for o in seen) >= len(received) - 1
    assert sum(type(o) is bytearray for o in seen) <= 1  # at most the last tail, copied


async def test_close_waits_for_queued_steps_before_closing_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ING-5: close never drops or tears a queued step; the ingest resumes after all of it
    gate = Gate(monkeypatch)
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("close")
    await w.write(DATA[: 2 * MiB + 9])
    gate.started.acquire()  # the pump's thread is inside its first step
    async with anyio.create_task_group() as tg:
        tg.start_soon(w.close)
        await anyio.wait_all_tasks_blocked()  # close is waiting for the held step
        gate.open.set()
    w = await store.open_writer("close")
    assert w.offset == 2 * MiB + 9
    assert w.digest() == compute(DATA[: 2 * MiB + 9])
    await w.close()


async def test_dropping_a_writer_with_steps_in_flight_never_waits_for_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the last-resort cleanup of a writer nobody closed must not block (at interpreter exit
    # the pump's thread may never run again); the fds it cannot close safely are left
    gate = Gate(monkeypatch)
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("dropped")
    await w.write(DATA[: 2 * MiB])
    w.__del__()
    assert gate.finished == 0  # it returned while the step was still held at the gate
    gate.open.set()
