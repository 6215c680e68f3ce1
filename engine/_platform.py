"""The platform value: normalisation, specifier parsing and formatting, OCI JSON, the host.

Owns ``Platform`` and its text and JSON forms (PLAT-1..6, NORM-1..3,
FMT-1..2, DESC-1) and the host platform (HOST-1..3: detection, ``$CASTAR_HOST_PLATFORM``,
pinning). ``platforms`` re-exports all of it; the matchers live in ``_matchers``.
Pure: imports only ``castar.store.errors``, ``_goquote`` and ``_json``; never anyio or I/O.
"""

from __future__ import annotations

import functools
import os
import platform as _stdlib_platform
import re
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, final
from urllib.parse import unquote_to_bytes

from castar.engine._goquote import quote as _quote
from castar.engine._json import Struct, get_str, get_strs, object_of
from castar.store.errors import InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = [
    "HOST_ENV", "KNOWN_ARCHITECTURES", "KNOWN_OS", "Platform", "format", "format_all",
    "from_json", "host", "normalize", "parse", "parse_all", "parse_list", "pinned_host",
    "set_host", "to_json",
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
    """An OCI platform: what a manifest runs on; ``""``/``()`` for an absent field.

    Values are kept as given; use ``normalize`` before comparing by hand (matchers
    normalise for you).
    """

    os: str
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
    """The host platform (HOST-1, HOST-3).

    In order: the value pinned by ``set_host``/``pinned_host``; the specifier in
    ``$CASTAR_HOST_PLATFORM``; autodetection from ``platform.system()`` and
    ``platform.machine()`` (``arm64`` gets variant ``v8``, 32-bit arm its ``vN``).
    An amd64 host stays plain ``amd64``: castar does not detect the amd64 level that
    moby adds (HOST-2), so ``only(host())`` prefers plain amd64 manifests.

    Raises:
        InvalidArgument: ``$CASTAR_HOST_PLATFORM`` is not a valid specifier.
    """
    if _pinned is not None:
        return _pinned
    env = os.environ.get(HOST_ENV, "").strip()
    if env:
        return _from_env(env)
    return _detected()


def set_host(p: Platform | None) -> Platform | None:
    """Pin the host platform process-wide (tests); ``None`` unpins. Returns the previous pin."""
    global _pinned
    previous, _pinned = _pinned, p
    return previous


@contextmanager
def pinned_host(p: Platform | str) -> Iterator[Platform]:
    """Pin the host platform for the duration of a ``with`` block (HOST-3).

    Args:
        p: the platform, or a specifier parsed against the detected host.
    """
    value = _parse(p, _detected()) if isinstance(p, str) else p
    previous = set_host(value)
    try:
        yield value
    finally:
        set_host(previous)


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
    """Canonical form (NORM-3): NORM-1 os, NORM-2 arch/variant, features sorted and unique.

    ``os_version`` is left untouched. Canonical forms: arm64 has no variant for v8, arm
    has ``v7`` explicit, amd64 has no variant for v1; an empty os becomes the host's.
    """
    arch, variant = _normalize_arch(p.architecture, p.variant)
    os_name = _normalize_os(p.os, "") or host().os
    return Platform(os_name, arch, variant, p.os_version, tuple(sorted(set(p.os_features))))


# -- parsing (PLAT-1..6) ----------------------------------------------------------------


def _unescape(s: str, spec: str) -> str:
    if "%" not in s:
        return s
    if re.search(r"%(?![0-9A-Fa-f]{2})", s):
        raise InvalidArgument(f"{_quote(spec)}: invalid URL escape in {_quote(s)}")
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

    if len(parts) == 1:
        if os_name in KNOWN_OS:
            variant = base.variant if base.architecture == "arm" and base.variant != "v7" else ""
            return replace(p, architecture=base.architecture, variant=variant)
        arch, variant = _normalize_arch(parts[0], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        if arch in KNOWN_ARCHITECTURES:
            return Platform(base.os, arch, variant)
        raise InvalidArgument(f"{_quote(spec)}: unknown operating system or architecture")
    if len(parts) == 2:
        arch, variant = _normalize_arch(parts[1], "")
        if arch == "arm" and variant == "v7":
            variant = ""
        return replace(p, architecture=arch, variant=variant)
    if len(parts) == 3:
        arch, variant = _normalize_arch(parts[1], parts[2])
        if arch == "arm64" and not variant:
            variant = "v8"
        return replace(p, architecture=arch, variant=variant)
    raise InvalidArgument(f"{_quote(spec)}: cannot parse platform specifier")


def parse(spec: str) -> Platform:
    """Parse a platform specifier (PLAT-1..6).

    ``<os>[(<osversion>[+<feature>]*)] | <arch> | <os>[(…)]/<arch>[/<variant>]``; a
    lone os or arch is completed from ``host()``. The result is *not* fully
    normalised (``linux/arm64/v8`` keeps ``v8``, features keep their order).

    Raises:
        InvalidArgument: the specifier is malformed, e.g.
            ``"foo": unknown operating system or architecture: invalid argument``.
    """
    return _parse(spec, host())


def parse_all(specs: Iterable[str]) -> list[Platform]:
    """Parse every specifier; failures read ``invalid platform <s>: <error>`` (PLAT-6).

    Raises:
        InvalidArgument: the first malformed specifier.
    """
    out: list[Platform] = []
    for spec in specs:
        try:
            out.append(parse(spec))
        except InvalidArgument as err:
            raise InvalidArgument(f"invalid platform {spec}: {err.message}") from err
    return out


def parse_list(values: Iterable[str]) -> list[Platform]:
    """Parse CLI ``--platform`` values: repeated options and/or comma-separated lists.

    Items are trimmed; empty items and items equal to an earlier one after
    normalisation (``linux/arm64`` and ``linux/aarch64/v8``) are rejected.

    Raises:
        InvalidArgument: an empty, malformed or duplicate item, named in the message.
    """
    out: list[Platform] = []
    seen: dict[Platform, str] = {}
    for value in values:
        for raw in value.split(","):
            item = raw.strip()
            if not item:
                raise InvalidArgument(f"empty platform in {_quote(value)}")
            (p,) = parse_all([item])
            key = normalize(p)
            if key in seen:
                raise InvalidArgument(
                    f"duplicate platform {_quote(item)} (same as {_quote(seen[key])})"
                )
            seen[key] = item
            out.append(p)
    return out


# -- formatting (FMT-1..2) --------------------------------------------------------------


def format(p: Platform) -> str:
    """``os/arch/variant`` with empty parts dropped, ``unknown`` without an os (FMT-1).

    No normalisation, and no os version or features (see ``format_all``).
    """
    if not p.os:
        return "unknown"
    return "/".join(s for s in (p.os, p.architecture, p.variant) if s)


def _escape(s: str) -> str:
    for char, escaped in _ESCAPES:
        s = s.replace(char, escaped)
    return s


def format_all(p: Platform) -> str:
    """Like ``format`` plus ``(<osversion>+<features…>)`` after the os (FMT-2).

    Features are sorted, de-duplicated and empties skipped; ``%+()/`` are
    percent-escaped so that ``parse(format_all(p))`` gives ``p`` back for normalised
    values.
    """
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
    """Decode an OCI platform object; absent or ``null`` fields are empty, nothing is normalised.

    Raises:
        MalformedManifest: ``obj`` is not an object or a field has the wrong JSON type.
    """
    o = object_of(obj, where)
    return Platform(
        os=get_str(o, "os", where),
        architecture=get_str(o, "architecture", where),
        variant=get_str(o, "variant", where),
        os_version=get_str(o, "os.version", where),
        os_features=get_strs(o, "os.features", where),
    )
