"""Synthetic layer bytes: deterministic, incompressible tar layers and their gzip/zstd framing.

Owns how ``synth`` regenerates a layer blob on demand (never held whole): a one-file
tar of seeded random bytes, wrapped in stored-block gzip or raw-block zstd frames, and
the one pass that yields its digest, size and diff id. Pure and synchronous: imports
the tar header encoder and the store's digest helpers; never anyio or I/O.
"""

from __future__ import annotations

import functools
import hashlib
import random
import struct
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

from castar.engine.tarcodec import encode_header
from castar.store.digest import Digest, from_hasher

if TYPE_CHECKING:
    from collections.abc import Iterator

    from castar.store.digest import Buffer

__all__ = ["BLOCK", "Layer", "blob_pieces", "hash_layer"]

#: Layer bytes are produced in blocks of this size (bounded memory, one hash update each).
BLOCK: Final = 1 << 20
# Layer bodies are 32-byte tags followed by slices of one random pool per seed: making a
# block costs a blake2b of a few bytes and a memoryview slice, so generation is nearly
# free and the passes run at the speed of sha256 and the sink.
_TAG: Final = 32
_POOL: Final = 4 * BLOCK + BLOCK
_GZIP_BLOCK: Final = 65535  # largest deflate stored block
_ZSTD_BLOCK: Final = 128 << 10  # largest zstd block
_GZIP_HEADER: Final = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"
_ZSTD_MAGIC: Final = b"\x28\xb5\x2f\xfd"


@final
@dataclass(frozen=True, slots=True)
class Layer:
    """How to regenerate one layer blob (never held in memory whole)."""

    key: str  # "shared/<n>" or "<platform slug>/<n>"
    member: str  # the file inside the layer tar
    size: int  # uncompressed size (== spec.layer_size)
    compression: str
    seed: int


@functools.lru_cache(maxsize=2)
def _pool(seed: int) -> bytes:
    return random.Random(seed).randbytes(_POOL)


def _random_stream(layer: Layer, n: int) -> Iterator[Buffer]:
    """``n`` incompressible deterministic bytes in blocks of at most ``BLOCK``."""
    pool = memoryview(_pool(layer.seed))
    block = 0
    while n > 0:
        tag = hashlib.blake2b(
            f"{layer.seed}|{layer.key}|{block}".encode(), digest_size=_TAG
        ).digest()
        off = int.from_bytes(tag[:8], "little") % (_POOL - BLOCK)
        take = min(n, BLOCK)
        if take <= _TAG:
            yield tag[:take]
        else:
            yield tag
            yield pool[off : off + take - _TAG]
        n -= take
        block += 1


def _tar_pieces(layer: Layer) -> Iterator[Buffer]:
    """The uncompressed layer: one regular file in a tar, ``layer.size`` bytes in all."""
    if layer.size < 3 * 512:
        yield from _random_stream(layer, layer.size)
        return
    body = (layer.size - 3 * 512) // 512 * 512
    yield encode_header(layer.member, body, mode=0o644)
    yield from _random_stream(layer, body)
    # END_OF_ARCHIVE plus < 512 extra zero bytes so the tar is exactly layer.size long;
    # readers stop at the two zero blocks.
    yield bytes(layer.size - 512 - body)


def _framed(pieces: Iterator[Buffer], total: int, kind: str) -> Iterator[Buffer]:
    """Wrap ``total`` bytes in gzip (deflate stored blocks) or zstd (raw blocks) framing.

    The data is incompressible, so stored blocks are what a compressor would emit; they
    are also byte-stable across zlib builds, which keeps archives deterministic.
    """
    gzip = kind == "gzip"
    limit = _GZIP_BLOCK if gzip else _ZSTD_BLOCK
    if gzip:
        yield _GZIP_HEADER
    else:
        # Frame header: FCS 8 bytes + single segment (no window descriptor), no checksum.
        yield _ZSTD_MAGIC + b"\xe0" + struct.pack("<Q", total)
    crc = 0
    left = total
    in_block = 0

    def block_header(n: int, last: bool) -> bytes:
        if gzip:
            return bytes([1 if last else 0]) + struct.pack("<HH", n, n ^ 0xFFFF)
        return ((n << 3) | int(last)).to_bytes(3, "little")

    if total == 0:
        yield block_header(0, True)
    for piece in pieces:
        mv = memoryview(piece)
        while len(mv):
            if in_block == 0:
                in_block = min(limit, left)
                yield block_header(in_block, in_block == left)
            take = min(in_block, len(mv))
            part = mv[:take]
            if gzip:
                crc = zlib.crc32(part, crc)
            yield part
            mv = mv[take:]
            in_block -= take
            left -= take
    if gzip:
        yield struct.pack("<II", crc, total & 0xFFFFFFFF)


def blob_pieces(layer: Layer) -> Iterator[Buffer]:
    """The bytes of a layer blob (framed when compressed), in pieces of at most ``BLOCK``."""
    if layer.compression == "none":
        return _tar_pieces(layer)
    return _framed(_tar_pieces(layer), layer.size, layer.compression)


def hash_layer(layer: Layer) -> tuple[Digest, int, Digest]:
    """Digest and size of the blob, and the diff id, in one generation pass."""
    if layer.compression == "none":
        h = hashlib.sha256()
        for piece in _tar_pieces(layer):
            h.update(piece)
        d = from_hasher(h)
        return d, layer.size, d
    diff = hashlib.sha256()

    def tee() -> Iterator[Buffer]:
        for piece in _tar_pieces(layer):
            diff.update(piece)
            yield piece

    h = hashlib.sha256()
    size = 0
    for piece in _framed(tee(), layer.size, layer.compression):
        h.update(piece)
        size += len(piece)
    return from_hasher(h), size, from_hasher(diff)
