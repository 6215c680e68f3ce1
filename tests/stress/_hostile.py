"""Hostile archives as small generators, and the case that loads one from a file and a pipe."""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from pathlib import Path

import zstandard

from castar.engine import synth
from castar.engine.tarcodec import END_OF_ARCHIVE, LNKTYPE, SYMTYPE, encode_header, padding
from tests.stress import _harness as h

_LAYOUT = [
    ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'),
    ("index.json", b'{"schemaVersion":2,"manifests":[]}'),
]


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    return b"".join(encode_header(n, len(d)) + d + padding(len(d)) for n, d in members)


def bomb(path: Path, size: int) -> None:
    """zstd of one member of ``size`` zeros named like a blob (the 21 GiB one, smaller)."""
    with path.open("wb") as f, zstandard.ZstdCompressor().stream_writer(f) as z:
        z.write(_tar(_LAYOUT) + encode_header(f"blobs/sha256/{'0' * 64}", size))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            z.write(zeros)
        z.write(padding(size) + END_OF_ARCHIVE)


def traversal(path: Path) -> None:
    names = ("../../castar-evil", "blobs/sha256/../../../castar-evil", "/tmp/castar-evil-abs")
    path.write_bytes(_tar([*_LAYOUT, *((n, b"evil") for n in names)]) + END_OF_ARCHIVE)


def links(path: Path) -> None:
    """A symlink and a hard link named as the blobs of files outside the archive."""
    out = _tar(_LAYOUT)
    for target, kind in (("/etc/hostname", SYMTYPE), ("/etc/passwd", LNKTYPE)):
        digest = hashlib.sha256(Path(target).read_bytes()).hexdigest()
        out += encode_header(f"blobs/sha256/{digest}", 0, type=kind, linkname=target)
    path.write_bytes(out + END_OF_ARCHIVE)


def huge_field(path: Path) -> None:
    """A member whose size field says a petabyte, then 1 KiB and the end."""
    head = encode_header(f"blobs/sha256/{'1' * 64}", 10**15)
    path.write_bytes(_tar(_LAYOUT) + head + bytes(1024) + END_OF_ARCHIVE)


def pax_bomb(path: Path) -> None:
    """An extended header announcing a GiB of records."""
    head = encode_header("././@PaxHeader", 1 << 30, type=b"x")
    path.write_bytes(_tar(_LAYOUT) + head + b"99 path=" + bytes(64 << 10))


def deep_json(path: Path) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    path.write_bytes(
        _tar([_LAYOUT[0], ("index.json", deep), ("manifest.json", deep)]) + END_OF_ARCHIVE
    )


def many_members(path: Path, count: int) -> None:
    """``count`` empty members, then a valid image archive."""
    buf = io.BytesIO()
    synth.write(synth.SynthSpec("many", ("linux/amd64",), 1, 4096), buf)
    junk = b"".join(encode_header(f"junk/{i}", 0) for i in range(count))
    path.write_bytes(junk + buf.getvalue())


def duplicate_member(path: Path) -> None:
    """A valid archive with one layer member again after it, its bytes changed."""
    buf = io.BytesIO()
    image = synth.write(synth.SynthSpec("dup", ("linux/amd64",), 1, 4096), buf)
    layer = image.platforms[0].layers[0]
    buf.seek(0)
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=buf) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
        info = src.getmember(f"blobs/sha256/{layer.digest.encoded}")
        dst.addfile(info, io.BytesIO(bytes(info.size)))
    path.write_bytes(out.getvalue())


def unused_corrupt_member(path: Path) -> None:
    """A valid archive with an extra blob member, first, whose bytes are not the ones its name
    promises: no image needs it (IMP-4: a file never reads it, a pipe sets it aside)."""
    buf = io.BytesIO()
    synth.write(synth.SynthSpec("unused", ("linux/amd64",), 1, 4096), buf)
    buf.seek(0)
    out = io.BytesIO()
    with (
        tarfile.open(fileobj=buf) as src,
        tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as dst,
    ):
        body = b"not what the name promises"
        info = tarfile.TarInfo(f"blobs/sha256/{hashlib.sha256(body + b'!').hexdigest()}")
        info.size = len(body)
        dst.addfile(info, io.BytesIO(body))
        for m in src:
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
    path.write_bytes(out.getvalue())


def load_both_ways(work: Path, case: str, make: Callable[[Path], None], ok: set[int]) -> h.Tally:
    """Load the generated archive from a file and from a pipe into fresh roots; check both."""
    tally = h.Tally(case)
    path, roots = work / f"{case}.tar", work / "roots"
    make(path)
    verdicts = {}
    for pipe in (False, True):
        root = roots / ("pipe" if pipe else "file")
        args = ("load", "-q") if pipe else ("load", "-q", "-i", str(path))
        run = h.castar(root, *args, pipe=path if pipe else None, timeout=120, measure=True)
        tally.runs += 1
        verdicts[pipe] = run.rc
        if run.hung:
            tally.stuck += 1
            tally.details.append("the load hung")
        if run.rc not in ok:
            tally.finding(f"want exit {sorted(ok)}, {run.describe()}")
        if "Traceback" in run.err:
            tally.finding("a traceback")
        if run.maxrss > h.MAX_RSS:
            tally.finding(f"{run.maxrss >> 20} MiB of memory")
        if "No space left" in run.err:
            tally.finding("the load filled the disk (defect 10)")
        if root.exists():
            tally.add(h.audit(root, printed=h.printed_names(run)))
    if verdicts[False] != verdicts[True]:
        tally.finding(f"file and pipe disagree: exit {verdicts[False]} vs {verdicts[True]}")
    for text in h.outside_changes(roots, work, allowed=[path]):
        tally.finding(text)
    return tally


def cases(members: int, bomb_size: int) -> dict[str, tuple[Callable[[Path], None], set[int]]]:
    """Each hostile case: its generator and the exit codes that are right for it."""
    return {
        "bomb": (lambda p: bomb(p, bomb_size), {1, 4, 5}),
        "traversal": (traversal, {0, 3, 4}),
        "link": (links, {0, 3, 4}),
        "huge-field": (huge_field, {4}),
        "pax-bomb": (pax_bomb, {4}),
        "deep-json": (deep_json, {4}),
        "member-count": (lambda p: many_members(p, members), {0}),
        "duplicate-member": (duplicate_member, {0, 4, 5}),
        "unused-corrupt-member": (unused_corrupt_member, {0}),
    }
