"""Push to a real registry: skopeo reads back the stored bytes, a second push uploads nothing,
a store lacking a platform fails before any request, one platform pushes its manifest."""

from __future__ import annotations

import json
import os
import shutil
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import pytest

from castar._cli import main
from castar.engine import graph, oci, synth
from castar.engine.images import as_oci
from castar.engine.load.importer import LoadOptions
from castar.engine.registry import auth
from castar.engine.registry.client import Registry
from castar.engine.registry.pull import pull
from castar.engine.registry.push import PushOptions, PushResult, push
from castar.store import open_root
from castar.store.digest import compute
from castar.store.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    Unavailable,
)
from castar.store.labels import SOURCE
from tests.registry._clients import Recording

if TYPE_CHECKING:
    from pathlib import Path

    from castar.store import Image, Root

pytestmark = pytest.mark.anyio

SKOPEO = shutil.which("skopeo")


class Counting(Recording):
    """Recording, and every blob PUT is one streamed body of a known length."""

    async def request(self, method: str, repo: str, path: str, **kw: Any) -> httpx.Response:
        if method == "PUT" and "uploads" in path:  # one streamed body of the blob's length
            body = kw["content"]
            assert not isinstance(body, bytes)
            sent = httpx.Request(method, self.url(repo, path), headers=kw["headers"], content=body)
            assert "transfer-encoding" not in sent.headers
            assert int(sent.headers["content-length"]) > 0
        return await super().request(method, repo, path, **kw)


async def _raw(host: str, ref: str) -> bytes:
    if SKOPEO is None:
        if os.environ.get("CASTAR_REQUIRE_INTEROP") == "1":
            pytest.fail("CASTAR_REQUIRE_INTEROP=1 but skopeo is not installed")
        pytest.skip("skopeo is not installed")
    cmd = [SKOPEO, "inspect", "--raw", "--tls-verify=false", f"docker://{host}/{ref}"]
    return (await anyio.run_process(cmd)).stdout


async def _push(store: Root, name: str, ref: str, registry: Registry, *plats: str) -> PushResult:
    roles = (store.content, store.images, store.leases)
    return await push(*roles, name, ref, PushOptions.parse(plats), registry=registry)


async def test_push_then_skopeo_reads_the_stored_index(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    ref = f"{registry.host}/push-{anyio_backend}/all:1"
    async with Counting(registry.host) as client:
        first = await _push(store, small_image.name, ref, client)
    target = as_oci(small_image.target)
    assert first.target == target
    stored = await store.content.read_all(target.digest, limit=oci.MAX_DOCUMENT)
    assert await _raw(registry.host, f"push-{anyio_backend}/all:1") == stored
    walked = await graph.walk(graph.StoreReader(store.content), [target], unique=True)
    assert {d.digest for d in first.pushed} == {n.descriptor.digest for n in walked}
    assert first.sent == sum(n.descriptor.size for n in walked)
    assert first.skipped == ()
    puts = [p for m, p in client.calls if m == "PUT"]
    assert puts[-1] == "manifests/1"  # the tag last

    async with Counting(registry.host) as again:
        second = await _push(store, small_image.name, ref, again)
    assert second.pushed == ()
    assert second.sent == 0
    assert {d.digest for d in second.skipped} == {d.digest for d in first.pushed}
    assert [m for m, _ in again.calls].count("HEAD") == len(walked)
    assert [c for c in again.calls if c[0] != "HEAD"] == [("PUT", "manifests/1")]


async def test_push_reads_each_document_once(
    store: Root, small_image: Image, registry: Any, anyio_backend: str, monkeypatch: Any
) -> None:
    reads: list[str] = []
    real = graph.read_document

    async def spy(content: Any, desc: Any) -> bytes:
        reads.append(str(desc.digest))
        return await real(content, desc)

    monkeypatch.setattr(graph, "read_document", spy)
    async with Counting(registry.host) as client:
        await _push(store, small_image.name, f"{registry.host}/once-{anyio_backend}/a:1", client)
    assert reads
    assert sorted(reads) == sorted(set(reads))  # the tree and the push walk share one reader


async def test_one_platform_pushes_its_manifest_as_the_tag(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    ref = f"{registry.host}/push-{anyio_backend}/one:arm"
    async with Registry(registry.host) as client:
        result = await _push(store, small_image.name, ref, client, "linux/arm64")
    assert oci.is_manifest(result.target.media_type)
    assert result.target.platform is not None
    assert result.target.platform.architecture == "arm64"
    stored = await store.content.read_all(result.target.digest, limit=oci.MAX_DOCUMENT)
    assert await _raw(registry.host, f"push-{anyio_backend}/one:arm") == stored


async def test_missing_platform_fails_before_any_request(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    reader = graph.StoreReader(store.content)
    nodes = await graph.walk(reader, [as_oci(small_image.target)], unique=True)
    s390x = next(
        n.descriptor
        for n in nodes
        if n.descriptor.platform is not None and n.descriptor.platform.architecture == "s390x"
    )
    (layer, *_) = [
        n.descriptor
        for n in await graph.walk(reader, [s390x])
        if oci.is_layer(n.descriptor.media_type)
    ]
    await store.content.delete(layer.digest)
    ref = f"{registry.host}/push-{anyio_backend}/missing:1"
    async with Counting(registry.host) as client:
        with pytest.raises(NotFound, match="linux/s390x"):
            await _push(store, small_image.name, ref, client)
    assert client.calls == []


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_cli_push_json(
    tmp_path: Path, registry: Any, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    archive = tmp_path / "synth.tar"
    synth.write_path(synth.SynthSpec(name="cli:1", platforms=("linux/amd64",)), archive)
    base = ["--root", str(tmp_path / "store"), "--backend", backend]
    assert main([*base, "load", "-q", "-i", str(archive)]) == 0
    ref = f"{registry.host}/push-cli-{backend}/img:1"
    capsys.readouterr()
    assert main([*base, "push", "cli:1", ref, "--json", "--jobs", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ref"] == ref
    assert out["skipped"] == []
    assert main([*base, "push", "cli:1", ref, "--platform", "linux/riscv64"]) == 3
    assert main([*base, "push", "cli:1", ref, "--jobs", "0"]) == 4


def test_cli_push_reads_the_auth_file(
    tmp_path: Path,
    auth_registry: Any,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("REGISTRY_AUTH_FILE", str(tmp_path / "auth.json"))
    archive = tmp_path / "synth.tar"
    synth.write_path(synth.SynthSpec(name="cli:1", platforms=("linux/amd64",)), archive)
    base = ["--root", str(tmp_path / "store")]
    assert main([*base, "load", "-q", "-i", str(archive)]) == 0
    ref = f"{auth_registry.host}/push-cli-auth/img:1"
    assert main([*base, "push", "cli:1", ref]) == 7  # Unauthenticated
    assert "no credentials" in capsys.readouterr().err
    auth.login(auth_registry.host, *auth_registry.credentials)
    assert main([*base, "push", "cli:1", ref]) == 0


async def test_push_with_basic_auth(
    store: Root, small_image: Image, auth_registry: Any, anyio_backend: str
) -> None:
    ref = f"{auth_registry.host}/push-auth-{anyio_backend}/img:1"
    creds = auth_registry.credentials
    async with Registry(auth_registry.host, credentials=lambda _host: creds) as client:
        result = await _push(store, small_image.name, ref, client, "linux/amd64")
    assert result.pushed


class FailingPut(Counting):
    """Every blob PUT answers a registry error."""

    async def request(self, method: str, repo: str, path: str, **kw: Any) -> httpx.Response:
        if method == "PUT" and "uploads" in path:
            raise Unavailable(f"PUT {path}: 503")
        return await super().request(method, repo, path, **kw)


async def test_a_failed_upload_is_raised_alone_and_no_tag_is_pushed(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    ref = f"{registry.host}/push-{anyio_backend}/fail:1"
    async with FailingPut(registry.host) as client:
        with pytest.raises(Unavailable, match="503"):
            await _push(store, small_image.name, ref, client)
    assert not any(m == "PUT" and "manifests" in p for m, p in client.calls)


async def test_a_tagless_ref_pushes_latest_and_a_digest_ref_no_tag(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    repo = f"push-{anyio_backend}/refs"
    target = as_oci(small_image.target)
    async with Counting(registry.host) as client:
        await _push(store, small_image.name, f"{registry.host}/{repo}", client)
        assert client.calls[-1] == ("PUT", "manifests/latest")
        client.calls.clear()
        await _push(store, small_image.name, f"{registry.host}/{repo}@{target.digest}", client)
        assert not any(p == "manifests/latest" for _, p in client.calls)
        other = f"{registry.host}/{repo}@sha256:{'0' * 64}"
        with pytest.raises(InvalidArgument, match="another digest"):
            await _push(store, small_image.name, other, client)
    stored = await store.content.read_all(target.digest, limit=oci.MAX_DOCUMENT)
    assert await _raw(registry.host, f"{repo}:latest") == stored


async def _push_then_mount(
    store: Root, image: Image, client: Counting, src: str, dst: str
) -> tuple[PushResult, PushResult, list[Any]]:
    """Push ``image`` to ``src``, label its blobs as from there, push it to ``dst``."""
    first = await _push(store, image.name, f"{client.host}/{src}:1", client, "linux/amd64")
    blobs = [d for d in first.pushed if not oci.is_manifest(d.media_type)]
    for d in blobs:
        await store.content.update_labels(d.digest, {SOURCE + client.host: src})
    client.calls.clear()
    second = await _push(store, image.name, f"{client.host}/{dst}:1", client, "linux/amd64")
    return first, second, blobs


async def test_blobs_from_another_repository_of_the_registry_are_mounted(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    src, dst = f"push-{anyio_backend}/mount-src", f"push-{anyio_backend}/mount-dst"
    async with Counting(registry.host) as client:
        first, second, blobs = await _push_then_mount(store, small_image, client, src, dst)
    assert {d.digest for d in second.mounted} == {d.digest for d in blobs}
    assert second.sent == first.target.size
    assert not any(m == "PUT" and "uploads" in p for m, p in client.calls)
    stored = await store.content.read_all(first.target.digest, limit=oci.MAX_DOCUMENT)
    assert await _raw(registry.host, f"{dst}:1") == stored


async def test_a_mount_behind_bearer_tokens_asks_pull_on_its_source_in_the_same_token(
    store: Root, small_image: Image, token_registry: Any, anyio_backend: str
) -> None:
    # distribution mounts only when the token grants pull on `from`; else it answers 202 and
    # the blob is uploaded again.
    server, tokens = token_registry
    src, dst = f"mount-token-{anyio_backend}/src", f"mount-token-{anyio_backend}/dst"
    creds = server.credentials
    async with Counting(server.host, credentials=lambda _host: creds) as client:
        _, second, blobs = await _push_then_mount(store, small_image, client, src, dst)
    assert {d.digest for d in second.mounted} == {d.digest for d in blobs}
    assert not any(m == "PUT" and "uploads" in p for m, p in client.calls)
    assert [f"repository:{dst}:pull,push", f"repository:{src}:pull"] in tokens.requests


async def test_several_platforms_push_a_new_index_of_them(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    repo = f"push-{anyio_backend}/some"
    async with Registry(registry.host) as client:
        result = await _push(
            store, small_image.name, f"{registry.host}/{repo}:2", client, "linux/amd64,linux/arm64"
        )
    assert result.new_index
    target = as_oci(small_image.target)
    assert result.target.digest != target.digest
    raw = await _raw(registry.host, f"{repo}:2")
    assert compute(raw) == result.target.digest
    index = oci.decode_index(raw)
    kept = [m for m in index.manifests if not oci.is_attestation(m)]
    attestations = [m for m in index.manifests if oci.is_attestation(m)]
    assert {m.platform.architecture for m in kept if m.platform} == {"amd64", "arm64"}
    refs = {m.annotations[oci.ANNOTATION_REFERENCE_DIGEST] for m in attestations}
    assert refs == {str(m.digest) for m in kept}
    manifests = {d.digest for d in result.pushed if oci.is_manifest(d.media_type)}
    assert manifests == {m.digest for m in index.manifests}

    async with Registry(registry.host) as client:
        every = await _push(
            store,
            small_image.name,
            f"{registry.host}/{repo}:3",
            client,
            "linux/amd64,linux/arm64,linux/s390x",
        )
    assert not every.new_index
    assert every.target == target


async def test_round_trip_push_pull_into_a_fresh_store_and_skopeo_copy(
    store: Root, small_image: Image, registry: Any, anyio_backend: str, tmp_path: Path
) -> None:
    ref = f"{registry.host}/push-{anyio_backend}/trip:1"
    async with Registry(registry.host) as client:
        await _push(store, small_image.name, ref, client)
    target = as_oci(small_image.target)
    async with open_root(tmp_path / "fresh") as fresh:
        roles = (fresh.content, fresh.images, fresh.leases)
        (pulled,) = await pull(*roles, ref, LoadOptions.parse(all_platforms=True))
        assert pulled.target.digest == target.digest
        walked = await graph.walk(graph.StoreReader(fresh.content), [target], unique=True)
        assert all(n.present for n in walked)
        for n in walked:
            assert (await fresh.content.info(n.descriptor.digest)).size == n.descriptor.size
    await _raw(registry.host, f"push-{anyio_backend}/trip:1")  # skips without skopeo
    assert SKOPEO is not None
    layout = tmp_path / "layout"
    src = f"docker://{ref}"
    dst = f"oci:{layout}:trip"
    cmd = [SKOPEO, "copy", "--all", "--preserve-digests", "--src-tls-verify=false", src, dst]
    await anyio.run_process(cmd)
    index = oci.decode_index(await anyio.Path(layout / "index.json").read_bytes())
    assert [m.digest for m in index.manifests] == [target.digest]


async def test_progress_counts_every_blob_byte_sent_or_present(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    ref = f"{registry.host}/push-{anyio_backend}/progress:1"
    roles = (store.content, store.images, store.leases)
    blobs = [
        n.descriptor
        for n in await graph.walk(graph.StoreReader(store.content), [as_oci(small_image.target)])
        if not oci.is_manifest(n.descriptor.media_type)
        and not oci.is_index(n.descriptor.media_type)
    ]
    total = sum({d.digest: d.size for d in blobs}.values())
    events: list[tuple[int, int | None, str]] = []

    def record(done: int, size: int | None, item: str) -> None:
        events.append((done, size, item))

    for _ in range(2):  # uploads, then blobs already present
        events.clear()
        async with Registry(registry.host) as client:
            await push(
                *roles, small_image.name, ref, PushOptions(), registry=client, progress=record
            )
        assert events[-1][:2] == (total, total)
        assert [e[0] for e in events] == sorted(e[0] for e in events)


async def test_concurrent_pushes_through_one_client_send_each_blob_once(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    repo = f"{registry.host}/push-{anyio_backend}/flight"
    async with Counting(registry.host) as client, anyio.create_task_group() as tg:
        for i in range(4):
            tg.start_soon(_push, store, small_image.name, f"{repo}:{i}", client)
    walked = await graph.walk(graph.StoreReader(store.content), [as_oci(small_image.target)])
    blobs = {n.descriptor.digest for n in walked if not oci.is_manifest(n.descriptor.media_type)}
    blobs -= {small_image.target.digest}
    assert sum(1 for m, p in client.calls if m == "PUT" and "uploads" in p) == len(blobs)


async def test_push_with_a_bearer_token_asks_the_push_scope(
    store: Root, small_image: Image, token_registry: Any, anyio_backend: str
) -> None:
    server, tokens = token_registry
    repo = f"push-token-{anyio_backend}/img"
    creds = ("castar", "secret")  # the token server's user
    async with Registry(server.host, credentials=lambda _host: creds) as client:
        await _push(store, small_image.name, f"{server.host}/{repo}:1", client, "linux/amd64")
    assert {s for s in tokens.scopes if repo in s} == {f"repository:{repo}:pull,push"}
    async with Registry(server.host) as anonymous:
        with pytest.raises((Unauthenticated, PermissionDenied)):  # a pull-only token
            await _push(store, small_image.name, f"{server.host}/{repo}:2", anonymous)


async def test_a_sparse_index_is_refused_by_the_registry_with_a_clear_error(
    store: Root, small_image: Image, registry: Any, anyio_backend: str
) -> None:
    repo = f"sparse-{anyio_backend}/a"
    roles = (store.content, store.images, store.leases)
    options = PushOptions.parse(["linux/arm64"], sparse=True)
    async with Counting(registry.host) as client:
        with pytest.raises(FailedPrecondition, match="refuses a sparse index"):
            await push(
                *roles, small_image.name, f"{registry.host}/{repo}:1", options, registry=client
            )
    target = as_oci(small_image.target)
    assert ("PUT", f"manifests/{target.digest}") in client.calls  # the original index, as asked
    assert ("PUT", "manifests/1") not in client.calls  # no tag
    async with Registry(registry.host) as client:
        arm = await push(*roles, small_image.name, f"{registry.host}/{repo}:2",
                         PushOptions.parse(["linux/arm64"]), registry=client)  # fmt: skip
    assert oci.is_manifest(arm.target.media_type)  # the child it needs is there now


def test_a_sparse_index_needs_platforms() -> None:
    with pytest.raises(InvalidArgument, match="sparse index needs --platform"):
        PushOptions.parse(sparse=True)
