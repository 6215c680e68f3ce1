"""TarReader/TarWriter: the codec driven over real sources and sinks (TAR-1..4)."""

from __future__ import annotations

import io
import itertools
import os
import subprocess
import sys
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castar.engine._streams import CHUNK_SIZE, Source, open_sink, open_source
from castar.engine._tario import TarReader, TarWriter
from castar.engine.tarcodec import ArchiveEnd, Chunk, MemberEnd, MemberStart
from castar.store.errors import InvalidArgument, MalformedArchive, SizeMismatch


def make_archive(members: list[tuple[str, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=fmt) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return bio.getvalue()


MEMBERS = [
    ("index.json", b'{"schemaVersion": 2}'),
    ("blobs/sha256/" + "a" * 64, os.urandom(300_000)),
    ("blobs/sha512/" + "b" * 128, os.urandom(5000)),
    ("oci-layout", b'{"imageLayoutVersion": "1.0.0"}'),
]


async def read_all(reader: TarReader, skip: frozenset[str] = frozenset()) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    current = ""
    while True:
        event = await reader.next_event()
        if isinstance(event, MemberStart):
            if event.name in skip:
                await reader.skip_body()
                continue
            current = event.name
            out[current] = b""
        elif isinstance(event, Chunk):
            out[current] += bytes(event.data)
        elif isinstance(event, MemberEnd):
            assert event.name == current
        else:
            assert isinstance(event, ArchiveEnd)
            assert await reader.next_event() == event  # stays at the end
            return out


async def test_reader_over_a_path_yields_every_member(tmp_path: Path) -> None:  # TAR-4
    path = tmp_path / "a.tar"
    path.write_bytes(make_archive(MEMBERS))
    async with open_source(path) as src:
        assert await read_all(TarReader(src)) == dict(MEMBERS)


@pytest.mark.parametrize("chunk_size", [4096, 1 << 20])
async def test_reader_skips_bodies_on_a_seekable_file(tmp_path: Path, chunk_size: int) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(make_archive(MEMBERS))
    big = MEMBERS[1][0]
    async with open_source(path) as src:
        reader = TarReader(src, chunk_size=chunk_size)
        got = await read_all(reader, skip=frozenset({big}))
    assert got == {n: d for n, d in MEMBERS if n != big}


async def test_reader_skips_bodies_on_a_stream_of_small_pieces() -> None:  # TAR-4
    raw = make_archive(MEMBERS, tarfile.GNU_FORMAT)
    send, receive = anyio.create_memory_object_stream[bytes](len(raw) // 1000 + 1)
    with send, receive:
        for i in range(0, len(raw), 1000):
            send.send_nowait(raw[i : i + 1000])
        send.close()
        reader = TarReader(open_source(receive), chunk_size=8192)
        got = await read_all(reader, skip=frozenset({MEMBERS[1][0], MEMBERS[2][0]}))
    assert got == dict(MEMBERS[::3])


async def test_reader_reports_a_truncated_stream_with_offset(tmp_path: Path) -> None:
    path = tmp_path / "t.tar"
    path.write_bytes(make_archive(MEMBERS)[:200_000])
    async with open_source(path) as src:
        with pytest.raises(MalformedArchive, match="truncated") as exc:
            await read_all(TarReader(src))
    assert exc.value.offset == 200_000
    assert exc.value.member == MEMBERS[1][0]


async def test_read_member_returns_small_documents_and_refuses_big_ones(tmp_path: Path) -> None:
    path = tmp_path / "a.tar"
    path.write_bytes(make_archive(MEMBERS))
    async with open_source(path) as src:
        reader = TarReader(src)
        assert isinstance(await reader.next_event(), MemberStart)
        assert await reader.read_member(limit=100) == MEMBERS[0][1]
        assert isinstance(await reader.next_event(), MemberStart)
        with pytest.raises(InvalidArgument, match="exceeds the 1000-byte limit"):
            await reader.read_member(limit=1000)


class RecordingSource(Source):
    """An in-memory source that records what the reader asks of it."""

    def __init__(self, data: bytes, *, seekable: bool) -> None:
        self.name = "<recording>"
        self._data = data
        self._pos = 0
        self._seekable = seekable
        self.asks: list[int] = []
        self.seeks = 0
        self.received = 0

    @property
    def seekable(self) -> bool:
        return self._seekable

    async def receive(self, max_bytes: int = CHUNK_SIZE) -> bytes:
        self.asks.append(max_bytes)
        if self._pos >= len(self._data):
            raise anyio.EndOfStream
        data = self._data[self._pos : self._pos + max_bytes]
        self._pos += len(data)
        self.received += len(data)
        return data

    async def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        assert self._seekable
        assert whence == os.SEEK_CUR
        self.seeks += 1
        self._pos += offset
        return self._pos


BIG_MEMBERS = [("small", b"s" * 10), ("big", os.urandom(5 << 20)), ("last", b"l" * 10)]


@pytest.mark.parametrize("seekable", [True, False])
async def test_reader_asks_for_1_mib_and_seeks_past_a_skipped_body(seekable: bool) -> None:
    # io-hops: one receive (one thread hop for files) per >= 1 MiB; TAR-4 skipping.
    raw = make_archive(BIG_MEMBERS)
    src = RecordingSource(raw, seekable=seekable)
    got = await read_all(TarReader(src), skip=frozenset({"big"}))
    assert got == {"small": b"s" * 10, "last": b"l" * 10}
    assert set(src.asks) == {CHUNK_SIZE}
    if seekable:
        assert src.seeks == 1
        assert src.received < 2 * CHUNK_SIZE  # the 5 MiB body was seeked over, not read
    else:
        assert src.seeks == 0
        assert src.received == len(raw)


async def chunks_of(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def test_writer_output_reads_back_in_tarfile_deterministically(
    tmp_path: Path,
) -> None:  # TAR-1..3
    big = os.urandom(3 << 20)
    outputs = []
    for attempt in range(2):
        path = tmp_path / f"out{attempt}.tar"
        async with open_sink(path) as sink:
            writer = TarWriter(sink)
            await writer.add_dir("blobs/sha256")
            await writer.add_file("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
            await writer.add_file("index.json", b"{}", mode=0o644)
            await writer.add_file("blobs/sha256/" + "c" * 64, big)
            await writer.add_stream("blobs/sha512/" + "d" * 128, len(big), chunks_of(big, 70_000))
            await writer.finish()
            assert writer.offset == path.stat().st_size
        outputs.append(path.read_bytes())
    assert outputs[0] == outputs[1]
    with tarfile.open(fileobj=io.BytesIO(outputs[0])) as tf:
        got = [
            (ti.name, ti.type, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname)
            for ti in tf.getmembers()
        ]
        assert tf.extractfile("blobs/sha512/" + "d" * 128).read() == big  # type: ignore[union-attr]
        assert tf.extractfile("index.json").read() == b"{}"  # type: ignore[union-attr]
    assert got == [
        ("blobs/sha256", tarfile.DIRTYPE, 0o755, 0, 0, 0, "", ""),
        ("oci-layout", tarfile.REGTYPE, 0o444, 0, 0, 0, "", ""),
        ("index.json", tarfile.REGTYPE, 0o644, 0, 0, 0, "", ""),
        ("blobs/sha256/" + "c" * 64, tarfile.REGTYPE, 0o444, 0, 0, 0, "", ""),
        ("blobs/sha512/" + "d" * 128, tarfile.REGTYPE, 0o444, 0, 0, 0, "", ""),
    ]


async def test_writer_output_reads_back_in_our_reader_through_a_stream() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](1000)
    with send, receive:
        writer = TarWriter(open_sink(send))
        for name, data in MEMBERS:
            await writer.add_file(name, data)
        await writer.finish()
        send.close()
        assert await read_all(TarReader(open_source(receive))) == dict(MEMBERS)


@pytest.mark.parametrize("actual", [9, 11])
async def test_add_stream_with_the_wrong_byte_count_raises_size_mismatch(actual: int) -> None:
    send, receive = anyio.create_memory_object_stream[bytes](100)
    with send, receive:
        writer = TarWriter(open_sink(send))
        with pytest.raises(SizeMismatch, match="'m'") as exc:
            await writer.add_stream("m", 10, chunks_of(b"x" * actual, 4))
    assert (exc.value.expected, exc.value.actual) == (10, min(actual, 12))


_STDIO_ROUND_TRIP = """
import anyio
from castar.engine._streams import open_sink, open_source
from castar.engine._tario import TarReader, TarWriter
from castar.engine.tarcodec import ArchiveEnd, Chunk, MemberStart

async def main():
    async with open_source("-") as src, open_sink("-") as sink:
        assert not src.seekable and sink.kind == "pipe"
        reader, writer = TarReader(src), TarWriter(sink)
        body = b""
        while not isinstance(event := await reader.next_event(), ArchiveEnd):
            if isinstance(event, MemberStart):
                name, body = event.name, b""
            elif isinstance(event, Chunk):
                body += bytes(event.data)
            else:
                await writer.add_file("copy/" + name, body)
        await writer.finish()

anyio.run(main)
"""


def test_stdin_to_stdout_through_reader_and_writer() -> None:
    """``-`` means the process's fd 0 and 1, as the CLI passes them (pipes here)."""
    result = subprocess.run(
        [sys.executable, "-c", _STDIO_ROUND_TRIP],
        input=make_archive(MEMBERS),
        capture_output=True,
        check=True,
    )
    with tarfile.open(fileobj=io.BytesIO(result.stdout)) as tf:
        got = {ti.name: tf.extractfile(ti).read() for ti in tf.getmembers()}  # type: ignore[union-attr]
    assert got == {"copy/" + n: d for n, d in MEMBERS}


@settings(max_examples=15, deadline=None)
@given(
    pieces=st.lists(st.integers(min_value=100, max_value=70_000), min_size=1, max_size=8),
    chunk_size=st.sampled_from([3000, 1 << 16, 1 << 20]),
    skip=st.sets(st.sampled_from([n for n, _ in MEMBERS])),
)
async def test_reader_result_is_independent_of_piece_and_chunk_sizes(
    pieces: list[int], chunk_size: int, skip: set[str]
) -> None:  # TAR-4 on a non-seekable stream, h11 tr() style
    raw = make_archive(MEMBERS)
    send, receive = anyio.create_memory_object_stream[bytes](len(raw))
    with send, receive:
        pos = 0
        for i in itertools.count():
            if pos >= len(raw):
                break
            size = pieces[i % len(pieces)]
            send.send_nowait(raw[pos : pos + size])
            pos += size
        send.close()
        reader = TarReader(open_source(receive), chunk_size=chunk_size)
        got = await read_all(reader, skip=frozenset(skip))
    assert got == {n: d for n, d in MEMBERS if n not in skip}
