"""Content digests (DIG-1..6): ``Digest``, a validated ``str``, hashing and blob paths. Pure."""

from __future__ import annotations

import hashlib
import re
from typing import Final

from castar.store.errors import InvalidArgument

#: What hashing and writing accept: no copies are made of any of these.
Buffer = bytes | bytearray | memoryview

__all__ = [
    "ALGORITHMS",
    "CANONICAL",
    "Buffer",
    "Digest",
    "InvalidDigestFormat",
    "InvalidDigestLength",
    "UnsupportedDigestAlgorithm",
    "blob_path",
    "compute",
    "from_hasher",
    "hasher",
    "parse",
]

#: Available algorithms and the length of their hex encoding (DIG-2).
ALGORITHMS: Final[dict[str, int]] = {"sha256": 64, "sha512": 128}
CANONICAL: Final = "sha256"

_GRAMMAR = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_HEX = re.compile(r"[a-f0-9]+")


class InvalidDigestFormat(InvalidArgument):
    """The string is not a digest (DIG-3 steps 1, 2 and 4)."""

    def __init__(self, value: str) -> None:
        super().__init__("invalid checksum digest format")
        self.value = value


class InvalidDigestLength(InvalidArgument):
    """The encoded part has the wrong length for its algorithm (DIG-3 step 3)."""

    def __init__(self, value: str) -> None:
        super().__init__("invalid checksum digest length")
        self.value = value


class UnsupportedDigestAlgorithm(InvalidArgument):
    """The algorithm is grammatical but not available (DIG-2)."""

    def __init__(self, value: str) -> None:
        super().__init__(f"unsupported digest algorithm {value.partition(':')[0]}")
        self.value = value


def parse(value: str) -> Digest:
    """``value`` validated in DIG-3's order, as a :class:`Digest`."""
    return Digest(value)


class Digest(str):
    """A validated ``<algorithm>:<hex>`` string."""

    __slots__ = ()

    def __new__(cls, value: str) -> Digest:  # noqa: D102 - the class docstring is the contract
        if type(value) is cls:
            return value
        alg, sep, enc = value.partition(":")
        if not sep or not enc:
            raise InvalidDigestFormat(value)
        size = ALGORITHMS.get(alg)
        if size is None:
            if _GRAMMAR.fullmatch(value) is None:
                raise InvalidDigestFormat(value)
            raise UnsupportedDigestAlgorithm(value)
        if len(enc) != size:
            raise InvalidDigestLength(value)
        if _HEX.fullmatch(enc) is None:
            raise InvalidDigestFormat(value)
        return super().__new__(cls, value)

    @property
    def algorithm(self) -> str:
        """Text before the first colon (DIG-5)."""
        return self.partition(":")[0]

    @property
    def encoded(self) -> str:
        """Text after the first colon (DIG-5)."""
        return self.partition(":")[2]

    def __repr__(self) -> str:
        return f"Digest({str(self)!r})"


def hasher(algorithm: str = CANONICAL) -> hashlib._Hash:
    """A fresh hash object for an available algorithm."""
    if algorithm not in ALGORITHMS:
        raise UnsupportedDigestAlgorithm(f"{algorithm}:")
    return hashlib.new(algorithm)


def compute(data: Buffer, algorithm: str = CANONICAL) -> Digest:
    """Digest of ``data`` (DIG-5). Hashing large buffers belongs in a worker thread."""
    h = hasher(algorithm)
    h.update(data)
    return Digest(f"{algorithm}:{h.hexdigest()}")


def from_hasher(h: hashlib._Hash) -> Digest:
    """The digest a finished hash object gives."""
    return Digest(f"{h.name}:{h.hexdigest()}")


def blob_path(digest: str) -> str:
    """Relative path ``blobs/<alg>/<hex>`` of a blob (DIG-6), in the store and in archives."""
    d = parse(digest)
    return f"blobs/{d.algorithm}/{d.encoded}"
