"""The sans-IO tar codec: round trips, split invariance, fuzzing, tarfile as oracle (TAR-1..4)."""

from __future__ import annotations

import contextlib
import io
import itertools
import tarfile
from dataclasses import replace

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from castar.engine.tarcodec import (
    END_OF_ARCHIVE,
    MAX_RECORD,
    NEED_DATA,
    ArchiveEnd,
    Chunk,
    MemberEnd,
    MemberStart,
    TarDecoder,
    encode_header,
    padding,
)
from castar.store.errors import InvalidArgument, MalformedArchive

Member = tuple[MemberStart, bytes]


def decode(chunks: list[bytes]) -> tuple[list[Member], ArchiveEnd]:
    """Feed ``chunks`` one at a time; return members with their joined bodies and the end."""
    dec = TarDecoder()
    feed = iter(chunks)
    members: list[Member] = []
    current: MemberStart | None = None
    body = bytearray()
    for _ in range(10 * (sum(map(len, chunks)) + len(chunks)) + 100):
        event = dec.next_event()
        if event is NEED_DATA:
            data = next(feed, None)
            if data is None:
                dec.feed_eof()
            else:
                dec.feed(data)
        elif isinstance(event, MemberStart):
            assert current is None
            current, body = event, bytearray()
        elif isinstance(event, Chunk):
            assert current is not None
            assert len(event.data) > 0
            body += event.data
        elif isinstance(event, MemberEnd):
            assert current is not None
            assert event.name == current.name
            assert len(body) == current.size
            members.append((current, bytes(body)))
            current = None
        else:
            assert isinstance(event, ArchiveEnd)
            assert current is None
            return members, event
    raise AssertionError("decoder did not finish: it loops without consuming input")


def decode_whole(data: bytes) -> tuple[list[Member], ArchiveEnd]:
    return decode([data])


def split_at(data: bytes, points: list[int]) -> list[bytes]:
    cuts = sorted({p % (len(data) + 1) for p in points})
    edges = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges) if b > a]


def tarfile_archive(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int) -> bytes:
    bio = io.BytesIO()
    with tarfile.open(fileobj=bio, mode="w", format=fmt) as tf:
        for info, data in members:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return bio.getvalue()


def info(name: str, data: bytes = b"", **kw: object) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = 1_700_000_000
    ti.mode = 0o640
    for key, value in kw.items():
        setattr(ti, key, value)
    if not ti.isreg():
        ti.size = 0
    return ti, data


def castar_archive(members: list[tuple[str, bytes, int]]) -> bytes:
    parts = []
    for name, data, mode in members:
        parts += [encode_header(name, len(data), mode=mode), data, padding(len(data))]
    parts.append(END_OF_ARCHIVE)
    return b"".join(parts)


def assert_same_as_tarfile(raw: bytes) -> list[Member]:
    """Decode ``raw`` and compare every member with tarfile's reading of it."""
    members, _ = decode_whole(raw)
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
        expected = []
        for ti in tf.getmembers():
            data = tf.extractfile(ti).read() if ti.isreg() else b""  # type: ignore[union-attr]
            expected.append(
                (ti.name, ti.size if ti.isreg() else 0, ti.linkname, int(ti.mtime), data)
            )
            expected[-1] += (ti.mode, ti.offset, ti.offset_data)
    got = [
        (
            m.name.rstrip("/") if m.type == b"5" else m.name,
            *(m.size, m.linkname, m.mtime, body, m.mode, m.header_offset, m.data_offset),
        )
        for m, body in members
    ]
    assert got == expected
    return members


# -- chunking invariance (h11 tr()) ------------------------------------------------------------

SAMPLE = tarfile_archive(
    [
        info("a.txt", b"hello"),
        info("dir/", type=tarfile.DIRTYPE),
        info("blobs/sha512/" + "a" * 128, b"x" * 700),
        info("link", type=tarfile.SYMTYPE, linkname="t" * 150),
        info("empty"),
        info("block", b"b" * 512),
    ],
    tarfile.PAX_FORMAT,
)


GNU_SAMPLE = tarfile_archive(
    [
        info("n" * 150, b"long name"),
        info("s", type=tarfile.SYMTYPE, linkname="k" * 120),
        info("v", b"v" * 513),
    ],
    tarfile.GNU_FORMAT,
)


@pytest.mark.parametrize("raw", [SAMPLE, GNU_SAMPLE], ids=["pax", "gnu"])
def test_decoding_is_the_same_fed_whole_or_one_byte_at_a_time(raw: bytes) -> None:
    whole = decode_whole(raw)
    one_byte = decode([raw[i : i + 1] for i in range(len(raw))])
    assert one_byte == whole
    assert whole == decode_whole(raw)  # and a second decoder agrees with the first
    assert len(whole[0]) in (3, 6)


def test_sample_members_decode_as_written() -> None:
    members, _ = decode_whole(SAMPLE)
    assert [m.name for m, _ in members][:3] == ["a.txt", "dir/", "blobs/sha512/" + "a" * 128]
    members, _ = decode_whole(GNU_SAMPLE)
    assert [(m.name, m.linkname, body) for m, body in members] == [
        ("n" * 150, "", b"long name"),
        ("s", "k" * 120, b""),
        ("v", "", b"v" * 513),
    ]


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([SAMPLE, GNU_SAMPLE]),
    st.lists(st.integers(min_value=0, max_value=len(SAMPLE)), max_size=12),
)
def test_decoding_is_unchanged_by_split_points(raw: bytes, points: list[int]) -> None:
    assert decode(split_at(raw, points)) == decode_whole(raw)


def test_body_chunks_are_views_of_the_fed_buffers_one_per_buffer() -> None:
    body = bytes(range(256)) * 8
    raw = castar_archive([("f", body, 0o444)])
    first, second = bytearray(raw[:1000]), bytearray(raw[1000:])
    dec = TarDecoder()
    dec.feed(first)
    dec.feed(second)
    dec.feed_eof()
    assert isinstance(dec.next_event(), MemberStart)
    c1, c2 = dec.next_event(), dec.next_event()
    assert isinstance(c1, Chunk)
    assert isinstance(c2, Chunk)
    assert c1.data.obj is first  # a slice, not a copy
    assert c2.data.obj is second
    assert bytes(c1.data) + bytes(c2.data) == body
    assert dec.next_event() == MemberEnd("f")
    assert dec.next_event() == ArchiveEnd(512 + 2048)


# -- encoder (TAR-1..3) ------------------------------------------------------------------------


def test_encoded_header_is_deterministic_ustar_with_zero_ids_and_mtime() -> None:  # TAR-1, TAR-2
    h = encode_header("blobs/sha256/" + "0" * 64, 10)
    assert h == encode_header("blobs/sha256/" + "0" * 64, 10)
    assert len(h) == 512
    ti = tarfile.TarInfo.frombuf(h, "utf-8", "strict")
    assert (ti.uid, ti.gid, ti.uname, ti.gname, ti.mtime) == (0, 0, "", "", 0)
    assert ti.mode == 0o444  # TAR-3
    assert h[257:265] == b"ustar\x0000"
    assert ti.type == tarfile.REGTYPE


def test_long_splittable_name_uses_the_ustar_prefix_not_pax() -> None:  # TAR-2
    name = "d" * 150 + "/" + "f" * 99
    h = encode_header(name, 0)
    assert len(h) == 512
    assert h[345:495] == b"d" * 150
    (member, _), *_ = decode_whole(h + END_OF_ARCHIVE)[0]
    assert member.name == name


@pytest.mark.parametrize(
    ("name", "size", "why"),
    [
        ("blobs/sha512/" + "c" * 128, 1, "unsplittable name"),  # EDGE-12
        ("x" * 300, 1, "name over 255 bytes"),
        ("blobs/é", 1, "non-ASCII"),
        ("big", 9 << 30, "size of 8 GiB or more"),  # EDGE-13
    ],
)
def test_unrepresentable_headers_get_a_pax_record_tarfile_reads(
    name: str, size: int, why: str
) -> None:  # TAR-2
    h = encode_header(name, size, mode=0o644)
    assert len(h) > 512, why
    assert h[156:157] == b"x"
    if size < 1 << 20:
        raw = h + b"\1" * size + padding(size) + END_OF_ARCHIVE
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            (ti,) = tf.getmembers()
            assert (ti.name, ti.size, ti.mode, ti.mtime) == (name, size, 0o644, 0)
    dec = TarDecoder()
    dec.feed(h)
    event = dec.next_event()
    assert isinstance(event, MemberStart)
    assert (event.name, event.size, event.data_offset) == (name, size, len(h))


def test_huge_size_is_also_written_base256_in_the_ustar_field() -> None:  # EDGE-13
    h = encode_header("big", 9 << 30)
    ti = tarfile.TarInfo.frombuf(h[-512:], "utf-8", "strict")
    assert ti.size == 9 << 30


def test_long_link_name_goes_to_pax_linkpath() -> None:
    target = "t/" * 80
    raw = encode_header("l", 0, type=b"2", linkname=target) + END_OF_ARCHIVE
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        (ti,) = tf.getmembers()
        assert ti.issym()
        assert ti.linkname == target
    (member, _), *_ = decode_whole(raw)[0]
    assert (member.type, member.linkname, member.size) == (b"2", target, 0)


def test_encoder_rejects_negative_size_and_bad_typeflag() -> None:
    with pytest.raises(InvalidArgument, match="negative size"):
        encode_header("a", -1)
    with pytest.raises(InvalidArgument, match="one byte"):
        encode_header("a", 0, type=b"00")


def test_padding_and_end_marker() -> None:
    assert padding(0) == b""
    assert padding(1) == bytes(511)
    assert padding(512) == b""
    assert bytes(1024) == END_OF_ARCHIVE


names = st.text(
    alphabet=st.characters(min_codepoint=0x21, max_codepoint=0x2FF, exclude_characters="\x7f"),
    min_size=1,
    max_size=300,
).filter(lambda n: not n.endswith("/"))  # tarfile strips a PAX path's trailing "/"


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(names, st.binary(max_size=1500), st.sampled_from([0o444, 0o644, 0o755])),
        max_size=5,
    )
)
@example([("blobs/sha512/" + "a" * 128, b"z", 0o444)])
def test_castar_archives_round_trip_and_read_identically_in_tarfile(
    members: list[tuple[str, bytes, int]],
) -> None:  # TAR-1..3
    raw = castar_archive(members)
    decoded, end = decode_whole(raw)
    assert [(m.name, body, m.mode, m.mtime) for m, body in decoded] == [
        (n, d, mode, 0) for n, d, mode in members
    ]
    assert end.offset == len(raw) - 1024
    with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
        got = [
            (ti.name, tf.extractfile(ti).read(), ti.mode, ti.mtime, ti.uid, ti.uname)  # type: ignore[union-attr]
            for ti in tf.getmembers()
        ]
    assert got == [(n, d, mode, 0, 0, "") for n, d, mode in members]


# -- tarfile as the oracle for reading (TAR-4) ---------------------------------------------------

ORACLE_MEMBERS = [
    info("plain", b"p" * 1000),
    info("pre" * 40 + "/name", b"n"),
    info("long/" + "l" * 200, b"L" * 3),
    info("linkdir/", type=tarfile.DIRTYPE),
    info("sym", type=tarfile.SYMTYPE, linkname="target/" * 30),
    info("hard", type=tarfile.LNKTYPE, linkname="plain"),
    info("zero"),
]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tarfile_archives_decode_like_tarfile_reads_them(fmt: int) -> None:  # TAR-4
    members = assert_same_as_tarfile(tarfile_archive(ORACLE_MEMBERS, fmt))
    assert members[2][0].name == "long/" + "l" * 200
    assert members[4][0].linkname == "target/" * 30


def test_ustar_archive_with_prefix_decodes_like_tarfile() -> None:  # TAR-4
    short = [m for m in ORACLE_MEMBERS if len(m[0].name) < 200 and len(m[0].linkname) <= 100]
    raw = tarfile_archive(short, tarfile.USTAR_FORMAT)
    assert raw[512 * 3 + 345 : 512 * 3 + 348] == b"pre"  # the prefix field is in use
    assert_same_as_tarfile(raw)


def test_pax_size_mtime_and_global_headers_are_applied() -> None:  # TAR-4
    bio = io.BytesIO()
    with tarfile.open(
        fileobj=bio, mode="w", format=tarfile.PAX_FORMAT, pax_headers={"comment": "g"}
    ) as tf:
        ti, data = info("over", b"12345")
        ti.pax_headers = {"size": "5", "mtime": "123.75", "path": "renamed/by/pax"}
        tf.addfile(ti, io.BytesIO(data))
    raw = bio.getvalue()
    assert raw[156:157] == b"g"
    members = assert_same_as_tarfile(raw)
    assert [(m.name, m.size, m.mtime, m.header_offset) for m, _ in members] == [
        ("renamed/by/pax", 5, 123, 1024)
    ]


def test_global_pax_path_applies_to_following_members() -> None:  # TAR-4
    record = b"17 linkpath=glob\n"
    g = encode_header("././@PaxHeader", len(record), type=b"g")
    raw = g + record + padding(len(record)) + encode_header("s", 0, type=b"2", linkname="x")
    raw += encode_header("s2", 0, type=b"2", linkname="y") + END_OF_ARCHIVE
    members, _ = decode_whole(raw)
    assert [(m.name, m.linkname, m.header_offset) for m, _ in members] == [
        ("s", "glob", 1024),
        ("s2", "glob", 1536),
    ]


def test_v7_header_and_nul_typeflag_read_as_regular_file() -> None:  # TAR-4, TAR-5
    raw = tarfile_archive([info("v7file", b"abc")], tarfile.USTAR_FORMAT)
    block = bytearray(raw[:512])
    block[156] = 0  # legacy regular-file flag
    block[257:512] = bytes(255)  # no magic, no uname: a V7 header
    block[148:156] = b"%06o\x00 " % (sum(block[:148]) + 256 + sum(block[156:]))
    raw = bytes(block) + raw[512:]
    (member, body), *_ = decode_whole(raw)[0]
    assert (member.name, member.type, body) == ("v7file", b"0", b"abc")
    assert_same_as_tarfile(raw)


def test_signed_checksum_is_accepted_like_tarfile() -> None:  # TAR-4
    block = bytearray(encode_header("é" * 3, 0)[-512:])
    block[0:6] = "é\0".encode() + b"\0\0\0"
    block[148:156] = b" " * 8
    signed = 256 + sum(b - 256 if b > 127 else b for b in block[:148] + block[156:])
    block[148:156] = b"%06o\x00 " % signed
    (member, _), *_ = decode_whole(bytes(block) + END_OF_ARCHIVE)[0]
    assert member.name == "é"


def test_base256_size_field_is_decoded() -> None:  # TAR-4, EDGE-13
    block = bytearray(encode_header("huge", 0))
    size = (12 << 30) + 7
    block[124:136] = b"\x80" + size.to_bytes(11, "big")
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\x00 " % sum(block)
    dec = TarDecoder()
    dec.feed(bytes(block))
    event = dec.next_event()
    assert isinstance(event, MemberStart)
    assert event.size == size
    assert tarfile.TarInfo.frombuf(bytes(block), "utf-8", "strict").size == size


def test_eof_at_a_member_boundary_without_zero_blocks_ends_the_archive() -> None:
    raw = castar_archive([("a", b"1", 0o444)])[:-1024]
    members, end = decode_whole(raw)
    assert [m.name for m, _ in members] == ["a"]
    assert end == ArchiveEnd(1024)


def test_one_zero_block_ends_the_archive_and_later_bytes_are_ignored() -> None:
    raw = castar_archive([("a", b"1", 0o444)])[:-512] + b"garbage"
    members, end = decode_whole(raw)
    assert end == ArchiveEnd(1024)
    assert len(members) == 1


# -- skip_body -----------------------------------------------------------------------------------


def test_skip_body_drops_buffered_bytes_and_reports_what_is_still_unfed() -> None:
    raw = castar_archive([("a", b"A" * 1000, 0o444), ("b", b"B" * 10, 0o444)])
    dec = TarDecoder()
    dec.feed(raw[:700])
    first = dec.next_event()
    assert isinstance(first, MemberStart)
    unfed = dec.skip_body()
    assert unfed == 1024 - 188  # body + padding minus the 188 bytes already buffered
    assert dec.offset == 1536
    dec.feed(raw[1536:])
    dec.feed_eof()
    second = dec.next_event()
    assert isinstance(second, MemberStart)
    assert second.name == "b"
    assert isinstance(dec.next_event(), Chunk)


def test_skip_body_when_the_whole_member_is_buffered_needs_no_seek() -> None:
    raw = castar_archive([("a", b"A" * 10, 0o444), ("b", b"B", 0o444)])
    dec = TarDecoder()
    dec.feed(raw)
    assert isinstance(dec.next_event(), MemberStart)
    assert dec.skip_body() == 0
    event = dec.next_event()
    assert isinstance(event, MemberStart)
    assert event.name == "b"


def test_skip_body_is_refused_except_right_after_member_start() -> None:
    dec = TarDecoder()
    dec.feed(castar_archive([("a", b"A", 0o444)]))
    with pytest.raises(RuntimeError):
        dec.skip_body()
    dec.next_event()
    dec.next_event()  # the Chunk
    with pytest.raises(RuntimeError):
        dec.skip_body()


# -- malformed input -----------------------------------------------------------------------------


def test_truncated_body_raises_malformed_archive_with_offset_and_member() -> None:
    raw = castar_archive([("a", b"A" * 1000, 0o444)])[:800]
    with pytest.raises(MalformedArchive) as exc:
        decode_whole(raw)
    assert exc.value.offset == 800
    assert exc.value.member == "a"
    assert "truncated" in str(exc.value)


def test_truncated_header_raises_malformed_archive() -> None:
    raw = castar_archive([("a", b"A", 0o444), ("b", b"", 0o444)])[:1300]
    with pytest.raises(MalformedArchive) as exc:
        decode_whole(raw)
    assert exc.value.offset == 1024


def test_truncated_padding_raises_malformed_archive() -> None:
    raw = castar_archive([("a", b"A", 0o444)])[:600]
    with pytest.raises(MalformedArchive, match="padding"):
        decode_whole(raw)


def test_bad_checksum_raises_malformed_archive() -> None:
    raw = bytearray(castar_archive([("a", b"A", 0o444)]))
    raw[0] = ord("b")
    raw[600] = ord("B")  # the body is not checked: only the header is
    with pytest.raises(MalformedArchive, match="checksum") as exc:
        decode_whole(bytes(raw))
    assert exc.value.offset == 0
    assert exc.value.member is None  # the name in a bad header is not trusted


def test_empty_input_is_malformed() -> None:
    with pytest.raises(MalformedArchive, match="empty"):
        decode_whole(b"")


def test_pax_record_over_the_cap_is_refused() -> None:
    size = MAX_RECORD + 1
    raw = encode_header("././@PaxHeader", size, type=b"x")
    dec = TarDecoder()
    dec.feed(raw)
    with pytest.raises(MalformedArchive, match="cap") as exc:
        dec.next_event()
    assert exc.value.offset == 0


def test_gnu_long_name_over_the_cap_is_refused() -> None:
    dec = TarDecoder()
    dec.feed(encode_header("././@LongLink", MAX_RECORD + 512, type=b"L"))
    with pytest.raises(MalformedArchive, match="cap"):
        dec.next_event()


@pytest.mark.parametrize(
    "record",
    [b"5 a=b\n", b"x path=a\n", b"99 path=a\n", b"11 pathxa\n\n", b"12 path=abc"],
)
def test_malformed_pax_records_are_refused(record: bytes) -> None:
    raw = encode_header("h", len(record), type=b"x") + record + padding(len(record))
    raw += encode_header("a", 0) + END_OF_ARCHIVE
    with pytest.raises(MalformedArchive, match="PAX"):
        decode_whole(raw)


def test_bad_pax_size_is_refused_with_the_member_name() -> None:
    record = b"12 size=-12\n"
    raw = encode_header("h", len(record), type=b"x") + record + padding(len(record))
    raw += encode_header("a", 0) + END_OF_ARCHIVE
    with pytest.raises(MalformedArchive, match="size") as exc:
        decode_whole(raw)
    assert exc.value.member == "a"


def test_extended_header_without_a_member_is_malformed() -> None:
    record = b"10 path=a\n"
    raw = encode_header("h", len(record), type=b"x") + record + padding(len(record))
    with pytest.raises(MalformedArchive, match="not followed by a member"):
        decode_whole(raw)
    with pytest.raises(MalformedArchive, match="zero block after an extended header") as exc:
        decode_whole(raw + END_OF_ARCHIVE)
    assert exc.value.offset == 1024


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=3000), st.lists(st.integers(min_value=0), max_size=4))
@example(bytes(512), [])
@example(b"\x80" * 512, [])
def test_arbitrary_bytes_give_events_or_malformed_archive(data: bytes, points: list[int]) -> None:
    with contextlib.suppress(MalformedArchive):
        decode(split_at(data, points))


@settings(max_examples=150, deadline=None)
@given(
    st.integers(min_value=0, max_value=len(SAMPLE) - 1),
    st.integers(min_value=0, max_value=255),
    st.integers(min_value=1, max_value=len(SAMPLE)),
)
def test_corrupted_archives_give_events_or_malformed_archive(
    where: int, value: int, cut: int
) -> None:
    raw = bytearray(SAMPLE[:cut])
    if where < len(raw):
        raw[where] = value
    error: MalformedArchive | None = None
    try:
        decode_whole(bytes(raw))
    except MalformedArchive as exc:
        error = exc
    if error is not None:
        assert error.offset is not None
        assert 0 <= error.offset <= len(raw)


# -- values ---------------------------------------------------------------------------------------

# That tarcodec never imports anyio is checked in tests/_layering_contract.py.


def test_member_start_is_a_frozen_value() -> None:
    m = MemberStart("a", 1, b"0", "", 0o444, 0, 0, 512)
    assert replace(m, size=2).size == 2
    with pytest.raises(AttributeError):
        m.size = 3  # type: ignore[misc]
