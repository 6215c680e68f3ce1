"""The registry fixtures answer: plain, htpasswd (401 without credentials, 200 with), token."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request

import pytest


def status(url: str, credentials: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url + "/v2/")
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    return status_of(request)


def test_plain_registry_answers(registry) -> None:
    assert registry.host.startswith("127.0.0.1:")
    assert registry.credentials is None
    assert status(registry.url) == 200


def test_auth_registry_needs_credentials(auth_registry) -> None:
    assert status(auth_registry.url) == 401
    assert status(auth_registry.url, ("castar", "wrong")) == 401
    assert status(auth_registry.url, auth_registry.credentials) == 200


async def test_small_image_loads(small_image, store) -> None:
    assert small_image.name == "docker.io/library/synth:1"
    assert await store.content.info(small_image.target.digest)


def test_token_registry_wants_a_bearer_token(token_registry) -> None:
    server, tokens = token_registry
    request = urllib.request.Request(server.url + "/v2/x/tags/list")
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(request, timeout=10)
    assert info.value.code == 401
    info.value.close()
    challenge = info.value.headers["WWW-Authenticate"]
    assert challenge.startswith("Bearer realm=")
    assert f'service="{tokens.service}"' in challenge
    assert 'scope="repository:x:pull"' in challenge

    realm = challenge.split('"')[1]
    query = f"?service={tokens.service}&scope=repository:x:pull,push"
    wrong = urllib.request.Request(realm + query)
    wrong.add_header("Authorization", "Basic " + base64.b64encode(b"castar:no").decode())
    assert status_of(wrong) == 401
    ask = urllib.request.Request(realm + query)
    ask.add_header("Authorization", "Basic " + base64.b64encode(b"castar:secret").decode())
    with urllib.request.urlopen(ask, timeout=10) as response:
        token = json.loads(response.read())["token"]
    assert tokens.scopes[-2:] == ["repository:x:pull,push"] * 2
    request.add_header("Authorization", f"Bearer {token}")
    assert status_of(request) == 404  # authorised: the repository is merely unknown
    request = urllib.request.Request(server.url + "/v2/")
    request.add_header("Authorization", "Bearer not.a.token")
    assert status_of(request) == 401


def status_of(request: urllib.request.Request) -> int:
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        e.close()
        return e.code
