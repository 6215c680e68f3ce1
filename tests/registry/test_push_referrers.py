"""A pushed manifest with a ``subject`` joins its subject's referrers tag index (PUSH-6)."""

from __future__ import annotations

import json

import httpx
import pytest

from castar.engine import oci
from castar.engine.images import as_oci
from castar.engine.registry.client import Registry
from castar.engine.registry.push import PushOptions, push
from castar.store.digest import compute

pytestmark = pytest.mark.anyio

ARTIFACT = "application/vnd.example.signature"


async def _referrer(store, subject: oci.Descriptor, name: str, note: str) -> oci.Descriptor:
    """A manifest of ``subject`` (an empty config, one small layer), recorded as ``name``."""
    empty = oci.Descriptor(oci.OCI_EMPTY, compute(b"{}"), 2)
    body = note.encode()
    layer = oci.Descriptor("application/vnd.example.note", compute(body), len(body))
    manifest = oci.Manifest(
        media_type=oci.OCI_MANIFEST,
        artifact_type=ARTIFACT,
        config=empty,
        layers=(layer,),
        subject=oci.Descriptor(subject.media_type, subject.digest, subject.size),
        annotations={"note": note},
    )
    data = oci.encode_manifest(manifest)
    desc = oci.Descriptor(oci.OCI_MANIFEST, compute(data), len(data))
    for blob in (b"{}", body, data):
        await store.content.write_blob(blob, digest=compute(blob), size=len(blob))
    await store.images.create(name, desc)
    return desc


async def test_referrers_are_listed_in_the_subject_tag_index(registry, store, small_image):
    repo = f"{registry.host}/referrers/sig"
    subject = as_oci(small_image.target)
    roles = (store.content, store.images, store.leases)
    tag_path = f"{registry.url}/v2/referrers/sig/manifests/sha256-{subject.digest.encoded}"
    async with Registry(registry.host) as client:
        await push(*roles, small_image.name, f"{repo}:1", PushOptions(), registry=client)
        first = await _referrer(store, subject, "sig:a", "a")
        second = await _referrer(store, subject, "sig:b", "b")
        for name, tag in (("sig:a", "a"), ("sig:b", "b"), ("sig:a", "a2")):
            await push(*roles, name, f"{repo}:{tag}", PushOptions(), registry=client)
    async with httpx.AsyncClient() as http:
        resp = await http.get(tag_path, headers={"Accept": oci.OCI_INDEX})
    assert resp.status_code == 200
    index = json.loads(resp.content)
    assert index["mediaType"] == oci.OCI_INDEX
    assert index["manifests"] == [  # each once, in push order, with what a referrers API gives
        {
            "mediaType": oci.OCI_MANIFEST,
            "digest": str(d.digest),
            "size": d.size,
            "annotations": {"note": note},
            "artifactType": ARTIFACT,
        }
        for d, note in ((first, "a"), (second, "b"))
    ]


async def test_a_manifest_without_subject_makes_no_referrers_tag(registry, store, small_image):
    roles = (store.content, store.images, store.leases)
    seen: list[str] = []

    async def hook(request: httpx.Request) -> None:
        seen.append(f"{request.method} {request.url.path}")

    async with Registry(registry.host) as client:
        client._client.event_hooks["request"].append(hook)
        await push(
            *roles,
            small_image.name,
            f"{registry.host}/referrers/none:1",
            PushOptions(),
            registry=client,
        )
    assert not [line for line in seen if "/manifests/sha256-" in line]
