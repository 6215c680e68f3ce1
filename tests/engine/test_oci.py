"""castar.engine.oci: media types (MT), descriptors and documents (DESC), children (MT-4), GC-7."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castar.engine import oci
from castar.engine.platforms import Platform
from castar.store.digest import Digest, compute
from castar.store.errors import (
    InvalidArgument,
    MalformedManifest,
    UnsupportedMediaType,
)

# Golden documents written by Go's encoding/json (skopeo 1.x re-marshalled them while
# copying an OCI layout: `skopeo copy --all oci:src:v1 oci:dst:golden`). castar must
# re-encode the decoded model to the same bytes, hence the same digests (DESC-1/2).
GO_INDEX = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":'
    b'[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:09a562699f'
    b'007e81827a86fd9fae7ce9bf391c94b4beb729a80287bb0e174c17","size":401,"urls":["https://ex'
    b'ample.com/x"],"annotations":{"aa\\u0026":"\\u003c2\\u003e","zz":"1"},"platform":{"arch'
    b'itecture":"amd64","os":"linux"}},{"mediaType":"application/vnd.oci.image.manifest.v1+js'
    b'on","digest":"sha256:e162e597e55fa4ac3e934ae59ea834a3da6434de44b98b04149c8ffb2980ac79",'
    b'"size":401,"urls":["https://example.com/x"],"annotations":{"aa\\u0026":"\\u003c2\\u003e'
    b'","zz":"1"},"platform":{"architecture":"arm64","os":"linux","os.version":"10.0.17763","'
    b'os.features":["win32k","b\\u003cc"],"variant":"v8"}}],"annotations":{"org.opencontaine'
    b'rs.image.created":"2024-01-01T00:00:00Z"}}'
)
GO_INDEX_DIGEST = "sha256:0427171b73ec01c7617cbe76675da120f7a0a103b09b915f773ea48d5a21b74f"
GO_LAYOUT_INDEX = (
    b'{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json",'
    b'"digest":"sha256:0427171b73ec01c7617cbe76675da120f7a0a103b09b915f773ea48d5a21b74f","siz'
    b'e":812,"annotations":{"org.opencontainers.image.ref.name":"golden"}}]}'
)
GO_MANIFEST = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"'
    b'mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:b8ec4ce7b6a1d6b8'
    b'73d2b5c7dee8f13467e3e0c077a1ca7b066a056f57fb6f4f","size":151},"layers":[{"mediaType":"a'
    b'pplication/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:6440398460cea788206146c18c'
    b'7cb18e2e51c69e9935c57dba596281b7aaa199","size":112}]}'
)
GO_MANIFEST_DIGEST = "sha256:09a562699f007e81827a86fd9fae7ce9bf391c94b4beb729a80287bb0e174c17"
GO_MANIFEST_U2028 = (
    b'{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"'
    b'mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:3e632409a6b73370'
    b'bfddb31ba3906479e9de877e0090ac32a15ba76456bc0b6c","size":166},"layers":[{"mediaType":"a'
    b'pplication/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:f69c9a5429bded7d65e9d7a15a'
    b'7620d268e5ec6e32034f0817b96e443d85250d","size":130}],"annotations":{"org.example":"\\u2'
    b'028"}}'
)

D1 = compute(b"one")
D2 = compute(b"two")
D3 = compute(b"three")


def desc(media_type: str, d: Digest = D1, size: int = 3, **kw: object) -> oci.Descriptor:
    return oci.Descriptor(media_type=media_type, digest=d, size=size, **kw)  # type: ignore[arg-type]


# --- golden bytes (DESC-1, DESC-2) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "decode", "encode"),
    [
        (GO_INDEX, oci.decode_index, oci.encode_index),
        (GO_LAYOUT_INDEX, oci.decode_index, oci.encode_index),
        (GO_MANIFEST, oci.decode_manifest, oci.encode_manifest),
        (GO_MANIFEST_U2028, oci.decode_manifest, oci.encode_manifest),
    ],
    ids=["index", "layout-index", "manifest", "manifest-u2028"],
)
def test_reencoding_go_marshalled_documents_gives_identical_bytes(data, decode, encode):
    # DESC-1 struct field order, DESC-2 escapes and key order
    assert encode(decode(data)) == data


def test_golden_digests_match_the_go_tool():
    assert compute(oci.encode_index(oci.decode_index(GO_INDEX))) == GO_INDEX_DIGEST
    assert compute(oci.encode_manifest(oci.decode_manifest(GO_MANIFEST))) == GO_MANIFEST_DIGEST


def test_index_built_in_python_encodes_platform_fields_in_struct_order():
    # DESC-1: architecture, os, os.version, os.features, variant — not sorted
    p = Platform("linux", "arm64", "v8", "10.0.17763", ("win32k", "b<c"))
    data = oci.encode_index(oci.Index(manifests=(desc(oci.OCI_MANIFEST, platform=p),)))
    assert (
        b'"platform":{"architecture":"arm64","os":"linux","os.version":"10.0.17763",'
        b'"os.features":["win32k","b\\u003cc"],"variant":"v8"}' in data
    )


def test_descriptor_fields_in_desc1_order_and_empty_optionals_omitted():
    d = desc(
        oci.OCI_LAYER,
        annotations={"b": "2", "a": "1"},
        urls=("u",),
        data=b"one",
        platform=Platform("linux", "amd64"),
        artifact_type="x/y",
    )
    assert list(d.to_json()) == [
        "mediaType",
        "digest",
        "size",
        "urls",
        "annotations",
        "data",
        "platform",
        "artifactType",
    ]
    assert oci.canonical_json(desc(oci.OCI_LAYER)) == (
        b'{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"'
        + D1.encode()
        + b'","size":3}'
    )
    assert b'"data":"b25l"' in oci.canonical_json(d)  # base64 like Go []byte
    assert b'"annotations":{"a":"1","b":"2"}' in oci.canonical_json(d)


def test_empty_index_manifests_encode_as_null_and_missing_media_type_is_omitted():
    # IMP-9 / EDGE-6: Go nil slice; mediaType omitempty
    assert oci.encode_index(oci.Index(media_type="")) == b'{"schemaVersion":2,"manifests":null}'


def test_manifest_layers_always_written():
    m = oci.Manifest(config=desc(oci.OCI_CONFIG), media_type=oci.DOCKER_MANIFEST)
    assert oci.encode_manifest(m).endswith(b'"size":3},"layers":[]}')


# --- canonical_json (DESC-2) ------------------------------------------------------------------


def test_canonical_json_escapes_html_and_line_separators_like_go():
    assert oci.canonical_json("<a>&\u2028\u2029") == b'"\\u003ca\\u003e\\u0026\\u2028\\u2029"'


def test_canonical_json_keeps_non_ascii_as_utf8_and_escapes_controls():
    assert oci.canonical_json('é☃\x01\n\t"\\\x7f') == '"é☃\\u0001\\n\\t\\"\\\\\x7f"'.encode()


def test_canonical_json_sorts_map_keys_by_byte_value_but_keeps_struct_order():
    assert oci.canonical_json({"b": 1, "a": None, "B": True, "é": False}) == (
        b'{"B":true,"a":null,"b":1,"\xc3\xa9":false}'
    )
    assert oci.canonical_json(oci.Struct(b=1, a=[1, "x"])) == b'{"b":1,"a":[1,"x"]}'


def test_canonical_json_is_compact_without_trailing_newline():
    out = oci.canonical_json({"a": [1, 2, {"c": ""}]})
    assert out == b'{"a":[1,2,{"c":""}]}'


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, b"1"),
        (0.5, b"0.5"),
        (1e20, b"100000000000000000000"),
        (1e21, b"1e+21"),
        (1e-7, b"1e-7"),
        (1.5e-10, b"1.5e-10"),
        (1e-6, b"0.000001"),
        (-2.5, b"-2.5"),
    ],
)
def test_canonical_json_formats_floats_like_go(value, text):
    assert oci.canonical_json(value) == text


def test_canonical_json_rejects_nan_and_non_string_keys():
    with pytest.raises(InvalidArgument):
        oci.canonical_json(float("nan"))
    with pytest.raises(InvalidArgument):
        oci.canonical_json({1: "a"})


@given(st.text())
def test_canonical_json_strings_decode_back_to_the_same_text(s):
    if any("\ud800" <= c <= "\udfff" for c in s):
        return
    out = oci.canonical_json(s)
    assert json.loads(out) == s
    assert b"<" not in out
    assert b">" not in out
    assert b"&" not in out


# --- hypothesis round trips -----------------------------------------------------------------

_digests = st.binary(max_size=8).map(compute)
_text = st.text(max_size=8)
_platforms = st.builds(
    Platform,
    os=_text,
    architecture=_text,
    variant=_text,
    os_version=_text,
    os_features=st.lists(_text, max_size=3).map(tuple),
)
_descriptors = st.builds(
    oci.Descriptor,
    media_type=_text,
    digest=_digests,
    size=st.integers(0, (1 << 63) - 1),
    urls=st.lists(_text, max_size=2).map(tuple),
    annotations=st.dictionaries(_text, _text, max_size=3),
    data=st.none() | st.binary(min_size=1, max_size=8),
    platform=st.none() | _platforms,
    artifact_type=_text,
)
_manifests = st.builds(
    oci.Manifest,
    config=_descriptors,
    layers=st.lists(_descriptors, max_size=3).map(tuple),
    media_type=_text,
    schema_version=st.integers(0, 3),
    artifact_type=_text,
    subject=st.none() | _descriptors,
    annotations=st.dictionaries(_text, _text, max_size=3),
)
_indexes = st.builds(
    oci.Index,
    manifests=st.lists(_descriptors, max_size=3).map(tuple),
    media_type=_text,
    schema_version=st.integers(0, 3),
    artifact_type=_text,
    subject=st.none() | _descriptors,
    annotations=st.dictionaries(_text, _text, max_size=3),
)


@settings(max_examples=150)
@given(_manifests)
def test_decode_encode_manifest_round_trip(m):
    data = oci.encode_manifest(m)
    assert oci.decode_manifest(data) == m
    assert oci.encode_manifest(oci.decode_manifest(data)) == data


@settings(max_examples=150)
@given(_indexes)
def test_decode_encode_index_round_trip(idx):
    data = oci.encode_index(idx)
    assert oci.decode_index(data) == idx
    assert oci.encode_index(oci.decode_index(data)) == data


@given(_descriptors)
def test_descriptor_json_round_trip_and_hash_consistent(d):
    back = oci.Descriptor.from_json(json.loads(oci.canonical_json(d)))
    assert back == d
    assert hash(back) == hash(d)


# --- strict decoding --------------------------------------------------------------------------


def _manifest_json(**over: object) -> bytes:
    doc: dict[str, object] = {
        "schemaVersion": 2,
        "mediaType": oci.OCI_MANIFEST,
        "config": {"mediaType": oci.OCI_CONFIG, "digest": D1, "size": 3},
        "layers": [{"mediaType": oci.OCI_LAYER, "digest": D2, "size": 3}],
    }
    doc.update(over)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"{", "invalid JSON"),
        (b"[]", "expected object"),
        (b'{"config": NaN}', "invalid JSON"),
        (_manifest_json(schemaVersion="2"), "schemaVersion: expected integer"),
        (_manifest_json(schemaVersion=True), "schemaVersion: expected integer"),
        (_manifest_json(layers={}), "layers: expected array"),
        (_manifest_json(config=None), "config: missing"),
        (_manifest_json(annotations={"a": 1}), "annotations: expected object of strings"),
        (
            _manifest_json(layers=[{"mediaType": "x", "digest": D2, "size": -1}]),
            f"invalid size -1 in {D2} (x)",  # DESC-3
        ),
        (
            _manifest_json(layers=[{"mediaType": "x", "digest": D2, "size": 1.5}]),
            "size: expected integer",
        ),
        (
            _manifest_json(layers=[{"mediaType": "x", "digest": "sha256:abc", "size": 1}]),
            "invalid digest",
        ),
        (
            _manifest_json(layers=[{"mediaType": "x", "digest": D2, "size": 1 << 63}]),
            "overflows int64",
        ),
        (
            _manifest_json(layers=[{"mediaType": "x", "digest": D2, "size": 1, "data": "%%"}]),
            "base64",
        ),
        (
            _manifest_json(layers=[{"mediaType": "x", "digest": D2, "size": 1, "platform": []}]),
            "platform: expected object",
        ),
    ],
)
def test_decode_manifest_rejects_malformed_documents_naming_the_document(data, needle):
    with pytest.raises(MalformedManifest) as info:
        oci.decode_manifest(data, name=str(D3))
    assert needle in str(info.value)
    assert f"manifest {D3}" in str(info.value)
    assert isinstance(info.value, InvalidArgument)


def test_decode_over_the_20_mib_cap_is_rejected_before_parsing():
    # EDGE-13
    data = b" " * (oci.MAX_DOCUMENT + 1)
    for decode in (oci.decode_manifest, oci.decode_index, oci.config_platform):
        with pytest.raises(MalformedManifest, match="exceeds the 20971520 byte limit"):
            decode(data, name="big")


def test_decode_reads_null_annotation_values_as_empty_strings_like_go():
    m = oci.decode_manifest(_manifest_json(annotations={"a": None, "b": "x"}))
    assert m.annotations == {"a": "", "b": "x"}


def test_decode_ignores_unknown_members_and_treats_null_as_absent():
    m = oci.decode_manifest(_manifest_json(extra={"x": 1}, annotations=None, subject=None))
    assert m.annotations == {}
    assert m.subject is None
    assert oci.decode_index(b'{"schemaVersion":2}').manifests == ()


# --- configs and platforms (IMP-8) ------------------------------------------------------------


def test_config_platform_is_normalised():
    p = oci.config_platform(
        b'{"architecture":"aarch64","os":"linux","variant":"v8","os.features":["b","a","b"],'
        b'"rootfs":{"type":"layers","diff_ids":["sha256:x"]}}'
    )
    assert p == Platform("linux", "arm64", "", "", ("a", "b"))  # NORM-3


def test_config_without_os_or_architecture_has_no_platform():
    assert oci.config_platform(b'{"config":{}}') is None


def test_config_with_wrong_type_is_malformed():
    with pytest.raises(MalformedManifest, match="config c1: architecture"):
        oci.config_platform(b'{"architecture":1}', name="c1")
    with pytest.raises(MalformedManifest, match="config c1: rootfs: diff_ids"):
        oci.config_platform(b'{"os":"linux","rootfs":{"diff_ids":[1]}}', name="c1")


# --- classification (MT-2) ------------------------------------------------------------------


def test_media_type_classification():
    assert oci.is_manifest(oci.OCI_MANIFEST)
    assert oci.is_manifest(oci.DOCKER_MANIFEST)
    assert not oci.is_manifest(oci.DOCKER_SCHEMA1_MANIFEST)
    assert oci.is_index(oci.OCI_INDEX)
    assert oci.is_index(oci.DOCKER_MANIFEST_LIST)
    assert not oci.is_index(oci.OCI_MANIFEST)
    assert oci.is_config(oci.DOCKER_CONFIG)
    assert not oci.is_config(oci.CHECKPOINT_CONFIG)
    assert oci.is_known_config(oci.CHECKPOINT_CONFIG)
    assert oci.is_known_config(oci.CHECKPOINT)
    for mt in (
        oci.OCI_LAYER_ZSTD,
        "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
        oci.DOCKER_LAYER_GZIP + "+encrypted",
        oci.DOCKER_LAYER_FOREIGN_GZIP,
        oci.EROFS_LAYER,
        oci.OCI_LAYER_ND,
    ):
        assert oci.is_layer(mt), mt
    for mt in (oci.OCI_CONFIG, oci.IN_TOTO, "application/vnd.docker.image.rootfs.diff.tarx"):
        assert not oci.is_layer(mt), mt
    assert oci.is_non_distributable(oci.OCI_LAYER_ND_GZIP)
    assert oci.is_non_distributable(oci.DOCKER_LAYER_FOREIGN)
    assert not oci.is_non_distributable(oci.DOCKER_LAYER)


# --- children (MT-4) --------------------------------------------------------------------------


def test_children_of_a_manifest_are_config_then_layers_without_subject():
    data = _manifest_json(
        layers=[
            {"mediaType": oci.OCI_LAYER, "digest": D2, "size": 3},
            {"mediaType": oci.OCI_LAYER, "digest": D3, "size": 5},
        ],
        subject={"mediaType": oci.OCI_MANIFEST, "digest": D3, "size": 9},
    )
    got = oci.children(desc(oci.OCI_MANIFEST, compute(data), len(data)), data)
    assert [(c.media_type, c.digest) for c in got] == [
        (oci.OCI_CONFIG, D1),
        (oci.OCI_LAYER, D2),
        (oci.OCI_LAYER, D3),
    ]


def test_children_of_an_index_are_its_manifests_in_order():
    got = oci.children(desc(oci.OCI_INDEX), GO_INDEX)
    assert [c.digest for c in got] == [
        "sha256:09a562699f007e81827a86fd9fae7ce9bf391c94b4beb729a80287bb0e174c17",
        "sha256:e162e597e55fa4ac3e934ae59ea834a3da6434de44b98b04149c8ffb2980ac79",
    ]


@pytest.mark.parametrize(
    "mt", [oci.OCI_LAYER, oci.OCI_CONFIG, "application/x-unknown", oci.IN_TOTO]
)
def test_other_types_have_no_children_and_their_data_is_not_read(mt):
    # EDGE-14: unknown types never error
    assert oci.children(desc(mt), b"\xff not json") == []


@pytest.mark.parametrize(
    ("mt", "doc", "cls", "text"),
    [
        (
            oci.OCI_MANIFEST,
            {"fsLayers": []},
            UnsupportedMediaType,
            "media-type: schema 1 not supported",
        ),
        (
            oci.DOCKER_MANIFEST,
            {"manifests": None},
            MalformedManifest,
            f"media-type: expected manifest but found index ({oci.DOCKER_MANIFEST})",
        ),
        (
            oci.OCI_MANIFEST,
            {"mediaType": oci.DOCKER_MANIFEST_LIST},
            MalformedManifest,
            f"media-type: expected manifest but found index ({oci.OCI_MANIFEST})",
        ),
        (
            oci.OCI_INDEX,
            {"config": {}},
            MalformedManifest,
            f"media-type: expected index but found manifest ({oci.OCI_INDEX})",
        ),
        (
            oci.OCI_INDEX,
            {"layers": [{}]},
            MalformedManifest,
            f"media-type: expected index but found manifest ({oci.OCI_INDEX})",
        ),
        (
            oci.DOCKER_MANIFEST_LIST,
            {"mediaType": oci.OCI_MANIFEST},
            MalformedManifest,
            f"media-type: expected index but found manifest ({oci.DOCKER_MANIFEST_LIST})",
        ),
    ],
)
def test_children_type_checks_the_document_with_mt4_messages(mt, doc, cls, text):
    with pytest.raises(cls) as info:
        oci.children(desc(mt, D3), json.dumps(doc).encode())
    assert info.value.message == f"children: invalid desc {D3}: {text}"


def test_children_index_with_empty_layers_is_still_an_index():
    # only a non-empty layers array marks a manifest (containerd ValidateMediaType)
    assert oci.children(desc(oci.OCI_INDEX), b'{"layers":[],"manifests":[]}') == []


def test_children_of_an_undecodable_manifest_names_the_descriptor():
    with pytest.raises(MalformedManifest, match=f"children: invalid desc {D3}: .*invalid JSON"):
        oci.children(desc(oci.OCI_MANIFEST, D3), b"{nope")


# --- attestations, referrers, pseudo images (MT-5, MT-6) -------------------------------------


def test_attestation_referrer_and_pseudo_image_classification():
    att = desc(
        oci.OCI_MANIFEST,
        annotations={oci.ANNOTATION_REFERENCE_TYPE: "attestation-manifest"},
        platform=Platform("unknown", "unknown"),
    )
    assert oci.is_attestation(att)
    assert oci.is_pseudo_image(att)
    unknown = desc(oci.OCI_MANIFEST, platform=Platform("unknown", "unknown"))
    assert not oci.is_attestation(unknown)
    assert oci.is_pseudo_image(unknown)
    real = desc(oci.OCI_MANIFEST, platform=Platform("linux", "amd64"))
    assert not oci.is_pseudo_image(real)
    in_toto_only = oci.Manifest(config=desc(oci.OCI_CONFIG), layers=(desc(oci.IN_TOTO),))
    assert oci.is_pseudo_image(real, in_toto_only)
    assert not oci.is_pseudo_image(real, oci.Manifest(config=desc(oci.OCI_CONFIG)))
    ref = desc(oci.OCI_MANIFEST, annotations={oci.ANNOTATION_MANIFEST_SUBJECT: str(D1)})
    assert oci.is_referrer(ref)
    assert not oci.is_referrer(real)


# --- GC-7 children labels -----------------------------------------------------------------


def test_children_labels_of_a_manifest_tv48():
    labels = oci.children_labels(
        [desc(oci.OCI_CONFIG, D1), desc(oci.OCI_LAYER_GZIP, D2), desc(oci.DOCKER_LAYER, D3)]
    )
    assert labels == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.l.0": D2,
        "containerd.io/gc.ref.content.l.1": D3,
    }


def test_children_labels_of_an_index_count_per_key():
    ref = desc(oci.OCI_MANIFEST, D3, annotations={oci.ANNOTATION_MANIFEST_SUBJECT: str(D1)})
    labels = oci.children_labels(
        [
            desc(oci.OCI_MANIFEST, D1),
            desc(oci.OCI_INDEX, D2),
            desc(oci.DOCKER_MANIFEST, D2),
            ref,
            desc("x/y", D3),
        ]
    )
    assert (
        labels
        == {
            "containerd.io/gc.ref.content.m.0": D1,
            "containerd.io/gc.ref.content.0": D2,  # nested index: generic key (EDGE-5)
            "containerd.io/gc.ref.content.m.1": D2,
            f"containerd.io/gc.ref.content.referrer.sha256.{D3.encoded[:12]}": D3,
            "containerd.io/gc.ref.content.1": D3,
        }
    )


def test_children_labels_second_config_gets_a_counter():
    labels = oci.children_labels([desc(oci.OCI_CONFIG, D1), desc(oci.CHECKPOINT_CONFIG, D2)])
    assert labels == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.config1": D2,
    }


def test_children_labels_of_no_children_is_empty():
    assert oci.children_labels([]) == {}
