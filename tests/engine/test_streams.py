"""Source/Sink adapters over paths, fds, pipes, sockets, anyio streams and async files."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import anyio
import anyio.streams.buffered
import pytest

from castar.engine._streams import CHUNK_SIZE, Sink, Source, open_sink, open_source
from castar.store.errors import InvalidArgument, NotFound


async def drain(src: Source, max_bytes: int = CHUNK_SIZE) -> list[bytes]:
    pieces = []
    while True:
        try:
            pieces.append(await src.receive(max_bytes))
        except anyio.EndOfStream:
            return pieces


@pytest.fixture
def blob(tmp_path: Path) -> tuple[Path, bytes]:
    data = os.urandom(CHUNK_SIZE * 2 + 1000)
    path = tmp_path / "archive.tar"
    path.write_bytes(data)
    return path, data


# -- sources -------------------------------------------------------------------------------------


async def test_path_source_reads_1mib_pieces_and_has_a_descriptor(
    blob: tuple[Path, bytes],
) -> None:
    path, data = blob
    async with open_source(path) as src:
        assert src.name == str(path)
        assert isinstance(src.fileno(), int)
        pieces = await drain(src)
        assert [len(p) for p in pieces] == [CHUNK_SIZE, CHUNK_SIZE, 1000]
        assert b"".join(pieces) == data
        raw = src.raw_file()
        assert raw is not None
        assert os.pread(raw.fileno(), 4, 0) == data[:4]


async def test_path_source_properties_need_it_open(blob: tuple[Path, bytes]) -> None:
    src = open_source(str(blob[0]))
    with pytest.raises(RuntimeError, match="not open"):
        src.fileno()
    await src.open()
    assert src.fileno() is not None
    await src.aclose()


async def test_missing_path_is_not_found_naming_it(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match=r"nope\.tar: No such file"):
        async with open_source(tmp_path / "nope.tar"):
            pass
    with pytest.raises(NotFound, match="no-dir"):
        async with open_sink(tmp_path / "no-dir" / "out.tar"):
            pass


async def test_directory_path_is_invalid_argument(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="Is a directory"):
        async with open_source(tmp_path):
            pass


async def test_fd_source_is_left_open_by_aclose(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    fd = os.open(path, os.O_RDONLY)
    try:
        async with open_source(fd) as src:
            assert src.name == f"<fd {fd}>"
            assert await src.receive(3) == data[:3]
        os.fstat(fd)  # still open
    finally:
        os.close(fd)


async def test_pipe_source_has_no_descriptor_and_fills_the_request() -> None:
    r, w = os.pipe()
    try:
        for part in (b"a" * 10, b"b" * 20, b"c" * 30):
            os.write(w, part)
        os.close(w)
        w = -1
        async with open_source(r) as src:
            assert src.fileno() is None
            assert await drain(src) == [b"a" * 10 + b"b" * 20 + b"c" * 30]
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_stdin_and_stdout_are_fd_0_and_1_and_named() -> None:
    assert open_source("-").name == "<stdin>"
    assert open_sink("-").name == "<stdout>"


async def test_object_stream_pieces_are_joined_and_split_to_the_request() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](100)
    with receive:
        with send:
            for i in range(50):
                await send.send(bytes([i]) * 100)
        src = open_source(receive)
        assert src.fileno() is None
        first = await src.receive(1000)
        assert 250 <= len(first) <= 1000  # joined up to a quarter of the request
        rest = b"".join(await drain(src, 150))
        assert first + rest == b"".join(bytes([i]) * 100 for i in range(50))


async def test_byte_receive_stream_source_and_end_of_stream() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](10)
    with receive:
        buffered = anyio.streams.buffered.BufferedByteReceiveStream(receive)
        with send:
            await send.send(b"x" * 300_000)
        src = open_source(buffered)
        assert await drain(src, 100_000) == [b"x" * 100_000] * 3
        with pytest.raises(anyio.EndOfStream):
            await src.receive()


async def test_wrap_file_source_over_a_file_is_read_as_a_stream(blob: tuple[Path, bytes]) -> None:
    path, data = blob
    f = await anyio.open_file(path, "rb")
    try:
        async with open_source(f) as src:
            assert src.fileno() is None
            assert b"".join(await drain(src)) == data
    finally:
        await f.aclose()


async def test_wrap_file_source_over_a_pipe_is_read_as_a_stream() -> None:
    r, w = os.pipe()
    os.write(w, b"hello")
    os.close(w)
    f = anyio.wrap_file(os.fdopen(r, "rb", buffering=0))
    try:
        async with open_source(f) as src:
            assert src.fileno() is None
            assert b"".join(await drain(src)) == b"hello"
    finally:
        await f.aclose()


async def test_aiofiles_source_on_asyncio(blob: tuple[Path, bytes], anyio_backend: str) -> None:
    if anyio_backend != "asyncio":
        pytest.skip("aiofiles is asyncio-only")
    aiofiles = pytest.importorskip("aiofiles")  # asyncio-only by design
    path, data = blob
    async with aiofiles.open(path, "rb") as f, open_source(f) as src:
        assert b"".join(await drain(src)) == data


async def test_trio_file_source_on_trio(blob: tuple[Path, bytes], anyio_backend: str) -> None:
    if anyio_backend != "trio":
        pytest.skip("trio files need trio")
    trio = pytest.importorskip("trio")  # a trio file object, as a trio user would pass
    path, data = blob
    async with await trio.open_file(path, "rb") as f, open_source(f) as src:
        assert b"".join(await drain(src)) == data


def test_unsupported_objects_are_invalid_arguments() -> None:
    with pytest.raises(InvalidArgument, match="cannot read an archive from float"):
        open_source(1.5)
    with pytest.raises(InvalidArgument, match="cannot write an archive to object"):
        open_sink(object())


# -- sinks ---------------------------------------------------------------------------------------


async def test_path_sink_truncates_and_coalesces_small_sends(tmp_path: Path) -> None:
    path = tmp_path / "out.tar"
    path.write_bytes(b"old contents that must go")
    async with open_sink(path) as sink:
        assert sink.kind == "file"
        assert isinstance(sink.fileno(), int)
        for _ in range(100):
            await sink.send(b"ab")
        assert os.fstat(sink.fileno()).st_size == 0  # still buffered: no hop per small send
        await sink.send(memoryview(b"z" * (100 << 10)))
        assert path.read_bytes() == b"old contents that must go"  # replaced only at the end
    assert path.read_bytes() == b"ab" * 100 + b"z" * (100 << 10)


async def test_flush_before_writing_to_the_fd_directly(tmp_path: Path) -> None:
    path = tmp_path / "out"
    async with open_sink(str(path)) as sink:
        await sink.send(b"head:")
        await sink.flush()
        fd = sink.fileno()
        assert fd is not None
        os.write(fd, b"direct:")
        await sink.send(b"tail")
    assert path.read_bytes() == b"head:direct:tail"


async def test_pipe_and_socket_sinks_report_their_kind() -> None:
    r, w = os.pipe()
    a, b = socket.socketpair()
    try:
        async with open_sink(w) as sink:
            assert sink.kind == "pipe"
            await sink.send(b"p")
        assert os.read(r, 10) == b"p"
        async with open_sink(a.fileno()) as sink:
            assert sink.kind == "socket"
            await sink.send(b"s")
        assert b.recv(10) == b"s"
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


async def test_byte_send_stream_sink_gets_immutable_coalesced_bytes() -> None:
    send, receive = anyio.create_memory_object_stream[bytes](100)
    with send, receive:
        await _check_stream_sink(send, receive)


async def _check_stream_sink(
    send: anyio.abc.ObjectSendStream[bytes], receive: anyio.abc.ObjectReceiveStream[bytes]
) -> None:
    buf = bytearray(b"0123")
    sink = open_sink(send)
    assert isinstance(sink, Sink)
    assert sink.kind == "stream"
    assert sink.fileno() is None
    await sink.send(buf)
    buf[:] = b"XXXX"  # the caller may reuse its buffer
    await sink.send(b"4" * (70 << 10))
    await sink.aclose()
    items = []
    while True:
        try:
            items.append(receive.receive_nowait())
        except anyio.WouldBlock:
            break
    assert b"".join(items) == b"0123" + b"4" * (70 << 10)
    assert all(isinstance(i, bytes) for i in items)
    assert len(items) == 1


async def test_async_write_object_sink(tmp_path: Path) -> None:
    path = tmp_path / "w"
    f = await anyio.open_file(path, "wb")
    try:
        async with open_sink(f) as sink:
            assert sink.kind == "stream"
            await sink.send(b"data")
    finally:
        await f.aclose()
    assert path.read_bytes() == b"data"


async def test_sink_error_exit_drops_buffered_bytes(tmp_path: Path) -> None:
    path = tmp_path / "e"

    async def write_then_fail() -> None:
        async with open_sink(path) as sink:
            await sink.send(b"partial")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        await write_then_fail()
    assert [p async for p in anyio.Path(tmp_path).iterdir()] == []  # no file left behind


async def test_closed_path_source_and_sink_do_not_reopen(blob: tuple[Path, bytes]) -> None:
    src = open_source(blob[0])
    await src.receive(10)
    await src.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await src.receive(10)
    sink = open_sink(blob[0].with_suffix(".out"))
    await sink.send(b"x" * (100 << 10))
    await sink.aclose()
    with pytest.raises(anyio.ClosedResourceError):
        await sink.send(b"y" * (100 << 10))


async def test_cancelling_a_receive_on_an_idle_pipe_returns_promptly() -> None:
    r, w = os.pipe()
    try:
        src = open_source(r)
        with anyio.move_on_after(0.2) as scope:
            await src.receive()
        assert scope.cancelled_caught
    finally:
        os.close(w)  # the abandoned worker thread now sees EOF and ends
        await anyio.sleep(0.05)
        os.close(r)
