"""Fault cases: a full disk, a read-only root, a failing fsync, symlinked store parts, ``-o``
aimed at the store. Each returns a ``Tally`` whose findings are the broken rules.
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path
from unittest import mock

import anyio

from castar import open_store
from castar.store import blobs
from castar.store.errors import CastarError
from tests.stress import _harness as h


def _free(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _names_space(run: h.Run) -> bool:
    return "space" in run.error or "disk is full" in run.error


def enospc_load(work: Path, room: int) -> h.Tally:
    """A load too big for a ``room``-byte tmpfs root, from a file and from a pipe.

    Members over 1 MiB meet the free-space check (LOAD-7); small ones fill the disk (ENOSPC).
    """
    tally = h.Tally("ENOSPC mid-load")
    keep = work / "keep.tar"
    h.archive(keep, h.KEEP, 1 << 20)
    victims = {"big": work / "victim-big.tar", "small": work / "victim-small.tar"}
    h.archive(victims["big"], h.VICTIM, 2 * room, seed=1)
    small = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/ppc64le")  # 1 MiB layers
    h.archive(victims["small"], h.VICTIM, 2 * room, small, seed=1)
    for kind, victim in victims.items():
        _enospc_load(work / kind, tally, keep, victim, room)
    return tally


def _enospc_load(work: Path, tally: h.Tally, keep: Path, victim: Path, room: int) -> None:
    verdicts = set()
    for pipe in (False, True):
        with h.tmpfs(work / f"small{pipe:d}", room) as mnt:
            root = mnt / "root"
            h.must(h.castar(root, "load", "-q", "-i", str(keep)), "load", tally)
            before = _free(mnt)
            args = ("load", "-q") if pipe else ("load", "-q", "-i", str(victim))
            run = h.castar(root, *args, pipe=victim if pipe else None)
            tally.runs += 1
            verdicts.add(run.rc)
            if run.rc != 1 or not _names_space(run):
                tally.finding(f"a load on a full disk: want exit 1 naming it, {run.describe()}")
            if _free(mnt) < before - (1 << 20):
                tally.finding("the space of a failed load is not given back when it returns")
            tally.add(h.audit(root, [h.KEEP]))
    if len(verdicts) > 1:
        tally.finding(f"file and pipe disagree on a full disk: exits {sorted(verdicts)}")


def enospc_save(work: Path, room: int) -> h.Tally:
    """A save into a ``room``-byte tmpfs: exit 1, nothing left there, the store intact."""
    tally = h.Tally("ENOSPC mid-save")
    root, src = work / "root", work / "a.tar"
    h.archive(src, h.KEEP, 2 * room)
    h.must(h.castar(root, "load", "-q", "-i", str(src)), "load", tally)
    with h.tmpfs(work / "small", room) as mnt:
        run = h.castar(root, "save", "-q", "keep", "-o", str(mnt / "out.tar"))
        tally.runs += 1
        if run.rc != 1 or not _names_space(run):
            tally.finding(f"a save to a full disk: want exit 1 naming it, {run.describe()}")
        if list(mnt.iterdir()):
            tally.finding("a failed save leaves a file behind")
    tally.add(h.audit(root, [h.KEEP]))
    return tally


def read_only(work: Path) -> h.Tally:
    """Reads work on a read-only root; a write fails saying so (exit 5); nothing changes."""
    tally = h.Tally("read-only root")
    keep, victim = work / "keep.tar", work / "victim.tar"
    h.archive(keep, h.KEEP, 1 << 20)
    h.archive(victim, h.VICTIM, 1 << 20, seed=1)
    with h.tmpfs(work / "ro", 64 << 20) as mnt:
        root = mnt / "root"
        h.must(h.castar(root, "load", "-q", "-i", str(keep)), "load", tally)
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        try:
            out = work / "out.tar"
            for args in (
                ("images",),
                ("inspect", "keep"),
                ("verify",),
                ("save", "keep", "-o", str(out)),
            ):
                tally.runs += 1
                h.must(h.castar(root, *args), f"{args[0]} on a read-only root", tally)
            run = h.castar(root, "load", "-q", "-i", str(victim))
            tally.runs += 1
            if run.rc != 5 or "read-only" not in run.error:
                tally.finding(
                    f"a load into a read-only root: want exit 5 'read-only', {run.describe()}"
                )
        finally:
            subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        tally.add(h.audit(root, [h.KEEP]))
    return tally


def failing_fsync(work: Path) -> h.Tally:
    """The one sync of a load fails (EIO): a castar error, no record, a retry loads it."""
    tally = h.Tally("fsync fails")
    keep, victim, root = work / "keep.tar", work / "victim.tar", work / "root"
    h.archive(keep, h.KEEP, 1 << 20)
    h.archive(victim, h.VICTIM, 4 << 20, seed=1)

    def fail(fd: int) -> None:
        raise OSError(errno.EIO, "injected fsync failure")

    async def go() -> None:
        async with open_store(root) as s:
            await s.load(keep)
            with mock.patch.object(blobs.os, "fdatasync", fail):
                try:
                    await s.load(victim)
                except CastarError:
                    pass
                except Exception as exc:
                    tally.finding(f"a failed fsync raises {type(exc).__name__}, not a castar error")
                else:
                    tally.finding("a load whose fsync failed succeeded")
            if [i.name for i in await s.images.list()] != [h.KEEP]:
                tally.finding("a load whose fsync failed recorded its image")
            await s.load(victim)

    tally.runs += 1
    anyio.run(go)
    tally.add(h.audit(root, [h.KEEP, h.VICTIM]))
    return tally


def symlinked_parts(work: Path) -> h.Tally:
    """A store whose ``blobs/``, ``ingest/`` or ``meta.db`` is a symlink: nothing written there."""
    tally = h.Tally("store part is a symlink")
    src = work / "a.tar"
    h.archive(src, h.KEEP, 1 << 20)
    for part in ("blobs", "ingest", "meta.db"):
        root, elsewhere = work / f"root-{part}", work / f"elsewhere-{part}"
        root.mkdir()
        if part == "meta.db":
            elsewhere.mkdir()
            (root / part).symlink_to(elsewhere / "meta.db")
        else:
            elsewhere.mkdir()
            (root / part).symlink_to(elsewhere)
        run = h.castar(root, "load", "-q", "-i", str(src))
        tally.runs += 1
        if any(elsewhere.iterdir()):
            tally.finding(f"a load wrote through the symlink {part} ({run.describe()})")
        elif run.rc != 0 and (run.rc != 4 or "symlink" not in run.error):
            tally.finding(f"a symlinked {part}: want a clear refusal, {run.describe()}")
    return tally


def output_into_store(work: Path) -> h.Tally:
    """``save -o`` at the store's own files is refused (exit 4) and the store stays whole."""
    tally = h.Tally("save -o into the store")
    root, src = work / "root", work / "a.tar"
    image = h.archive(src, h.KEEP, 1 << 20)
    h.must(h.castar(root, "load", "-q", "-i", str(src)), "load", tally)
    blob = root / "blobs" / "sha256" / image.blobs[0].digest.encoded
    link = work / "link.tar"
    link.symlink_to(root / "meta.db")
    for target in (root / "meta.db", blob, root / "new.tar", link):
        run = h.castar(root, "save", "-q", "keep", "-o", str(target))
        tally.runs += 1
        if run.rc != 4:
            tally.finding(f"save -o {target.name} in the store: want exit 4, {run.describe()}")
    tally.add(h.audit(root, [h.KEEP]))
    return tally
