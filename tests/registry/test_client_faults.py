"""Request failures reading a body or fetching a token (ERR-10); the login check (ERR-5)."""

from __future__ import annotations

import httpx
import pytest

from castar.engine.registry import client
from castar.engine.registry.client import Registry
from castar.store.errors import Unavailable

pytestmark = pytest.mark.anyio

_BEARER = 'Bearer realm="http://auth.test/token",service="reg"'


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(client, "_BACKOFF", 0.0)


class _Dropped(httpx.AsyncByteStream):
    """A body cut off after its first bytes, as when the connection resets."""

    async def __aiter__(self):
        yield b'{"sch'
        raise httpx.ReadError("connection reset by peer")


def _registry(handler) -> Registry:
    return Registry("reg.test", plain_http=True, transport=httpx.MockTransport(handler))


@pytest.mark.parametrize("drops", [1, 2])
async def test_a_body_cut_off_is_read_again(drops):
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        if len(seen) <= drops:
            return httpx.Response(200, stream=_Dropped())
        return httpx.Response(200, content=b'{"schemaVersion": 2}')

    async with _registry(handler) as reg:
        resp = await reg.request("GET", "a/b", "manifests/1")
    assert resp.content == b'{"schemaVersion": 2}'
    assert len(seen) == drops + 1


async def test_a_body_always_cut_off_is_unavailable():
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        return httpx.Response(200, stream=_Dropped())

    async with _registry(handler) as reg:
        with pytest.raises(Unavailable, match=r"GET http://reg\.test/v2/a/b/manifests/1: ReadErr"):
            await reg.request("GET", "a/b", "manifests/1")
    assert len(seen) == client._TRIES


async def test_an_error_body_cut_off_is_unavailable():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(404, stream=_Dropped())

    async with _registry(handler) as reg:
        with pytest.raises(Unavailable, match="ReadError"):
            await reg.request("GET", "a/b", "manifests/1")


async def test_an_undecodable_body_is_retried_then_unavailable():
    # A body its Content-Encoding does not decode is a RequestError, not a TransportError:
    # it is retried like a dropped connection, then Unavailable, never a raw httpx error.
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        return httpx.Response(200, headers={"Content-Encoding": "gzip"}, content=b"not gzip")

    async with _registry(handler) as reg:
        with pytest.raises(Unavailable, match=r"GET http://reg\.test/v2/a/b/manifests/1: Decod"):
            await reg.request("GET", "a/b", "manifests/1")
    assert len(seen) == client._TRIES


@pytest.mark.parametrize("fails", [1, client._TRIES])
async def test_token_fetch_failures_retried_then_unavailable(fails):
    tokens: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.host == "auth.test":
            tokens.append(req)
            if len(tokens) <= fails:
                raise httpx.ConnectError("connection refused")
            return httpx.Response(200, json={"token": "t"})
        if req.headers.get("Authorization") != "Bearer t":
            return httpx.Response(401, headers={"WWW-Authenticate": _BEARER})
        return httpx.Response(200, content=b"ok")

    async with _registry(handler) as reg:
        if fails < client._TRIES:
            assert (await reg.request("GET", "a/b", "manifests/1")).content == b"ok"
        else:
            with pytest.raises(Unavailable, match=r"GET http://auth\.test/token.*ConnectError"):
                await reg.request("GET", "a/b", "manifests/1")
    assert len(tokens) == min(fails + 1, client._TRIES)


@pytest.mark.parametrize("name", ["docker.io", "index.docker.io", "registry-1.docker.io"])
async def test_login_to_docker_hub_checks_its_api_host(monkeypatch, name):
    seen: list[httpx.URL] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url)
        return httpx.Response(200)

    class Fake(Registry):
        def __init__(self, host: str, **kw) -> None:
            super().__init__(host, transport=httpx.MockTransport(handler), **kw)

    monkeypatch.setattr(client, "Registry", Fake)
    await client.check_credentials(name, "me", "secret")
    assert [str(u) for u in seen] == ["https://registry-1.docker.io/v2/"]
