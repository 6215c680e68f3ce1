"""The registry client's sockets: httpcore's network-backend interface, read in big steps.

httpcore asks each read for 64 KiB. On trio, anyio's stream is used with each read asking
for :data:`READ_SIZE`. On asyncio, anyio's stream hands out one transport chunk (at most
256 KiB) per read and pauses and resumes the socket's reader around every wait, two
``epoll_ctl`` calls a chunk; a connection here is instead an ``asyncio.BufferedProtocol``
that keeps reading into one buffer of :data:`READ_SIZE` bytes while the caller works, is
paused only when that buffer is full, and hands out all it holds at once. Errors are
httpcore's (which httpx maps to its own), as its anyio backend raises them.

The signatures, ``timeout`` arguments included, are httpcore's interface (ASYNC109).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import TYPE_CHECKING, Final

import anyio
import anyio.lowlevel
import httpcore
import httpx

if TYPE_CHECKING:
    import ssl
    from collections.abc import Iterable, Iterator

__all__ = ["READ_SIZE", "transport"]

#: The bytes one read may return: a blob body costs the event loop, h11 and the ingest a
#: sixteenth of the steps of httpcore's 64 KiB.
READ_SIZE: Final = 1 << 20


@contextlib.contextmanager
def _mapped(timeout_error: type[Exception], os_error: type[Exception]) -> Iterator[None]:
    """Anyio's timeouts and the socket's errors as the httpcore errors named."""
    try:
        yield
    except TimeoutError as exc:
        raise timeout_error(str(exc) or "timed out") from exc
    except (OSError, EOFError) as exc:  # ssl.SSLError is an OSError
        raise os_error(_describe(exc)) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _asyncio_task() -> bool:
    """Whether the caller is an asyncio task (not trio, not trio in guest mode)."""
    try:
        return asyncio.current_task() is not None
    except RuntimeError:  # no asyncio loop running in this thread
        return False


class _Protocol(asyncio.BufferedProtocol):
    """One connection's reads: the loop writes into :attr:`buffer` until it is full."""

    def __init__(self) -> None:
        self.buffer = bytearray(READ_SIZE)
        self.held = 0  # bytes of buffer not yet handed out
        self.eof = False
        self.lost: Exception | None = None  # the error the connection ended with
        self.transport: asyncio.Transport | None = None
        self._readable: asyncio.Future[None] | None = None
        self._writable: asyncio.Future[None] | None = None  # while the kernel's buffer is full

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)[self.held :]

    def buffer_updated(self, nbytes: int) -> None:
        self.held += nbytes
        if self.held == len(self.buffer) and self.transport is not None:
            self.transport.pause_reading()  # until take() empties it
        self._wake_reader()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake_reader()
        return False  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        self.lost = exc
        self._wake_reader()
        self.resume_writing()

    def pause_writing(self) -> None:
        if self._writable is None:
            self._writable = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._writable = self._writable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_reader(self) -> None:
        waiter, self._readable = self._readable, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def readable(self) -> None:
        """Wait for bytes, the end of the stream or the connection's loss."""
        while not self.held and not self.eof:
            self._readable = asyncio.get_running_loop().create_future()
            await self._readable

    async def writable(self) -> None:
        """Wait until the transport takes more (its flow control), or the connection ends."""
        while self._writable is not None:
            await self._writable

    def take(self) -> bytes:
        """All that is held (a read asks for at least the buffer's size); reading resumes."""
        full = self.held == len(self.buffer)  # reading was paused when the buffer filled
        with memoryview(self.buffer) as view:
            data = bytes(view[: self.held])
        self.held = 0
        if full and self.transport is not None:
            self.transport.resume_reading()
        return data


class _AsyncioStream(httpcore.AsyncNetworkStream):
    """An asyncio connection as httpcore's stream (plain, or TLS after :meth:`start_tls`)."""

    def __init__(self, transport: asyncio.Transport, protocol: _Protocol) -> None:
        self._transport = transport
        self._protocol = protocol

    @property
    def held(self) -> int:
        """Bytes received and not yet read."""
        return self._protocol.held

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        p = self._protocol
        with _mapped(httpcore.ReadTimeout, httpcore.ReadError):
            if p.held:
                await anyio.lowlevel.checkpoint()
            else:
                with anyio.fail_after(timeout):
                    await p.readable()
        if p.held:  # all of it, up to READ_SIZE: more than httpcore asks, as _AnyIOStream asks
            return p.take()
        if p.lost is not None:
            raise httpcore.ReadError(_describe(p.lost)) from p.lost
        return b""

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        if not buffer:
            return
        p = self._protocol
        if self._transport.is_closing():
            raise httpcore.WriteError(_describe(p.lost) if p.lost else "the connection is closed")
        self._transport.write(buffer)
        with _mapped(httpcore.WriteTimeout, httpcore.WriteError), anyio.fail_after(timeout):
            await p.writable()
        if p.lost is not None:
            raise httpcore.WriteError(_describe(p.lost)) from p.lost

    async def aclose(self) -> None:
        self._transport.close()
        await anyio.lowlevel.checkpoint()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        loop = asyncio.get_running_loop()
        try:
            with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError), anyio.fail_after(timeout):
                tls = await loop.start_tls(
                    self._transport, self._protocol, ssl_context, server_hostname=server_hostname
                )
        except BaseException:
            self._transport.close()
            raise
        if tls is None:  # the connection closed during the handshake
            raise httpcore.ConnectError("the connection closed during the TLS handshake")
        assert isinstance(tls, asyncio.Transport)
        self._protocol.transport = tls  # the protocol's reads now come through TLS
        return _AsyncioStream(tls, self._protocol)

    def get_extra_info(self, info: str) -> object:
        if info == "is_readable":  # an idle connection with bytes or an end: the pool drops it
            return self._protocol.held > 0 or self._protocol.eof
        name = {"client_addr": "sockname", "server_addr": "peername"}.get(info, info)
        if name in ("ssl_object", "sockname", "peername", "socket"):
            return self._transport.get_extra_info(name)
        return None


class _AnyIOStream(httpcore.AsyncNetworkStream):
    """httpcore's anyio stream (trio), each read asking for at least :data:`READ_SIZE`."""

    def __init__(self, stream: httpcore.AsyncNetworkStream) -> None:
        self._stream = stream

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:  # noqa: ASYNC109
        return await self._stream.read(max(max_bytes, READ_SIZE), timeout)

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:  # noqa: ASYNC109
        await self._stream.write(buffer, timeout)

    async def aclose(self) -> None:
        await self._stream.aclose()

    async def start_tls(
        self,
        ssl_context: ssl.SSLContext,
        server_hostname: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> httpcore.AsyncNetworkStream:
        return _AnyIOStream(await self._stream.start_tls(ssl_context, server_hostname, timeout))

    def get_extra_info(self, info: str) -> object:
        return self._stream.get_extra_info(info)


#: How long one address is tried before the next starts too (RFC 8305, as anyio's connect_tcp).
_HAPPY_EYEBALLS_DELAY: Final = 0.25


async def _connect(
    host: str, port: int, local_address: str | None
) -> tuple[asyncio.Transport, _Protocol]:
    """A connection to the first of ``host``'s addresses to answer (happy eyeballs).

    Each address is one ``create_connection`` of its own, started
    :data:`_HAPPY_EYEBALLS_DELAY` after the one before or as soon as it fails, the rest
    cancelled when one connects. asyncio's own ``happy_eyeballs_delay`` is not used: a
    cancelled staggered race there can leave a connected socket nobody closes (3.11).
    """
    loop = asyncio.get_running_loop()
    infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses = list(dict.fromkeys((family, sockaddr[:2]) for family, *_, sockaddr in infos))
    made: list[tuple[asyncio.Transport, _Protocol]] = []
    errors: list[OSError] = []

    async def attempt(family: int, address: tuple[str, int], failed: anyio.Event) -> None:
        try:
            transport, protocol = await loop.create_connection(
                _Protocol,
                address[0],
                address[1],
                family=family,
                local_addr=(local_address, 0) if local_address else None,
            )
        except OSError as exc:
            errors.append(exc)
            failed.set()
            return
        assert isinstance(transport, asyncio.Transport)
        made.append((transport, protocol))
        tg.cancel_scope.cancel()

    try:
        async with anyio.create_task_group() as tg:
            for family, address in addresses:
                failed = anyio.Event()
                tg.start_soon(attempt, family, address, failed)
                with anyio.move_on_after(_HAPPY_EYEBALLS_DELAY):
                    await failed.wait()
    except BaseException:
        for transport, _ in made:
            transport.close()
        raise
    for transport, _ in made[1:]:  # two answered at once: the first is kept
        transport.close()
    if not made:
        raise (
            errors[0]
            if len(errors) == 1
            else OSError(f"all connection attempts failed: {'; '.join(map(str, errors))}")
        )
    return made[0]


class _Backend(httpcore.AsyncNetworkBackend):
    """TCP connections as :class:`_AsyncioStream` on asyncio, else as :class:`_AnyIOStream`."""

    def __init__(self) -> None:
        self._anyio = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        if not _asyncio_task():
            return _AnyIOStream(
                await self._anyio.connect_tcp(host, port, timeout, local_address, socket_options)
            )
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError), anyio.fail_after(timeout):
            transport, protocol = await _connect(host, port, local_address)
        with _mapped(httpcore.ConnectTimeout, httpcore.ConnectError):
            try:
                sock = transport.get_extra_info("socket")
                for option in socket_options or ():
                    sock.setsockopt(*option)
            except BaseException:
                transport.close()
                raise
        return _AsyncioStream(transport, protocol)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        return _AnyIOStream(await self._anyio.connect_unix_socket(path, timeout, socket_options))

    async def sleep(self, seconds: float) -> None:
        await anyio.sleep(seconds)


def transport(ssl_context: ssl.SSLContext, limits: httpx.Limits) -> httpx.AsyncHTTPTransport:
    """The transport of httpx (its error mapping), its pool on this module's backend.

    httpx takes no network backend, so its pool is replaced by one made as it makes it.
    """
    made = httpx.AsyncHTTPTransport(verify=ssl_context, limits=limits)
    made._pool = httpcore.AsyncConnectionPool(
        ssl_context=ssl_context,
        max_connections=limits.max_connections,
        max_keepalive_connections=limits.max_keepalive_connections,
        keepalive_expiry=limits.keepalive_expiry,
        network_backend=_Backend(),
    )
    return made
