"""store/verify.py: re-hashing recorded blobs finds every missing and corrupt one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from castar.store import Root, open_root
from castar.store.digest import compute
from castar.store.errors import DataLoss
from castar.store.verify import verify

BIG = os.urandom(3 << 20)  # several 1 MiB reads


@pytest.fixture
async def store(tmp_path: Path):
    async with open_root(tmp_path / "root") as s:
        yield s


def _clobber(path: Path, data: bytes) -> None:
    path.chmod(0o644)  # committed blobs are read-only (ING-8)
    path.write_bytes(data)


async def test_intact_store_verifies_every_recorded_blob(store: Root) -> None:
    seen: list[tuple[int, int]] = []
    for data in (b"a", b"bb", BIG):
        await store.content.write_blob(data)
    report = await verify(store.content, progress=lambda done, total, d: seen.append((done, total)))
    assert report.ok
    assert report.checked == 3
    assert report.bytes_checked == len(BIG) + 3
    assert len(seen) == 3
    assert seen[-1] == (len(BIG) + 3, len(BIG) + 3)
    report.raise_for_problems()  # no problem, no error


async def test_flipped_byte_truncation_and_deletion_are_each_reported(store: Root) -> None:
    flipped = await store.content.write_blob(BIG)
    short = await store.content.write_blob(b"0123456789")
    gone = await store.content.write_blob(b"will vanish")
    fine = await store.content.write_blob(b"fine")
    bad = bytearray(BIG)
    bad[len(bad) // 2] ^= 1
    _clobber(store.content.path(flipped.digest), bytes(bad))
    _clobber(store.content.path(short.digest), b"01234")
    store.content.path(gone.digest).unlink()
    report = await verify(store.content)
    assert not report.ok
    assert report.checked == 4
    by_digest = {p.digest: p for p in report.problems}
    assert set(by_digest) == {flipped.digest, short.digest, gone.digest}
    assert fine.digest not in by_digest
    assert by_digest[flipped.digest].kind == "corrupt"
    assert str(compute(bytes(bad))) in by_digest[flipped.digest].detail
    assert by_digest[short.digest].kind == "corrupt"
    assert "holds 5 bytes, recorded 10" in by_digest[short.digest].detail
    assert by_digest[gone.digest].kind == "missing"
    assert [p.digest for p in report.problems] == sorted(by_digest)
    with pytest.raises(DataLoss, match=r"and 2 more"):
        report.raise_for_problems()
    doc = report.to_json()
    assert doc["ok"] is False
    assert {p["kind"] for p in doc["problems"]} == {"missing", "corrupt"}


async def test_roots_check_only_their_labelled_subtree_and_list_absent_children(
    store: Root,
) -> None:
    # GC-5 reference labels are the edges; a referenced digest never stored is absent
    # (a sparse image), not a problem.
    child = await store.content.write_blob(b"child")
    never = compute(b"never stored")
    parent = await store.content.write_blob(
        b"parent",
        labels={
            "containerd.io/gc.ref.content.l.0": child.digest,
            "containerd.io/gc.ref.content.l.1": never,
            "containerd.io/gc.ref.contentX": compute(b"not an edge"),
        },
    )
    other = await store.content.write_blob(b"unrelated")
    _clobber(store.content.path(other.digest), b"tampered")
    report = await verify(store.content, [parent.digest])
    assert report.ok
    assert report.checked == 2
    assert report.absent == (never,)
    _clobber(store.content.path(child.digest), b"CHILD")
    report = await verify(store.content, [parent.digest])
    assert [p.digest for p in report.problems] == [child.digest]


async def test_a_blob_replaced_by_a_directory_is_data_loss_and_writing_it_again_repairs_it(
    store: Root,
) -> None:
    blobs = {data: await store.content.write_blob(data) for data in (b"small", BIG)}  # CS-8
    for desc in blobs.values():
        path = store.content.path(desc.digest)
        path.unlink()
        path.mkdir()
        (path / "junk").write_bytes(b"x")
    report = await verify(store.content)
    assert {p.digest for p in report.problems if p.kind == "corrupt"} == {
        d.digest for d in blobs.values()
    }
    for desc in blobs.values():
        with pytest.raises(DataLoss, match="is not a file"):
            await store.content.read_at(desc.digest, 0, 10)
        with pytest.raises(DataLoss, match="is not a file"):
            async for _ in store.content.read(desc.digest):
                pass
    for data, desc in blobs.items():
        assert (await store.content.write_blob(data, digest=desc.digest)).digest == desc.digest
        assert await store.content.read_at(desc.digest, 0, len(data)) == data
    assert (await verify(store.content)).ok
