"""Platform parsing, formatting, normalisation, matchers and the host ("Platforms", TV-8..37)."""

from __future__ import annotations

import ast
import itertools
import platform
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castar.engine import platforms
from castar.engine.platforms import (
    ALL,
    Platform,
    any_of,
    format_all,
    match_any_with_preference,
    normalize,
    only,
    only_strict,
    ordered,
    parse,
    parse_all,
    parse_list,
    sort_best_first,
)
from castar.store.errors import InvalidArgument, MalformedManifest

P = Platform
LINUX_AMD64 = P("linux", "amd64")


@pytest.fixture(autouse=True)
def _host_linux_amd64(monkeypatch: pytest.MonkeyPatch):
    """Platform vectors convention: host pinned to linux/amd64 unless a test says otherwise."""
    monkeypatch.delenv(platforms.HOST_ENV, raising=False)
    with platforms.pinned_host(LINUX_AMD64):
        yield


# -- parsing: TV-8..21 ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("linux/arm64", P("linux", "arm64")),  # TV-8
        ("linux/arm64/v8", P("linux", "arm64", "v8")),  # TV-9, PLAT-5
        ("linux/aarch64", P("linux", "arm64")),  # TV-10
        ("linux/aarch64/8", P("linux", "arm64", "v8")),  # TV-10
        ("Linux/x86_64", P("linux", "amd64")),  # TV-11, NORM-1/2
        ("armel", P("linux", "arm", "v6")),  # TV-13, PLAT-3
        ("armhf", P("linux", "arm")),  # TV-13: arm v7 loses its variant
        ("arm", P("linux", "arm")),  # TV-13
        ("linux", P("linux", "amd64")),  # TV-16: host arch
        ("macOS", P("darwin", "amd64")),  # TV-16, NORM-1
        ("windows", P("windows", "amd64")),  # TV-16
        (
            "windows(10.0.17763+win32k)/amd64",
            P("windows", "amd64", "", "10.0.17763", ("win32k",)),
        ),  # TV-17
        ("linux(+unsorted+erofs)/amd64", P("linux", "amd64", "", "", ("unsorted", "erofs"))),
        ("linux/foo", P("linux", "foo")),  # TV-20: two parts, arch not checked
        ("linux/arm/v7", P("linux", "arm", "v7")),  # PLAT-5 keeps v7
        ("linux/arm", P("linux", "arm")),  # PLAT-4 drops v7
        ("linux/amd64/v1", P("linux", "amd64")),  # NORM-2
        ("linux/i386", P("linux", "386")),
        ("amd64", P("linux", "amd64")),  # PLAT-3: known arch, host os
        ("windows(10.0%2B1)/amd64", P("windows", "amd64", "", "10.0+1")),  # PLAT-2 decoding
    ],
)
def test_parse_vectors(spec: str, expected: Platform) -> None:
    assert parse(spec) == expected


def test_parse_format_vectors() -> None:
    # TV-8, TV-9, TV-11, TV-13, TV-17, TV-18 (format / format_all columns)
    assert platforms.format(parse("linux/arm64")) == "linux/arm64"
    assert platforms.format(parse("linux/arm64/v8")) == "linux/arm64/v8"
    assert platforms.format(parse("Linux/x86_64")) == "linux/amd64"
    assert platforms.format(parse("armel")) == "linux/arm/v6"
    assert platforms.format(parse("armhf")) == "linux/arm"
    assert format_all(parse("windows(10.0.17763+win32k)/amd64")) == (
        "windows(10.0.17763+win32k)/amd64"
    )
    assert format_all(parse("linux(+unsorted+erofs)/amd64")) == "linux(+erofs+unsorted)/amd64"


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "/linux/arm",
        "linux/arm/",
        "linux /arm",
        "linux/&arm",
        "linux/arm/foo/bar",
        "*",
        "linux/*",
    ],
)
def test_parse_rejects_bad_specifiers(spec: str) -> None:  # TV-21
    with pytest.raises(InvalidArgument):
        parse(spec)


def test_parse_error_texts() -> None:  # TV-21, PLAT-1, PLAT-3, PLAT-6
    with pytest.raises(InvalidArgument) as err:
        parse("foo")
    assert str(err.value) == '"foo": unknown operating system or architecture: invalid argument'
    with pytest.raises(InvalidArgument, match=r'^"linux/\*": wildcards not yet supported'):
        parse("linux/*")
    with pytest.raises(
        InvalidArgument, match=r"cannot parse platform specifier: invalid argument$"
    ):
        parse("linux/arm/foo/bar")
    with pytest.raises(InvalidArgument, match=r'^"" is an invalid OS component of "/linux/arm"'):
        parse("/linux/arm")
    with pytest.raises(InvalidArgument, match=r'^"&arm" is an invalid component of "linux/&arm"'):
        parse("linux/&arm")
    with pytest.raises(InvalidArgument, match=r"^invalid platform foo: \"foo\": unknown"):
        parse_all(["linux", "foo"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("windows(10%zz)/amd64", r'^"windows\(10%zz\)/amd64": invalid URL escape in "10%zz"'),
        ("linux(+a%2)/amd64", r'invalid URL escape in "a%2"'),
        ("linux(+%ff)/amd64", r'^"linux\(\+%ff\)/amd64": invalid UTF-8 in "%ff"'),
        ("linux(+)/amd64", r'^"linux\(\+\)" is an invalid OS component'),
        ("linux\n/amd64", r'^"linux\\n" is an invalid OS component of "linux\\n/amd64"'),
    ],
)
def test_parse_rejects_bad_percent_escapes_and_features(spec: str, message: str) -> None:  # PLAT-2
    with pytest.raises(InvalidArgument, match=message):
        parse(spec)


def test_parse_uses_the_pinned_host() -> None:  # PLAT-3, HOST-3
    with platforms.pinned_host(P("linux", "arm", "v6")):
        assert parse("linux") == P("linux", "arm", "v6")
    with platforms.pinned_host("linux/arm/v7"):
        assert parse("linux") == P("linux", "arm")  # v7 is the default, not spelled out
    with platforms.pinned_host("freebsd/arm64/v8"):
        assert parse("riscv64") == P("freebsd", "riscv64")
        assert parse("linux") == P("linux", "arm64")


def test_parse_all_keeps_order() -> None:
    assert parse_all(["linux/arm64", "windows/amd64"]) == [
        P("linux", "arm64"),
        P("windows", "amd64"),
    ]


# -- normalize: TV-22 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (P("linux", "aarch64", "v8"), P("linux", "arm64")),
        (P("linux", "arm"), P("linux", "arm", "v7")),
        (P("linux", "x86_64", "v1"), P("linux", "amd64")),
        (P("", "amd64"), P("linux", "amd64")),
        (P("linux", "amd64", "", "", ("b", "a", "b")), P("linux", "amd64", "", "", ("a", "b"))),
        (P("LINUX", "ARM64", "9.0"), P("linux", "arm64", "v9")),
        (P("linux", "armhf", "v5"), P("linux", "arm", "v7")),
        (P("linux", "riscv64", "RVA23"), P("linux", "riscv64", "rva23")),
        (P("windows", "amd64", "", "10.0.X"), P("windows", "amd64", "", "10.0.X")),
    ],
)
def test_normalize_vectors(given: Platform, expected: Platform) -> None:  # TV-22, NORM-1..3
    assert normalize(given) == expected


def test_format_without_os_is_unknown() -> None:  # FMT-1
    assert platforms.format(P("", "amd64")) == "unknown"
    assert format_all(P("", "amd64", "", "1.0")) == "unknown"
    assert platforms.format(P("linux", "")) == "linux"


def test_format_all_escapes_version_and_features() -> None:  # FMT-2
    p = P("windows", "amd64", "", "1%(2)/3+4", ("b+c", "", "a", "a"))
    text = format_all(p)
    assert text == "windows(1%25%282%29%2F3%2B4+a+b%2Bc)/amd64"
    assert parse(text) == P("windows", "amd64", "", "1%(2)/3+4", ("a", "b+c"))


def test_platform_str_is_format_all() -> None:
    assert str(P("linux", "amd64", "", "", ("x",))) == "linux(+x)/amd64"


# -- hypothesis: round trip -------------------------------------------------------------

_word = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-", min_size=1, max_size=8)
_escaped_text = st.text(alphabet="abzAZ09_.-%+()/", min_size=1, max_size=8)
_platforms = st.builds(
    Platform,
    os=st.sampled_from(["linux", "windows", "darwin", "macOS", "Linux"]) | _word,
    architecture=st.sampled_from(
        ["amd64", "x86_64", "arm", "armhf", "armel", "arm64", "aarch64", "386", "i386", "s390x"]
    )
    | st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-", min_size=1, max_size=8),
    variant=st.sampled_from(["", "v1", "v2", "v5", "7", "v8", "8", "v9.0", "v8.2"]) | _word,
    os_version=st.just("") | _escaped_text,
    os_features=st.lists(_escaped_text, max_size=3).map(tuple),
)


@settings(max_examples=300)
@given(_platforms)
def test_parse_format_all_round_trips_normalised_platforms(p: Platform) -> None:  # FMT-2
    n = normalize(p)
    assert normalize(n) == n
    assert parse(format_all(n)) == n


# -- matchers: TV-24..37 ----------------------------------------------------------------


def _matches(matcher: platforms.MatchComparer, specs: list[str]) -> list[bool]:
    return [matcher.match(parse(s)) for s in specs]


@pytest.mark.parametrize(
    ("matcher", "yes", "no"),
    [
        (  # TV-24, MATCH-2
            only(parse("linux/amd64")),
            ["linux/amd64", "linux/amd64/v1", "linux/386"],
            ["linux/amd64/v2", "linux/arm64", "windows/amd64"],
        ),
        (  # TV-25
            only(parse("linux/amd64/v2")),
            ["linux/amd64", "linux/amd64/v2", "linux/386"],
            ["linux/amd64/v3", "linux/amd64/v4"],
        ),
        (only(parse("linux/arm/v6")), ["linux/arm/v5", "linux/arm/v6"], ["linux/arm"]),  # TV-28
        (only(parse("linux/arm/v5")), ["linux/arm/v5"], ["linux/arm/v6"]),  # TV-28
        (only_strict(parse("linux/amd64")), ["linux/amd64"], ["linux/386"]),  # TV-29, MATCH-3
        (
            only_strict(parse("linux/arm/v7")),
            ["linux/arm", "linux/arm/v7"],
            ["linux/arm/v6"],
        ),  # TV-29
        (only(parse("windows/amd64")), ["windows(10.0.17763)/amd64"], ["linux/amd64"]),  # TV-31
        (
            only_strict(parse("windows(10.0.17763)/amd64")),
            ["windows/amd64", "windows(10.0.17763)/amd64"],
            ["linux/amd64"],
        ),  # TV-31
        (  # TV-32, MATCH-5
            any_of(parse("linux/amd64"), parse("linux/arm64")),
            ["linux/amd64", "linux/arm64/v8"],
            ["linux/386", "linux/arm/v7", "linux/amd64/v2"],
        ),
        (ALL, ["unknown/unknown", "linux/amd64", "plan9/mips64p32le"], []),  # TV-33
        (  # TV-34, MATCH-6
            only(parse("windows(10.0.26100)/amd64")),
            ["windows(10.0.20348)/amd64", "windows(10.0.26100.1)/amd64", "windows/amd64"],
            ["windows(10.0.17763)/amd64", "windows(10.0.26101)/amd64", "windows(10.1.26100)/amd64"],
        ),
        (  # MATCH-6: before ltsc2022 builds must be equal
            only(parse("windows(10.0.17763)/amd64")),
            ["windows(10.0.17763)/amd64", "windows(10.0.17763.5)/amd64"],
            ["windows(10.0.17762)/amd64", "windows(10.0.20348)/amd64"],
        ),
        (  # MATCH-6: the newest LTSC strictly older than the wanted build is the floor
            only(parse("windows(10.0.26200)/amd64")),
            ["windows(10.0.26100)/amd64", "windows(10.0.26200)/amd64"],
            ["windows(10.0.20348)/amd64"],
        ),
        (  # MATCH-1: win32k is ignored on the candidate for windows
            only(parse("windows/amd64")),
            ["windows(+win32k)/amd64"],
            ["windows(+other)/amd64"],
        ),
        (  # TV-36, MATCH-1: candidate features must be a subset
            only(parse("linux(+gpu)/amd64")),
            ["linux/amd64", "linux(+gpu)/amd64"],
            ["linux(+gpu+x)/amd64"],
        ),
        (only(parse("linux/amd64")), ["linux/amd64"], ["linux(+gpu)/amd64"]),  # TV-36
        (  # MATCH-2: arm64 then arm v8..v5
            only(parse("linux/arm64")),
            ["linux/arm64", "linux/arm64/v8", "linux/arm/v8", "linux/arm", "linux/arm/v5"],
            ["linux/arm64/v8.1", "linux/arm64/v9", "linux/amd64"],
        ),
        (  # MATCH-2: v9.x ladder continues at v8.(x+5)
            only(parse("linux/arm64/v9.2")),
            ["linux/arm64/v9.1", "linux/arm64/v9", "linux/arm64/v8.7", "linux/arm64", "linux/arm"],
            ["linux/arm64/v9.3", "linux/arm64/v8.8"],
        ),
        (  # MATCH-2: capped at v8.9
            only(parse("linux/arm64/v9.7")),
            ["linux/arm64/v8.9", "linux/arm64/v9.6"],
            ["linux/arm64/v8.10"],
        ),
        (only(parse("linux/arm64/v7")), [], ["linux/arm64/v7", "linux/arm/v7"]),  # MATCH-2
        (only(parse("linux/riscv64")), ["linux/riscv64"], ["linux/riscv64/rva23"]),
    ],
)
def test_matcher_vectors(matcher: platforms.MatchComparer, yes: list[str], no: list[str]) -> None:
    assert _matches(matcher, yes) == [True] * len(yes)
    assert _matches(matcher, no) == [False] * len(no)


def test_only_ladder_order() -> None:  # MATCH-2
    m = only(parse("linux/amd64/v3"))
    given = [parse(s) for s in ["linux/386", "linux/amd64", "linux/amd64/v2", "linux/amd64/v3"]]
    ranked = sort_best_first(given, lambda p: p, m)
    assert [platforms.format(p) for p in ranked] == [
        "linux/amd64/v3",
        "linux/amd64/v2",
        "linux/amd64",
        "linux/386",
    ]


@pytest.mark.parametrize(
    "matcher",
    [
        only(parse("linux/amd64")),
        only_strict(parse("linux/amd64")),
        ordered(parse("linux/amd64")),
        any_of(parse("linux/amd64")),
    ],
)
def test_sort_best_first_vector(matcher: platforms.MatchComparer) -> None:  # TV-37, MATCH-4/5/7
    given = ["windows/amd64", "linux/amd64", "linux(+other)/amd64", "linux/arm64"]
    ranked = sort_best_first([parse(s) for s in given], lambda p: p, matcher)
    assert [format_all(p) for p in ranked] == [
        "linux/amd64",
        "linux(+other)/amd64",
        "windows/amd64",
        "linux/arm64",
    ]


def test_sort_prefers_more_features() -> None:  # TV-37, MATCH-4
    m = only(parse("linux(+f1+f2)/amd64"))
    given = ["linux/amd64", "linux(+f2)/amd64", "linux(+f1)/amd64", "linux(+f1+f2)/amd64"]
    ranked = sort_best_first([parse(s) for s in given], lambda p: p, m)
    assert [format_all(p) for p in ranked] == [
        "linux(+f1+f2)/amd64",
        "linux(+f2)/amd64",
        "linux(+f1)/amd64",
        "linux/amd64",
    ]


def test_sort_best_first_puts_platformless_last_and_is_stable() -> None:  # MATCH-7
    items = [("a", None), ("b", parse("linux/arm64")), ("c", None), ("d", parse("linux/amd64"))]
    ranked = sort_best_first(items, lambda i: i[1], only(LINUX_AMD64))
    assert [name for name, _ in ranked] == ["d", "b", "a", "c"]


def test_ordered_prefers_earlier_platforms() -> None:  # MATCH-4
    m = ordered(parse("linux/arm64"), parse("linux/amd64"))
    assert m.less(parse("linux/arm64"), parse("linux/amd64"))
    assert not m.less(parse("linux/amd64"), parse("linux/arm64"))
    assert not m.match(parse("linux/386"))


def test_any_has_no_preference_among_matches() -> None:  # MATCH-5
    m = any_of(parse("linux/arm64"), parse("linux/amd64"))
    a, b = parse("linux/arm64"), parse("linux/amd64")
    assert not m.less(a, b)
    assert not m.less(b, a)
    assert m.less(b, parse("linux/386"))


def test_all_prefers_nothing() -> None:  # MATCH-5
    assert not ALL.less(LINUX_AMD64, P("windows", "arm64"))


def test_match_any_with_preference() -> None:  # HOST-4, SAVE-1, LOAD-1
    pm = match_any_with_preference(only(LINUX_AMD64), [])
    assert pm.match(P("unknown", "unknown"))  # empty list: everything
    assert pm.less(LINUX_AMD64, parse("linux/arm64"))
    pm = match_any_with_preference(only(LINUX_AMD64), [parse("linux/arm64"), parse("linux/386")])
    assert pm.match(parse("linux/arm64/v8"))
    assert not pm.match(LINUX_AMD64)
    assert pm.less(parse("linux/386"), parse("linux/arm64"))  # order comes from only(host)


# -- less is a strict weak order (hypothesis) --------------------------------------------

_candidates = st.sampled_from(
    [
        "linux/amd64",
        "linux/amd64/v2",
        "linux/amd64/v3",
        "linux/386",
        "linux/arm64",
        "linux/arm64/v8.2",
        "linux/arm/v7",
        "linux/arm/v6",
        "windows/amd64",
        "windows(10.0.20348)/amd64",
        "linux(+a)/amd64",
        "linux(+a+b)/amd64",
        "linux(+b)/arm64",
        "linux(+a)/riscv64",
        "linux/riscv64",
        "unknown/unknown",
    ]
).map(parse)

_matcher_strategy = st.one_of(
    _candidates.map(only),
    _candidates.map(only_strict),
    st.lists(_candidates, max_size=3).map(lambda ps: ordered(*ps)),
    st.lists(_candidates, max_size=3).map(lambda ps: any_of(*ps)),
    st.lists(_candidates, max_size=3).map(
        lambda ps: match_any_with_preference(only(LINUX_AMD64), ps)
    ),
    st.just(ALL),
)


def _incomparable(less, a: Platform, b: Platform) -> bool:
    return not less(a, b) and not less(b, a)


@settings(max_examples=150)
@given(_matcher_strategy, st.lists(_candidates, min_size=3, max_size=6))
def test_less_is_a_strict_weak_order(matcher: platforms.MatchComparer, ps: list[Platform]) -> None:
    less = matcher.less
    for a in ps:
        assert not less(a, a)  # irreflexive
    for a, b, c in itertools.permutations(ps, 3):
        if less(a, b) and less(b, c):
            assert less(a, c)  # transitive
        if _incomparable(less, a, b) and _incomparable(less, b, c):
            assert _incomparable(less, a, c)  # incomparability is transitive


# -- parse_list (CLI) -------------------------------------------------------------------


def test_parse_list_accepts_commas_and_repeats() -> None:
    assert parse_list(["linux/amd64,linux/arm64/v8", " linux/arm/v7 ", "windows"]) == [
        P("linux", "amd64"),
        P("linux", "arm64", "v8"),
        P("linux", "arm", "v7"),
        P("windows", "amd64"),
    ]
    assert parse_list([]) == []


def test_parse_list_keeps_platform_values_and_checks_them_for_duplicates() -> None:
    assert parse_list([P("linux", "arm64"), "linux/amd64,linux/386"]) == [
        P("linux", "arm64"),
        P("linux", "amd64"),
        P("linux", "386"),
    ]
    with pytest.raises(InvalidArgument, match=r'^duplicate platform "linux/x86_64"'):
        parse_list([P("linux", "amd64"), "linux/x86_64"])


def test_load_and_save_options_read_a_comma_list_alike() -> None:
    from castar.engine.load.importer import LoadOptions
    from castar.engine.save.plan import SaveOptions

    given = ["linux/amd64,linux/arm64", P("linux", "386")]
    want = (P("linux", "amd64"), P("linux", "arm64"), P("linux", "386"))
    assert LoadOptions.parse(given).platforms == SaveOptions.parse(given).platforms == want
    assert LoadOptions.parse("linux/amd64,linux/arm64").platforms == want[:2]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["linux/amd64,"], r'^empty platform in "linux/amd64,"'),
        (["linux/amd64, ,linux/arm64"], r"^empty platform in"),
        ([""], r'^empty platform in ""'),
        (["linux/arm64", "linux/aarch64/v8"], r'^duplicate platform "linux/aarch64/v8"'),
        (
            ["linux/amd64,Linux/x86_64"],
            r'^duplicate platform "Linux/x86_64" \(same as "linux/amd64"',
        ),
        (["linux/amd64,foo"], r'^invalid platform foo: "foo": unknown operating system'),
    ],
)
def test_parse_list_rejects(values: list[str], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_list(values)


# -- host (HOST-1..3) -------------------------------------------------------------------


def test_host_is_pinned_by_the_fixture() -> None:  # HOST-3
    assert platforms.host() == LINUX_AMD64


def test_host_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:  # HOST-3
    monkeypatch.setattr(platforms, "_pinned", None)
    monkeypatch.setenv(platforms.HOST_ENV, "linux/arm64/v8")
    assert platforms.host() == P("linux", "arm64", "v8")
    assert parse("linux") == P("linux", "arm64")
    monkeypatch.setenv(platforms.HOST_ENV, "foo")
    with pytest.raises(InvalidArgument, match=r"CASTAR_HOST_PLATFORM"):
        platforms.host()


@pytest.mark.parametrize(
    ("machine", "expected"),
    [
        ("x86_64", P("linux", "amd64")),  # HOST-2: castar keeps plain amd64
        ("AMD64", P("linux", "amd64")),
        ("aarch64", P("linux", "arm64", "v8")),  # HOST-1
        ("arm64", P("linux", "arm64", "v8")),
        ("armv7l", P("linux", "arm", "v7")),  # HOST-3
        ("armv6l", P("linux", "arm", "v6")),
        ("i686", P("linux", "386")),
        ("ppc64le", P("linux", "ppc64le")),
        ("s390x", P("linux", "s390x")),
        ("riscv64", P("linux", "riscv64")),
        ("loongarch64", P("linux", "loong64")),
    ],
)
def test_host_autodetection(
    monkeypatch: pytest.MonkeyPatch, machine: str, expected: Platform
) -> None:
    monkeypatch.setattr(platform, "system", lambda: "Linux")
    monkeypatch.setattr(platform, "machine", lambda: machine)
    platforms._detected.cache_clear()
    monkeypatch.setattr(platforms, "_pinned", None)
    try:
        assert platforms.host() == expected
    finally:
        platforms._detected.cache_clear()


# -- OCI JSON ---------------------------------------------------------------------------


def test_to_json_orders_and_omits_fields() -> None:  # DESC-1
    full = P("windows", "amd64", "v2", "10.0.17763", ("win32k",))
    assert list(platforms.to_json(full).items()) == [
        ("architecture", "amd64"),
        ("os", "windows"),
        ("os.version", "10.0.17763"),
        ("os.features", ["win32k"]),
        ("variant", "v2"),
    ]
    assert platforms.to_json(P("", "")) == {"architecture": "", "os": ""}


def test_from_json_round_trips_and_rejects_bad_types() -> None:
    p = P("linux", "arm64", "v8", "1", ("a",))
    assert platforms.from_json(platforms.to_json(p)) == p
    assert platforms.from_json({"os": "linux"}) == P("linux", "")
    for bad in ([], {"os": 1}, {"os.features": "x"}, {"os.features": [1]}):
        with pytest.raises(MalformedManifest):
            platforms.from_json(bad)


def test_module_is_pure() -> None:
    """No I/O library (no anyio): stdlib only, plus castar.store's errors and pure helpers."""
    tree = ast.parse(Path(str(platforms.__file__)).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)} | {
        a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names
    }
    assert "anyio" not in imported
    assert {m for m in imported if m and m.startswith("castar")} <= {
        "castar.store.errors",
        "castar.engine._goquote",
        "castar.engine._json",
    }


def test_host_autodetection_on_windows_keeps_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    # HOST-1: on Windows the host spec carries major.minor.build as its OS version.
    monkeypatch.setattr(platform, "system", lambda: "Windows")
    monkeypatch.setattr(platform, "machine", lambda: "AMD64")
    monkeypatch.setattr(platform, "version", lambda: "10.0.20348.1234")
    platforms._detected.cache_clear()
    monkeypatch.setattr(platforms, "_pinned", None)
    try:
        assert platforms.host() == P("windows", "amd64", "", "10.0.20348")
        assert format_all(platforms.host()) == "windows(10.0.20348)/amd64"
    finally:
        platforms._detected.cache_clear()
