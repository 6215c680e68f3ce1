"""castar.engine.synth: generated archives are valid, deterministic and in castar order."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import anyio
import pytest
import zstandard

import castar
from castar.engine import oci, synth
from castar.engine.platforms import Platform
from castar.store.digest import blob_path, compute
from castar.store.errors import InvalidArgument

SMALL = 40_000  # a layer size that still holds a tar member and several gzip blocks


def archive(spec: synth.SynthSpec) -> tuple[synth.SynthImage, bytes]:
    buf = io.BytesIO()
    image = synth.write(spec, buf)
    return image, buf.getvalue()


def members(data: bytes) -> dict[str, tuple[tarfile.TarInfo, bytes]]:
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        for m in tf.getmembers():
            f = tf.extractfile(m)
            out[m.name] = (m, f.read() if f else b"")
    return out


def names_in_order(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name + ("/" if m.isdir() else "") for m in tf.getmembers()]


def uncompress(blob: bytes, compression: str) -> bytes:
    if compression == "gzip":
        return gzip.decompress(blob)
    if compression == "zstd":
        return zstandard.ZstdDecompressor().decompressobj().decompress(blob)
    return blob


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_tarfile_reads_the_archive_and_every_blob_matches_its_name(compression):
    spec = synth.SynthSpec(layer_size=SMALL, compression=compression, attestations=True)
    image, data = archive(spec)
    got = members(data)
    blobs = {n: body for n, (_, body) in got.items() if n.startswith("blobs/sha256/")}
    assert {f"blobs/sha256/{hashlib.sha256(b).hexdigest()}" for b in blobs.values()} == set(blobs)
    assert set(blobs) == {blob_path(b.digest) for b in image.blobs}
    assert len(data) == image.size
    assert names_in_order(data) == list(image.members)


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_layers_are_real_tars_and_diff_ids_hash_the_uncompressed_bytes(compression):
    spec = synth.SynthSpec(layer_size=SMALL, compression=compression, platforms=["linux/arm/v7"])
    image, data = archive(spec)
    got = members(data)
    (plat,) = image.platforms
    config = json.loads(got[blob_path(plat.config.digest)][1])
    assert config["os"] == "linux"
    assert config["architecture"] == "arm"
    assert config["variant"] == "v7"
    assert config["rootfs"]["diff_ids"] == [str(d) for d in plat.diff_ids]
    for layer, diff_id in zip(plat.layers, plat.diff_ids, strict=True):
        assert (
            layer.media_type
            == {
                "none": oci.OCI_LAYER,
                "gzip": oci.OCI_LAYER_GZIP,
                "zstd": oci.OCI_LAYER_ZSTD,
            }[compression]
        )
        raw = uncompress(got[blob_path(layer.digest)][1], compression)
        assert len(raw) == SMALL
        assert compute(raw) == diff_id
        with tarfile.open(fileobj=io.BytesIO(raw)) as tf:
            (member,) = tf.getmembers()
            assert member.isfile()
            assert member.size > SMALL - 2048


def test_layer_bytes_do_not_compress():
    spec = synth.SynthSpec(layer_size=1 << 20, platforms=["linux/amd64"], layers=1)
    image, data = archive(spec)
    layer = members(data)[blob_path(image.platforms[0].layers[0].digest)][1]
    assert len(gzip.compress(layer, 6)) > 0.99 * len(layer)


def test_tiny_layers_are_raw_bytes_of_the_requested_size():
    image, data = archive(synth.SynthSpec(layer_size=100, layers=2))
    layer = image.platforms[0].layers[0]
    assert layer.size == 100
    assert len(members(data)[blob_path(layer.digest)][1]) == 100


def test_same_seed_gives_identical_bytes_and_another_seed_other_layers():
    spec = synth.SynthSpec(layer_size=SMALL, compression="gzip", seed=7)
    a, data_a = archive(spec)
    b, data_b = archive(synth.SynthSpec(layer_size=SMALL, compression="gzip", seed=7))
    assert data_a == data_b
    assert a.index == b.index
    c, data_c = archive(synth.SynthSpec(layer_size=SMALL, compression="gzip", seed=8))
    assert data_c != data_a
    layers_a = {d.digest for p in a.platforms for d in p.layers}
    layers_c = {d.digest for p in c.platforms for d in p.layers}
    assert not layers_a & layers_c


def test_plan_and_write_agree():
    spec = synth.SynthSpec(layer_size=SMALL, attestations=True, shared_fraction=0.5)
    planned = synth.plan(spec)
    image, data = archive(spec)
    assert planned.index == image.index
    assert planned.blobs == image.blobs
    assert planned.size == len(data)
    # writing a plan does not plan again and gives the same bytes
    buf = io.BytesIO()
    synth.write(planned, buf)
    assert buf.getvalue() == data


def test_shared_fraction_shares_the_first_layers_across_platforms():
    spec = synth.SynthSpec(
        platforms=["linux/amd64", "linux/arm64", "linux/s390x"],
        layers=4,
        layer_size=SMALL,
        shared_fraction=0.5,
    )
    image, data = archive(spec)
    firsts = [p.layers[:2] for p in image.platforms]
    assert firsts[0] == firsts[1] == firsts[2]
    rest = [d.digest for p in image.platforms for d in p.layers[2:]]
    assert len(set(rest)) == 6
    layer_blobs = [
        n for n, (_, b) in members(data).items() if n.startswith("blobs/") and len(b) == SMALL
    ]
    assert len(layer_blobs) == 2 + 6  # a shared blob is in the archive once (EXP-12)


def test_no_sharing_by_default():
    image = synth.plan(synth.SynthSpec(layer_size=SMALL))
    assert not {d.digest for d in image.platforms[0].layers} & {
        d.digest for d in image.platforms[1].layers
    }


def test_castar_order_writes_metadata_first_then_directories_and_sorted_blobs():
    image, data = archive(synth.SynthSpec(layer_size=SMALL))
    names = names_in_order(data)
    assert names[:5] == ["oci-layout", "index.json", "manifest.json", "blobs/", "blobs/sha256/"]
    assert names[5:] == sorted(names[5:])
    assert len(names[5:]) == len(image.blobs)


def test_containerd_order_puts_metadata_after_the_blobs():
    # EXP-12: blobs/, blobs/sha256/, blobs ascending, index.json, manifest.json, oci-layout
    _, data = archive(synth.SynthSpec(layer_size=SMALL, order="containerd"))
    names = names_in_order(data)
    assert names[:2] == ["blobs/", "blobs/sha256/"]
    assert names[-3:] == ["index.json", "manifest.json", "oci-layout"]
    assert names[2:-3] == sorted(names[2:-3])


def test_without_docker_manifest_there_is_no_manifest_json():
    image, data = archive(synth.SynthSpec(layer_size=SMALL, docker_manifest=False))
    assert image.manifest_json is None
    assert "manifest.json" not in names_in_order(data)


def test_headers_follow_tar1_to_tar3():
    _, data = archive(synth.SynthSpec(layer_size=SMALL))
    for name, (info, _) in members(data).items():
        assert info.mtime == 0
        assert (info.uid, info.gid, info.uname, info.gname) == (0, 0, "", "")
        if info.isdir():
            assert info.mode == 0o755
        elif name in ("index.json", "manifest.json"):
            assert info.mode == 0o644
        else:
            assert info.mode == 0o444, name


def test_index_json_names_the_image_and_manifest_json_points_at_the_first_platform():
    spec = synth.SynthSpec(name="localhost:5000/demo/app:1.2", layer_size=SMALL)
    image, data = archive(spec)
    got = members(data)
    index_json = json.loads(got["index.json"][1])
    (entry,) = index_json["manifests"]
    assert index_json["mediaType"] == oci.OCI_INDEX
    assert entry["mediaType"] == oci.OCI_INDEX
    assert entry["digest"] == image.index.digest
    assert entry["annotations"] == {  # EXP-3
        "io.containerd.image.name": "localhost:5000/demo/app:1.2",
        "org.opencontainers.image.ref.name": "1.2",
    }
    first = image.platforms[0]
    assert json.loads(got["manifest.json"][1]) == [  # EXP-10
        {
            "Config": blob_path(first.config.digest),
            "RepoTags": ["localhost:5000/demo/app:1.2"],
            "Layers": [blob_path(d.digest) for d in first.layers],
        }
    ]
    assert got["oci-layout"][1] == b'{"imageLayoutVersion":"1.0.0"}'  # EXP-11


def test_default_name_is_normalised_and_familiar_in_manifest_json():
    image, data = archive(synth.SynthSpec(name="synth", layer_size=SMALL))
    assert image.spec.name == "docker.io/library/synth:latest"
    assert json.loads(members(data)["manifest.json"][1])[0]["RepoTags"] == ["synth:latest"]


def test_image_index_lists_platform_manifests_then_attestations_mt5():
    image, data = archive(synth.SynthSpec(layer_size=SMALL, attestations=True))
    got = members(data)
    index = oci.decode_index(got[blob_path(image.index.digest)][1])
    plats, atts = index.manifests[:2], index.manifests[2:]
    assert [d.platform for d in plats] == [Platform("linux", "amd64"), Platform("linux", "arm64")]
    assert [d.digest for d in plats] == [p.manifest.digest for p in image.platforms]
    assert len(atts) == 2
    for att, subject in zip(atts, plats, strict=True):
        assert oci.is_attestation(att)
        assert oci.is_pseudo_image(att)
        assert att.platform == Platform("unknown", "unknown")
        assert att.annotations[oci.ANNOTATION_REFERENCE_TYPE] == "attestation-manifest"
        assert att.annotations[oci.ANNOTATION_REFERENCE_DIGEST] == subject.digest
        manifest = oci.decode_manifest(got[blob_path(att.digest)][1])
        (layer,) = manifest.layers
        assert layer.media_type == oci.IN_TOTO
        assert oci.ANNOTATION_PREDICATE_TYPE in layer.annotations
        statement = json.loads(got[blob_path(layer.digest)][1])
        assert statement["subject"][0]["digest"]["sha256"] == subject.digest.encoded


def test_documents_are_canonical_json():
    # DESC-2: every generated document re-encodes to its own bytes
    image, data = archive(synth.SynthSpec(layer_size=SMALL, attestations=True))
    got = members(data)
    for p in image.platforms:
        raw = got[blob_path(p.manifest.digest)][1]
        assert oci.encode_manifest(oci.decode_manifest(raw)) == raw
    raw_index = got[blob_path(image.index.digest)][1]
    assert oci.encode_index(oci.decode_index(raw_index)) == raw_index
    assert oci.encode_index(oci.decode_index(got["index.json"][1])) == got["index.json"][1]


def test_writing_to_a_file_descriptor_gives_the_same_bytes(tmp_path):
    spec = synth.SynthSpec(layer_size=SMALL)
    _, data = archive(spec)
    fd = os.open(tmp_path / "a.tar", os.O_WRONLY | os.O_CREAT)
    try:
        synth.write(spec, fd)
    finally:
        os.close(fd)
    assert (tmp_path / "a.tar").read_bytes() == data
    synth.write_path(spec, tmp_path / "b.tar")
    assert (tmp_path / "b.tar").read_bytes() == data


def test_write_layout_holds_the_same_blobs_and_index(tmp_path):
    image = synth.write_layout(synth.SynthSpec(layer_size=SMALL, compression="zstd"), tmp_path)
    assert (tmp_path / "oci-layout").read_bytes() == b'{"imageLayoutVersion":"1.0.0"}'
    assert (tmp_path / "index.json").read_bytes() == image.index_json
    files = sorted(p for p in (tmp_path / "blobs" / "sha256").iterdir())
    assert [f.name for f in files] == sorted(b.digest.encoded for b in image.blobs)
    for f in files:
        assert hashlib.sha256(f.read_bytes()).hexdigest() == f.name


@pytest.mark.parametrize(
    "kw",
    [
        {"compression": "bz2"},
        {"order": "random"},
        {"shared_fraction": 1.5},
        {"platforms": []},
        {"platforms": ["linux/amd64", "linux/x86_64"]},
        {"platforms": ["linux/&"]},
        {"layers": -1},
        {"name": "Alpine"},
    ],
)
def test_bad_specs_are_invalid_arguments(kw):
    with pytest.raises(InvalidArgument):
        synth.SynthSpec(**kw)


def test_memory_stays_bounded_for_a_64_mib_layer_archive():
    # the generator never holds a layer whole: peak RSS grows by far less than a layer
    code = (
        "import resource\n"
        "from castar.engine import synth\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "spec = synth.SynthSpec(platforms=['linux/amd64'], layers=2, layer_size=64 << 20,"
        " compression='gzip')\n"
        "with open('/dev/null', 'wb') as f:\n"
        "    image = synth.write(spec, f)\n"
        "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "print(after - before, image.size)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    growth_kib, size = int(out[0]), int(out[1])
    assert size > 128 << 20
    assert growth_kib < 40 << 10


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo not installed")
def test_skopeo_reads_the_layout_and_copies_it_with_the_same_digests(tmp_path):
    image = synth.write_layout(
        synth.SynthSpec(layer_size=SMALL, compression="gzip", attestations=True), tmp_path / "src"
    )
    raw = subprocess.run(
        ["skopeo", "inspect", "--raw", f"oci:{tmp_path / 'src'}:latest"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    assert compute(raw) == image.index.digest
    subprocess.run(
        [
            "skopeo",
            "copy",
            "-q",
            "--all",
            "--preserve-digests",
            f"oci:{tmp_path / 'src'}:latest",
            f"oci:{tmp_path / 'dst'}:latest",
        ],
        check=True,
        timeout=60,
    )
    copied = {p.name for p in Path(tmp_path / "dst" / "blobs" / "sha256").iterdir()}
    assert copied == {b.digest.encoded for b in image.blobs}


@pytest.mark.parametrize("order", ["castar", "containerd"])
async def test_load_then_save_reproduces_the_castar_order_archive_byte_for_byte(tmp_path, order):
    # the synth writes archives exactly as castar's exporter does (TAR-1..3, EXP-3/10/11,
    # metadata first); loading either order and saving gives the castar-order bytes
    kw = {"layer_size": SMALL, "attestations": True, "shared_fraction": 0.5, "compression": "gzip"}
    expected = archive(synth.SynthSpec(**kw))[1]
    spec = synth.SynthSpec(order=order, **kw)
    await anyio.to_thread.run_sync(synth.write_path, spec, tmp_path / "in.tar")
    async with castar.open_store(tmp_path / "root") as store:
        images = await store.load(tmp_path / "in.tar", all_platforms=True)
        assert [i.name for i in images] == [spec.name]
        await store.save([spec.name], tmp_path / "out.tar")
    assert await anyio.Path(tmp_path / "out.tar").read_bytes() == expected


def test_an_image_without_layers_has_null_layers_in_manifest_json():
    # EXP-10: `Layers` is null when there are none
    image, data = archive(synth.SynthSpec(layers=0, platforms=["linux/amd64"]))
    assert json.loads(members(data)["manifest.json"][1])[0]["Layers"] is None
    assert image.platforms[0].layers == ()


@pytest.mark.interop
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci not installed")
def test_umoci_unpacks_a_single_platform_layout(tmp_path):
    # umoci checks blob digests and diff ids while it applies the gzip layers
    spec = synth.SynthSpec(
        platforms=["linux/amd64"], layers=2, layer_size=SMALL, compression="gzip"
    )
    synth.write_layout(spec, tmp_path / "lay")
    subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path / 'lay'}:latest", str(tmp_path / "bundle")],
        check=True,
        capture_output=True,
        timeout=60,
    )
    files = sorted(
        p.relative_to(tmp_path / "bundle" / "rootfs").as_posix()
        for p in (tmp_path / "bundle" / "rootfs").rglob("*.bin")
    )
    assert files == ["synth/linux-amd64/0.bin", "synth/linux-amd64/1.bin"]
