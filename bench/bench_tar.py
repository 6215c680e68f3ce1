"""Tar codec throughput: castar's TarDecoder/encode_header beside Python's tarfile.

Run: ``.venv/bin/python -m bench.bench_tar [--repeat N] [--big-mib M]``. Everything is
in memory: the archive bytes are built first, then fed to the decoder in 1 MiB slices
and read by ``tarfile`` in stream mode (``r|``) from a BytesIO, member data read in
1 MiB pieces. Prints medians and the castar/tarfile ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tarfile
import time
from typing import TYPE_CHECKING

from castar.engine.tarcodec import (
    END_OF_ARCHIVE,
    NEED_DATA,
    ArchiveEnd,
    Chunk,
    MemberStart,
    TarDecoder,
    encode_header,
    padding,
)

if TYPE_CHECKING:
    from collections.abc import Callable

CHUNK = 1 << 20


def build(members: list[tuple[str, int]], block: bytes) -> bytes:
    parts: list[bytes] = []
    for name, size in members:
        parts.append(encode_header(name, size))
        whole, rest = divmod(size, len(block))
        parts.extend([block] * whole)
        parts.append(block[:rest])
        parts.append(padding(size))
    parts.append(END_OF_ARCHIVE)
    return b"".join(parts)


def castar_decode(data: bytes, *, copy: bool = False) -> int:
    view = memoryview(data)
    sink = bytearray(CHUNK)
    dec = TarDecoder()
    pos = 0
    members = 0
    while True:
        event = dec.next_event()
        if event is NEED_DATA:
            if pos >= len(view):
                dec.feed_eof()
            else:
                dec.feed(view[pos : pos + CHUNK])
                pos += CHUNK
        elif type(event) is Chunk:
            if copy:  # what a consumer that copies each chunk once pays
                sink[: len(event.data)] = event.data
        elif type(event) is MemberStart:
            members += 1
        elif type(event) is ArchiveEnd:
            return members


def tarfile_decode(data: bytes) -> int:
    members = 0
    with tarfile.open(fileobj=io.BytesIO(data), mode="r|") as tf:
        for ti in tf:
            members += 1
            f = tf.extractfile(ti)
            if f is not None:
                while f.read(CHUNK):
                    pass
    return members


def timed(fn: Callable[[bytes], int], data: bytes, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(data)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def encode_us(repeat: int) -> tuple[float, float]:
    name = "blobs/sha256/" + "ab" * 32
    n = 20000
    ours, theirs = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for i in range(n):
            encode_header(name, i)
        ours.append((time.perf_counter() - t0) / n * 1e6)
        t0 = time.perf_counter()
        for i in range(n):
            ti = tarfile.TarInfo(name)
            ti.size = i
            ti.mode = 0o444
            ti.tobuf(tarfile.PAX_FORMAT)
        theirs.append((time.perf_counter() - t0) / n * 1e6)
    return statistics.median(ours), statistics.median(theirs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--big-mib", type=int, default=1024, help="size of archive (a)")
    args = parser.parse_args()
    block = os.urandom(CHUNK)

    big_size = args.big_mib * CHUNK // 4
    big = build([(f"blobs/sha256/{i:064x}", big_size) for i in range(4)], block)
    ours = timed(castar_decode, big, args.repeat)
    copying = timed(lambda d: castar_decode(d, copy=True), big, args.repeat)
    theirs = timed(tarfile_decode, big, args.repeat)
    mb = len(big) / 1e6
    print(f"(a) 4 x {big_size >> 20} MiB members, {mb:.0f} MB, medians of {args.repeat}:")
    print(f"    castar TarDecoder {mb / ours:10.0f} MB/s")
    print(f"    castar + 1 copy   {mb / copying:10.0f} MB/s  (consumer copies each chunk)")
    print(f"    tarfile r|        {mb / theirs:10.0f} MB/s")
    print(f"    ratio             {theirs / ours:10.1f}x  (target >= 10x)")
    print(f"    ratio with copy   {theirs / copying:10.1f}x")
    del big

    sizes = [(i * 7919) % 8192 for i in range(5000)]
    small = build([(f"blobs/sha256/{i:064x}", s) for i, s in enumerate(sizes)], block)
    ours = timed(castar_decode, small, args.repeat)
    theirs = timed(tarfile_decode, small, args.repeat)
    print(f"(b) 5000 members of 0-8 KiB, {len(small) / 1e6:.1f} MB:")
    print(f"    castar TarDecoder {ours / 5000 * 1e6:10.2f} us/member")
    print(f"    tarfile r|        {theirs / 5000 * 1e6:10.2f} us/member")
    print(f"    ratio             {theirs / ours:10.1f}x  (target >= 1x)")

    enc, tobuf = encode_us(args.repeat)
    print("(c) header encode (ustar, blob path):")
    print(f"    encode_header     {enc:10.2f} us")
    print(f"    TarInfo.tobuf     {tobuf:10.2f} us")
    print(f"    ratio             {tobuf / enc:10.1f}x")


if __name__ == "__main__":
    main()
