"""Pull an image from a registry: the load's filtered walk over registry documents (PULL-1..3).

Documents are fetched and verified into the store as the walk reads them; the configs and
layers the selection needs and the store lacks are streamed into ingests; the image record
is written last (IMP-15), all under a lease, so a failed pull changes no image.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, final

import anyio
import httpx

from castar.engine import graph, oci, reference
from castar.engine import platforms as plats
from castar.engine.load.archive import Progress, Session
from castar.engine.load.importer import record
from castar.engine.load.resolve import Walk, keep
from castar.engine.registry.auth import credentials_for
from castar.engine.registry.client import Registry, parse_ref, single_flight
from castar.store.digest import parse
from castar.store.errors import (
    AlreadyExists,
    CastarError,
    DigestMismatch,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from castar.store.labels import SOURCE
from castar.store.leases import current_lease

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from castar.engine.load.importer import LoadOptions
    from castar.store import Image
    from castar.store.digest import Digest
    from castar.store.progress import ProgressCallback
    from castar.store.roles import BlobIngester, ImageRecords, Leases

__all__ = ["ACCEPT", "PullResult", "RegistryReader", "fetch_missing", "pull", "pull_many"]

#: distribution 2.8 answers 404 for an OCI manifest whose type ``Accept`` does not name.
ACCEPT: Final = ", ".join(
    (oci.OCI_INDEX, oci.OCI_MANIFEST, oci.DOCKER_MANIFEST_LIST, oci.DOCKER_MANIFEST)
)
_TRIES: Final = 3  # connections dropped mid-blob are resumed with Range this often
#: Per store, the blobs being fetched (single flight, PULL-4).
_FLIGHTS: weakref.WeakKeyDictionary[BlobIngester, dict[Digest, anyio.Event]] = (
    weakref.WeakKeyDictionary()
)


class RegistryReader(graph.Reader):
    """Documents from the store, else fetched from ``repo``, verified and stored first.

    Without a ``registry`` (no source known) what the store lacks is NotFound.
    """

    def __init__(self, registry: Registry | None, repo: str, sess: Session, leases: Leases) -> None:
        super().__init__(self._load)
        self.registry = registry
        self.repo = repo
        self.sess = sess
        self.content = sess.content
        self.leases = leases

    async def hold(self, digests: Iterable[str]) -> None:
        """Add ``digests`` to the current lease: what is stored stays until it ends (PULL-6)."""
        lease = current_lease()
        if lease is not None:
            await self.leases.add_resources(lease.id, "content", digests)

    def source(self, digest: str) -> Registry:
        """The client to fetch ``digest`` with."""
        if self.registry is None:
            raise NotFound(
                f"content digest {digest}: not in the store, and no {SOURCE}<registry>"
                " label says where to fetch it from"
            )
        return self.registry

    async def resolve(self, tag_or_digest: str) -> oci.Descriptor:
        """The descriptor ``HEAD manifests/<tag_or_digest>`` answers, its digest checked."""
        resp = await self.source(tag_or_digest).request(
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
        stored = await self.content.exists(desc.digest)
        if stored:  # leased, then checked again: it may have gone before
            await self.hold([desc.digest])
            stored = await self.content.exists(desc.digest)
        if not stored:
            if desc.size > oci.MAX_DOCUMENT:
                raise InvalidArgument(
                    f"document {desc.digest}: size {desc.size} exceeds {oci.MAX_DOCUMENT} bytes"
                )
            kind = (
                "manifests"
                if oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)
                else "blobs"
            )
            resp = await self.source(desc.digest).request(
                "GET",
                self.repo,
                f"{kind}/{desc.digest}",
                headers={"Accept": ACCEPT},
                limit=desc.size,
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
    """One blob, once at a time per store (PULL-4): another pull's is waited for, then found."""
    async with single_flight(_FLIGHTS.setdefault(reader.content, {}), desc.digest):
        if await reader.content.exists(desc.digest):
            reader.sess.progress.add(desc.size, desc.digest)
            return
        registry = reader.source(desc.digest)
        async with registry.transfers:
            await _stream(registry, reader, desc)


async def _stream(registry: Registry, reader: RegistryReader, desc: oci.Descriptor) -> None:
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
                    async with registry.stream(
                        "GET", reader.repo, f"blobs/{desc.digest}", headers=headers
                    ) as resp:
                        if offset and resp.status_code != 206:  # Range ignored: start over
                            await w.truncate(0)
                            sess.progress.add(-offset, desc.digest)
                        async for chunk in resp.aiter_bytes():
                            await w.write(chunk)
                            sess.progress.add(len(chunk), desc.digest)
                    break
                except httpx.RequestError as exc:
                    if attempt == _TRIES - 1:
                        url = registry.url(reader.repo, f"blobs/{desc.digest}")
                        raise Unavailable(f"GET {url}: {type(exc).__name__}: {exc}") from exc
            await w.commit(desc.size, desc.digest, sync=False)
    except AlreadyExists:
        pass  # stored meanwhile
    except BaseException:
        await sess.discard(ref)
        raise


async def _transfer(
    reader: RegistryReader, nodes: list[graph.Node], queued: list[tuple[str, oci.Descriptor]]
) -> Walk:
    """Label the walked graph (GC-7, PULL-3) and fetch the blobs the store lacks, synced."""
    sess, content = reader.sess, reader.content
    registry = reader.registry
    key = None if registry is None else SOURCE + registry.host
    walk = Walk(queued=queued)
    docs = {}
    for node in nodes:
        walk.needed.setdefault(node.descriptor.digest, node.descriptor)
        if oci.is_index(node.descriptor.media_type) and node.present:
            docs[node.descriptor.digest] = await reader.read(node.descriptor)
    await reader.hold(walk.needed)  # before the check: a GC cannot take what it finds stored
    stored = await content.infos(
        {*walk.needed, *(c.digest for d in docs.values() if d for c in d.children)}
    )
    for node in nodes:
        kids = node.children
        doc = docs.get(node.descriptor.digest)
        if doc is not None:  # PULL-5: the children already stored keep their GC-7 edges
            kept = {k.digest for k in kids}
            kids = tuple(c for c in doc.children if c.digest in kept or c.digest in stored)
        labels = walk.labels[node.descriptor.digest] = oci.children_labels(kids)
        if key is not None:  # PULL-8: one more repository in the list
            info = stored.get(node.descriptor.digest)
            repos = info.labels.get(key, "").split(",") if info is not None else []
            labels[key] = ",".join(sorted({*filter(None, repos), reader.repo}))
    todo = [d for k, d in walk.needed.items() if k not in stored]
    if todo:
        reader.source(todo[0].digest)
    sess.progress.total = (sess.progress.total or 0) + sum(d.size for d in todo)
    jobs = registry.jobs if registry is not None else 1
    await sess.pool(todo, jobs, lambda d: _fetch(reader, d), tick=True)
    sess.progress.report()
    # One sync of exactly what was written, before a record points at it (io-sync).
    await content.sync()
    return walk


def _matcher(options: LoadOptions) -> tuple[tuple[plats.Platform, ...], plats.MatchComparer]:
    requested = () if options.all_platforms else options.platforms
    host_platform = plats.only(plats.host())
    matcher = plats.match_any_with_preference(host_platform, requested) if requested else plats.ALL
    return requested, matcher


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
    host = parse_ref(ref)[0]
    reg = Registry(host, credentials=credentials_for) if registry is None else registry
    try:
        return await _pull(content, images, leases, ref, options, reg, Progress(progress))
    finally:
        if registry is None:
            await reg.aclose()


async def _pull(
    content: BlobIngester,
    images: ImageRecords,
    leases: Leases,
    ref: str,
    options: LoadOptions,
    registry: Registry,
    progress: Progress,
) -> list[Image]:
    _, repo, tag, digest = parse_ref(ref)
    requested, matcher = _matcher(options)
    sess = Session(content, matcher, False, None, progress)
    async with leases.hold(labels={"castar.pull": sess.session}):
        reader = RegistryReader(registry, repo, sess, leases)
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
        walk = await _transfer(reader, nodes, [(reference.normalize(ref), root)])
        return await record(content, images, walk)


@final
@dataclass(frozen=True, slots=True)
class PullResult:
    """One reference of :func:`pull_many`: the images recorded, or the error that stopped it."""

    ref: str
    images: tuple[Image, ...] = ()
    error: CastarError | OSError | None = None


async def pull_many(
    content: BlobIngester,
    images: ImageRecords,
    leases: Leases,
    refs: Sequence[str],
    options: LoadOptions,
    *,
    jobs: int = 4,
    progress: ProgressCallback | None = None,
) -> list[PullResult]:
    """Pull every one of ``refs`` concurrently, each as :func:`pull` does (PULL-4).

    One client per registry host serves them all (its connections, tokens and ``jobs``
    blobs in flight); a blob several need is fetched once. A failed reference changes
    nothing of the others: each result, in ``refs`` order, holds its images or its error.
    """
    if jobs < 1:
        raise InvalidArgument(f"pull: jobs must be at least 1, not {jobs}")
    clients: dict[str, Registry] = {}
    bar = Progress(progress)
    out = [PullResult(ref) for ref in refs]
    at_once = anyio.CapacityLimiter(jobs)

    async def one(i: int, ref: str) -> None:
        async with at_once:
            try:
                host = parse_ref(ref)[0]
                if host not in clients:
                    clients[host] = Registry(host, credentials=credentials_for, jobs=jobs)
                got = await _pull(content, images, leases, ref, options, clients[host], bar)
                out[i] = PullResult(ref, tuple(got))
            except (CastarError, OSError) as exc:
                out[i] = PullResult(ref, error=exc)

    try:
        async with anyio.create_task_group() as tg:
            for i, ref in enumerate(refs):
                tg.start_soon(one, i, ref)
    finally:
        with anyio.CancelScope(shield=True):
            for client in clients.values():
                await client.aclose()
    return out


async def fetch_missing(
    content: BlobIngester, leases: Leases, root: oci.Descriptor, options: LoadOptions, *, who: str
) -> None:
    """Fetch what the store lacks of ``root``'s selected graph from where it came (SAVE-7).

    The source is ``root``'s ``containerd.io/distribution.source.<registry>=<repo>`` label;
    everything is written under the current lease and labelled as a pull labels it, so the
    image's record keeps it once that lease ends. Nothing missing: no request is sent.
    """
    labels = (await content.info(root.digest)).labels
    sources = sorted((k.removeprefix(SOURCE), v) for k, v in labels.items() if k.startswith(SOURCE))
    host, repo = (sources[0][0], sources[0][1].split(",")[0]) if sources else ("", "")
    registry = Registry(host, credentials=credentials_for) if sources else None
    sess = Session(content, _matcher(options)[1], False, None, Progress(None))
    reader = RegistryReader(registry, repo, sess, leases)
    try:
        nodes = await graph.walk(
            reader, [root], keep=lambda d: keep(sess, d), skip_missing=False, unique=True
        )
        walk = await _transfer(reader, nodes, [])
        await content.update_labels_many(walk.labels.items())
    except NotFound as exc:
        raise NotFound(f"{who}: cannot fetch what the store lacks: {exc}") from exc
    finally:
        if registry is not None:
            await registry.aclose()
