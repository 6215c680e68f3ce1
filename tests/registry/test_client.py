"""The registry client against httpx's MockTransport: auth, retries, error mapping."""

from __future__ import annotations

import anyio
import httpx
import pytest

from castar.engine.registry import client
from castar.engine.registry.client import Registry, parse_ref
from castar.store.errors import (
    CastarError,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)

pytestmark = pytest.mark.anyio


def _registry(handler, **kw) -> Registry:
    return Registry("127.0.0.1:5000", transport=httpx.MockTransport(handler), **kw)


@pytest.fixture(autouse=True)
def _no_backoff(monkeypatch):
    monkeypatch.setattr(client, "_BACKOFF", 0.0)


def _error(status: int, code: str, message: str, **headers: str) -> httpx.Response:
    body = {"errors": [{"code": code, "message": message}]}
    return httpx.Response(status, json=body, headers=headers)


@pytest.mark.parametrize(
    ("ref", "want"),
    [
        ("alpine", ("registry-1.docker.io", "library/alpine", "latest", None)),
        ("127.0.0.1:5000/a/b:1", ("127.0.0.1:5000", "a/b", "1", None)),
        (
            "localhost/x@sha256:" + "a" * 64,
            ("localhost", "x", None, "sha256:" + "a" * 64),
        ),
    ],
)
def test_parse_ref(ref, want):
    assert parse_ref(ref) == want


@pytest.mark.parametrize(
    ("host", "scheme"),
    [
        ("127.0.0.1:5000", "http"),
        ("127.1.2.3", "http"),
        ("localhost:5000", "http"),
        ("[::1]:5000", "http"),
        ("ghcr.io", "https"),
        ("10.0.0.1:5000", "https"),
    ],
)
def test_scheme(host, scheme):
    assert Registry(host).base == f"{scheme}://{host}"
    assert Registry(host, plain_http=scheme != "http").base.startswith(
        "https" if scheme == "http" else "http:"
    )


def test_url():
    reg = Registry("127.0.0.1:5000")
    assert reg.url("a/b", "blobs/uploads/") == "http://127.0.0.1:5000/v2/a/b/blobs/uploads/"
    assert reg.url("a/b", "/v2/a/b/blobs/uploads/u?x=1") == (
        "http://127.0.0.1:5000/v2/a/b/blobs/uploads/u?x=1"
    )
    assert reg.url("a/b", "https://h/x") == "https://h/x"


async def test_bearer_token_fetched_once_per_scope():
    seen = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append((req.url.path, req.headers.get("Authorization")))
        if req.url.path == "/token":
            assert req.url.params["scope"] == "repository:a/b:pull"
            assert req.url.params["service"] == "reg"
            assert req.headers["Authorization"].startswith("Basic ")
            return httpx.Response(200, json={"token": "T"})
        if req.headers.get("Authorization") != "Bearer T":
            challenge = 'Bearer realm="http://127.0.0.1:5000/token",service="reg"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, content=b"doc")

    async with _registry(handler, credentials=lambda host: ("u", "p")) as reg:
        assert (await reg.request("GET", "a/b", "manifests/1")).content == b"doc"
        assert (await reg.request("GET", "a/b", "manifests/2")).content == b"doc"
    assert [p for p, _ in seen] == ["/v2/a/b/manifests/1", "/token", "/v2/a/b/manifests/1",
                                    "/v2/a/b/manifests/2"]  # fmt: skip


async def test_concurrent_challenges_fetch_one_token():
    tokens = 0
    challenged = 0
    all_challenged = anyio.Event()

    async def handler(req: httpx.Request) -> httpx.Response:
        nonlocal tokens, challenged
        if req.url.path == "/token":
            tokens += 1
            return httpx.Response(200, json={"token": "T"})
        if req.headers.get("Authorization") != "Bearer T":
            challenged += 1
            if challenged == 8:
                all_challenged.set()
            await all_challenged.wait()  # every request is challenged before any token
            challenge = 'Bearer realm="http://127.0.0.1:5000/token",service="reg"'
            return httpx.Response(401, headers={"WWW-Authenticate": challenge})
        return httpx.Response(200, content=b"doc")

    async with _registry(handler, jobs=8) as reg, anyio.create_task_group() as tg:
        for i in range(8):
            tg.start_soon(reg.request, "GET", "a/b", f"manifests/{i}")
    assert challenged == 8
    assert tokens == 1


async def test_basic_auth():
    def handler(req: httpx.Request) -> httpx.Response:
        if req.headers.get("Authorization") != "Basic dTpw":
            return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})
        return httpx.Response(200)

    calls = []

    def counted(req: httpx.Request) -> httpx.Response:
        calls.append(req.headers.get("Authorization"))
        return handler(req)

    async with _registry(counted, credentials=lambda host: ("u", "p")) as reg:
        await reg.request("HEAD", "a", "blobs/sha256:00")
        await reg.request("HEAD", "b", "blobs/sha256:00", scope="push,pull")
    assert calls == [None, "Basic dTpw", "Basic dTpw"]  # one challenge for the host
    async with _registry(handler) as reg:
        with pytest.raises(Unauthenticated, match=r"no credentials for 127\.0\.0\.1:5000"):
            await reg.request("HEAD", "a", "blobs/sha256:00")


async def test_credentials_never_in_errors():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(401, headers={"WWW-Authenticate": 'Basic realm="r"'})

    async with _registry(handler, credentials=lambda host: ("user", "hunter2")) as reg:
        with pytest.raises(Unauthenticated) as info:
            await reg.request("GET", "a", "manifests/x")
    assert "hunter2" not in str(info.value)
    assert "GET http://127.0.0.1:5000/v2/a/manifests/x: 401" in str(info.value)


async def test_retries_5xx_and_429_then_succeeds():
    answers = [httpx.Response(503), _error(429, "TOOMANYREQUESTS", "slow", **{"Retry-After": "0"})]

    def handler(req: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else httpx.Response(200, content=b"ok")

    async with _registry(handler) as reg:
        assert (await reg.request("GET", "a", "manifests/x")).content == b"ok"
    assert not answers


async def test_retries_are_bounded():
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500)

    async with _registry(handler) as reg:
        with pytest.raises(Unavailable, match="500"):
            await reg.request("GET", "a", "manifests/x")
    assert len(calls) == 3


async def test_connect_errors_retried():
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError("refused")
        return httpx.Response(200)

    async with _registry(handler) as reg:
        await reg.request("GET", "a", "manifests/x")
    assert len(calls) == 3

    def down(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    async with _registry(down) as reg:
        with pytest.raises(Unavailable, match="ConnectError"):
            await reg.request("GET", "a", "manifests/x")


async def test_other_4xx_not_retried_and_mapped():
    calls = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(1)
        return _error(404, "MANIFEST_UNKNOWN", "manifest unknown")

    async with _registry(handler) as reg:
        with pytest.raises(NotFound, match="MANIFEST_UNKNOWN: manifest unknown"):
            await reg.request("GET", "a", "manifests/x")
    assert len(calls) == 1


async def test_ok_statuses_and_stream():
    def handler(req: httpx.Request) -> httpx.Response:
        return httpx.Response(202, content=b"x" * 100, headers={"Location": "/v2/a/u"})

    async with _registry(handler) as reg:
        resp = await reg.request("POST", "a", "blobs/uploads/", ok=(202,))
        assert resp.headers["Location"] == "/v2/a/u"
        with pytest.raises(CastarError, match="202"):
            await reg.request("POST", "a", "blobs/uploads/")
        async with reg.stream("GET", "a", "blobs/sha256:00", ok=(202,)) as resp:
            assert b"".join([c async for c in resp.aiter_bytes()]) == b"x" * 100


@pytest.mark.parametrize("answer", [b"not json", b"[]", b'{"token": ""}'])
async def test_bad_token_answer(answer):
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/token":
            return httpx.Response(200, content=answer)
        challenge = 'Bearer realm="http://127.0.0.1:5000/token"'
        return httpx.Response(401, headers={"WWW-Authenticate": challenge})

    async with _registry(handler) as reg:
        with pytest.raises(InvalidArgument, match="no token in the answer"):
            await reg.request("GET", "a", "manifests/x")
