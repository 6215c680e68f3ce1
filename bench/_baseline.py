"""The physical baseline: a plain synchronous read + sha256 + write loop, one thread.

``python -m bench._baseline SRC_DIR DST_DIR`` copies every file of SRC_DIR into
DST_DIR while hashing it, 1 MiB ``readinto`` at a time into a reused buffer: what an
import must do at least (design rule bench-baseline). Imports no castar.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

CHUNK = 1 << 20


def copy_tree(src: Path, dst: Path) -> int:
    """Copy and hash every regular file of ``src`` into ``dst``; returns the bytes copied."""
    dst.mkdir(parents=True, exist_ok=True)
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    total = 0
    for entry in sorted(os.scandir(src), key=lambda e: e.name):
        if not entry.is_file():
            continue
        h = hashlib.sha256()
        with open(entry.path, "rb", buffering=0) as fin, open(dst / entry.name, "wb") as fout:
            while n := fin.readinto(buf):
                piece = view[:n]
                h.update(piece)
                fout.write(piece)
                total += n
        if h.hexdigest() != entry.name and len(entry.name) == 64:
            raise SystemExit(f"baseline: {entry.path} does not hash to its name")
    return total


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m bench._baseline SRC_DIR DST_DIR", file=sys.stderr)
        return 2
    copy_tree(Path(argv[0]), Path(argv[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
