"""Pull an image from a registry: the load's filtered walk over registry documents (PULL-1..3).

Documents are fetched and verified into the store as the walk reads them; the configs and
layers the selection needs and the store lacks are streamed into ingests; the image record
is written last (IMP-15), all under a lease, so a failed pull changes no image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

import httpx

from castar.engine import graph, oci, reference
from castar.engine import platforms as plats
from castar.engine.load.archive import Progress, Session
from castar.engine.load.importer import record
from castar.engine.load.resolve import Walk, keep
from castar.engine.registry.auth import credentials_for
from castar.engine.registry.client import Registry, parse_ref
from castar.store.digest import parse
from castar.store.errors import (
    AlreadyExists,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    Unavailable,
)

if TYPE_CHECKING:
    from castar.engine.load.importer import LoadOptions
    from castar.store import Image
    from castar.store.progress import ProgressCallback
    from castar.store.roles import BlobIngester, ImageRecords, Leases

__all__ = ["ACCEPT", "RegistryReader", "pull"]

#: distribution 2.8 answers 404 for an OCI manifest whose type ``Accept`` does not name.
ACCEPT: Final = ", ".join(
    (oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST_LIST, oci.DOCKER_MANIFEST)
)
_TRIES: Final = 3  # connections dropped mid-blob are resumed with Range this often
SOURCE_LABEL: Final = "containerd.io/distribution.source."


class RegistryReader(graph.Reader):
    """Documents from the store, else fetched from ``repo``, verified and stored first."""

    def __init__(self, registry: Registry, repo: str, sess: Session) -> None:
        super().__init__(self._load)
        self.registry = registry
        self.repo = repo
        self.sess = sess
        self.content = sess.content

    async def resolve(self, tag_or_digest: str) -> oci.Descriptor:
        """The descriptor ``HEAD manifests/<tag_or_digest>`` answers, its digest checked."""
        resp = await self.registry.request(
            "HEAD", self.repo, f"manifests/{tag_or_digest}", headers={"Accept": ACCEPT}
        )
        try:
            digest = parse(resp.headers["Docker-Content-Digest"])
            size = int(resp.headers["Content-Length"])
        except (KeyError, ValueError, InvalidArgument) as exc:
            raise InvalidArgument(f"HEAD {resp.url}: no usable digest and size ({exc})") from exc
        if tag_or_digest.startswith(f"{digest.algorithm}:") and digest != tag_or_digest:
            raise DigestMismatch(
                f"HEAD {resp.url}: Docker-Content-Digest {digest}",
                expected=tag_or_digest,
                actual=digest,
            )
        media_type = resp.headers.get("Content-Type", "").partition(";")[0].strip()
        return oci.Descriptor(media_type, digest, size)

    async def _load(self, desc: oci.Descriptor) -> bytes:
        if not await self.content.exists(desc.digest):
            if desc.size > oci.MAX_DOCUMENT:
                raise InvalidArgument(
                    f"document {desc.digest}: size {desc.size} exceeds {oci.MAX_DOCUMENT} bytes"
                )
            kind = (
                "manifests"
                if oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)
                else "blobs"
            )
            resp = await self.registry.request(
                "GET", self.repo, f"{kind}/{desc.digest}", headers={"Accept": ACCEPT}
            )
            header = resp.headers.get("Docker-Content-Digest")
            if kind == "manifests" and header is not None and header != desc.digest:
                raise DigestMismatch(
                    f"GET {resp.url}: Docker-Content-Digest {header}",
                    expected=desc.digest,
                    actual=header,
                )
            try:  # the write verifies size and digest: the bytes in hand are the document
                await self.content.write_blob(
                    resp.content,
                    digest=desc.digest,
                    size=desc.size,
                    ref=self.sess.ref(desc.digest),
                    sync=False,
                )
                return resp.content
            except AlreadyExists:
                pass  # stored meanwhile: read it back as any stored document
        return await graph.read_document(self.content, desc)


async def _fetch(reader: RegistryReader, desc: oci.Descriptor) -> None:
    """Stream one blob into an ingest, resuming with ``Range`` when a connection drops."""
    sess = reader.sess
    ref = sess.ref(desc.digest)
    try:
        async with sess.content.writer(ref, size=desc.size, digest=desc.digest) as w:
            for attempt in range(_TRIES):
                offset = w.offset
                if offset >= desc.size:
                    break
                headers = {"Range": f"bytes={offset}-"} if offset else None
                try:
                    async with reader.registry.stream(
                        "GET", reader.repo, f"blobs/{desc.digest}", headers=headers
                    ) as resp:
                        if offset and resp.status_code != 206:  # Range ignored: start over
                            await w.truncate(0)
                            sess.progress.add(-offset, desc.digest)
                        async for chunk in resp.aiter_bytes():
                            await w.write(chunk)
                            sess.progress.add(len(chunk), desc.digest)
                    break
                except httpx.TransportError as exc:
                    if attempt == _TRIES - 1:
                        raise Unavailable(f"GET blob {desc.digest}: {exc!r}") from exc
            await w.commit(desc.size, desc.digest, sync=False)
    except AlreadyExists:
        pass  # stored meanwhile
    except BaseException:
        await sess.discard(ref)
        raise


async def pull(
    content: BlobIngester,
    images: ImageRecords,
    leases: Leases,
    ref: str,
    options: LoadOptions,
    *,
    registry: Registry | None = None,
    progress: ProgressCallback | None = None,
) -> list[Image]:
    """Pull ``ref`` (a tag or a digest) and record it under its normalised name (PULL-1).

    ``options`` selects platforms as for load (PULL-2). Only the blobs
    of the kept manifests that the store lacks are fetched; ``registry`` defaults to a new
    client of the reference's host with the credentials of :func:`credentials_for`.

    Raises:
        NotFound: the reference is unknown, or no manifest matches the requested platforms.
        DigestMismatch: a document or blob is not what its digest says.
        Unavailable: the registry cannot be reached or keeps failing.
    """
    host, repo, tag, digest = parse_ref(ref)
    name = reference.normalize(ref)
    requested = () if options.all_platforms else options.platforms
    host_platform = plats.only(plats.host())
    matcher = plats.match_any_with_preference(host_platform, requested) if requested else plats.ALL
    own = registry is None
    reg = Registry(host, credentials=credentials_for) if registry is None else registry
    sess = Session(content, matcher, False, None, Progress(progress))
    try:
        async with leases.hold(labels={"castar.pull": sess.session}):
            reader = RegistryReader(reg, repo, sess)
            root = await reader.resolve(digest or tag or reference.DEFAULT_TAG)
            nodes = await graph.walk(
                reader, [root], keep=lambda d: keep(sess, d), skip_missing=False, unique=True
            )
            if requested:
                kept = [n.descriptor for n in nodes if oci.is_manifest(n.descriptor.media_type)]
                found = [await graph.manifest_platform(reader, m) for m in kept]
                if not any(p is not None and matcher.match(p) for p in found):
                    wanted = " ".join(plats.format_all(p) for p in requested)
                    raise NotFound(f"{ref}: no manifest for the requested platform(s) [{wanted}]")
            source = {SOURCE_LABEL + host: repo}
            walk = Walk(queued=[(name, root)])
            for node in nodes:
                labels = oci.children_labels(node.children)
                walk.labels[node.descriptor.digest] = {**labels, **source}
                walk.needed.setdefault(node.descriptor.digest, node.descriptor)
            stored = await content.infos(walk.needed)
            todo = [d for k, d in walk.needed.items() if k not in stored]
            sess.progress.total = sum(d.size for d in todo)
            await sess.pool(todo, reg.jobs, lambda d: _fetch(reader, d), tick=True)
            sess.progress.report()
            # One sync of exactly what was written, before a record points at it (io-sync).
            await content.sync()
            return await record(content, images, walk)
    finally:
        if own:
            await reg.aclose()
