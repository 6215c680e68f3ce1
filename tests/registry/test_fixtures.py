"""The registry fixtures answer: plain without credentials, htpasswd 401 without and 200 with."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request


def status(url: str, credentials: tuple[str, str] | None = None) -> int:
    request = urllib.request.Request(url + "/v2/")
    if credentials is not None:
        token = base64.b64encode(":".join(credentials).encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as e:
        return e.code


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
