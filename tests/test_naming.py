"""One naming rule (IMG-7): every name castar prints or lists is a name it accepts.

Each archive shape is loaded through the CLI; every printed and listed name must resolve
(``inspect``), and a save of it must name it alike in index.json and manifest.json.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import tarfile
from typing import TYPE_CHECKING

import anyio
import pytest

from castar._cli import main
from castar.engine import oci, reference, synth
from castar.store import open_root

if TYPE_CHECKING:
    from pathlib import Path

SPEC = synth.SynthSpec(name="docker.io/library/base:1", platforms=("linux/amd64",), layers=1,
                       layer_size=2048)  # fmt: skip
TARGET = synth.plan(SPEC).index.digest
OTHER = "sha256:" + "a" * 64


def members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tf:
        return {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}  # type: ignore[union-attr]


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def shaped(tmp_path: Path, annotations: dict[str, str] | None, tags: list[str] | None) -> Path:
    """The synth archive with its index.json entry's names (OCI) or RepoTags (Docker) replaced."""
    synth.write_path(SPEC, tmp_path / "synth.tar")
    files = members(tmp_path / "synth.tar")
    if tags is not None:  # a Docker archive: manifest.json only
        del files["oci-layout"], files["index.json"]
        (entry,) = json.loads(files["manifest.json"])
        files["manifest.json"] = json.dumps([{**entry, "RepoTags": tags}]).encode()
    else:
        index = json.loads(files["index.json"])
        index["manifests"][0]["annotations"] = annotations or {}
        if not annotations:
            del index["manifests"][0]["annotations"]
        files["index.json"] = json.dumps(index).encode()
        del files["manifest.json"]
    return write_tar(tmp_path / "shaped.tar", files)


def run(capsys: pytest.CaptureFixture[str], backend: str, root: Path, *args: str) -> str:
    capsys.readouterr()
    code = main(["--root", str(root), "--backend", backend, *args])
    out, err = capsys.readouterr()
    assert code == 0, (args, err)
    return out


def listed(capsys: pytest.CaptureFixture[str], backend: str, root: Path) -> list[str]:
    """The names ``images`` shows (first column) and ``images --json`` gives."""
    rows = run(capsys, backend, root, "images").splitlines()[1:]
    shown = [r.split()[0] for r in rows if not r.startswith("<untagged>")]
    trees = json.loads(run(capsys, backend, root, "images", "--json"))
    return shown + [n for t in trees for n in t["names"]]


def saved_names(path: Path) -> tuple[list[str], list[str], list[str]]:
    """index.json's image names and ref.names, and manifest.json's RepoTags, of an archive."""
    files = members(path)
    entries = json.loads(files["index.json"])["manifests"]
    names = [e.get("annotations", {}).get(oci.ANNOTATION_IMAGE_NAME) for e in entries]
    refs = [e.get("annotations", {}).get(oci.ANNOTATION_REF_NAME) for e in entries]
    tags = [t for m in json.loads(files.get("manifest.json", b"[]")) for t in m["RepoTags"] or []]
    return [n for n in names if n], [r for r in refs if r], tags


SHAPES = {
    # name: (index.json annotations or None, manifest.json RepoTags or None, --name, printed)
    "bare tag ref.name": ({oci.ANNOTATION_REF_NAME: "v1"}, None, None, ["v1:latest"]),
    "bare tag ref.name with --name": (
        {oci.ANNOTATION_REF_NAME: "v1"}, None, "repo/x", ["repo/x:v1"],
    ),
    "latest ref.name": ({oci.ANNOTATION_REF_NAME: "latest"}, None, None, ["latest:latest"]),
    "full ref.name": (
        {oci.ANNOTATION_REF_NAME: "localhost:5000/foo"}, None, None, ["localhost:5000/foo:latest"],
    ),
    "familiar image.name": ({oci.ANNOTATION_IMAGE_NAME: "alpine"}, None, None, ["alpine:latest"]),
    "full image.name and tag": (
        {oci.ANNOTATION_IMAGE_NAME: "docker.io/library/img:ok", oci.ANNOTATION_REF_NAME: "ok"},
        None, None, ["img:ok"],
    ),
    "docker RepoTags": (None, ["test-import:notlatest", "another/repo"], None,
                        ["test-import:notlatest", "another/repo:latest"]),
    "digest reference": (
        {oci.ANNOTATION_IMAGE_NAME: f"x@{TARGET}"}, None, None, [f"x@{TARGET}"],
    ),
    "digest reference to another digest": (  # a name lies; lookup follows the record
        {oci.ANNOTATION_IMAGE_NAME: f"x@{OTHER}"}, None, None, [f"x@{OTHER}"],
    ),
    "unusable ref.name": ({oci.ANNOTATION_REF_NAME: "V1"}, None, None, []),
    "digest only": ({}, None, None, []),
}  # fmt: skip


def check_names(
    capsys: pytest.CaptureFixture[str], backend: str, root: Path, tmp_path: Path, names: set[str]
) -> None:
    """Each name resolves (inspect, save, tag, rm), a save names it alike in index.json and
    manifest.json, and a reload of that save prints the names manifest.json gives."""
    for i, name in enumerate(sorted(names)):
        run(capsys, backend, root, "inspect", name)
        out_path = tmp_path / f"out-{i}.tar"
        run(capsys, backend, root, "save", name, "-o", str(out_path))
        images, refs, repo_tags = saved_names(out_path)
        assert [reference.display_name(n) for n in images] == repo_tags
        assert refs == [reference.ref_name_annotation(n) for n in images]
        reloaded = run(capsys, backend, tmp_path / f"again-{i}", "load", "-i", str(out_path))
        if images:
            assert reloaded.splitlines() == [f"Loaded image: {n}" for n in repo_tags]
        copy = shutil.copytree(root, tmp_path / f"copy-{i}")  # tag and rm change the store
        run(capsys, backend, copy, "tag", name, "probe:1")
        run(capsys, backend, copy, "rm", name)


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
@pytest.mark.parametrize("shape", list(SHAPES))
def test_img7_every_name_printed_or_listed_resolves_and_saves_alike(
    shape: str, backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    annotations, tags, prefix, expected = SHAPES[shape]
    root = tmp_path / "root"
    archive = shaped(tmp_path, annotations, tags)
    name_arg = ["--name", prefix] if prefix else []
    out = run(capsys, backend, root, "load", "-i", str(archive), *name_arg)
    printed = re.findall(r"^Loaded image(?: ID)?: (\S+)$", out, re.MULTILINE)
    assert len(printed) == len(out.splitlines()), out
    assert [n for n in printed if not n.startswith("sha256:")] == expected
    if not expected:  # no usable name: the image is kept by its ID (LOAD-1, LOAD-5)
        assert out.startswith("Loaded image ID: sha256:")
    names = {*printed, *listed(capsys, backend, root)}
    assert names >= set(expected)
    check_names(capsys, backend, root, tmp_path, names)
    for name in expected:  # a save by a printed tag gives it back (by digest: none, SAVE-4)
        if reference.is_digest_ref(name):
            continue
        saved = saved_names(tmp_path / f"out-{sorted(names).index(name)}.tar")
        assert saved[2] == [name]


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_img7_records_in_another_form_print_as_stored_and_save_normalised(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """IMG-1 takes any record name (the library, older stores): such names print as stored."""
    root = tmp_path / "root"
    run(capsys, backend, root, "load", "-i", str(shaped(tmp_path, {}, None)))
    odd = ["v1", "docker.io/library/alpine"]

    async def add() -> None:
        async with open_root(root) as store:
            (image,) = await store.images.list()
            for name in odd:
                await store.images.create(name, image.target)

    anyio.run(add, backend=backend)
    names = set(listed(capsys, backend, root))
    assert names == set(odd)
    check_names(capsys, backend, root, tmp_path, names)
    assert saved_names(tmp_path / "out-1.tar")[:2] == (["docker.io/library/v1:latest"], ["latest"])


def test_img7_display_name_is_familiar_only_for_the_normalised_form() -> None:
    assert reference.display_name("docker.io/library/v1:latest") == "v1:latest"
    assert (
        reference.display_name("docker.io/foo/bar@sha256:" + "a" * 64)
        == "foo/bar@sha256:" + "a" * 64
    )
    for stored in ("v1", "docker.io/library/alpine", "V1", "alpine:3"):
        assert reference.display_name(stored) == stored
