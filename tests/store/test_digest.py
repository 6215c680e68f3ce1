"""Digest validation and helpers: DIG-1..6, vectors TV-1..7."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import castar
from castar.store import digest as dg

HEX64 = "a" * 64


def test_tv1_valid_sha256() -> None:
    d = dg.parse("sha256:" + HEX64)
    assert d.algorithm == "sha256"
    assert d.encoded == HEX64
    assert isinstance(d, str)
    assert d == "sha256:" + HEX64


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("sha256:" + "A" * 64, dg.InvalidDigestFormat),  # TV-2
        ("sha256:abcdef0123456789", dg.InvalidDigestLength),  # TV-3
        (
            "sha256:d41d8cd98f00b204e9800m98ecf8427e",
            dg.InvalidDigestLength,
        ),  # TV-3: length before charset
        ("sha512:" + "a" * 64, dg.InvalidDigestLength),  # TV-4
        ("foo:d41d8cd98f00b204e9800998ecf8427e", dg.UnsupportedDigestAlgorithm),  # TV-5
        ("blake3:" + "a" * 64, dg.UnsupportedDigestAlgorithm),  # TV-5
        ("", dg.InvalidDigestFormat),  # TV-6
        (":", dg.InvalidDigestFormat),
        ("sha256:", dg.InvalidDigestFormat),
        ("     ", dg.InvalidDigestFormat),
        ("d41d8cd98f00b204e9800998ecf8427e", dg.InvalidDigestFormat),
        ("sha384__foo+bar:" + "a" * 96, dg.InvalidDigestFormat),
        ("sha256+b64:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564", dg.UnsupportedDigestAlgorithm),
    ],
)
def test_invalid_digests_raise_the_dig3_kind(value: str, kind: type[Exception]) -> None:
    with pytest.raises(kind) as info:
        dg.parse(value)
    assert isinstance(info.value, castar.InvalidArgument)


def test_messages_are_the_dig4_texts() -> None:
    with pytest.raises(
        castar.InvalidArgument, match=r"^invalid checksum digest format: invalid argument$"
    ):
        dg.parse("nope")
    with pytest.raises(castar.InvalidArgument, match=r"^invalid checksum digest length"):
        dg.parse("sha256:abc")
    with pytest.raises(castar.InvalidArgument, match=r"^unsupported digest algorithm"):
        dg.parse("md5:" + "a" * 32)


def test_tv7_digest_of_empty_bytes() -> None:
    assert (
        dg.compute(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )


def test_sha512_is_available_and_blob_path_uses_dig6() -> None:
    d = dg.compute(b"x", "sha512")
    assert d.algorithm == "sha512"
    assert len(d.encoded) == 128
    assert dg.blob_path(d) == f"blobs/sha512/{d.encoded}"


def test_from_hasher_matches_compute() -> None:
    h = dg.hasher("sha256")
    h.update(b"hello")
    assert dg.from_hasher(h) == dg.compute(b"hello")


@given(st.text(alphabet=st.sampled_from("sha2561:+._-=ABCDEFabcdef0123456789 xé"), max_size=140))
@settings(max_examples=300)
def test_any_text_is_a_valid_digest_or_invalid_argument(value: str) -> None:
    # DIG-1..3: parse never fails any other way, and what it accepts is exactly the input
    try:
        d = dg.parse(value)
    except castar.InvalidArgument:
        return
    assert d == value
    assert d.algorithm in dg.ALGORITHMS
    assert len(d.encoded) == dg.ALGORITHMS[d.algorithm]


@given(st.binary(max_size=256), st.sampled_from(sorted(dg.ALGORITHMS)))
@settings(max_examples=50)
def test_computed_digests_parse_and_round_trip(data: bytes, alg: str) -> None:
    d = dg.compute(data, alg)  # DIG-5
    assert dg.parse(str(d)) == d
    assert dg.blob_path(d) == f"blobs/{alg}/{d.encoded}"  # DIG-6
