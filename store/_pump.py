"""The writer's pipeline: a thread that hashes and writes one writer's steps in order (io-hops)."""

from __future__ import annotations

import concurrent.futures
import functools
import os
import queue
import threading
from typing import TYPE_CHECKING, Final

import anyio.lowlevel
import anyio.to_thread

if TYPE_CHECKING:
    import hashlib

    from castar.store.digest import Buffer

__all__ = ["DEPTH", "Pump", "hash_and_write", "write_all"]

#: Steps a pump holds at most: the one being hashed and the ones queued behind it.
DEPTH: Final = 3

#: Steps hashing at once in this process, whatever the number of pumps (io-limiter:
#: past two, hashing jobs only add GIL churn and loop stalls).
_SLOTS: Final = threading.BoundedSemaphore(2)


@functools.cache
def _writers() -> concurrent.futures.ThreadPoolExecutor:
    """Threads writing a step's bytes while its own thread hashes them (two, like ``_SLOTS``)."""
    return concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="castar-write")


def write_all(fd: int, data: Buffer) -> None:
    """``os.write`` until all of ``data`` is written."""
    with memoryview(data) as view:
        while view.nbytes:
            n = os.write(fd, view)
            view = view[n:]


def hash_and_write(fd: int, h: hashlib._Hash, data: Buffer) -> None:
    """Hash ``data`` here while a helper thread appends it to ``fd`` (both drop the GIL)."""
    pending = _writers().submit(write_all, fd, data)
    try:
        h.update(data)
    finally:
        pending.result()


class Pump:
    """One writer's steps, hashed into ``h`` and appended to ``fd`` by a thread of its own.

    The first failure is kept in ``error``; later steps are skipped.
    """

    def __init__(self, fd: int, h: hashlib._Hash) -> None:
        self._fd = fd
        self._hash = h
        self._todo: queue.SimpleQueue[memoryview | None] = queue.SimpleQueue()
        self._done: queue.SimpleQueue[tuple[memoryview, BaseException | None]] = queue.SimpleQueue()
        self._free: list[bytearray] = []
        self._inflight = 0
        self.done_bytes = 0
        self.queued_bytes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="castar-pump", daemon=True)
        self._thread.start()

    def settled(self) -> bool:
        """Whether no step is in flight (reaping the finished ones), without waiting."""
        self._reap_ready()
        return self._inflight == 0

    def _run(self) -> None:
        failed = False
        while (step := self._todo.get()) is not None:
            error = None
            if not failed:
                try:
                    with _SLOTS:
                        hash_and_write(self._fd, self._hash, step)
                except BaseException as exc:  # handed to the loop side
                    error, failed = exc, True
            self._done.put((step, error))

    def _reap(self, step: memoryview, error: BaseException | None) -> None:
        """Account for one finished step (in the loop thread or in a hop the loop awaits)."""
        self._inflight -= 1
        self.queued_bytes -= step.nbytes
        if error is not None:
            self.error = self.error or error
        elif self.error is None:
            self.done_bytes += step.nbytes
        base = step.obj
        step.release()
        if isinstance(base, bytearray):  # one of ours: bytes callers gave are never copied
            self._free.append(base)

    def _reap_blocking(self) -> None:
        self._reap(*self._done.get())

    def _reap_ready(self) -> None:
        while True:
            try:
                done = self._done.get_nowait()
            except queue.Empty:
                return
            self._reap(*done)

    async def _wait(self, limit: int) -> None:
        """Wait until at most ``limit`` steps are in flight; a cancel never loses a step."""
        self._reap_ready()
        if self._inflight <= limit:
            await anyio.lowlevel.checkpoint()  # a wait that did not wait still yields
        while self._inflight > limit:
            await anyio.to_thread.run_sync(self._reap_blocking)
            # A cancel that came while the hop waited is honoured before anything more
            # is accepted (the hop itself cannot be abandoned: it reaps a step).
            await anyio.lowlevel.checkpoint_if_cancelled()

    async def room(self) -> None:
        """Wait until one more step may be put."""
        await self._wait(DEPTH - 1)

    def put(self, data: memoryview, size: int) -> None:
        """Queue ``data`` as one step (after :meth:`room`; ``size``: the pump's buffer size)."""
        if isinstance(data.obj, bytes):
            step = data
        else:
            buf = self._free.pop() if self._free else bytearray(size)
            step = memoryview(buf)[: data.nbytes]
            step[:] = data
        self._inflight += 1
        self.queued_bytes += step.nbytes
        self._todo.put(step)

    async def drain(self) -> None:
        """Wait until every step put so far is reaped."""
        await self._wait(0)

    def drain_sync(self) -> None:
        """:meth:`drain` for a worker thread, or for the loop when only ms are left to wait."""
        while self._inflight:
            self._reap_blocking()

    def stop(self) -> None:
        """End the thread once its queue is empty; the pump cannot be used afterwards."""
        self._todo.put(None)
