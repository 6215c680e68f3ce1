"""Operation leases have owners (LEASE-8, ING-15): GC reaps what a dead process held."""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

import castar
from castar.engine import synth
from castar.store import _schema, _txn, open_root


def owner_dirs(root: Path) -> list[str]:
    return os.listdir(root / "owners") if (root / "owners").exists() else []


async def test_an_operation_lease_holds_its_owner_lock_until_it_ends(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with open_root(root) as store, open_root(root) as other:
        async with store.leases.hold() as lease:
            assert len(owner_dirs(root)) == 1
            blob = (await store.content.write_blob(b"held")).digest
            assert await other.explain(blob) == [f"lease {lease.id}", blob]
            report = await other.gc()  # the lock is per open file: this process counts too
            assert report.leases_removed == []
            assert [le.id for le in await other.leases.list()] == [lease.id]
        assert owner_dirs(root) == []
        assert await store.leases.list() == []


async def test_a_dead_owner_is_reported_by_a_dry_run_and_reaped_by_gc(tmp_path: Path) -> None:
    root = tmp_path / "root"
    async with open_root(root) as store:
        blob = (await store.content.write_blob(b"pinned")).digest
        (root / "owners" / "dead").mkdir(parents=True)
        (root / "owners" / "orphan").mkdir()  # locked, then killed before its lease was made
        (root / "owners" / "orphan" / "lock").touch()
        lease = await store.leases._db.write(
            _txn.lease_create, "L", {}, store.leases._clock(), "dead"
        )
        await store.leases.add_resource(lease.id, "content", blob)
        assert await store.explain(blob) == []  # what only a dead owner held is garbage
        report = await store.gc(dry_run=True)
        assert (report.leases_removed, report.removed) == (["L"], [blob])
        assert sorted(owner_dirs(root)) == ["dead", "orphan"]
        assert [le.id for le in await store.leases.list()] == ["L"]
        report = await store.gc()
        assert (report.leases_removed, report.removed) == (["L"], [blob])
        assert owner_dirs(root) == []
        assert await store.leases.list() == []


async def test_a_version_2_store_opens_and_its_leases_keep_their_expiry(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    conn = sqlite3.connect(root / "meta.db")
    for stmt in _schema.MIGRATIONS[0] + _schema.MIGRATIONS[1]:
        conn.execute(stmt)
    conn.execute("INSERT INTO leases VALUES ('old', '2026-01-01T00:00:00+00:00')")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()
    async with open_root(root) as store:
        assert (await store.gc()).leases_removed == []  # no owner: only an expiry ends it
        assert [le.id for le in await store.leases.list()] == ["old"]
    conn = sqlite3.connect(root / "meta.db")
    assert conn.execute("PRAGMA user_version").fetchone() == (len(_schema.MIGRATIONS),)
    conn.close()


def started(root: Path) -> bool:
    """An ingest with data: the load is streaming a blob."""
    return any((d / "data").exists() and (d / "data").stat().st_size for d in root.glob("ingest/*"))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_a_killed_load_leaves_nothing_once_gc_has_run(tmp_path: Path) -> None:
    root, archive = tmp_path / "root", tmp_path / "a.tar"
    spec = synth.SynthSpec(platforms=("linux/amd64",), layers=2, layer_size=4 << 20)
    buf = io.BytesIO()
    synth.write(spec, buf)
    data = buf.getvalue()
    archive.write_bytes(data)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    cmd = [sys.executable, "-m", "castar", "--root", str(root), "load"]
    with anyio.fail_after(120):  # a hang guard only
        async with await anyio.open_process(
            cmd, cwd=tmp_path, env=env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL
        ) as proc:
            assert proc.stdin is not None
            await proc.stdin.send(data[: len(data) // 2])  # the load now waits for the rest
            while not started(root):  # noqa: ASYNC110 (a file in another process, no event)
                await anyio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
        async with open_root(root) as store:
            (dead,) = await store.leases.list()
            assert len(await store.content.list_statuses()) >= 1
        async with castar.open_store(root) as s:
            (image,) = await s.load(archive)  # a later load succeeds beside the leftovers
            report = await s.gc()
            assert report.leases_removed == [dead.id]
            assert report.ingests_removed != []
            assert os.listdir(root / "ingest") == []
            assert owner_dirs(root) == []
            assert await s.leases.list() == []
            assert (await s.gc()).removed == []  # the loaded image keeps every blob it has
            assert [i.name for i in await s.images.list()] == [image.name]


async def test_a_new_lease_whose_owner_lock_a_gc_holds_takes_another_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # LEASE-8: a gc can take a new, unrecorded owner lock as an orphan's for its whole sweep;
    # the hold then takes a fresh id's lock (no gc listed it) instead of waiting on this one.
    import hashlib

    from castar.store import leases as leases_mod
    from castar.store.ingest import lock_dir

    ids = iter(["held-by-gc", "fresh"])
    monkeypatch.setattr(leases_mod, "random_lease_id", lambda: next(ids))
    async with open_root(tmp_path / "root") as root:
        taken = root.root / "owners" / hashlib.sha256(b"held-by-gc").hexdigest()
        fd = await anyio.to_thread.run_sync(lock_dir, taken, "gc")
        try:
            async with root.leases.hold() as lease:
                assert lease.id == "fresh"
        finally:
            os.close(fd)
