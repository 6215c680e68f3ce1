"""The physical baseline: a plain synchronous read + sha256 + write loop, one thread.

``python -m bench._baseline [--sync] SRC_DIR DST_DIR`` copies every file of SRC_DIR into
DST_DIR while hashing it, 1 MiB ``readinto`` at a time into a reused buffer: what an
import must do at least (design rule bench-baseline). ``--sync`` ends with one ``syncfs``
of DST_DIR's file system (the one-sync baseline). Imports no castar.
"""

from __future__ import annotations

import ctypes
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


def syncfs(path: Path) -> None:
    """One ``syncfs(2)`` of the file system holding ``path``."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.syncfs(fd) != 0:
            raise OSError(ctypes.get_errno(), "syncfs")
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    sync = argv[:1] == ["--sync"]
    args = argv[1:] if sync else argv
    if len(args) != 2:
        print("usage: python -m bench._baseline [--sync] SRC_DIR DST_DIR", file=sys.stderr)
        return 2
    copy_tree(Path(args[0]), Path(args[1]))
    if sync:
        syncfs(Path(args[1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
