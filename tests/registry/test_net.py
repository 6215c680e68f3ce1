"""The registry client's sockets (engine/registry/_net.py) against loopback servers."""

from __future__ import annotations

import contextlib
import socket
import ssl
import struct
from typing import TYPE_CHECKING

import anyio
import anyio._core._sockets
import httpcore
import httpx
import pytest
from anyio.streams.tls import TLSListener
from cryptography.hazmat.primitives import serialization

from castar.engine.registry import _net
from tests.registry._certs import self_signed

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
    from pathlib import Path

    from anyio.abc import ByteStream

pytestmark = pytest.mark.anyio

_BODY = bytes(range(256)) * (3 * 4096 + 7)  # 3 MiB and a bit: more than one buffer's worth


def _cert(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a self-signed certificate for localhost, and a client trusting it."""
    key, cert = self_signed("localhost", ("localhost", "127.0.0.1"))
    pem = tmp_path / "cert.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile = tmp_path / "key.pem"
    keyfile.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pem, keyfile)
    client = ssl.create_default_context(cafile=str(pem))
    return server, client


@contextlib.asynccontextmanager
async def _serve(
    handle: Callable[[ByteStream], Awaitable[None]],
    tls: ssl.SSLContext | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
) -> AsyncIterator[int]:
    """Serve ``handle`` on a loopback port, once per connection, until the block ends."""
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port)
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    served = TLSListener(listener, tls, standard_compatible=False) if tls else listener
    async with served, anyio.create_task_group() as tg:
        tg.start_soon(served.serve, handle)
        yield port
        tg.cancel_scope.cancel()


async def _read_all(stream: httpcore.AsyncNetworkStream) -> tuple[bytes, list[int]]:
    got, sizes = bytearray(), []
    while chunk := await stream.read(65536, 10):
        got += chunk
        sizes.append(len(chunk))
    return bytes(got), sizes


async def test_reads_hand_out_up_to_a_whole_buffer_in_order_then_the_end():
    sent = anyio.Event()

    async def handle(conn: ByteStream) -> None:
        async with conn:
            await conn.send(_BODY)
            sent.set()

    async with _serve(handle) as port:
        stream = await _net._Backend().connect_tcp("127.0.0.1", port, 10)
        try:
            await sent.wait()
            got, sizes = await _read_all(stream)
            assert got == _BODY  # every byte, in order, then b"" at the end of the stream
            assert max(sizes) <= _net.READ_SIZE
            assert stream.get_extra_info("server_addr")[1] == port
            assert stream.get_extra_info("is_readable")  # at its end: the pool would drop it
        finally:
            await stream.aclose()


async def test_a_read_asks_for_a_whole_buffer_and_gets_what_has_come(anyio_backend, monkeypatch):
    # httpcore asks each read for 64 KiB. On trio the client's stream asks anyio for
    # READ_SIZE. On asyncio anyio's stream would hand out one transport chunk (<= 256 KiB)
    # and stop the socket's reader between reads; the client's own keeps reading into a
    # READ_SIZE buffer while its caller works, and hands it out whole.
    asked: list[int] = []
    real_connect = httpcore.AnyIOBackend.connect_tcp

    async def connect_tcp(self, *a, **kw):
        stream = await real_connect(self, *a, **kw)
        real_read = stream.read

        async def read(max_bytes: int, *rest: float | None) -> bytes:
            asked.append(max_bytes)
            return await real_read(max_bytes, *rest)

        stream.read = read
        return stream

    monkeypatch.setattr(httpcore.AnyIOBackend, "connect_tcp", connect_tcp)

    async def handle(conn: ByteStream) -> None:
        async with conn:
            await conn.send(_BODY)
            await anyio.sleep_forever()

    async with _serve(handle) as port:
        stream = await _net._Backend().connect_tcp("127.0.0.1", port, 10)
        try:
            if anyio_backend == "asyncio":
                assert isinstance(stream, _net._AsyncioStream)
                with anyio.fail_after(10):  # the caller reads nothing: the buffer fills, pauses
                    while stream.held < _net.READ_SIZE:  # noqa: ASYNC110 (no event to wait on)
                        await anyio.sleep(0.01)
                assert stream.held == _net.READ_SIZE
                assert await stream.read(65536, 10) == _BODY[: _net.READ_SIZE]
                assert stream.held < _net.READ_SIZE  # handed out whole; reading resumed
            got = bytearray(_BODY[: _net.READ_SIZE] if anyio_backend == "asyncio" else b"")
            while len(got) < len(_BODY):
                chunk = await stream.read(65536, 10)
                assert len(chunk) <= _net.READ_SIZE
                got += chunk
            assert bytes(got) == _BODY
            with pytest.raises(httpcore.ReadTimeout):  # nothing more comes: a read times out
                await stream.read(65536, 0.05)
        finally:
            await stream.aclose()
    if anyio_backend == "trio":
        assert asked  # the connections are anyio's, asked for a whole buffer a read
        assert min(asked) >= _net.READ_SIZE
    else:
        assert asked == []  # the connections are the client's own


@contextlib.contextmanager
def _backlog() -> Iterator[socket.socket]:
    """A plain listening socket with a small receive buffer: a connection waits in its
    backlog, read by nobody (an event-loop server would read it into memory at once)."""
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener


_SMALL = [(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)]
_BIG = _BODY * 5  # 15 MiB: well past the small socket buffers


def _accept_and_read(listener: socket.socket) -> bytes:
    conn, _ = listener.accept()
    with conn:
        got = bytearray()
        while len(got) < len(_BIG):
            got += conn.recv(1 << 20)
        conn.sendall(b"ok")
    return bytes(got)


async def test_a_big_write_reaches_a_slow_reader_whole():
    with _backlog() as listener:
        port = listener.getsockname()[1]
        stream = await _net._Backend().connect_tcp("127.0.0.1", port, 10, socket_options=_SMALL)
        try:
            received: list[bytes] = []

            async def serve() -> None:
                received.append(await anyio.to_thread.run_sync(_accept_and_read, listener))

            async with anyio.create_task_group() as tg:
                tg.start_soon(serve)
                await stream.write(_BIG, 30)
                assert await stream.read(65536, 30) == b"ok"
            assert received == [_BIG]
        finally:
            await stream.aclose()


async def test_a_write_to_a_peer_that_reads_nothing_times_out(anyio_backend):
    # asyncio's transport takes every byte at once, so the write waits for its buffer to
    # drain; and, the bytes being the transport's, a timed-out write still goes out whole.
    with _backlog() as listener:
        port = listener.getsockname()[1]
        stream = await _net._Backend().connect_tcp("127.0.0.1", port, 10, socket_options=_SMALL)
        try:
            with pytest.raises(httpcore.WriteTimeout):
                await stream.write(_BIG, 0.2)
            if anyio_backend == "asyncio":  # trio's stream is broken by a cancelled send
                got = await anyio.to_thread.run_sync(_accept_and_read, listener)
                assert got == _BIG
                assert await stream.read(65536, 10) == b"ok"
        finally:
            await stream.aclose()


async def test_a_connection_reset_is_a_read_error_and_a_refused_one_a_connect_error():
    async def handle(conn: ByteStream) -> None:
        sock = conn.extra(anyio.abc.SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        await conn.aclose()  # SO_LINGER 0: the close is a reset

    async with _serve(handle) as port:
        stream = await _net._Backend().connect_tcp("127.0.0.1", port, 10)
        try:
            with pytest.raises((httpcore.ReadError, httpcore.WriteError)):  # noqa: PT012
                for _ in range(100):  # a reset ends a read, or the write after an end
                    await stream.write(b"x" * 65536, 10)
                    await stream.read(65536, 10)
        finally:
            await stream.aclose()
    with pytest.raises(httpcore.ConnectError):
        await _net._Backend().connect_tcp("127.0.0.1", port, 10)


async def test_tls_through_the_client_on_either_backend(tmp_path):
    server_ctx, client_ctx = _cert(tmp_path)
    body = _BODY[: 2 * _net.READ_SIZE + 5]

    async def handle(conn: ByteStream) -> None:
        async with conn:
            request = b""
            while b"\r\n\r\n" not in request:
                request += await conn.receive()
            head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode()
            await conn.send(head + body)

    async with _serve(handle, server_ctx) as port:
        limits = httpx.Limits(max_connections=2)
        async with httpx.AsyncClient(transport=_net.transport(client_ctx, limits)) as http:
            resp = await http.get(f"https://localhost:{port}/v2/")
            assert resp.status_code == 200
            assert resp.content == body
        untrusting = ssl.create_default_context()  # the system's store: the certificate fails
        async with httpx.AsyncClient(transport=_net.transport(untrusting, limits)) as http:
            with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
                await http.get(f"https://localhost:{port}/v2/")


async def _connect_resolving_to(port: int, *hosts: str) -> httpcore.AsyncNetworkStream:
    """Connect to ``port`` of a name that resolves to ``hosts`` (loopback), in that order."""

    async def getaddrinfo(host: str, port_: int, **kw: object) -> list[tuple[object, ...]]:
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (h, port)) for h in hosts]

    with pytest.MonkeyPatch.context() as m:  # not for the listeners: only for this connect
        m.setattr(_net.anyio, "getaddrinfo", getaddrinfo)  # the client's own (asyncio)
        m.setattr(anyio._core._sockets, "getaddrinfo", getaddrinfo)  # anyio's (trio)
        return await _net._Backend().connect_tcp("example.test", port, 10)


async def _says_hi(port: int, resolved: tuple[str, ...], *answering: str) -> None:
    stream = await _connect_resolving_to(port, *resolved)
    try:
        assert stream.get_extra_info("server_addr") in [(h, port) for h in answering]
        assert await stream.read(65536, 10) == b"hi"
    finally:
        await stream.aclose()


async def test_a_host_s_next_address_is_tried_when_one_refuses(monkeypatch):
    # Three loopback addresses on one port: nothing listens on 127.0.0.1's (refused at once).
    async def handle(conn: ByteStream) -> None:
        async with conn:
            await conn.send(b"hi")

    async with _serve(handle, host="127.0.0.2") as port:
        await _says_hi(port, ("127.0.0.1", "127.0.0.2"), "127.0.0.2")
        monkeypatch.setattr(_net, "_HAPPY_EYEBALLS_DELAY", 0.0)  # asyncio: both at once, one kept
        async with _serve(handle, host="127.0.0.3", port=port):
            for _ in range(5):  # the other one closed, or the test fails on its open socket
                await _says_hi(port, ("127.0.0.2", "127.0.0.3"), "127.0.0.2", "127.0.0.3")
        with pytest.raises(httpcore.ConnectError):  # asyncio names the refusal, anyio sums up
            await _connect_resolving_to(port, "127.0.0.1")
