"""Platforms: PLAT-1..6, NORM-1..3, FMT-1..2, DESC-1, the host (HOST-1..4), MATCH-1..7."""

from __future__ import annotations

import functools
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Protocol, TypeVar, final

from castar.engine._goquote import quote as _quote
from castar.engine._json import Struct, get_str, get_strs, object_of
from castar.store.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

__all__ = [
    "ALL", "HOST_ENV", "KNOWN_ARCHITECTURES", "KNOWN_OS", "MatchComparer", "Matcher", "Platform",
    "any_of", "format", "format_all", "from_json", "host", "match_any_with_preference",
    "normalize", "only", "only_strict", "ordered", "parse", "parse_all", "parse_list",
    "pinned_host", "sort_best_first", "to_json",
]  # fmt: skip

#: Environment variable overriding the detected host platform (a platform specifier).
HOST_ENV: Final = "CASTAR_HOST_PLATFORM"

#: Operating systems a one-part specifier is recognised as (PLAT-3).
KNOWN_OS: Final = frozenset({
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux",
    "nacl", "netbsd", "openbsd", "plan9", "solaris", "windows", "zos"
})  # fmt: skip
#: Architectures a one-part specifier is recognised as (PLAT-3).
KNOWN_ARCHITECTURES: Final = frozenset({
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "ppc64", "ppc64le", "loong64",
    "mips", "mipsle", "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "riscv", "riscv64",
    "s390", "s390x", "sparc", "sparc64", "wasm"
})  # fmt: skip

_OS_PATTERN: Final = r"^([A-Za-z0-9_-]+)(?:\(([A-Za-z0-9_.%-]*)((?:\+[A-Za-z0-9_.%-]+)*)\))?$"
_COMPONENT_PATTERN: Final = r"^[A-Za-z0-9_.-]+$"
_OS_RE: Final = re.compile(_OS_PATTERN)
_COMPONENT_RE: Final = re.compile(_COMPONENT_PATTERN)
_ESCAPES: Final = (("%", "%25"), ("+", "%2B"), ("(", "%28"), (")", "%29"), ("/", "%2F"))


@final
@dataclass(frozen=True, slots=True)
class Platform:
    """An OCI platform, values as given (``""``/``()`` when absent); matchers normalise."""

    os: str  # os and architecture take Go's names (GOOS, GOARCH): "linux", "amd64"
    architecture: str
    variant: str = ""
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def __str__(self) -> str:
        return format_all(self)


# -- host (HOST-1..3) -------------------------------------------------------------------

_MACHINES: Final[dict[str, tuple[str, str]]] = {
    "i686": ("386", ""), "i586": ("386", ""), "i486": ("386", ""), "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"), "armv6l": ("arm", "v6"), "armv5tel": ("arm", "v5"),
    "loongarch64": ("loong64", ""), "aarch64": ("arm64", "v8"), "arm64": ("arm64", "v8"),
}  # fmt: skip

_pinned: Platform | None = None


@functools.cache
def _detected() -> Platform:
    import platform as _stdlib_platform  # start-up: loaded when the host is first asked for

    system = _stdlib_platform.system().lower() or "linux"
    machine = _stdlib_platform.machine().lower()
    if machine in _MACHINES:
        arch, variant = _MACHINES[machine]
    else:
        arch, variant = _normalize_arch(machine or "amd64", "")
        if arch == "arm":
            variant = variant or "v7"
    os_version = ""
    if system == "windows":  # HOST-1: major.minor.build
        os_version = ".".join(_stdlib_platform.version().split(".")[:3])
    return Platform(_normalize_os(system, "linux"), arch, variant, os_version)


@functools.cache
def _from_env(spec: str) -> Platform:
    try:
        return _parse(spec, _detected())
    except InvalidArgument as err:
        raise InvalidArgument(f"${HOST_ENV}: {err.message}") from err


def host() -> Platform:
    """The pinned host, else ``$CASTAR_HOST_PLATFORM``, else the detected one (HOST-1..3)."""
    if _pinned is not None:
        return _pinned
    env = os.environ.get(HOST_ENV, "").strip()
    if env:
        return _from_env(env)
    return _detected()


@contextmanager
def pinned_host(p: Platform | str) -> Iterator[Platform]:
    """Pin the host platform (or a specifier parsed against the detected one) in a block."""
    global _pinned
    previous, _pinned = _pinned, _parse(p, _detected()) if isinstance(p, str) else p
    try:
        yield _pinned
    finally:
        _pinned = previous


# -- normalisation (NORM-1..3) ----------------------------------------------------------


def _normalize_os(os_name: str, default: str) -> str:
    if not os_name:
        return default
    os_name = os_name.lower()
    return "darwin" if os_name == "macos" else os_name


def _normalize_arch(arch: str, variant: str) -> tuple[str, str]:
    arch, variant = arch.lower(), variant.lower()
    if arch == "i386":
        return "386", ""
    if arch in ("x86_64", "x86-64", "amd64"):
        return "amd64", "" if variant == "v1" else variant
    if arch in ("aarch64", "arm64"):
        if variant in ("8", "v8", "v8.0"):
            variant = ""
        elif variant in ("9", "9.0", "v9.0"):
            variant = "v9"
        return "arm64", variant
    if arch == "armhf":
        return "arm", "v7"
    if arch == "armel":
        return "arm", "v6"
    if arch == "arm":
        if variant in ("", "7"):
            variant = "v7"
        elif variant in ("5", "6", "8"):
            variant = "v" + variant
    return arch, variant


def normalize(p: Platform) -> Platform:
    """Canonical form (NORM-1..3); features sorted and unique, an empty os is the host's."""
    arch, variant = _normalize_arch(p.architecture, p.variant)
    os_name = _normalize_os(p.os, "") or host().os
    return Platform(os_name, arch, variant, p.os_version, tuple(sorted(set(p.os_features))))


# -- parsing (PLAT-1..6) ----------------------------------------------------------------


def _unescape(s: str, spec: str) -> str:
    if "%" not in s:
        return s
    if re.search(r"%(?![0-9A-Fa-f]{2})", s):
        raise InvalidArgument(f"{_quote(spec)}: invalid URL escape in {_quote(s)}")
    from urllib.parse import unquote_to_bytes

    try:
        return unquote_to_bytes(s).decode()
    except UnicodeDecodeError as err:
        raise InvalidArgument(f"{_quote(spec)}: invalid UTF-8 in {_quote(s)}") from err


def _parse(spec: str, base: Platform) -> Platform:
    if "*" in spec:
        raise InvalidArgument(f"{_quote(spec)}: wildcards not yet supported")
    parts = spec.split("/", 3)
    m = _OS_RE.fullmatch(parts[0])
    if m is None:
        raise InvalidArgument(
            f"{_quote(parts[0])} is an invalid OS component of {_quote(spec)}: "
            f"OSAndVersion specifier component must match {_quote(_OS_PATTERN)}"
        )
    for part in parts[1:]:
        if not _COMPONENT_RE.fullmatch(part):
            raise InvalidArgument(
                f"{_quote(part)} is an invalid component of {_quote(spec)}: "
                f"platform specifier component must match {_quote(_COMPONENT_PATTERN)}"
            )
    os_name = _normalize_os(m.group(1), base.os)
    os_version = _unescape(m.group(2) or "", spec)
    features: list[str] = []
    if m.group(3):
        for raw in m.group(3)[1:].split("+"):
            feature = _unescape(raw, spec)
            if not feature:
                raise InvalidArgument(f"{_quote(spec)}: empty os feature")
            features.append(feature)
    p = Platform(os_name, "", "", os_version, tuple(features))

    if len(parts) > 3:
        raise InvalidArgument(f"{_quote(spec)}: cannot parse platform specifier")
    if len(parts) == 1 and os_name in KNOWN_OS:
        variant = base.variant if base.architecture == "arm" and base.variant != "v7" else ""
        return replace(p, architecture=base.architecture, variant=variant)
    arch, variant = _normalize_arch(parts[1 if len(parts) > 1 else 0], "".join(parts[2:]))
    if len(parts) == 3:
        variant = variant or ("v8" if arch == "arm64" else "")
    elif arch == "arm" and variant == "v7":
        variant = ""
    if len(parts) > 1:
        return replace(p, architecture=arch, variant=variant)
    if arch in KNOWN_ARCHITECTURES:
        return Platform(base.os, arch, variant)
    raise InvalidArgument(f"{_quote(spec)}: unknown operating system or architecture")


def parse(spec: str) -> Platform:
    """Parse a platform specifier (PLAT-1..6), a lone os or arch completed from ``host()``."""
    return _parse(spec, host())


def parse_all(specs: Iterable[str]) -> list[Platform]:
    """Parse every specifier; failures read ``invalid platform <s>: <error>`` (PLAT-6)."""
    out: list[Platform] = []
    for spec in specs:
        try:
            out.append(parse(spec))
        except InvalidArgument as err:
            raise InvalidArgument(f"invalid platform {spec}: {err.message}") from err
    return out


def parse_list(values: Iterable[str | Platform]) -> list[Platform]:
    """Parse ``--platform`` values (repeated, comma lists, or Platforms); no empties, duplicates."""
    out: list[Platform] = []
    seen: dict[Platform, str] = {}
    for value in values:
        items = [value] if isinstance(value, Platform) else value.split(",")
        for item in items:
            if isinstance(item, str) and not (item := item.strip()):
                raise InvalidArgument(f"empty platform in {_quote(str(value))}")
            p = item if isinstance(item, Platform) else parse_all([item])[0]
            text = item if isinstance(item, str) else format_all(p)
            if (key := normalize(p)) in seen:
                raise InvalidArgument(
                    f"duplicate platform {_quote(text)} (same as {_quote(seen[key])})"
                )
            seen[key] = text
            out.append(p)
    return out


# -- formatting (FMT-1..2) --------------------------------------------------------------


def format(p: Platform) -> str:
    """``os/arch/variant`` with empty parts dropped, ``unknown`` without an os (FMT-1)."""
    if not p.os:
        return "unknown"
    return "/".join(s for s in (p.os, p.architecture, p.variant) if s)


def _escape(s: str) -> str:
    for char, escaped in _ESCAPES:
        s = s.replace(char, escaped)
    return s


def format_all(p: Platform) -> str:
    """Like ``format`` plus ``(<osversion>+<features…>)``, percent-escaped, after the os (FMT-2)."""
    features = sorted({f for f in p.os_features if f})
    if not p.os or (not p.os_version and not features):
        return format(p)
    inner = _escape(p.os_version) + "".join("+" + _escape(f) for f in features)
    return "/".join(s for s in (f"{p.os}({inner})", p.architecture, p.variant) if s)


# -- OCI JSON (DESC-1) ------------------------------------------------------------------


def to_json(p: Platform) -> Struct:
    """The OCI platform object, fields in DESC-1 order, empty optional fields omitted."""
    obj = Struct(architecture=p.architecture, os=p.os)
    if p.os_version:
        obj["os.version"] = p.os_version
    if p.os_features:
        obj["os.features"] = list(p.os_features)
    if p.variant:
        obj["variant"] = p.variant
    return obj


def from_json(obj: object, *, where: str = "platform") -> Platform:
    """Decode an OCI platform object strictly; absent or ``null`` fields are empty."""
    o = object_of(obj, where)
    return Platform(
        os=get_str(o, "os", where),
        architecture=get_str(o, "architecture", where),
        variant=get_str(o, "variant", where),
        os_version=get_str(o, "os.version", where),
        os_features=get_strs(o, "os.features", where),
    )


# -- matchers (MATCH-1..7, HOST-4) ----------------------------------------------------

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
    if arch in ("amd64", "arm"):  # the lower variants down to amd64 v1 / arm v5
        digits = variant.removeprefix("v")
        top = int(digits) - 1 if digits.isdigit() else 0
        out = [p, *(v(arch, f"v{n}") for n in range(top, 0 if arch == "amd64" else 4, -1))]
        return [*out, v("386", "")] if arch == "amd64" else out
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


def _exact(p: Platform) -> _Exact:
    return _Exact(normalize(p))


def only(p: Platform) -> MatchComparer:
    """``p`` and the platforms it can run, most specific first (MATCH-2)."""
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
