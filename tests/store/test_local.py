"""The file backend's contract: reading, layout, walk, delete, writing and committing
(LocalContentStore + LocalWriter: CS-1..3, CS-6, ING-1..9, LAY, DIG-4).

Every async test runs on asyncio and trio (conftest). Status, abort, the commit lock and error
translation are in test_local_ingest.py; crash and cross-process tests in
test_local_process.py; cancellation tests in test_local_cancel.py.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import stat
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castar.store import ingest
from castar.store.digest import Digest, compute
from castar.store.errors import (
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    SizeMismatch,
    Unavailable,
)
from castar.store.ingest import LocalContentStore

MiB = 1 << 20


def blob(n: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-enough bytes."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(f"{seed}:{counter}".encode()).digest() * 16
        counter += 1
    return bytes(out[:n])


def h(data: bytes, alg: str = "sha256") -> Digest:
    return compute(data, alg)


async def put(store: LocalContentStore, data: bytes, ref: str = "put") -> Digest:
    w = await store.open_writer(ref)
    await w.write(data)
    result = await w.commit(len(data), h(data))
    assert not result.existed
    return result.digest


# --- reading: stat, read, read_at (CS-1, CS-2) -------------------------------------------


async def test_committed_blob_reads_back_by_stat_read_and_read_at(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    data = blob(3 * MiB + 17)
    d = await put(store, data)
    assert await store.stat(d) == len(data)
    assert b"".join([c async for c in store.read(d)]) == data
    assert await store.read_at(d, 5, 10) == data[5:15]


@pytest.mark.parametrize(
    ("offset", "length"),
    [(0, None), (1, None), (MiB - 1, 2), (MiB, MiB), (100, 0), (2 * MiB, None), (3 * MiB, 10)],
)
async def test_read_returns_the_requested_range_and_is_short_past_the_end(
    tmp_path: Path, offset: int, length: int | None
) -> None:
    # CS-2: reading past the end is short data, never an error for a valid offset.
    store = LocalContentStore(tmp_path)
    data = blob(2 * MiB + 5)
    d = await put(store, data)
    end = None if length is None else offset + length
    got = b"".join([c async for c in store.read(d, offset=offset, length=length)])
    assert got == data[offset:end]


async def test_read_at_past_the_end_is_short_or_empty(tmp_path: Path) -> None:
    # CS-2
    store = LocalContentStore(tmp_path)
    d = await put(store, b"0123456789")
    assert await store.read_at(d, 8, 100) == b"89"
    assert await store.read_at(d, 10, 5) == b""
    assert await store.read_at(d, 1000, 5) == b""


async def test_read_of_8_mib_yields_bounded_chunks_with_one_hop_per_mib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # CS-2: never load the whole blob; io-hops: one thread hop per >= 1 MiB.
    store = LocalContentStore(tmp_path)
    data = blob(8 * MiB)
    d = await put(store, data)
    hops = 0
    real = anyio.to_thread.run_sync

    async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
        nonlocal hops
        hops += 1
        return await real(*args, **kwargs)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counting)
    sizes = []
    digest = hashlib.sha256()
    async for chunk in store.read(d, chunk_size=64 << 10):
        sizes.append(len(chunk))
        digest.update(chunk)
    assert max(sizes) == 64 << 10
    assert sum(sizes) == len(data)
    assert f"sha256:{digest.hexdigest()}" == d
    assert hops <= 9, hops  # 8 MiB / 1 MiB per hop (+ the EOF probe at most)

    hops = 0
    sizes = [len(c) async for c in store.read(d, chunk_size=3 * MiB)]
    assert sizes == [3 * MiB, 3 * MiB, 2 * MiB]
    assert hops == 3


async def test_read_of_a_missing_blob_raises_not_found_on_first_iteration(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    d = h(b"absent")
    it = store.read(d)  # no I/O yet
    with pytest.raises(NotFound, match=f"^content digest {d}: not found$"):
        await it.__anext__()


async def test_read_stopped_early_can_be_closed(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    d = await put(store, blob(3 * MiB))
    it = store.read(d)
    assert len(await it.__anext__()) == MiB
    await it.aclose()  # type: ignore[attr-defined]
    with pytest.raises(StopAsyncIteration):
        await it.__anext__()


@pytest.mark.parametrize("bad", [(-1, None, 1), (0, -1, 1), (0, None, 0)])
async def test_read_rejects_negative_ranges(
    tmp_path: Path, bad: tuple[int, int | None, int]
) -> None:
    store = LocalContentStore(tmp_path)
    offset, length, chunk = bad
    with pytest.raises(InvalidArgument):
        store.read(h(b"x"), offset=offset, length=length, chunk_size=chunk)
    with pytest.raises(InvalidArgument):
        await store.read_at(h(b"x"), -1, 1)


async def test_stat_of_missing_blob_is_not_found_naming_the_digest(tmp_path: Path) -> None:
    # CS-1 wording
    store = LocalContentStore(tmp_path)
    d = h(b"nope")
    with pytest.raises(NotFound) as err:
        await store.stat(d)
    assert str(err.value) == f"content digest {d}: not found"


@pytest.mark.parametrize("bad", ["sha256:abc", "nocolon", "sha256:" + "A" * 64, "md5:" + "a" * 32])
async def test_bad_digest_is_invalid_argument_with_dig4_text(tmp_path: Path, bad: str) -> None:
    # DIG-4: "cannot calculate blob path from invalid digest: <msg>: invalid argument"
    store = LocalContentStore(tmp_path)
    with pytest.raises(InvalidArgument) as err:
        await store.stat(bad)
    assert str(err.value).startswith("cannot calculate blob path from invalid digest: ")
    assert str(err.value).endswith(": invalid argument")
    with pytest.raises(InvalidArgument):
        store.blob_path(bad)


# --- layout (LAY-1, LAY-2, DIG-6) ---------------------------------------------------------


async def test_layout_blob_is_read_only_at_its_address(tmp_path: Path) -> None:
    # LAY-1, DIG-6
    store = LocalContentStore(tmp_path)
    d = await put(store, b"layout")
    path = tmp_path / "blobs" / "sha256" / d.encoded
    assert store.blob_path(d) == path
    assert path.read_bytes() == b"layout"
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o755 == 0o755
    assert not os.listdir(tmp_path / "ingest")  # ingest removed on commit


async def test_layout_ingest_dir_holds_ref_data_times_total_expected_and_lock(
    tmp_path: Path,
) -> None:
    # LAY-1 (+ castar's "expected"): ingest/<sha256 of ref>/{ref,data,startedat,updatedat,total}
    store = LocalContentStore(tmp_path)
    expected = h(b"abc")
    async with await store.open_writer("my ref", total=3, expected=expected) as w:
        await w.write(b"ab")
    path = tmp_path / "ingest" / hashlib.sha256(b"my ref").hexdigest()
    names = set(os.listdir(path))
    assert {"ref", "data", "startedat", "updatedat", "total", "expected", "lock"} <= names
    assert (path / "ref").read_text() == "my ref"
    assert (path / "data").read_bytes() == b"ab"
    assert (path / "total").read_text() == "3"
    assert (path / "expected").read_text() == expected
    rfc3339_nano = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z"
    assert re.fullmatch(rfc3339_nano, (path / "startedat").read_text())
    assert re.fullmatch(rfc3339_nano, (path / "updatedat").read_text())
    assert not [n for n in names if n.endswith(".tmp")]  # tmp + rename leaves no tmp file


async def test_ingest_without_total_has_no_total_file(tmp_path: Path) -> None:
    # LAY-1: total only if > 0
    store = LocalContentStore(tmp_path)
    async with await store.open_writer("r"):
        pass
    assert not (tmp_path / "ingest" / hashlib.sha256(b"r").hexdigest() / "total").exists()


async def test_walk_is_ascending_by_digest_and_skips_strays(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # CS-3 order, LAY-2 strays
    store = LocalContentStore(tmp_path)
    expected = []
    for i in range(6):
        data = blob(100 + i, seed=i)
        expected.append((await put(store, data, ref=f"r{i}"), len(data)))
    w = await store.open_writer("big", expected=h(b"five12", "sha512"))
    await w.write(b"five12")
    expected.append(((await w.commit(6, h(b"five12", "sha512"))).digest, 6))
    (tmp_path / "blobs" / "md5").mkdir()
    (tmp_path / "blobs" / "md5" / ("a" * 32)).write_bytes(b"x")
    (tmp_path / "blobs" / "sha256" / "not-a-digest").write_bytes(b"x")
    (tmp_path / "blobs" / "sha256" / ("A" * 64)).write_bytes(b"x")
    (tmp_path / "blobs" / "sha256" / ("b" * 64)).mkdir()
    with caplog.at_level("WARNING", logger="castar.store.blobs"):
        walked = await store.walk()
    assert "not-a-digest" in caplog.text  # LAY-2: logged, not fatal
    assert walked == sorted(expected, key=lambda item: str(item[0]))
    assert [str(d) for d, _ in walked] == sorted(str(d) for d, _ in walked)
    assert walked[-1][0].algorithm == "sha512"


async def test_walk_of_an_empty_store_is_empty(tmp_path: Path) -> None:
    assert await LocalContentStore(tmp_path / "fresh").walk() == []


async def test_delete_removes_the_blob_and_then_reports_not_found(tmp_path: Path) -> None:
    # CS-6 file part
    store = LocalContentStore(tmp_path)
    d = await put(store, b"delete me")
    await store.delete(d)
    assert await store.walk() == []
    with pytest.raises(NotFound, match="content digest"):
        await store.stat(d)
    with pytest.raises(NotFound, match=f"content digest {d}: not found"):
        await store.delete(d)


# --- writers: TV-41..44 and ING rules -----------------------------------------------------


async def test_tv41_empty_ref_is_invalid_argument(tmp_path: Path) -> None:
    # ING-1
    with pytest.raises(InvalidArgument) as err:
        await LocalContentStore(tmp_path).open_writer("")
    assert str(err.value) == "ref must not be empty: invalid argument"


async def test_tv42_held_ref_is_unavailable_then_resumes_at_offset_after_close(
    tmp_path: Path,
) -> None:
    # ING-3, ING-5
    store = LocalContentStore(tmp_path)
    first = await store.open_writer("a")
    await first.write(b"hello")
    with pytest.raises(Unavailable) as err:
        await store.open_writer("a")
    assert re.fullmatch(
        r"ref a locked for [0-9.]+(ns|µs|ms|s|m|h)[0-9.msh]* \(since \d{4}-\d\d-\d\dT[0-9:.]+Z\)"
        r": unavailable",
        str(err.value),
    ), str(err.value)
    await first.close()
    second = await store.open_writer("a")
    assert second.offset == 5
    assert second.digest() == h(b"hello")
    await second.write(b" world")
    result = await second.commit(11, h(b"hello world"))
    assert result.digest == h(b"hello world")
    assert (tmp_path / "blobs" / "sha256" / result.digest.encoded).read_bytes() == b"hello world"


async def test_tv43_size_then_digest_mismatch_then_ok_then_closed(tmp_path: Path) -> None:
    # ING-8 steps 1, 2, 4
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("tv43")
    await w.write(b"hello")
    with pytest.raises(SizeMismatch) as size_err:
        await w.commit(6, "")
    assert isinstance(size_err.value, FailedPrecondition)
    assert str(size_err.value) == "unexpected commit size 5, expected 6: failed precondition"
    assert (size_err.value.expected, size_err.value.actual) == (6, 5)

    w = await store.open_writer("tv43")  # the failed commit released the lock (ING-3)
    assert w.offset == 5  # and kept the data, as containerd does
    await w.truncate(0)
    await w.write(b"hello")
    with pytest.raises(DigestMismatch) as dig_err:
        await w.commit(5, h(b"world"))
    assert str(dig_err.value) == (
        f"unexpected commit digest {h(b'hello')}, expected {h(b'world')}: failed precondition"
    )
    assert (dig_err.value.expected, dig_err.value.actual) == (h(b"world"), h(b"hello"))

    w = await store.open_writer("tv43")
    result = await w.commit(5, h(b"hello"))
    assert (result.digest, result.size, result.existed) == (h(b"hello"), 5, False)
    with pytest.raises(FailedPrecondition) as closed:
        await w.commit(5, h(b"hello"))
    assert str(closed.value) == "cannot commit on closed writer: failed precondition"


async def test_commit_checks_size_before_digest(tmp_path: Path) -> None:
    # ING-8: when both are wrong, the size is reported (step 2 before step 4)
    w = await LocalContentStore(tmp_path).open_writer("both-wrong")
    await w.write(b"hello")
    with pytest.raises(SizeMismatch):
        await w.commit(6, h(b"world"))


async def test_commit_fsyncs_data_then_renames_read_only_then_fsyncs_the_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ING-8.7, commit-order: nothing is visible at the blob address before the data is
    # verified and durable; the rename is made durable by fsyncing the blob directory.
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("order")
    await w.write(b"hello")
    target = store.blob_path(h(b"hello"))
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
        events.append(f"fsync {'dir' if is_dir else 'file'}, blob visible: {target.exists()}")
        real_fsync(fd)

    def rename(src: str | Path, dst: str | Path) -> None:
        if Path(dst).name.startswith(".trash-"):  # the ingest's removal after the commit
            return real_rename(src, dst)
        mode = stat.S_IMODE(os.stat(src).st_mode)
        events.append(
            f"rename {oct(mode)} to {Path(dst) == target}, blob visible: {target.exists()}"
        )
        real_rename(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    await w.commit(5, h(b"hello"))
    assert events == [
        "fsync file, blob visible: False",
        "rename 0o444 to True, blob visible: False",
        "fsync dir, blob visible: True",
    ]


async def test_tv44_second_ref_with_same_bytes_reports_existed_and_removes_its_ingest(
    tmp_path: Path,
) -> None:
    # ING-8.6 file part, ING-12
    store = LocalContentStore(tmp_path)
    one = await store.open_writer("one")
    two = await store.open_writer("two")
    await one.write(b"same")
    await two.write(b"same")
    assert not (await one.commit(4, h(b"same"))).existed
    result = await two.commit(4, h(b"same"))
    assert result.existed
    assert result.digest == h(b"same")
    with pytest.raises(NotFound):
        await store.ingest_status("two")
    assert await store.list_ingests() == []
    assert await store.walk() == [(h(b"same"), 4)]


async def test_commit_without_checks_accepts_any_size_and_digest(tmp_path: Path) -> None:
    # ING-8: size <= 0 and no expected digest skip the checks
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("free")
    await w.write(b"abc")
    result = await w.commit(0, None)
    assert (result.digest, result.size) == (h(b"abc"), 3)


async def test_empty_blob_commits_to_the_empty_digest(tmp_path: Path) -> None:
    # DIG-5 vector
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("empty")
    result = await w.commit(
        0, "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    assert result.size == 0
    assert await store.stat(result.digest) == 0


async def test_write_in_many_small_pieces_gives_the_same_digest(tmp_path: Path) -> None:
    # hashing while writing is split-invariant; pieces cross the 1 MiB coalescing boundary
    store = LocalContentStore(tmp_path)
    data = blob(2 * MiB + 333)
    w = await store.open_writer("pieces")
    pos = 0
    sizes = [1, 7, 4096, 65536, MiB - 3, 1, 2 * MiB]
    i = 0
    while pos < len(data):
        n = sizes[i % len(sizes)]
        await w.write(memoryview(data)[pos : pos + n])
        pos += n
        i += 1
        assert w.offset == min(pos, len(data))
    assert w.digest() == h(data)
    result = await w.commit(len(data), h(data))
    assert store.blob_path(result.digest).read_bytes() == data


@settings(max_examples=25, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=4096).map(lambda b: b * 600),
    cuts=st.lists(st.integers(min_value=0, max_value=2_500_000), max_size=12),
)
def test_write_sync_is_split_invariant(
    tmp_path_factory: pytest.TempPathFactory, data: bytes, cuts: list[int]
) -> None:
    # write_sync (the importer's path) coalesces exactly like write: any split, same bytes
    root = tmp_path_factory.mktemp("split")
    w = ingest.open_ingest(root, "split")
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    for a, b in itertools.pairwise(bounds):
        w.write_sync(data[a:b])
    assert w.offset == len(data)
    assert w.digest() == h(data)
    w._release_sync(flush=True)
    assert (ingest.ingest_dir(root, "split") / "data").read_bytes() == data


async def test_write_accepts_bytearray_and_non_byte_memoryviews(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("views")
    await w.write(bytearray(b"ab"))
    await w.write(memoryview(b"\x01\x00\x02\x00").cast("H"))
    w.write_sync(b"")
    assert w.offset == 6
    result = await w.commit(6, h(b"ab\x01\x00\x02\x00"))
    assert result.size == 6


async def test_resume_rehashes_existing_bytes_across_the_1_mib_boundary(tmp_path: Path) -> None:
    # ING-5: offset = bytes already written; the hash is rebuilt from them
    store = LocalContentStore(tmp_path)
    data = blob(3 * MiB + 1)
    w = await store.open_writer("resume", total=len(data))
    await w.write(data[: MiB + 500])
    await w.close()
    status = await store.ingest_status("resume")
    assert (status.offset, status.total) == (MiB + 500, len(data))
    w = await store.open_writer("resume", total=len(data))
    assert w.offset == MiB + 500
    await w.write(data[w.offset :])
    assert (await w.commit(len(data), h(data))).digest == h(data)


async def test_resume_with_a_different_total_restarts_at_zero(tmp_path: Path) -> None:
    # ING-5: a different non-zero total invalidates the old state
    store = LocalContentStore(tmp_path)
    async with await store.open_writer("t", total=10) as w:
        await w.write(b"12345")
    async with await store.open_writer("t", total=10) as w:
        assert w.offset == 5  # same total resumes
    async with await store.open_writer("t") as w:
        assert w.offset == 5  # no total resumes
    before = await store.ingest_status("t")
    async with await store.open_writer("t", total=20) as w:
        assert w.offset == 0
        assert w.digest() == h(b"")
    after = await store.ingest_status("t")
    assert (after.offset, after.total) == (0, 20)
    assert after.started_at >= before.started_at


async def test_ing7_writer_uses_the_expected_digests_algorithm(tmp_path: Path) -> None:
    # ING-7; the blob goes to blobs/sha512/<hex> (DIG-6)
    store = LocalContentStore(tmp_path)
    d512 = h(b"x512", "sha512")
    w = await store.open_writer("a512", expected=d512)
    await w.write(b"x512")
    assert w.digest() == d512
    await w.close()
    w = await store.open_writer("a512")  # resume keeps the stored expected algorithm
    assert w.digest() == d512
    result = await w.commit(4, d512)
    assert result.digest == d512
    assert (tmp_path / "blobs" / "sha512" / d512.encoded).read_bytes() == b"x512"


async def test_ing8_3_commit_rehashes_when_expected_uses_another_algorithm(tmp_path: Path) -> None:
    # ING-8 step 3
    store = LocalContentStore(tmp_path)
    data = blob(MiB + 10)
    w = await store.open_writer("rehash")
    await w.write(data)
    result = await w.commit(len(data), h(data, "sha512"))
    assert result.digest == h(data, "sha512")
    assert store.blob_path(result.digest).exists()
    assert not (tmp_path / "blobs" / "sha256").exists()


async def test_ing9_truncate_zero_resets_and_other_sizes_are_rejected(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("trunc")
    await w.write(blob(MiB + 1))
    await w.write(b"tail")
    with pytest.raises(InvalidArgument, match=r"^Truncate: unsupported size"):
        await w.truncate(3)
    await w.truncate(0)
    assert w.offset == 0
    await w.write(b"fresh")
    result = await w.commit(5, h(b"fresh"))
    assert store.blob_path(result.digest).read_bytes() == b"fresh"


async def test_write_and_truncate_after_close_fail_precondition(tmp_path: Path) -> None:
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("closed")
    await w.close()
    await w.close()  # idempotent
    with pytest.raises(FailedPrecondition, match="closed writer"):
        await w.write(b"x")
    with pytest.raises(FailedPrecondition, match="closed writer"):
        w.write_sync(b"x")
    with pytest.raises(FailedPrecondition, match="closed writer"):
        await w.truncate(0)
    with pytest.raises(FailedPrecondition, match="cannot commit on closed writer"):
        await w.commit(0, None)


async def test_commit_with_an_invalid_expected_digest_still_releases_the_ref(
    tmp_path: Path,
) -> None:
    # ING-3: the lock is released by commit even when it fails
    store = LocalContentStore(tmp_path)
    w = await store.open_writer("bad")
    await w.write(b"abc")
    with pytest.raises(InvalidArgument):
        await w.commit(3, "sha256:nothex")
    w = await store.open_writer("bad")
    assert w.offset == 3  # buffered bytes were flushed before release
    await w.close()
