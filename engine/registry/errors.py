"""A registry's error answer as castar's error category, the registry's message kept (ERR-4)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Final, NoReturn
from urllib.parse import parse_qs, urlsplit, urlunsplit

from castar.store.errors import (
    CastarError,
    DigestMismatch,
    FailedPrecondition,
    InvalidArgument,
    MalformedManifest,
    NotFound,
    NotImplementedKind,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)

if TYPE_CHECKING:
    from collections.abc import Callable

#: The distribution spec's error codes (and distribution 2.8's extras) by category.
_BY_CODE: Final[dict[str, Callable[[str], CastarError]]] = {
    "NAME_UNKNOWN": NotFound,
    "MANIFEST_UNKNOWN": NotFound,
    "BLOB_UNKNOWN": NotFound,
    "BLOB_UPLOAD_UNKNOWN": NotFound,
    "UNAUTHORIZED": Unauthenticated,
    "DENIED": PermissionDenied,
    "TOOMANYREQUESTS": Unavailable,
    "UNAVAILABLE": Unavailable,
    "MANIFEST_INVALID": MalformedManifest,
    "MANIFEST_UNVERIFIED": MalformedManifest,
    "MANIFEST_BLOB_UNKNOWN": FailedPrecondition,
    "UNSUPPORTED": NotImplementedKind,
    "NAME_INVALID": InvalidArgument,
    "TAG_INVALID": InvalidArgument,
    "SIZE_INVALID": InvalidArgument,
    "BLOB_UPLOAD_INVALID": InvalidArgument,
    "RANGE_INVALID": InvalidArgument,
    "PAGINATION_NUMBER_INVALID": InvalidArgument,
}
#: Without a known code, the HTTP status decides.
_BY_STATUS: Final[dict[int, Callable[[str], CastarError]]] = {
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    405: NotImplementedKind,
    408: Unavailable,
    429: Unavailable,
}


def safe_url(url: str) -> str:
    """``url`` without its user:password part."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def raise_for(method: str, url: str, status: int, body: bytes) -> NoReturn:
    """Raise the category of a registry's error answer, naming method, URL and its message.

    The JSON body's ``errors[0]`` (``code``, ``message``) picks the category when the code
    is known, else the status: 5xx is Unavailable, another 4xx InvalidArgument.
    """
    code, message = _first_error(body)
    context = f"{method} {safe_url(url)}: {status}"
    if code:
        context += f" {code}"
    if message:
        context += f": {message}"
    if code == "DIGEST_INVALID":
        expected = parse_qs(urlsplit(url).query).get("digest", [""])[0]
        raise DigestMismatch(context, expected=expected, actual="")
    make = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if make is None:
        make = Unavailable if status >= 500 else InvalidArgument if status >= 400 else CastarError
    raise make(context)


def _first_error(body: bytes) -> tuple[str, str]:
    try:
        first = json.loads(body[: 64 << 10])["errors"][0]
        return str(first.get("code") or ""), str(first.get("message") or "")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return "", ""
