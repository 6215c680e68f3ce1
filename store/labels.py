"""The GC label vocabulary (containerd ``pkg/gc``), the reference-label rule (GC-2..7), times."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, final

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = [
    "BREF",
    "EXPIRE",
    "FLAT",
    "REF",
    "REFERRER",
    "REF_CONTENT",
    "ROOT",
    "SOURCE",
    "Edge",
    "expired",
    "format_time",
    "is_content_ref",
    "label_edges",
    "parse_expire",
    "ref_kind",
    "rfc3339",
]

EXPIRE: Final = "containerd.io/gc.expire"
FLAT: Final = "containerd.io/gc.flat"
ROOT: Final = "containerd.io/gc.root"
REF: Final = "containerd.io/gc.ref."
BREF: Final = "containerd.io/gc.bref."
#: ``<prefix><registry host>``: the comma list of repositories content came from (PULL-3).
SOURCE: Final = "containerd.io/distribution.source."
REF_CONTENT: Final = REF + "content"
#: ``<REFERRER><first 12 hex of the referrer>`` = the digest of a manifest naming a subject.
REFERRER: Final = REF_CONTENT + ".referrer.sha256."
_KINDS: Final = ("content", "image")  # what a gc.ref/gc.bref label can point at (GC-5, GC-6)


def ref_kind(key: str, prefix: str = REF) -> str | None:
    """``content``/``image`` when ``key`` is ``<prefix><kind>`` or ``<prefix><kind>[./]…``."""
    if not key.startswith(prefix):
        return None
    rest = key[len(prefix) :]
    for kind in _KINDS:
        if rest == kind or rest.startswith((kind + ".", kind + "/")):
            return kind
    return None


def is_content_ref(key: str) -> bool:
    """True for a label by which a blob keeps another blob alive (GC-5)."""
    return ref_kind(key) == "content"


@final
@dataclass(frozen=True, slots=True)
class Edge:
    """A reference derived from one label: ``src`` keeps ``dst`` alive (GC-5, GC-6)."""

    key: str
    src_kind: str
    src: str
    dst_kind: str
    dst: str


def label_edges(owner_kind: str, owner: str, labels: Mapping[str, str]) -> list[Edge]:
    """The edges an object's labels declare: ``gc.ref.*`` (GC-5), ``gc.bref.*`` (GC-6)."""
    out = []
    for key, value in labels.items():
        if kind := ref_kind(key):
            out.append(Edge(key, owner_kind, owner, kind, value))
        elif kind := ref_kind(key, BREF):
            out.append(Edge(key, kind, value, owner_kind, owner))
    return out


def rfc3339(dt: datetime) -> str:
    """Second-precision RFC 3339 in UTC, as ``gc.expire`` labels are written (LEASE-2)."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def format_time(ns: int) -> str:
    """RFC 3339 with nanoseconds, UTC (what containerd writes to startedat/updatedat)."""
    sec, frac = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(sec)) + f".{frac:09d}Z"


def parse_expire(value: str) -> datetime | None:
    """An RFC 3339 time (a ``gc.expire`` value) as an aware datetime; None when unparsable."""
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else None


def expired(labels: Mapping[str, str], now: datetime) -> bool:
    """True when ``labels`` carry a parsable ``gc.expire`` at or before ``now``."""
    value = labels.get(EXPIRE)
    at = None if value is None else parse_expire(value)
    return at is not None and at <= now
