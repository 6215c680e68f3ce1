"""Registry error answers map to castar's categories, the registry's message kept."""

from __future__ import annotations

import json

import pytest

import castar
from castar._cli import EXIT_CODES
from castar.engine.registry.errors import raise_for

URL = "http://127.0.0.1:5000/v2/library/x/manifests/latest"


def body(code: str, message: str) -> bytes:
    return json.dumps({"errors": [{"code": code, "message": message, "detail": {}}]}).encode()


@pytest.mark.parametrize(
    ("code", "status", "category"),
    [
        ("NAME_UNKNOWN", 404, castar.NotFound),
        ("MANIFEST_UNKNOWN", 404, castar.NotFound),
        ("BLOB_UNKNOWN", 404, castar.NotFound),
        ("UNAUTHORIZED", 401, castar.Unauthenticated),
        ("DENIED", 403, castar.PermissionDenied),
        ("TOOMANYREQUESTS", 429, castar.Unavailable),
        ("DIGEST_INVALID", 400, castar.DigestMismatch),
        ("MANIFEST_INVALID", 400, castar.MalformedManifest),
        ("MANIFEST_BLOB_UNKNOWN", 400, castar.FailedPrecondition),
        ("UNSUPPORTED", 405, castar.NotImplementedKind),
    ],
)
def test_code_picks_the_category(code: str, status: int, category: type) -> None:
    with pytest.raises(category) as info:
        raise_for("GET", URL, status, body(code, "the registry's words"))
    text = str(info.value)
    assert text.startswith(f"GET {URL}: {status} {code}: the registry's words")
    assert text.endswith(category.suffix)


@pytest.mark.parametrize(
    ("status", "category"),
    [
        (401, castar.Unauthenticated),
        (403, castar.PermissionDenied),
        (404, castar.NotFound),
        (408, castar.Unavailable),
        (429, castar.Unavailable),
        (500, castar.Unavailable),
        (503, castar.Unavailable),
        (400, castar.InvalidArgument),
        (418, castar.InvalidArgument),
    ],
)
def test_status_decides_without_a_known_code(status: int, category: type) -> None:
    for answer in (b"", b"<html>oops</html>", b'{"errors": []}', body("SOMETHING_NEW", "hm")):
        with pytest.raises(category) as info:
            raise_for("HEAD", URL, status, answer)
        assert type(info.value) is category
        assert str(info.value).startswith(f"HEAD {URL}: {status}")


def test_digest_invalid_names_the_expected_digest() -> None:
    url = "http://127.0.0.1:5000/v2/x/blobs/uploads/u?_state=s&digest=sha256%3Aab"
    with pytest.raises(castar.DigestMismatch) as info:
        raise_for("PUT", url, 400, body("DIGEST_INVALID", "provided digest did not match"))
    assert info.value.expected == "sha256:ab"
    assert "provided digest did not match" in str(info.value)


def test_no_credential_in_the_text() -> None:
    url = "https://castar:s3cret@registry.example/v2/x/blobs/sha256:ab"
    with pytest.raises(castar.Unauthenticated) as info:
        raise_for("GET", url, 401, body("UNAUTHORIZED", "authentication required"))
    assert "s3cret" not in str(info.value)
    assert "castar:" not in str(info.value)
    assert "https://registry.example/v2/x/blobs/sha256:ab" in str(info.value)


def test_auth_errors_have_their_exit_code() -> None:
    assert EXIT_CODES[castar.Unauthenticated] == EXIT_CODES[castar.PermissionDenied] == 7
    assert 7 not in {
        c
        for k, c in EXIT_CODES.items()
        if k not in (castar.Unauthenticated, castar.PermissionDenied)
    }
