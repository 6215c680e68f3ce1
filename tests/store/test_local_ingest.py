"""The file backend's ingests once open: status, listing, abort (ING-6, ING-10), the commit lock,
error translation (errors-seam) and recovery from a failed write or unreadable status files.

Opening, writing and committing are in test_local.py; crashes in test_local_process.py.
"""

from __future__ import annotations

import errno
import os
import random
from pathlib import Path

import anyio
import pytest

from castar.store import _pump, ingest, labels
from castar.store.digest import compute
from castar.store.errors import (
    CastarError,
    DataLoss,
    FailedPrecondition,
    NotFound,
    Unavailable,
    map_os_errors,
)
from castar.store.ingest import LocalContentStore

MiB = 1 << 20


# --- ingest status, list, abort (ING-6, ING-10) ---------------------------------------------


async def test_ingest_status_reports_offset_total_expected_and_times(tmp_path: Path) -> None:
    # ING-6
    store = LocalContentStore(tmp_path)
    d = compute(b"status")
    w = await store.open_writer("st", total=6, expected=d)
    await w.write(random.Random(0).randbytes(MiB + 2))  # 1 MiB queued for the pump
    status = await store.ingest_status("st")
    assert status.ref == "st"
    assert status.offset in (0, MiB)  # what reached the file: the pump's step or not yet
    assert (status.total, status.expected) == (6, d)
    assert status.started_at <= status.updated_at
    assert status.started_at.tzinfo is not None
    await w.close()
    assert (await store.ingest_status("st")).offset == MiB + 2  # close wrote all of it


async def test_ingest_status_of_unknown_ref_is_not_found(tmp_path: Path) -> None:
    # ING-6, ING-10 wording
    with pytest.raises(NotFound) as err:
        await LocalContentStore(tmp_path).ingest_status("ghost")
    assert str(err.value) == 'ingest ref "ghost": not found'


async def test_list_ingests_is_sorted_by_ref(tmp_path: Path) -> None:
    # ING-6 [castar]
    store = LocalContentStore(tmp_path)
    assert await store.list_ingests() == []
    for ref in ["zeta", "alpha", "mid"]:
        async with await store.open_writer(ref) as w:
            await w.write(ref.encode())
    (tmp_path / "ingest" / "half-created").mkdir()
    statuses = await store.list_ingests()
    assert [s.ref for s in statuses] == ["alpha", "mid", "zeta"]
    assert [s.offset for s in statuses] == [5, 3, 4]


async def test_abort_removes_the_ingest_and_unknown_ref_is_not_found(tmp_path: Path) -> None:
    # ING-10
    store = LocalContentStore(tmp_path)
    async with await store.open_writer("ab") as w:
        await w.write(b"data")
    assert await store.abort("ab") is True
    assert not ingest.ingest_dir(tmp_path, "ab").exists()
    with pytest.raises(NotFound) as err:
        await store.abort("ab")
    assert str(err.value) == 'ingest ref "ab": not found'
    w = await store.open_writer("ab")
    assert w.offset == 0  # a fresh ingest
    await w.close()


async def test_abort_if_unlocked_leaves_a_held_ref_alone(tmp_path: Path) -> None:
    # ING-10 + GC's if_unlocked
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("held")
    await w.write(b"x" * 10)
    assert await store.abort("held", if_unlocked=True) is False
    await w.close()
    assert (await store.ingest_status("held")).offset == 10
    assert await store.abort("held", if_unlocked=True) is True


async def test_abort_under_a_live_writer_makes_its_commit_not_found(tmp_path: Path) -> None:
    # ING-10: abort removes the ingest even under its writer (containerd); nothing is committed
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("doomed")
    await w.write(b"abc")
    assert await store.abort("doomed") is True
    with pytest.raises(NotFound, match='ingest ref "doomed"'):
        await w.commit(3, compute(b"abc"))
    assert await store.walk() == []
    w = await store.open_writer("doomed")  # the ref is free again
    assert w.offset == 0
    await w.close()


# --- commit lock ---------------------------------------------------------------------------


async def test_commit_lock_shared_holders_coexist_and_exclusive_waits_for_them(
    tmp_path: Path,
) -> None:
    store = LocalContentStore(tmp_path)
    order: list[str] = []
    async with store.commit_lock(exclusive=False), store.commit_lock(exclusive=False):
        order.append("two shared")
        with anyio.move_on_after(0.1) as scope:
            async with store.commit_lock(exclusive=True):
                order.append("exclusive too early")
        assert scope.cancelled_caught  # waiting is cancellable
    async with store.commit_lock(exclusive=True):
        order.append("exclusive")
        with anyio.move_on_after(0.1) as scope:
            async with store.commit_lock(exclusive=False):
                order.append("shared too early")
        assert scope.cancelled_caught
    assert order == ["two shared", "exclusive"]


async def test_commit_lock_waiter_gets_it_when_the_holder_leaves(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    got = anyio.Event()
    release = anyio.Event()

    async def waiter() -> None:
        async with store.commit_lock(exclusive=False):
            got.set()

    async with anyio.create_task_group() as tg:
        async with store.commit_lock(exclusive=True):
            tg.start_soon(waiter)
            await anyio.wait_all_tasks_blocked()  # the waiter is at the lock
            assert not got.is_set()
            release.set()
        with anyio.fail_after(5):
            await got.wait()


# --- error translation and formatting ------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (errno.ENOENT, NotFound),
        (errno.EIO, DataLoss),
        (errno.ENOSPC, Unavailable),
        (errno.EACCES, FailedPrecondition),
        (errno.EXDEV, CastarError),
    ],
)
def test_map_os_errors_translates_once_with_context(code: int, kind: type[CastarError]) -> None:
    # errors-seam: one translation seam, the path/digest named in the message
    with pytest.raises(kind) as err, map_os_errors("content digest sha256:x"):
        raise OSError(code, os.strerror(code), "/some/path")
    assert type(err.value) is kind
    assert str(err.value).startswith("content digest sha256:x")
    assert isinstance(err.value.__cause__, OSError)
    if kind is not NotFound:
        assert "/some/path" in str(err.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.0, "0s"), (0.0015, "1.5ms"), (1.5, "1.5s"), (61.0, "1m1s"), (3723.25, "1h2m3.25s")],
)
def test_lock_duration_reads_like_go(seconds: float, text: str) -> None:
    # ING-3 "locked for <duration>" (Go's Duration.String)
    assert ingest.go_duration(seconds) == text


def test_rfc3339_nano_round_trips_to_microseconds() -> None:
    text = labels.format_time(1_700_000_000_123_456_789)
    assert text == "2023-11-14T22:13:20.123456789Z"
    parsed = labels.parse_expire(text)
    assert parsed is not None
    assert parsed.timestamp() == pytest.approx(1_700_000_000.123456, abs=1e-6)


async def test_failed_write_breaks_the_writer_until_truncate_or_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A disk error mid-write (ENOSPC -> Unavailable) leaves the file and the running hash
    # out of step: further writes refuse, truncate(0) starts over, and reopening re-hashes
    # exactly what reached the disk (ING-5).
    store = LocalContentStore(tmp_path)
    data = random.Random(0).randbytes(2 * MiB)
    real = _pump.write_all

    def half_then_enospc(fd: int, part: object) -> None:
        view = memoryview(part)  # type: ignore[arg-type]
        real(fd, view[: len(view) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    w = await store.open_writer("full")
    await w.write(data[:MiB])
    w.digest()  # waits for the pump: the first MiB is on disk
    monkeypatch.setattr(_pump, "write_all", half_then_enospc)
    await w.write(data[MiB:])  # queued: the pump's step fails behind the caller's back
    with pytest.raises(Unavailable, match=r'ingest ref "full": writing .*No space left'):
        w.digest()  # the step's error surfaces at the next call that waits for the pump
    monkeypatch.undo()
    with pytest.raises(FailedPrecondition, match="earlier write failed"):
        await w.write(b"more")
    await w.close()
    w = await store.open_writer("full")
    assert w.offset == MiB + MiB // 2
    assert w.digest() == compute(data[: w.offset])
    await w.write(data[w.offset :])
    assert (await w.commit(len(data), compute(data))).size == len(data)

    w = await store.open_writer("full2")
    monkeypatch.setattr(_pump, "write_all", half_then_enospc)
    await w.write(data)
    with pytest.raises(Unavailable):
        await w.commit(len(data), compute(data))  # commit raises a queued step's failure
    monkeypatch.undo()
    w = await store.open_writer("full2")  # a failed commit released the ref: resume
    await w.truncate(0)
    await w.write(b"after")
    assert (await w.commit(5, compute(b"after"))).digest == compute(b"after")


async def test_corrupt_ingest_status_is_data_loss_and_reopening_starts_over(
    tmp_path: Path,
) -> None:
    # a torn or foreign status file must not wedge the ref: status says DataLoss, list skips
    # it, open_writer restarts the ingest at offset 0
    store = LocalContentStore(tmp_path)
    async with await store.open_writer("bad", total=9) as w:
        await w.write(b"partial")
    path = ingest.ingest_dir(tmp_path, "bad")
    (path / "total").write_text("nine")
    with pytest.raises(DataLoss, match=r'^ingest ref "bad": unreadable status'):
        await store.ingest_status("bad")
    assert await store.list_ingests() == []
    async with await store.open_writer("bad", total=9) as w:
        assert w.offset == 0
    assert (await store.ingest_status("bad")).total == 9
