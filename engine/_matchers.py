"""Platform matchers: which platforms suit a wanted one, and which suit it best.

Owns ``Matcher``/``MatchComparer`` and their implementations (MATCH-1..7:
``only``, ``only_strict``, ``ordered``, ``any_of``, ``only_os``, ``ALL``, the best-first
sort) and HOST-4 ``match_any_with_preference``. ``platforms`` re-exports all of it.
Pure: imports only ``_platform``; never anyio or I/O.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Protocol, TypeVar

from castar.engine._platform import Platform, normalize

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Sequence

__all__ = [
    "ALL", "MatchComparer", "Matcher", "any_of", "match_any_with_preference", "only", "only_os",
    "only_strict", "ordered", "sort_best_first",
]  # fmt: skip

T = TypeVar("T")


class Matcher(Protocol):
    """Decides whether a platform is acceptable."""

    def match(self, p: Platform) -> bool:
        """Whether ``p`` is acceptable."""
        ...


class MatchComparer(Matcher, Protocol):
    """A ``Matcher`` that also orders platforms, preferred first (MATCH-4, MATCH-7)."""

    def less(self, a: Platform, b: Platform) -> bool:
        """Whether ``a`` is strictly preferred to ``b`` (a strict weak order)."""
        ...


_LTSC2022: Final = 20348
_WINDOWS_LTSC: Final = (20348, 26100)


def _windows_build(version: str) -> tuple[int, int, int] | None:
    parts = version.split(".")
    if len(parts) < 3 or not all(s.isdigit() for s in parts[:3]):
        return None
    return int(parts[0]), int(parts[1]), int(parts[2])


def _windows_version_ok(wanted: str, candidate: str) -> bool:
    """MATCH-6: empty or unparseable versions pass."""
    w, c = _windows_build(wanted), _windows_build(candidate)
    if w is None or c is None:
        return True
    if w[:2] != c[:2]:
        return False
    if w[2] < _LTSC2022:
        return c[2] == w[2]
    lowest = max((b for b in _WINDOWS_LTSC if b < w[2]), default=_LTSC2022)
    return lowest <= c[2] <= w[2]


@dataclass(frozen=True, slots=True)
class _Exact:
    """MATCH-1: the base matcher for one normalised platform."""

    want: Platform

    def match(self, p: Platform) -> bool:
        return self.matches(normalize(p))

    def matches(self, c: Platform) -> bool:
        """``match`` for a candidate that is already normalised."""
        w = self.want
        if (c.os, c.architecture, c.variant) != (w.os, w.architecture, w.variant):
            return False
        features = c.os_features
        if w.os == "windows":
            if not _windows_version_ok(w.os_version, c.os_version):
                return False
            features = tuple(f for f in features if f != "win32k")
        return set(features) <= set(w.os_features)


def _stripped(p: Platform) -> Platform:
    return replace(p, os_features=())


@dataclass(frozen=True, slots=True)
class _AnyOf:
    """Matches what any of the base matchers matches; subclasses say which is preferred."""

    matchers: tuple[_Exact, ...]

    def match(self, p: Platform) -> bool:
        c = normalize(p)
        return any(m.matches(c) for m in self.matchers)


@dataclass(frozen=True, slots=True)
class _Ordered(_AnyOf):
    """MATCH-4: any of the matchers, earlier ones preferred."""

    def less(self, a: Platform, b: Platform) -> bool:
        na, nb = normalize(a), normalize(b)
        for m in self.matchers:
            am, bm = m.matches(na), m.matches(nb)
            if am and not bm:
                return True
            if am or bm:
                return am and bm and len(a.os_features) > len(b.os_features)
        if a.os_features or b.os_features:
            return self.less(_stripped(a), _stripped(b))
        return False


@dataclass(frozen=True, slots=True)
class _Any(_AnyOf):
    """MATCH-5: any of the matchers, no preference among them."""

    def less(self, a: Platform, b: Platform) -> bool:
        am, bm = self.match(a), self.match(b)
        if am and bm:
            return len(a.os_features) > len(b.os_features)
        if not am and not bm and (a.os_features or b.os_features):
            return self.less(_stripped(a), _stripped(b))
        return am and not bm


@dataclass(frozen=True, slots=True)
class _All:
    """MATCH-5 ``all``: everything matches, nothing is preferred."""

    def match(self, p: Platform) -> bool:
        return True

    def less(self, a: Platform, b: Platform) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class _OnlyOS:
    """MATCH-5 ``only_os``: same os (version, features), the exact arch preferred."""

    base: _Exact

    def match(self, p: Platform) -> bool:
        return self.base.match(
            replace(p, architecture=self.base.want.architecture, variant=self.base.want.variant)
        )

    def less(self, a: Platform, b: Platform) -> bool:
        return self.base.match(a) and not self.base.match(b)


@dataclass(frozen=True, slots=True)
class _WithPreference:
    """HOST-4: ``any_of(ps)`` (everything when ``ps`` is empty), ordered by ``preferred``."""

    preferred: MatchComparer
    accepted: MatchComparer | None

    def match(self, p: Platform) -> bool:
        return self.accepted is None or self.accepted.match(p)

    def less(self, a: Platform, b: Platform) -> bool:
        return self.preferred.less(a, b)


#: Matches every platform and prefers none (MATCH-5, ``--all-platforms``).
ALL: Final[MatchComparer] = _All()

_ARM64_VARIANT: Final = re.compile(r"v([89])(?:\.([0-9]))?")


def _vector(p: Platform) -> list[Platform]:
    """MATCH-2: ``p`` (normalised) and the platforms it can also run, best first."""

    def v(arch: str, variant: str) -> Platform:
        return replace(p, architecture=arch, variant=variant)

    arch, variant = p.architecture, p.variant
    if arch == "amd64":
        level = _int_variant(variant)
        out = [p]
        if level is not None and level > 1:
            out += [v("amd64", f"v{n}") for n in range(level - 1, 0, -1)]
        return [*out, v("386", "")]
    if arch == "arm":
        level = _int_variant(variant)
        out = [p]
        if level is not None and level > 5:
            out += [v("arm", f"v{n}") for n in range(level - 1, 4, -1)]
        return out
    if arch == "arm64":
        m = _ARM64_VARIANT.fullmatch(variant or "v8")
        if m is None:
            return []  # MATCH-2: an unknown arm64 variant matches nothing
        major, minor = int(m.group(1)), int(m.group(2) or 0)
        out = []
        if major == 9:
            out += [v("arm64", f"v9.{n}" if n else "v9") for n in range(minor, -1, -1)]
            minor = min(minor + 5, 9)
        out += [v("arm64", f"v8.{n}" if n else "v8") for n in range(minor, -1, -1)]
        return out + [v("arm", f"v{n}") for n in (8, 7, 6, 5)]
    return [p]


def _int_variant(variant: str) -> int | None:
    digits = variant.removeprefix("v")
    return int(digits) if digits.isdigit() else None


def _exact(p: Platform) -> _Exact:
    return _Exact(normalize(p))


def only(p: Platform) -> MatchComparer:
    """``p`` and the platforms it can run, most specific first (MATCH-2).

    ``amd64/vN`` also takes ``vN-1``…``v1`` and ``386``; ``arm/vN`` down to ``v5``;
    ``arm64`` its v8/v9 ladder then ``arm/v8``…``v5``.
    """
    return _Ordered(tuple(_exact(q) for q in _vector(normalize(p))))


def only_strict(p: Platform) -> MatchComparer:
    """Exactly ``p`` after normalisation: no 386, no lower variants (MATCH-3)."""
    return _Ordered((_exact(p),))


def ordered(*ps: Platform) -> MatchComparer:
    """Any of ``ps`` (exact), earlier ones preferred (MATCH-4)."""
    return _Ordered(tuple(_exact(p) for p in ps))


def any_of(*ps: Platform) -> MatchComparer:
    """Any of ``ps`` (exact), no preference among them (MATCH-5, Go's ``platforms.Any``)."""
    return _Any(tuple(_exact(p) for p in ps))


def only_os(p: Platform) -> MatchComparer:
    """Same os, os version and features as ``p`` whatever the arch; ``p``'s arch first."""
    return _OnlyOS(_exact(p))


def match_any_with_preference(preferred: MatchComparer, ps: Sequence[Platform]) -> MatchComparer:
    """Accept ``any_of(*ps)`` (everything when ``ps`` is empty), order by ``preferred`` (HOST-4)."""
    return _WithPreference(preferred, any_of(*ps) if ps else None)


def sort_best_first(
    items: Iterable[T], key: Callable[[T], Platform | None], matcher: MatchComparer
) -> list[T]:
    """Stable sort by ``matcher.less``, items without a platform last (MATCH-7)."""

    def compare(x: T, y: T) -> int:
        a, b = key(x), key(y)
        if a is None or b is None:
            return (a is None) - (b is None)
        return -1 if matcher.less(a, b) else 1 if matcher.less(b, a) else 0

    return sorted(items, key=functools.cmp_to_key(compare))
