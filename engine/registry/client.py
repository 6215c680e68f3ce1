"""One registry host over HTTP: auth challenges, bounded retries, error mapping."""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import random
import re
import ssl
from typing import TYPE_CHECKING, Final, TypedDict, TypeVar, Unpack

import anyio
import httpx

from castar.engine import reference
from castar.engine.registry import _net
from castar.engine.registry.auth import HUB
from castar.engine.registry.errors import raise_for
from castar.store.errors import InvalidArgument, SizeMismatch, Unauthenticated, Unavailable

if TYPE_CHECKING:
    from collections.abc import AsyncIterable, AsyncIterator, Callable, Mapping
    from contextlib import AbstractAsyncContextManager

    Body = bytes | AsyncIterable[bytes] | None

__all__ = ["Registry", "api_host", "check_credentials", "parse_ref", "single_flight"]


class _Options(TypedDict, total=False):
    scope: str  # the token scope: pull, or push,pull
    mount: str | None  # a repository of the registry also read (a mount's source)
    headers: Mapping[str, str] | None
    content: Body
    params: Mapping[str, str] | None
    limit: int | None  # the most body bytes read: more is SizeMismatch, before it is all read


_K = TypeVar("_K")
_TRIES: Final = 3
_RETRY_STATUS: Final = frozenset({408, 429})
_BACKOFF: Final = 0.2  # seconds before the second try, doubled for each next one
_MAX_WAIT: Final = 10.0  # the longest Retry-After honoured
_CHALLENGE_RE: Final = re.compile(r'(\w+)="([^"]*)"')


def parse_ref(ref: str) -> tuple[str, str, str | None, str | None]:
    """``(host, repository, tag, digest)`` of ``ref``; a digest wins, else ``latest``."""
    r = reference.parse_docker_ref(ref)
    return api_host(r.domain), r.path, r.tag or None, r.digest or None


def api_host(host: str) -> str:
    """The host serving ``host``'s registry API: Docker Hub's names go to its API host."""
    return HUB[0] if host in HUB else host


@contextlib.asynccontextmanager
async def single_flight(flights: dict[_K, anyio.Event], key: _K) -> AsyncIterator[None]:
    """Run the block for ``key`` once at a time: later callers wait for it, then run theirs."""
    while (flight := flights.get(key)) is not None:
        await flight.wait()
    flights[key] = flight = anyio.Event()
    try:
        yield
    finally:
        del flights[key]
        flight.set()


async def _read(resp: httpx.Response, limit: int | None, method: str, url: str) -> None:
    """Read ``resp``'s body, failing SizeMismatch once more than ``limit`` bytes arrive."""
    if limit is None:
        await resp.aread()
        return
    data = bytearray()
    async for chunk in resp.aiter_bytes():
        data += chunk
        if len(data) > limit:
            raise SizeMismatch(
                f"{method} {url}: the answer is larger than {limit} bytes",
                expected=limit,
                actual=len(data),
            )
    resp._content = bytes(data)  # what aread() keeps: resp.content is the body


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if host.count(":") == 1 or host.startswith("[") else host
    name = name.strip("[]")
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Registry:
    """A client of one registry host; an async context manager closing its connections.

    ``transport`` replaces httpx's own (a proxy, a test's fake registry).
    """

    def __init__(
        self,
        host: str,
        *,
        credentials: Callable[[str], tuple[str, str] | None] | None = None,
        plain_http: bool | None = None,
        jobs: int = 4,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        plain = _is_loopback(host) if plain_http is None else plain_http
        self.host = host
        self.base = f"{'http' if plain else 'https'}://{host}"
        self.jobs = jobs
        self.transfers = anyio.CapacityLimiter(jobs)  # blobs in flight, whoever sends them
        self._credentials = credentials
        # Registries send blob GETs on to storage (307 to a CDN); httpx drops Authorization
        # when a redirect leaves the origin. TLS is checked against the system trust store.
        limits = httpx.Limits(max_connections=jobs + 2)
        tls = ssl.create_default_context()
        self._client = httpx.AsyncClient(
            limits=limits,
            timeout=httpx.Timeout(60.0),
            follow_redirects=True,
            verify=tls,
            transport=transport or _net.transport(tls, limits),
        )
        self._auth: dict[tuple[str, ...], str] = {}  # token scopes -> Authorization
        self._basic: str | None = None  # basic credentials answer every repository
        self._auth_lock = anyio.Lock()  # concurrent 401s fetch one token, not one each

    async def __aenter__(self) -> Registry:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    def url(self, repo: str, path: str) -> str:
        """``path`` under ``/v2/<repo>/``; absolute URLs and ``/``-rooted paths kept."""
        if path.startswith(("http://", "https://")):
            return path
        if path.startswith("/"):
            return self.base + path
        return f"{self.base}/v2/{repo}/{path}"

    async def request(
        self,
        method: str,
        repo: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200,),
        **kw: Unpack[_Options],
    ) -> httpx.Response:
        """Send one request, its body read; a status not in ``ok`` raises the mapped error."""
        async with self._send(method, repo, path, ok=ok, read=True, **kw) as resp:
            return resp

    def stream(
        self,
        method: str,
        repo: str,
        path: str,
        *,
        ok: tuple[int, ...] = (200, 206),
        **kw: Unpack[_Options],
    ) -> AbstractAsyncContextManager[httpx.Response]:
        """Like :meth:`request`, the body left to stream (``aiter_bytes``)."""
        return self._send(method, repo, path, ok=ok, read=False, **kw)

    @contextlib.asynccontextmanager
    async def _send(
        self,
        method: str,
        repo: str,
        path: str,
        *,
        ok: tuple[int, ...],
        read: bool,
        scope: str = "pull",
        mount: str | None = None,
        headers: Mapping[str, str] | None = None,
        content: Body = None,
        params: Mapping[str, str] | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[httpx.Response]:
        url = self.url(repo, path)
        scopes: tuple[str, ...] = (f"repository:{repo}:{scope}",) if repo else ()  # "": login
        if mount is not None:  # a mount needs pull on its source too, in the same token
            scopes += (f"repository:{mount}:pull",)
        # A body that is not bytes can be sent once: no retry; a 401 renews the token, then
        # raises Unauthenticated for its sender to start over (PUSH-7).
        replayable = content is None or isinstance(content, bytes)
        authed = False
        tries = 0
        while True:
            tries += 1
            hdrs = dict(headers or {})
            token = self._auth.get(scopes, self._basic)
            if token is not None:
                hdrs["Authorization"] = token
            req = self._client.build_request(
                method, url, headers=hdrs, content=content, params=params
            )
            try:
                resp = await self._client.send(req, stream=True)
            except httpx.RequestError as exc:
                await self._retry(tries if replayable else _TRIES, method, url, exc)
                continue
            try:
                status = resp.status_code
                if status == 401 and not authed and replayable:
                    await resp.aclose()
                    await self._renew(scopes, token, resp, url)
                    authed = True
                    tries -= 1
                    continue
                if (status in _RETRY_STATUS or status >= 500) and tries < _TRIES and replayable:
                    wait = self.backoff(tries, resp.headers.get("Retry-After"))
                    await resp.aclose()
                    await anyio.sleep(wait)
                    continue
                if read or status not in ok:
                    try:
                        await _read(resp, limit if status in ok else None, method, url)
                    except httpx.RequestError as exc:
                        await self._retry(tries if replayable else _TRIES, method, url, exc)
                        continue
                if status not in ok:
                    if status == 401 and not authed:  # the body is gone: its sender may retry
                        await self._renew(scopes, token, resp, url)
                    raise_for(method, url, resp.status_code, resp.content)
                yield resp
                return
            finally:
                await resp.aclose()

    async def _renew(
        self, scopes: tuple[str, ...], token: str | None, resp: httpx.Response, url: str
    ) -> None:
        """Answer ``resp``'s 401 challenge, unless another task renewed ``token`` meanwhile."""
        async with self._auth_lock:
            if self._auth.get(scopes, self._basic) == token:
                await self._authenticate(scopes, resp.headers.get("WWW-Authenticate", ""), url)

    async def _retry(self, tries: int, method: str, url: str, exc: httpx.RequestError) -> None:
        """Wait before try ``tries + 1``; after the last one, raise Unavailable."""
        if tries >= _TRIES:
            raise Unavailable(f"{method} {url}: {type(exc).__name__}: {exc}") from exc
        await anyio.sleep(self.backoff(tries, None))

    @staticmethod
    def backoff(tries: int, retry_after: str | None = None) -> float:
        """Seconds to wait after try ``tries``: ``Retry-After``, else doubling, jittered."""
        if retry_after is not None and retry_after.strip().isdigit():
            return min(float(retry_after), _MAX_WAIT)
        return _BACKOFF * (1 << (tries - 1)) * (0.5 + random.random())

    async def _authenticate(self, scopes: tuple[str, ...], challenge: str, url: str) -> None:
        """Answer a 401 ``challenge``: basic credentials, or a bearer token for the scope."""
        kind, _, rest = challenge.partition(" ")
        creds = None
        if self._credentials is not None:  # config files, maybe a credential helper process
            creds = await anyio.to_thread.run_sync(self._credentials, self.host)
        basic = None if creds is None else httpx.BasicAuth(*creds)
        if kind.lower() == "basic":
            if creds is None:
                raise Unauthenticated(f"{url}: no credentials for {self.host} (castar login)")
            pair = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
            self._basic = f"Basic {pair}"
            return
        if kind.lower() != "bearer":
            raise InvalidArgument(f"{url}: unsupported authentication challenge {kind!r}")
        fields = dict(_CHALLENGE_RE.findall(rest))
        realm = fields.get("realm")
        if not realm:
            raise InvalidArgument(f"{url}: bearer challenge without a realm")
        params = httpx.QueryParams([("scope", scope) for scope in scopes])
        if "service" in fields:
            params = params.add("service", fields["service"])
        resp, tries = None, 0
        while resp is None:
            tries += 1
            try:
                resp = await self._client.get(
                    realm, params=params, auth=basic or httpx.USE_CLIENT_DEFAULT
                )
            except httpx.RequestError as exc:
                await self._retry(tries, "GET", realm, exc)
        if resp.status_code != 200:
            raise_for("GET", realm, resp.status_code, resp.content)
        try:
            body = resp.json()
            token = body.get("token") or body.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise InvalidArgument(f"GET {realm}: no token in the answer")
        self._auth[scopes] = f"Bearer {token}"


async def check_credentials(host: str, user: str, password: str) -> None:
    """Docker's login check: ``GET /v2/`` with the credentials (a token for no scope), else raise.

    A registry without authentication answers 200 to anyone: the check passes.
    """
    async with Registry(api_host(host), credentials=lambda _host: (user, password)) as registry:
        await registry.request("GET", "", "/v2/")
