"""The images service: tree view (TREE-1..3, TV-76), resolve, tag, remove, filters, inspect."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

from castar._render import format_size, render_tree
from castar.engine import oci
from castar.engine.images import ImageService
from castar.engine.platforms import Platform
from castar.engine.save import exporter
from castar.engine.save.plan import SaveOptions
from castar.store import Root, open_root
from castar.store.digest import compute
from castar.store.errors import Conflict, InvalidArgument, NotFound

NAME = "docker.io/library/demo:1"


async def put(store: Root, data: bytes, media_type: str, children=()) -> oci.Descriptor:
    labels = oci.children_labels(list(children)) if children else None
    await store.content.write_blob(data, labels=labels, media_type=media_type)
    return oci.Descriptor(media_type=media_type, digest=compute(data), size=len(data))


def ref(data: bytes, media_type: str) -> oci.Descriptor:
    """A descriptor of bytes that are NOT written to the store."""
    return oci.Descriptor(media_type=media_type, digest=compute(data), size=len(data))


@dataclass
class Built:
    index: oci.Descriptor
    manifests: dict[str, oci.Descriptor]  # by platform spec or "attestation"
    sizes: dict[str, int]  # present subtree bytes per manifest key


async def build(store: Root, *, present: dict[str, str], name: str = NAME) -> Built:
    """An index over platforms; ``present[p]`` is "all", "manifest-only", "no-layer" or "none".

    Platforms are listed in index order; an attestation for the first one follows them.
    """
    entries: list[oci.Descriptor] = []
    manifests: dict[str, oci.Descriptor] = {}
    sizes: dict[str, int] = {}
    for i, (spec, state) in enumerate(present.items()):
        os_, arch, *variant = spec.split("/")
        plat = Platform(os_, arch, variant[0] if variant else "")
        config_b = json.dumps({"os": os_, "architecture": arch, "n": i}).encode()
        layer_b = bytes([i]) * (1000 + i)
        layer2_b = bytes([i + 100]) * 300
        config = ref(config_b, oci.OCI_CONFIG)
        layer = ref(layer_b, oci.OCI_LAYER)
        layer2 = ref(layer2_b, oci.OCI_LAYER)
        m_b = oci.encode_manifest(oci.Manifest(config=config, layers=(layer, layer2)))
        size = 0
        if state in ("all", "no-layer"):
            await put(store, config_b, oci.OCI_CONFIG)
            await put(store, layer_b, oci.OCI_LAYER)
            size += len(config_b) + len(layer_b)
            if state == "all":
                await put(store, layer2_b, oci.OCI_LAYER)
                size += len(layer2_b)
        if state != "none":
            await put(store, m_b, oci.OCI_MANIFEST, [config, layer, layer2])
            size += len(m_b)
        desc = oci.Descriptor(
            media_type=oci.OCI_MANIFEST, digest=compute(m_b), size=len(m_b), platform=plat
        )
        entries.append(desc)
        manifests[spec] = desc
        sizes[spec] = size
    # An attestation manifest (MT-5) for the first platform.
    first = entries[0]
    a_config = await put(store, b"{}", oci.OCI_CONFIG)
    a_layer = await put(store, b'{"predicateType":"x"}', oci.IN_TOTO)
    a_b = oci.encode_manifest(oci.Manifest(config=a_config, layers=(a_layer,)))
    await put(store, a_b, oci.OCI_MANIFEST, [a_config, a_layer])
    att = oci.Descriptor(
        media_type=oci.OCI_MANIFEST,
        digest=compute(a_b),
        size=len(a_b),
        platform=Platform("unknown", "unknown"),
        annotations={
            "vnd.docker.reference.type": "attestation-manifest",
            "vnd.docker.reference.digest": str(first.digest),
        },
    )
    entries.append(att)
    manifests["attestation"] = att
    sizes["attestation"] = len(a_b) + 2 + len(b'{"predicateType":"x"}')
    index_b = oci.encode_index(oci.Index(manifests=tuple(entries)))
    index = await put(store, index_b, oci.OCI_INDEX, entries)
    await store.images.create(name, index)
    return Built(index, manifests, sizes)


MIXED = {
    "linux/amd64": "all",
    "linux/arm64/v8": "none",
    "linux/arm/v7": "no-layer",
    "linux/ppc64le": "manifest-only",
}


@pytest.fixture
async def store(tmp_path: Path):
    async with open_root(tmp_path / "root") as s:
        yield s


async def test_tree_lists_every_platform_in_index_order_with_availability(store: Root) -> None:
    # TREE-1: every manifest, present or not, in index order; Available = SAVE-6.
    built = await build(store, present=MIXED)
    (tree,) = await ImageService(store.images, store.content).tree()
    assert tree.names == (NAME,)
    assert tree.target.digest == built.index.digest
    rows = tree.platforms
    assert [str(r.platform) for r in rows] == list(MIXED)
    assert [r.available for r in rows] == [True, False, False, False]
    assert [r.content_size for r in rows] == [built.sizes[p] for p in MIXED]


async def test_tree_counts_attestations_in_content_size_but_lists_no_row(store: Root) -> None:
    # TREE-3: top CONTENT SIZE sums ALL manifests (attestations included); child rows only
    # for kind image.
    built = await build(store, present=MIXED)
    (tree,) = await ImageService(store.images, store.content).tree()
    kinds = [m.kind for m in tree.manifests]
    assert kinds == ["image"] * 4 + ["attestation"]
    assert all(r.kind == "image" for r in tree.platforms)
    assert tree.content_size == sum(built.sizes.values())
    assert tree.disk_usage == tree.content_size  # castar unpacks nothing (TREE-2)


async def test_tree_of_only_one_present_platform_tv76(store: Root) -> None:
    # TV-76 shape: 8 platforms, only linux/arm64/v8 present → top size = its subtree,
    # the 7 others 0B and unavailable, in index order.
    specs = [
        "linux/amd64",
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/arm64/v8",
        "linux/386",
        "linux/ppc64le",
        "linux/riscv64",
        "linux/s390x",
    ]
    built = await build(
        store, present={p: "all" if p == "linux/arm64/v8" else "none" for p in specs}
    )
    (tree,) = await ImageService(store.images, store.content).tree()
    assert [str(r.platform) for r in tree.platforms] == specs
    avail = {str(r.platform): (r.available, r.content_size) for r in tree.platforms}
    assert avail.pop("linux/arm64/v8") == (True, built.sizes["linux/arm64/v8"])
    assert set(avail.values()) == {(False, 0)}
    lines = render_tree([tree], terminal=False)
    assert lines[0].split() == ["IMAGE", "ID", "DISK", "USAGE", "CONTENT", "SIZE", "AVAILABLE"]
    assert lines[1].split()[0] == "demo:1"
    assert lines[1].split()[1] == built.index.digest.encoded[:12]
    assert lines[2].split()[:2] == ["├─", "linux/amd64"]
    assert lines[2].split()[-3:] == ["0B", "0B", "no"]
    assert lines[5].split()[-1] == "yes"
    assert lines[-1].split()[:2] == ["└─", "linux/s390x"]


async def test_render_tree_is_faint_for_unavailable_rows_on_a_terminal(store: Root) -> None:
    # TREE-3: unavailable rows faint on terminals, no marker column there.
    await build(store, present=MIXED)
    trees = await ImageService(store.images, store.content).tree()
    lines = render_tree(trees, terminal=True)
    assert "AVAILABLE" not in lines[0]
    faint = [ln for ln in lines if ln.startswith("\x1b[2m")]
    assert len(faint) == 3
    assert "linux/amd64" not in "".join(faint)
    assert not any("\x1b" in ln for ln in render_tree(trees, terminal=False))


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0B"), (999, "999B"), (4089660, "4.09MB"), (13576000, "13.6MB"), (1000, "1kB")],
)
def test_format_size_uses_decimal_units_with_three_digits(size: int, text: str) -> None:
    assert format_size(size) == text  # TREE-3


async def test_tree_groups_names_of_one_target_and_puts_untagged_last(store: Root) -> None:
    built = await build(store, present={"linux/amd64": "all"})
    other = await build(store, present={"linux/arm64": "all"}, name="docker.io/library/b:2")
    svc = ImageService(store.images, store.content)
    await svc.tag(NAME, "zz:9")
    await store.images.create(f"moby-dangling@{other.index.digest}", other.index)
    await svc.delete("docker.io/library/b:2")
    trees = await svc.tree()
    assert [t.names for t in trees] == [(NAME, "docker.io/library/zz:9"), ()]
    assert trees[0].target.digest == built.index.digest
    assert "<untagged>" in render_tree(trees, terminal=False)[-2]


async def test_resolve_accepts_familiar_names_digests_and_id_prefixes(store: Root) -> None:
    built = await build(store, present={"linux/amd64": "all"})
    svc = ImageService(store.images, store.content)
    for name in (NAME, "demo:1", str(built.index.digest), built.index.digest.encoded[:12]):
        assert (await svc.resolve(name)).name == NAME
    with pytest.raises(NotFound, match='image "nope": not found'):
        await svc.resolve("nope")


async def test_inspect_and_save_agree_on_image_ids_in_any_case(store: Root) -> None:
    built = await build(store, present={"linux/amd64": "all"})
    svc = ImageService(store.images, store.content)
    full = str(built.index.digest)
    hexes = built.index.digest.encoded
    for ref in (full, full.upper(), hexes.upper(), hexes[:12], hexes[:12].upper(), hexes[:4]):
        assert (await svc.inspect(ref)).image.target.digest == built.index.digest
        (entry,) = (await exporter.plan_save(store, [ref], SaveOptions())).images
        assert (entry.digest, entry.name) == (built.index.digest, None)
    for ref in ("sha256:" + hexes[:12], "ZZZZ", hexes[:3]):
        with pytest.raises(NotFound):
            await svc.inspect(ref)
        with pytest.raises(NotFound):
            await exporter.plan_save(store, [ref], SaveOptions())


async def test_tag_points_a_normalized_name_at_the_source_target(store: Root) -> None:
    built = await build(store, present={"linux/amd64": "all"})
    svc = ImageService(store.images, store.content)
    image = await svc.tag("demo:1", "mirror/demo")
    assert image.name == "docker.io/mirror/demo:latest"
    assert image.target.digest == built.index.digest
    with pytest.raises(NotFound):
        await svc.tag("missing:1", "x:1")


async def test_remove_by_name_untags_and_by_id_needs_force_when_shared(store: Root) -> None:
    built = await build(store, present={"linux/amd64": "all"})
    svc = ImageService(store.images, store.content)
    await svc.tag(NAME, "other:1")
    short = built.index.digest.encoded[:12]
    with pytest.raises(Conflict, match="must be forced"):
        await svc.remove([short])
    assert len(await svc.list()) == 2
    removed = await svc.remove(["other:1"])
    assert [str(r) for r in removed] == ["Untagged: other:1"]
    removed = await svc.remove([short], force=True)
    assert [str(r) for r in removed] == ["Untagged: demo:1", f"Deleted: {built.index.digest}"]
    assert await svc.list() == []


async def test_remove_with_one_unknown_name_removes_nothing(store: Root) -> None:
    await build(store, present={"linux/amd64": "all"})
    svc = ImageService(store.images, store.content)
    with pytest.raises(NotFound):
        await svc.remove(["demo:1", "nope:1"])
    assert [i.name for i in await svc.list()] == [NAME]


async def test_list_filters_by_reference_label_and_dangling(store: Root) -> None:
    built = await build(store, present={"linux/amd64": "all"})
    svc = ImageService(store.images, store.content)
    await store.images.create("docker.io/library/web:2", built.index, labels={"team": "a"})
    await store.images.create(f"moby-dangling@{built.index.digest}", built.index)
    names = lambda imgs: [i.name for i in imgs]  # noqa: E731
    assert names(await svc.list(["reference=web*"])) == ["docker.io/library/web:2"]
    assert names(await svc.list(["label=team=a"])) == ["docker.io/library/web:2"]
    assert names(await svc.list(["label=team=b"])) == []
    assert names(await svc.list(["dangling=true"])) == [f"moby-dangling@{built.index.digest}"]
    assert len(await svc.list(["dangling=false"])) == 2
    with pytest.raises(InvalidArgument, match="unknown key"):
        await svc.list(["colour=red"])


async def test_inspect_with_platform_shows_that_manifest_and_config(store: Root) -> None:
    built = await build(store, present=MIXED)
    details = await ImageService(store.images, store.content).inspect(
        "demo:1", platform="linux/amd64"
    )
    assert details.manifest is not None
    assert details.manifest.digest == built.manifests["linux/amd64"].digest
    doc = details.to_json()
    assert doc["config"]["architecture"] == "amd64"
    assert doc["manifest"]["layers"][0]["size"] == 1000
    assert [p["platform"] for p in doc["platforms"]][:4] == list(MIXED)
    with pytest.raises(NotFound, match="does not provide platform linux/s390x"):
        await ImageService(store.images, store.content).inspect("demo:1", platform="linux/s390x")


async def test_inspect_picks_the_best_match_not_the_first_in_the_index(store: Root) -> None:
    # only(linux/arm/v7) also matches v6 (MATCH rules); MATCH-7 order puts v7 first.
    built = await build(store, present={"linux/arm/v6": "all", "linux/arm/v7": "all"})
    details = await ImageService(store.images, store.content).inspect(
        "demo:1", platform="linux/arm/v7"
    )
    assert details.manifest is not None
    assert details.manifest.digest == built.manifests["linux/arm/v7"].digest


async def test_remove_by_id_takes_dangling_records_along_without_force(store: Root) -> None:
    built = await build(store, present={"linux/amd64": "all"})
    await store.images.create(f"moby-dangling@{built.index.digest}", built.index)
    svc = ImageService(store.images, store.content)
    removed = await svc.remove([built.index.digest.encoded[:12]])
    assert [str(r) for r in removed] == ["Untagged: demo:1", f"Deleted: {built.index.digest}"]
    assert await svc.list() == []


async def test_tree_shows_a_corrupt_manifest_unavailable_instead_of_failing(store: Root) -> None:
    built = await build(store, present=MIXED)
    path = store.content.path(built.manifests["linux/amd64"].digest)
    await anyio.to_thread.run_sync(path.chmod, 0o644)
    await anyio.Path(path).write_bytes(
        b"{not json" + b" " * (built.manifests["linux/amd64"].size - 9)
    )
    (tree,) = await ImageService(store.images, store.content).tree()
    amd64 = tree.platforms[0]
    assert str(amd64.platform) == "linux/amd64"  # from the index descriptor
    assert (amd64.available, amd64.content_size) == (False, 0)
    # A corrupt index: the image is still listed, with no manifests.
    index_path = store.content.path(built.index.digest)
    await anyio.to_thread.run_sync(index_path.chmod, 0o644)
    await anyio.Path(index_path).write_bytes(b"x" * built.index.size)
    (tree,) = await ImageService(store.images, store.content).tree()
    assert (tree.names, tree.manifests) == ((NAME,), ())
