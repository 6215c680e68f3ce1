"""castar's error categories (containerd errdefs, ERR-1) and the one ``OSError`` translation.

Messages follow Go's ``%w`` wrapping: ``<context>: <suffix>`` (``not found``…).
"""

from __future__ import annotations

import contextlib
import errno
from typing import TYPE_CHECKING, ClassVar, Final

if TYPE_CHECKING:
    from collections.abc import Iterator

__all__ = [
    "AlreadyExists",
    "CastarError",
    "Conflict",
    "DataLoss",
    "DigestMismatch",
    "FailedPrecondition",
    "InvalidArgument",
    "MalformedArchive",
    "MalformedManifest",
    "NotFound",
    "NotImplementedKind",
    "PermissionDenied",
    "SizeMismatch",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedMediaType",
    "UsageError",
    "map_os_errors",
    "shorten",
]


class CastarError(Exception):
    """Base of every error castar raises on purpose: ``str()`` is ``<message>: <suffix>``."""

    suffix: ClassVar[str] = "internal"

    def __init__(self, message: str = "") -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        if not self.message:
            return self.suffix
        if self.message.endswith(self.suffix):
            return self.message
        return f"{self.message}: {self.suffix}"


class NotFound(CastarError, LookupError):
    """The named blob, image, lease, ingest or platform does not exist."""

    suffix = "not found"


class AlreadyExists(CastarError):
    """The object exists already; helpers that only want it present treat this as success."""

    suffix = "already exists"


class InvalidArgument(CastarError, ValueError):
    """The caller's input is wrong: fix the input, retrying will not help."""

    suffix = "invalid argument"


class UsageError(InvalidArgument):
    """A command-line value (a store root, a name to record) is not valid: the CLI exits 2."""


class MalformedArchive(InvalidArgument):
    """A tar stream or image archive is not well formed (at ``offset``, in ``member``)."""

    def __init__(
        self, message: str, *, offset: int | None = None, member: str | None = None
    ) -> None:
        where = []
        if member is not None:
            where.append(f"member {member!r}")
        if offset is not None:
            where.append(f"offset {offset}")
        full = f"{message} ({', '.join(where)})" if where else message
        super().__init__(full)
        self.offset = offset
        self.member = member


class MalformedManifest(InvalidArgument):
    """A JSON document (manifest, index, config, layout) cannot be decoded."""


class UnsupportedMediaType(InvalidArgument):
    """A document has a media type castar does not handle (e.g. schema 1)."""


class FailedPrecondition(CastarError):
    """The system is not in the state the operation needs (e.g. a digest check failed)."""

    suffix = "failed precondition"


class DigestMismatch(FailedPrecondition):
    """Bytes did not hash to the ``expected`` digest; ``actual`` is the one they have."""

    def __init__(self, message: str, *, expected: str, actual: str) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class SizeMismatch(FailedPrecondition):
    """Bytes were not of the ``expected`` size; ``actual`` is the size seen."""

    def __init__(self, message: str, *, expected: int, actual: int) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual


class Unavailable(CastarError):
    """A resource is busy (e.g. an ingest ref is locked by another writer): retry later."""

    suffix = "unavailable"


class Unauthenticated(CastarError):
    """A registry wants credentials that were not given or that it rejected."""

    suffix = "unauthenticated"


class PermissionDenied(CastarError):
    """A registry refused the operation to the credentials given."""

    suffix = "permission denied"


class Conflict(CastarError):
    """The request is ambiguous or conflicts with the current state (e.g. two matches)."""

    suffix = "conflict"


class NotImplementedKind(CastarError):
    """The request names a feature castar does not implement (errdefs NotImplemented)."""

    suffix = "not implemented"


class DataLoss(CastarError):
    """A recorded blob is missing or corrupt on disk: the store needs repair."""

    suffix = "data loss"


def shorten(text: str, limit: int = 80) -> str:
    """``text`` cut for a message: a 10,000-character name or path is named, not printed."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


_NOT_FOUND: Final = frozenset({errno.ENOENT, errno.ENOTDIR})
_DATA_LOSS: Final = frozenset({errno.EIO, errno.EUCLEAN, errno.EBADMSG})
_UNAVAILABLE: Final = frozenset(
    {errno.ENOSPC, errno.EDQUOT, errno.EAGAIN, errno.EMFILE, errno.ENFILE, errno.EINTR}
)
_PRECONDITION: Final = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})


@contextlib.contextmanager
def map_os_errors(context: str) -> Iterator[None]:
    """Translate an ``OSError`` into its category once, at the seam (design rule errors-seam).

    ENOENT becomes ``NotFound(context)``, EIO ``DataLoss``, ENOSPC ``Unavailable``, EACCES
    ``FailedPrecondition``, anything else ``CastarError``; the OS message and path follow.
    """
    try:
        yield
    except OSError as exc:
        code = exc.errno
        if code in _NOT_FOUND:
            raise NotFound(context) from exc
        detail = f"{context}: {exc.strerror or exc}"
        if exc.filename is not None:
            detail += f" ({exc.filename})"
        if code in _DATA_LOSS:
            raise DataLoss(detail) from exc
        if code in _UNAVAILABLE:
            raise Unavailable(detail) from exc
        if code in _PRECONDITION:
            raise FailedPrecondition(detail) from exc
        raise CastarError(detail) from exc
