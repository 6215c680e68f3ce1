"""Docker image references: normalisation (IMP-9), familiar names (EXP-10), EXP-3, LOAD-1."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, final

from castar.engine._goquote import quote as _quote
from castar.store.digest import Digest
from castar.store.digest import parse as parse_digest
from castar.store.errors import InvalidArgument, UsageError, shorten

__all__ = [
    "DANGLING_PREFIX", "Reference", "check_name", "dangling_digest", "dangling_name",
    "display_name", "familiarize", "is_dangling", "is_digest_ref", "normalize", "parse",
    "parse_any", "parse_docker_ref", "parse_normalized", "ref_name_annotation",
]  # fmt: skip

DEFAULT_DOMAIN: Final = "docker.io"
DEFAULT_TAG: Final = "latest"
NAME_MAX: Final = 255  # the longest repository path the grammar accepts
#: Repository of the names moby gives images that have none (LOAD-1).
DANGLING_PREFIX: Final = "moby-dangling"

_LEGACY_DOMAIN: Final = "index.docker.io"
_OFFICIAL_PREFIX: Final = "library/"

# The grammar of distribution/reference (regexp.go), ASCII-only like Go's RE2 classes.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_REMOTE_NAME = rf"{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = rf"{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*"
_IPV6 = r"\[(?:[a-fA-F0-9:]+)\]"
_DOMAIN_AND_PORT = rf"(?:{_DOMAIN_NAME}|{_IPV6})(?::[0-9]+)?"
_NAME = rf"(?:{_DOMAIN_AND_PORT}/)?{_REMOTE_NAME}"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_REFERENCE_RE: Final = re.compile(rf"({_NAME})(?::({_TAG}))?(?:@({_DIGEST}))?")
_ANCHORED_NAME_RE: Final = re.compile(rf"(?:({_DOMAIN_AND_PORT})/)?({_REMOTE_NAME})")
_IDENTIFIER_RE: Final = re.compile(r"[a-f0-9]{64}")
_PORT_RE: Final = re.compile(r"(?::[0-9]*)?")


@final
@dataclass(frozen=True, slots=True)
class Reference:
    """A parsed image reference ``[domain/]path[:tag][@digest]``; absent parts are ``""``."""

    domain: str
    path: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        """The repository: ``domain/path`` (``docker.io/library/alpine``)."""
        return f"{self.domain}/{self.path}" if self.domain else self.path

    @property
    def is_name_only(self) -> bool:
        """Neither a tag nor a digest (a bare repository name)."""
        return not self.tag and not self.digest

    @property
    def familiar_name(self) -> str:
        """The repository as docker prints it (``alpine``, ``foo/bar``, ``ghcr.io/x/y``)."""
        if self.domain != DEFAULT_DOMAIN:
            return self.name
        rest = self.path.removeprefix(_OFFICIAL_PREFIX)
        return self.path if "/" in rest else rest

    def familiar(self) -> str:
        """The whole reference in docker's short form (``alpine:3.18``)."""
        return _join(self.familiar_name, self.tag, self.digest)

    def __str__(self) -> str:
        return _join(self.name, self.tag, self.digest)


def _join(name: str, tag: str, digest: str) -> str:
    return name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def parse(s: str) -> Reference:
    """Parse ``s`` as written, adding no domain or tag (Go ``reference.Parse``)."""
    if not s:
        raise InvalidArgument("repository name must have at least one component")
    m = _REFERENCE_RE.fullmatch(s)
    if m is None:
        lower = s.lower()
        if lower != s and _REFERENCE_RE.fullmatch(lower) is not None:
            raise InvalidArgument("repository name must be lowercase")
        raise InvalidArgument("invalid reference format")
    name, tag, digest = m.group(1), m.group(2) or "", m.group(3) or ""
    nm = _ANCHORED_NAME_RE.fullmatch(name)
    domain, path = (nm.group(1) or "", nm.group(2)) if nm is not None else ("", name)
    if len(path) > NAME_MAX:
        raise InvalidArgument(f"repository name must not be more than {NAME_MAX} characters")
    if digest:
        digest = parse_digest(digest)
    return Reference(domain, path, tag, digest)


def _split_docker_domain(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    if not sep:  # a familiar single-element name such as "ubuntu:22.04"
        return DEFAULT_DOMAIN, _OFFICIAL_PREFIX + name
    if first == _LEGACY_DOMAIN:
        domain, remainder = DEFAULT_DOMAIN, rest
    elif first == "localhost" or any(c in first for c in ".:") or first.lower() != first:
        domain, remainder = first, rest  # a host, an address, or upper case (never a path)
    else:
        domain, remainder = DEFAULT_DOMAIN, name
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = _OFFICIAL_PREFIX + remainder
    return domain, remainder


def parse_normalized(s: str) -> Reference:
    """Go ``reference.ParseNormalizedNamed``: ``foo/bar:1`` → ``docker.io/foo/bar:1``."""
    if _IDENTIFIER_RE.fullmatch(s):
        raise InvalidArgument(
            f"invalid repository name ({s}), cannot specify 64-byte hexadecimal strings"
        )
    domain, remainder = _split_docker_domain(s)
    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise InvalidArgument(
            f"invalid reference format: repository name ({remote}) must be lowercase"
        )
    return parse(f"{domain}/{remainder}")


def parse_docker_ref(s: str) -> Reference:
    """``parse_normalized``, then a digest wins over a tag, else ``:latest`` (IMP-9)."""
    ref = parse_normalized(s)
    if ref.digest:
        return Reference(ref.domain, ref.path, "", ref.digest)
    if not ref.tag:
        return Reference(ref.domain, ref.path, DEFAULT_TAG)
    return ref


def normalize(name: str) -> str:
    """The name an image record gets (IMP-9, SAVE-4): ``parse_docker_ref(name)`` as text."""
    try:
        return str(parse_docker_ref(name))
    except InvalidArgument as err:
        raise InvalidArgument(f"normalize image ref {_quote(name)}: {err.message}") from err


def check_name(name: str, *, repository: bool = False) -> str:
    """A name the user gives to record, normalised; UsageError if it is no reference (IMG-8).

    ``repository``: a ``load --name`` prefix, which takes no tag or digest.
    """
    try:
        ref = parse_normalized(name)
        if repository and not ref.is_name_only:
            raise InvalidArgument("a repository takes no tag or digest")
    except InvalidArgument as err:
        raise UsageError(f"image name {_quote(shorten(name))}: {shorten(err.message)}") from err
    return normalize(name)


def familiarize(name: str) -> str:
    """A name in docker's short form with a tag, as ``manifest.json`` RepoTags hold (EXP-10)."""
    try:
        ref = parse_normalized(name)
    except InvalidArgument as err:
        raise InvalidArgument(f"failed to parse {_quote(name)}: {err.message}") from err
    if ref.is_name_only:
        ref = Reference(ref.domain, ref.path, DEFAULT_TAG)
    return ref.familiar()


def parse_any(s: str) -> Reference:
    """A bare digest, a 64-hex image id (as ``sha256:<id>``) or a normalised name."""
    if _IDENTIFIER_RE.fullmatch(s):
        return Reference("", "", "", parse_digest(f"sha256:{s}"))
    try:
        return Reference("", "", "", parse_digest(s))
    except InvalidArgument:
        return parse_normalized(s)


def is_digest_ref(s: str) -> bool:
    """Whether ``s`` parses and pins content by digest (SAVE-4)."""
    try:
        return bool(parse_any(s).digest)
    except InvalidArgument:
        return False


def _valid_url_host(host: str) -> bool:
    """Roughly what Go's ``url.Parse`` accepts as ``host[:port]``."""
    if not host or "@" in host:
        return False
    if host.startswith("["):
        close = host.find("]")
        return close > 0 and _PORT_RE.fullmatch(host[close + 1 :]) is not None
    _, colon, port = host.rpartition(":")
    return not colon or port.isdigit() or not port


def ref_name_annotation(name: str) -> str:
    """EXP-3 ``ref.name``: the tag when ``name`` reads as a URL ``host/path:tag``, else it."""
    if "://" in name or any(c in name for c in "?#"):
        return name
    host, _, path = name.partition("/")
    if not _valid_url_host(host):
        return name
    cut = min((i for i in (path.find(":"), path.find("@")) if i >= 0), default=-1)
    if cut < 0 or ".." in path[:cut].split("/"):
        return name
    obj = path[cut:].removeprefix(":")
    if not obj or obj.startswith("@"):
        return name
    return obj


def dangling_name(digest: str) -> str:
    """``moby-dangling@<digest>``: the record keeping an unnamed image alive (LOAD-1)."""
    return f"{DANGLING_PREFIX}@{parse_digest(digest)}"


def is_dangling(name: str) -> bool:
    """Whether ``name`` is a ``moby-dangling@<digest>`` record name."""
    return name.startswith(DANGLING_PREFIX + "@")


def dangling_digest(name: str) -> Digest | None:
    """The digest of a dangling name, ``None`` for any other name."""
    if not is_dangling(name):
        return None
    try:
        return parse_digest(name[len(DANGLING_PREFIX) + 1 :])
    except InvalidArgument:
        return None


def display_name(name: str) -> str:
    """How a record name prints so that it resolves (IMG-7, LOAD-5).

    Dangling as its digest, a normalised name familiarised, any other (IMG-1) as stored.
    """
    digest = dangling_digest(name)
    if digest is not None:
        return str(digest)
    try:
        ref = parse_docker_ref(name)
    except InvalidArgument:
        return name
    return ref.familiar() if str(ref) == name else name
