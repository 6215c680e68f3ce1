"""Whole-archive decompression for load (IMP-1): sniffing and bounded streaming inflate."""

from __future__ import annotations

import gzip
import zlib

import anyio
import pytest
import zstandard

from castar.engine.load.decompress import GZIP, ZSTD, DecompressedSource, sniff
from castar.store.errors import MalformedArchive


class Bytes:
    """A source over a byte string, handing out at most ``piece`` bytes per receive."""

    name = "<test>"

    def __init__(self, data: bytes, piece: int = 1 << 20) -> None:
        self._data = data
        self._piece = piece

    async def receive(self, max_bytes: int = 1 << 20) -> bytes:
        if not self._data:
            raise anyio.EndOfStream
        n = min(max_bytes, self._piece)
        out, self._data = self._data[:n], self._data[n:]
        return out


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x1f\x8b\x08\x00", GZIP),
        (b"\x28\xb5\x2f\xfd\x00", ZSTD),
        ((0x184D2A5F).to_bytes(4, "little"), ZSTD),  # skippable frame, any low nibble
        (b"\x1f\x8b\x07\x00", None),  # gzip magic with another method
        (b"BZh9", "bzip2"),
        (b"\xfd7zXZ\x00\x00", "xz"),
        (b"\xfd7zXZ", None),  # a cut xz magic
        (b"ustar", None),
        (b"", None),
    ],
)
def test_imp1_sniff_by_magic_bytes(head, kind):
    assert sniff(head) == kind


async def read_all(src: DecompressedSource, max_bytes: int = 1 << 20) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(await src.receive(max_bytes))
        except anyio.EndOfStream:
            return out


@pytest.mark.parametrize("kind", [GZIP, ZSTD])
async def test_output_per_receive_is_bounded_even_for_a_bomb(kind):
    data = bytes(24 << 20)  # 24 MiB of zeros compress to a few KiB
    packed = gzip.compress(data) if kind == GZIP else zstandard.ZstdCompressor().compress(data)
    assert len(packed) < 1 << 20
    raw = Bytes(packed[4:])
    src = DecompressedSource(raw, kind, packed[:4])
    pieces = await read_all(src)
    assert all(len(p) <= 1 << 20 for p in pieces)
    assert b"".join(pieces) == data


@pytest.mark.parametrize("kind", [GZIP, ZSTD])
async def test_truncated_stream_is_malformed(kind):
    data = bytes(range(256)) * 4000
    packed = gzip.compress(data) if kind == GZIP else zstandard.ZstdCompressor().compress(data)
    src = DecompressedSource(Bytes(packed[: len(packed) // 2], piece=1000), kind)
    with pytest.raises(MalformedArchive, match=f"{kind} archive <test>"):
        await read_all(src)


async def test_gzip_with_zero_padding_after_the_member():
    data = b"payload " * 1000
    src = DecompressedSource(Bytes(gzip.compress(data) + bytes(512)), GZIP)
    assert b"".join(await read_all(src)) == data


async def test_raw_deflate_is_not_gzip():
    assert sniff(zlib.compress(b"x" * 100)) is None


async def test_zstd_frames_skippable_frames_and_checksums_are_followed():
    c = zstandard.ZstdCompressor(write_checksum=True)
    skippable = (0x184D2A53).to_bytes(4, "little") + (3).to_bytes(4, "little") + b"abc"
    data = bytes(range(256)) * 3000
    packed = skippable + c.compress(data[:7000]) + skippable + c.compress(data[7000:])
    src = DecompressedSource(Bytes(packed, piece=333), ZSTD)
    assert b"".join(await read_all(src)) == data


async def test_zstd_followed_by_junk_is_malformed():
    packed = zstandard.ZstdCompressor().compress(b"x" * 5000) + b"junk"
    with pytest.raises(MalformedArchive):
        await read_all(DecompressedSource(Bytes(packed), ZSTD))
