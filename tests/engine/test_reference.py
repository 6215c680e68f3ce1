"""Docker references: normalisation (IMP-9), familiar names (EXP-10), ref.name (EXP-3), LOAD-1."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castar.engine import reference
from castar.engine.reference import (
    Reference,
    dangling_name,
    familiarize,
    is_dangling,
    is_digest_ref,
    normalize,
    parse,
    parse_any,
    parse_normalized,
    ref_name_annotation,
)
from castar.store.digest import InvalidDigestLength, UnsupportedDigestAlgorithm
from castar.store.errors import InvalidArgument, UsageError

D = "sha256:" + "ab" * 32
D2 = "sha256:" + "cd" * 32


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("alpine", "docker.io/library/alpine:latest"),  # IMP-9
        ("alpine:3.18", "docker.io/library/alpine:3.18"),
        ("foo/bar", "docker.io/foo/bar:latest"),
        ("foo/bar/baz:1", "docker.io/foo/bar/baz:1"),
        ("docker.io/alpine", "docker.io/library/alpine:latest"),
        ("index.docker.io/library/alpine:1", "docker.io/library/alpine:1"),
        ("docker.io/library/alpine:latest", "docker.io/library/alpine:latest"),
        ("localhost:5000/x", "localhost:5000/x:latest"),
        ("localhost/x:1", "localhost/x:1"),
        ("ghcr.io/org/img:v1.2", "ghcr.io/org/img:v1.2"),
        ("[::1]:5000/a/b:c", "[::1]:5000/a/b:c"),
        ("Registry/x", "Registry/x:latest"),  # upper case first element is a domain
        ("test-import:notlatest", "docker.io/library/test-import:notlatest"),  # TV-66
        ("another/repo:tag", "docker.io/another/repo:tag"),  # TV-66
        (f"alpine@{D}", f"docker.io/library/alpine@{D}"),  # digest kept, no :latest
        (f"alpine:3.18@{D}", f"docker.io/library/alpine@{D}"),  # IMP-9: tag dropped
        (f"{reference.DANGLING_PREFIX}@{D}", f"docker.io/library/moby-dangling@{D}"),
        ("a__b-c--d/e.f_g:T_a.g-9", "docker.io/a__b-c--d/e.f_g:T_a.g-9"),  # separators
        # distribution quirk: a first element with "." is a domain, but "_" is not allowed in
        # domains, so the whole name is read as a path without a domain.
        ("a_b.c/d", "a_b.c/d:latest"),
    ],
)
def test_normalize_vectors(name: str, expected: str) -> None:
    assert normalize(name) == expected


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("Alpine", r"repository name \(library/Alpine\) must be lowercase"),  # IMP-9
        ("foo/Bar:1", r"repository name \(foo/Bar\) must be lowercase"),
        ("", r"invalid reference format"),
        ("alpine:", r"invalid reference format"),
        ("alpine:-x", r"invalid reference format"),
        ("foo//bar", r"invalid reference format"),
        ("foo/bar/", r"invalid reference format"),
        ("a_-b", r"invalid reference format"),
        ("-ab", r"invalid reference format"),
        ("alpine:" + "t" * 129, r"invalid reference format"),
        ("ghcr.io/" + "a" * 256, r"must not be more than 255 characters"),
        ("ab" * 32, r"cannot specify 64-byte hexadecimal strings"),
        ("alpine@sha256:abc", r"invalid reference format"),  # < 32 hex digits
        ("alpine@sha256:" + "ab" * 20, r"invalid checksum digest length"),
        ("alpine@md5:" + "ab" * 20, r"unsupported digest algorithm"),
        ("alpine latest", r"invalid reference format"),
        ("alpine\n", r"invalid reference format"),
    ],
)
def test_normalize_rejects(name: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message) as err:
        normalize(name)
    assert str(err.value).startswith(f"normalize image ref {name!r}".replace("'", '"'))
    assert str(err.value).endswith(": invalid argument")  # ERR-1


def test_normalize_lowercase_error_text() -> None:  # IMP-9, ERR-1
    with pytest.raises(InvalidArgument) as err:
        normalize("Alpine")
    assert str(err.value) == (
        'normalize image ref "Alpine": invalid reference format: '
        "repository name (library/Alpine) must be lowercase: invalid argument"
    )


def test_digest_errors_keep_their_kind() -> None:  # DIG-3 inside a reference
    with pytest.raises(InvalidDigestLength):
        parse("alpine@sha256:" + "ab" * 20)
    with pytest.raises(UnsupportedDigestAlgorithm):
        parse("alpine@md5:" + "ab" * 20)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("docker.io/library/alpine:latest", "alpine:latest"),  # EXP-10
        ("docker.io/foo/bar:1", "foo/bar:1"),  # EXP-10
        ("alpine", "alpine:latest"),  # EXP-10: :latest added
        ("docker.io/library/alpine", "alpine:latest"),
        ("docker.io/library/a/b:1", "library/a/b:1"),  # nested library path keeps its prefix
        ("localhost:5000/x:1", "localhost:5000/x:1"),
        ("ghcr.io/org/img", "ghcr.io/org/img:latest"),
        (f"docker.io/library/alpine@{D}", f"alpine@{D}"),  # digest only: no tag added
        (f"docker.io/library/alpine:3@{D}", f"alpine:3@{D}"),
    ],
)
def test_familiarize_vectors(name: str, expected: str) -> None:
    assert familiarize(name) == expected


def test_familiarize_error_text() -> None:  # EXP-10
    with pytest.raises(InvalidArgument) as err:
        familiarize("Bad")
    assert str(err.value) == (
        'failed to parse "Bad": invalid reference format: '
        "repository name (library/Bad) must be lowercase: invalid argument"
    )


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("docker.io/library/alpine:3.18", "3.18"),  # EXP-3
        ("localhost:5000/foo:tag", "tag"),  # EXP-3
        (f"docker.io/library/alpine@{D}", f"docker.io/library/alpine@{D}"),  # EXP-3
        ("docker.io/library/alpine", "docker.io/library/alpine"),  # EXP-3
        (f"docker.io/library/alpine:3.18@{D}", f"3.18@{D}"),
        ("alpine:3.18", "alpine:3.18"),  # not host/path: the port is not numeric
        ("docker.io/../x:1", "docker.io/../x:1"),
        ("http://x/y:1", "http://x/y:1"),
        ("[::1]:5000/x:1", "1"),
        ("latest", "latest"),
    ],
)
def test_ref_name_annotation_vectors(name: str, expected: str) -> None:
    assert ref_name_annotation(name) == expected


def test_parse_splits_the_parts() -> None:
    assert parse("localhost:5000/a/b:t") == Reference("localhost:5000", "a/b", "t")
    assert parse("foo/bar") == Reference("foo", "bar")  # as written: no docker.io
    assert parse("alpine") == Reference("", "alpine")
    ref = parse_normalized(f"alpine:3@{D}")
    assert (ref.domain, ref.path, ref.tag, ref.digest) == ("docker.io", "library/alpine", "3", D)
    assert ref.name == "docker.io/library/alpine"
    assert ref.familiar_name == "alpine"
    assert str(ref) == f"docker.io/library/alpine:3@{D}"
    assert parse_normalized("foo/bar").is_name_only
    assert not parse_normalized("foo/bar:1").is_name_only
    assert reference.parse_docker_ref("foo") == Reference("docker.io", "library/foo", "latest")


def test_parse_error_texts() -> None:
    with pytest.raises(InvalidArgument, match=r"^repository name must be lowercase: invalid"):
        parse("docker.io/Alpine")
    with pytest.raises(InvalidArgument, match=r"^repository name must have at least one component"):
        parse("")


def test_parse_any_and_is_digest_ref() -> None:  # SAVE-4
    assert parse_any(D) == Reference("", "", "", D)
    assert parse_any("ab" * 32) == Reference("", "", "", "sha256:" + "ab" * 32)
    assert parse_any("alpine") == Reference("docker.io", "library/alpine")
    for pinned in (D, "ab" * 32, f"alpine@{D}", f"docker.io/x/y:1@{D}"):
        assert is_digest_ref(pinned), pinned
    for name in ("alpine", "alpine:1", "Bad", "", "abcd", "sha256:abc"):
        assert not is_digest_ref(name), name


def test_dangling_names() -> None:  # LOAD-1, TV-74
    name = dangling_name(D)
    assert name == f"moby-dangling@{D}"
    assert is_dangling(name)
    assert reference.dangling_digest(name) == D
    assert not is_dangling("docker.io/library/moby-dangling:latest")
    assert reference.dangling_digest("docker.io/library/alpine:latest") is None
    assert reference.dangling_digest("moby-dangling@sha256:zz") is None
    with pytest.raises(InvalidArgument):
        dangling_name("sha256:abc")


def test_check_name_normalises_a_good_name_and_refuses_a_bad_one() -> None:  # IMG-8
    assert reference.check_name("alpine") == "docker.io/library/alpine:latest"
    assert (
        reference.check_name("localhost:5000/a/b", repository=True) == "localhost:5000/a/b:latest"
    )
    for bad in ("../x", "", "a" * 256, "a" * 10_000, "a/B", "x:" + "t" * 129):
        with pytest.raises(UsageError, match=r'^image name "') as err:
            reference.check_name(bad)
        assert len(str(err.value)) < 300
    for with_tag in ("a:1", f"a@{D}"):
        reference.check_name(with_tag)
        with pytest.raises(UsageError, match="a repository takes no tag or digest"):
            reference.check_name(with_tag, repository=True)


def test_display_name() -> None:  # LOAD-4, LOAD-5
    assert reference.display_name(dangling_name(D2)) == D2
    assert reference.display_name("docker.io/library/alpine:latest") == "alpine:latest"
    assert reference.display_name("docker.io/library/latest:latest") == "latest:latest"
    assert reference.display_name("latest") == "latest"  # IMG-7: not normalised, as stored
    assert reference.display_name("Not Valid") == "Not Valid"


# -- properties -------------------------------------------------------------------------

# No "." in path components: a first element with a dot is a domain (distribution's rule).
_component = st.from_regex(r"[a-z0-9]{1,4}(?:(?:_|__|-{1,2})[a-z0-9]{1,4}){0,2}", fullmatch=True)
_names = st.builds(
    lambda domain, parts, tag: domain + "/".join(parts) + (f":{tag}" if tag else ""),
    st.sampled_from(["", "docker.io/", "localhost:5000/", "ghcr.io/", "index.docker.io/"]),
    st.lists(_component, min_size=1, max_size=3),
    st.sampled_from(["", "latest", "1.0", "v2_x-y"]),
)


@settings(max_examples=200)
@given(_names)
def test_normalize_is_idempotent_and_familiar_round_trips(name: str) -> None:
    full = normalize(name)
    assert normalize(full) == full
    assert normalize(familiarize(full)) == full
    assert familiarize(familiarize(full)) == familiarize(full)
    ref = parse(full)
    assert ref.domain
    assert ref.tag
    assert not ref.digest


def test_module_is_pure() -> None:
    """No I/O library: only the stdlib text tools and castar.store's errors and digests."""
    tree = ast.parse(Path(reference.__file__).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert imported <= {
        "__future__",
        "re",
        "dataclasses",
        "typing",
        "castar.store.digest",
        "castar.store.errors",
        "castar.engine._goquote",
    }
