"""Push (PUSH-1..3): an image's stored graph to a registry, children first, the tag last."""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Final, Literal, Self, final

import anyio

from castar.engine import graph, oci, reference
from castar.engine import platforms as plat
from castar.engine.images import ImageService
from castar.engine.registry.auth import credentials_for
from castar.engine.registry.client import Registry, parse_ref, single_flight
from castar.store.digest import compute
from castar.store.errors import (
    Conflict,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unauthenticated,
    Unavailable,
)
from castar.store.labels import SOURCE

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable
    from contextlib import AbstractAsyncContextManager

    import httpx

    from castar.engine.images import ImageTree, ManifestRow
    from castar.store.progress import ProgressCallback
    from castar.store.roles import BlobReader, ImageRecords, Leases

__all__ = ["PushOptions", "PushResult", "push"]

_SCOPE: Final = "pull,push"
_RESUMES: Final = 3  # chunked uploads resumed at most this often after a failed chunk
_TRIES: Final = 3  # a blob upload that fails Unavailable is started over until this many tries
#: Per client, the (repository, digest) blobs being sent (single flight).
_FLIGHTS: weakref.WeakKeyDictionary[Registry, dict[tuple[str, str], anyio.Event]] = (
    weakref.WeakKeyDictionary()
)


@final
@dataclass(frozen=True, slots=True)
class PushOptions:
    """``platforms``: none pushes the image, one its manifest, several an index of them (PUSH-2).

    ``jobs``: blobs in flight at once, when :func:`push` opens its own client. ``chunk``: a
    blob larger than this goes up in resumable ``PATCH`` chunks of this size (PUSH-4).
    ``sparse``: with platforms, push the original index, not a new one (PUSH-5).
    """

    platforms: tuple[plat.Platform, ...] = ()
    jobs: int = 4
    chunk: int = 64 << 20
    sparse: bool = False

    @classmethod
    def parse(
        cls,
        platforms: Iterable[str | plat.Platform] | None = None,
        jobs: int = 4,
        chunk: int = 64 << 20,
        *,
        sparse: bool = False,
    ) -> Self:
        """Options with ``platforms`` as specifiers (comma lists) or Platforms."""
        if jobs < 1:
            raise InvalidArgument(f"push: jobs must be at least 1, not {jobs}")
        if chunk < 1:
            raise InvalidArgument(f"push: chunk size must be at least 1 byte, not {chunk}")
        wanted = tuple(plat.parse_list(platforms or ()))
        if sparse and not wanted:
            raise InvalidArgument("push: a sparse index needs --platform")
        return cls(wanted, jobs, chunk, sparse)


@final
@dataclass(frozen=True, slots=True)
class PushResult:
    """What :func:`push` did: reference, root, uploads, bytes sent, blobs present or mounted."""

    ref: str
    target: oci.Descriptor
    pushed: tuple[oci.Descriptor, ...]
    sent: int
    skipped: tuple[oci.Descriptor, ...]
    mounted: tuple[oci.Descriptor, ...] = ()
    new_index: bool = False  # ``target`` is a new index of the platforms asked for

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {
            "ref": self.ref,
            "digest": str(self.target.digest),
            "mediaType": self.target.media_type,
            "pushed": [str(d.digest) for d in self.pushed],
            "sent": self.sent,
            "skipped": [str(d.digest) for d in self.skipped],
            "mounted": [str(d.digest) for d in self.mounted],
            "newIndex": self.new_index,
        }


@dataclass(slots=True)
class _Body:
    """A blob (or ``length`` bytes of it at ``offset``) streamed from the store, counted."""

    job: _Job
    digest: str
    offset: int = 0
    length: int | None = None
    sent: int = 0

    async def __aiter__(self) -> AsyncIterator[bytes]:
        reading = self.job.content.read(self.digest, offset=self.offset, length=self.length)
        async for chunk in reading:
            self.sent += len(chunk)
            self.job.advance(len(chunk), self.digest)
            yield chunk


async def push(
    content: BlobReader,
    images: ImageRecords,
    leases: Leases,
    name: str,
    ref: str | None,
    options: PushOptions,
    *,
    registry: Registry | None = None,
    progress: ProgressCallback | None = None,
) -> PushResult:
    """Push image ``name`` to ``ref`` (default: its own name), under a lease (PUSH-1..3).

    ``progress(done, total, digest)`` counts blob bytes, those already present included.

    Raises:
        NotFound: no such image, the store lacks a platform the image names (before any
            request), or no manifest for a platform asked for.
        Conflict: several manifests for one platform.
        InvalidArgument: a dangling image without ``ref``, a digest ``ref`` naming another
            digest, several platforms of an image that is no index.
    """
    service = ImageService(images, content)
    image = await service.resolve(name)
    if ref is None and reference.is_dangling(image.name):
        raise InvalidArgument(f"push: image {image.target.digest} has no name: give a reference")
    ref = ref or image.name
    host, repo, tag, digest = parse_ref(ref)
    async with leases.hold(expire=timedelta(hours=24), labels={"castar.push": "1"}) as lease:
        await leases.add_resources(lease.id, "content", [image.target.digest])
        reader = graph.StoreReader(content)  # one decode per document: tree, then the walk
        (tree,) = await service.tree([image.name], reader)
        root, index, kept = await _select(reader, tree, options, ref)
        if digest is not None and digest != root.digest:
            raise InvalidArgument(f"push: {ref} names another digest than {root.digest}")
        nodes = await graph.walk(reader, [root] if kept is None else kept, skip_missing=False)
        # Reversed, each digest where the walk last reached it: children before every parent.
        order = list({n.descriptor.digest: n.descriptor for n in reversed(nodes)}.values())
        if kept is not None:
            order.append(root)
        job = _Job(repo, tag, ref, root, index, content, reader, progress, options)
        if registry is None:
            async with Registry(host, credentials=credentials_for, jobs=options.jobs) as own:
                return await _send(own, job, order)
        return await _send(registry, job, order)


async def _select(
    reader: graph.StoreReader, tree: ImageTree, options: PushOptions, ref: str
) -> tuple[oci.Descriptor, bytes | None, list[oci.Descriptor] | None]:
    """The root to push, its bytes when it is a new index, and an index root's children to push.

    ``None`` children: the root's whole graph.
    """
    rows, target, wanted = tree.manifests, tree.target, options.platforms
    if not wanted:
        missing = [r for r in rows if not r.available]
        if missing:
            names = ", ".join(
                plat.format(r.platform)
                if r.platform is not None and r.kind == "image"
                else f"{r.kind} {r.descriptor.digest}"
                for r in missing
            )
            raise NotFound(f"push {ref}: the store lacks {names}: pull it or push --platform")
        return target, None, None
    picked = {(d := _one(rows, p, ref)).digest: d for p in wanted}
    if len(wanted) == 1 and not options.sparse:
        return next(iter(picked.values())), None, None
    if not oci.is_index(target.media_type):
        raise InvalidArgument(f"push {ref}: several platforms need an index, not a manifest")
    doc = await reader.read(target)
    assert doc is not None  # the tree read it
    old = oci.decode_index(doc.data, name=str(target.digest))
    available = {r.descriptor.digest for r in rows if r.available}
    kept = tuple(
        m
        for m in old.manifests
        if m.digest in picked
        or (m.digest in available and m.annotations.get(oci.ANNOTATION_REFERENCE_DIGEST) in picked)
    )
    if not picked.keys() <= {m.digest for m in kept}:
        raise InvalidArgument(f"push {ref}: a platform asked for is in a nested index")
    if options.sparse or len(kept) == len(old.manifests):
        return target, None, list(kept)
    data = oci.encode_index(replace(old, manifests=kept))
    desc = oci.Descriptor(
        target.media_type, compute(data), len(data), annotations=target.annotations
    )
    return desc, data, list(kept)


def _one(rows: tuple[ManifestRow, ...], want: plat.Platform, ref: str) -> oci.Descriptor:
    """The one available image manifest of exactly ``want`` (MATCH-3)."""
    strict = plat.only_strict(want)
    found = {
        r.descriptor.digest: r.descriptor
        for r in rows
        if r.kind == "image" and r.available and r.platform and strict.match(r.platform)
    }
    if not found:
        raise NotFound(f"push {ref}: no stored manifest for platform {plat.format(want)}")
    if len(found) > 1:
        raise Conflict(f"push {ref}: several manifests for platform {plat.format(want)}")
    return next(iter(found.values()))


@dataclass(slots=True)
class _Job:
    """One push: where to, the root (``index``: its bytes when the store has none), the store."""

    repo: str
    tag: str | None
    ref: str
    root: oci.Descriptor
    index: bytes | None
    content: BlobReader
    reader: graph.StoreReader
    progress: ProgressCallback | None
    options: PushOptions
    total: int = 0
    done: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # progress counted, per blob

    def advance(self, n: int, digest: str) -> None:
        self.done += n
        self.sent[digest] = self.sent.get(digest, 0) + n
        if self.progress is not None:
            self.progress(self.done, self.total, digest)

    async def document(self, desc: oci.Descriptor) -> bytes:
        if self.index is not None and desc.digest == self.root.digest:
            return self.index
        doc = await self.reader.read(desc)
        assert doc is not None  # the walk read it
        return doc.data


async def _send(registry: Registry, job: _Job, order: list[oci.Descriptor]) -> PushResult:
    """Blobs ``registry.jobs`` at a time, then documents in ``order``, then the tag."""
    repo = job.repo
    done: dict[str, list[oci.Descriptor]] = {"pushed": [], "skipped": [], "mounted": []}
    blobs = [d for d in order if not _is_document(d)]
    job.total = sum(d.size for d in blobs)
    infos = await job.content.infos([d.digest for d in blobs])
    label = SOURCE + registry.host
    limit = registry.transfers  # per registry, whichever push or pull sends
    failure: list[Exception] = []

    async def upload(desc: oci.Descriptor, scope: anyio.CancelScope) -> None:
        info = infos.get(desc.digest)
        sources = info.labels.get(label, "").split(",") if info is not None else []
        source = next((r for r in sources if r and r != repo), None)
        try:
            async with _flight(registry, repo, str(desc.digest)), limit:
                state = await _send_blob(registry, job, desc, source)
            done[state].append(desc)
            if state != "pushed":
                job.advance(desc.size, desc.digest)
        except Exception as exc:  # the first failure is raised, never as an ExceptionGroup
            failure.append(exc)
            scope.cancel()

    async with anyio.create_task_group() as tg:
        for desc in blobs:
            tg.start_soon(upload, desc, tg.cancel_scope)
    if failure:
        raise failure[0]
    pushed, skipped = done["pushed"], done["skipped"]
    for desc in order:
        if not _is_document(desc):
            continue
        path = f"manifests/{desc.digest}"
        try:
            async with _flight(registry, repo, str(desc.digest)):
                head = await registry.request(
                    "HEAD", repo, path, scope=_SCOPE, headers={"Accept": desc.media_type},
                    ok=(200, 404),
                )  # fmt: skip
                if head.status_code == 200:
                    skipped.append(desc)
                    continue
                put = await _put_document(registry, job, path, desc)
        except FailedPrecondition as exc:  # distribution: MANIFEST_BLOB_UNKNOWN
            if not (job.options.sparse and desc.digest == job.root.digest):
                raise
            raise FailedPrecondition(
                f"push {job.ref}: the registry refuses a sparse index (it names manifests not "
                f"pushed): push without --index sparse for an index of just those platforms"
                f" ({exc})"
            ) from exc
        pushed.append(desc)
        if "OCI-Subject" not in put.headers:  # no referrers API (PUSH-6)
            await _referrers_tag(registry, job, desc)
    if job.tag is not None:
        async with _flight(registry, repo, str(job.root.digest)):
            await _put_document(registry, job, f"manifests/{job.tag}", job.root)
    sent = sum(d.size for d in pushed)
    mounted = tuple(done["mounted"])
    new = job.index is not None
    return PushResult(job.ref, job.root, tuple(pushed), sent, tuple(skipped), mounted, new)


def _is_document(desc: oci.Descriptor) -> bool:
    return oci.is_manifest(desc.media_type) or oci.is_index(desc.media_type)


def _flight(registry: Registry, repo: str, digest: str) -> AbstractAsyncContextManager[None]:
    """Pushes sharing ``registry`` send a blob or document to a repository one at a time.

    The others wait, then HEAD it and skip it. Documents too: distribution 2.8 can answer
    ``DIGEST_INVALID`` to one of two concurrent PUTs of the same manifest.
    """
    return single_flight(_FLIGHTS.setdefault(registry, {}), (repo, digest))


async def _send_blob(
    registry: Registry, job: _Job, desc: oci.Descriptor, source: str | None
) -> Literal["pushed", "skipped", "mounted"]:
    """Send one blob; a failed upload starts over with backoff (PUSH-7), its progress undone."""
    tries = 0
    renewed = False
    while True:
        tries += 1
        try:
            return await _upload(registry, job, desc, source)
        except Unauthenticated:
            if renewed:  # the client renewed the token on the 401: one more try with it
                raise
            renewed = True
        except Unavailable:
            if tries >= _TRIES:
                raise
            await anyio.sleep(registry.backoff(tries))
        job.advance(-job.sent.get(desc.digest, 0), desc.digest)


async def _upload(
    registry: Registry, job: _Job, desc: oci.Descriptor, source: str | None
) -> Literal["pushed", "skipped", "mounted"]:
    repo = job.repo
    head = await registry.request("HEAD", repo, f"blobs/{desc.digest}", scope=_SCOPE, ok=(200, 404))
    if head.status_code == 200:
        return "skipped"
    params = None if source is None else {"mount": str(desc.digest), "from": source}
    started = await registry.request(
        "POST", repo, "blobs/uploads/", scope=_SCOPE, mount=source, params=params, ok=(201, 202)
    )
    if started.status_code == 201:
        return "mounted"
    location = started.headers["Location"]  # keeps its query (the upload's state)
    headers = {"Content-Type": "application/octet-stream"}
    if desc.size <= job.options.chunk:
        body: _Body | None = _Body(job, desc.digest)
        headers["Content-Length"] = str(desc.size)
    else:
        location, body = await _patch(registry, job, desc, location), None
        headers["Content-Length"] = "0"
    await registry.request(
        "PUT",
        repo,
        _with(location, digest=str(desc.digest)),
        scope=_SCOPE,
        headers=headers,
        content=body,
        ok=(201,),
    )
    return "pushed"


def _with(location: str, **params: str) -> str:
    """``location`` (an upload URL that keeps its state in its query) with ``params`` added."""
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"{location}{'&' if '?' in location else '?'}{query}"


async def _patch(registry: Registry, job: _Job, desc: oci.Descriptor, location: str) -> str:
    """Send ``desc`` in ``job.options.chunk``-sized ``PATCH`` chunks; the upload's last location.

    A chunk that fails (connection lost, 5xx, 416) resumes from the offset the registry
    reports for the upload (``GET`` of it: ``Range: 0-<last>``), at most ``_RESUMES`` times.
    """
    offset = resumes = 0
    while offset < desc.size:
        n = min(job.options.chunk, desc.size - offset)
        body = _Body(job, desc.digest, offset, n)
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(n),
            "Content-Range": f"{offset}-{offset + n - 1}",
        }
        try:
            resp = await registry.request(
                "PATCH",
                job.repo,
                location,
                scope=_SCOPE,
                headers=headers,
                content=body,
                ok=(202, 416),
            )
        except Unavailable:
            resp = None
        if resp is not None and resp.status_code == 202:
            location = resp.headers.get("Location", location)
            offset += n
            continue
        job.advance(-body.sent, desc.digest)
        resumes += 1
        if resumes > _RESUMES:
            raise Unavailable(f"push {job.ref}: upload of {desc.digest} failed {resumes} times")
        status = await registry.request("GET", job.repo, location, scope=_SCOPE, ok=(204,))
        location = status.headers.get("Location", location)
        last = status.headers.get("Range", "").rpartition("-")[2]
        offset = int(last) + 1 if last.isdigit() else 0
    return location


async def _put_document(
    registry: Registry, job: _Job, path: str, desc: oci.Descriptor
) -> httpx.Response:
    return await registry.request(
        "PUT",
        job.repo,
        path,
        scope=_SCOPE,
        headers={"Content-Type": desc.media_type},
        content=await job.document(desc),
        ok=(201,),
    )


async def _referrers_tag(registry: Registry, job: _Job, desc: oci.Descriptor) -> None:
    """PUSH-6: a document with a ``subject`` joins the subject's ``<alg>-<hex>`` tag index."""
    data = await job.document(desc)
    decode = oci.decode_index if oci.is_index(desc.media_type) else oci.decode_manifest
    doc = decode(data, name=str(desc.digest))
    if doc.subject is None:
        return
    artifact = doc.artifact_type
    if not artifact and isinstance(doc, oci.Manifest):
        artifact = doc.config.media_type
    entry = oci.Descriptor(
        desc.media_type, desc.digest, desc.size, annotations=doc.annotations, artifact_type=artifact
    )
    subject = doc.subject.digest
    path = f"manifests/{subject.algorithm}-{subject.encoded}"
    got = await registry.request(
        "GET",
        job.repo,
        path,
        scope=_SCOPE,
        headers={"Accept": oci.OCI_INDEX},
        ok=(200, 404),
        limit=oci.MAX_DOCUMENT,
    )
    old = oci.decode_index(got.content, name=path) if got.status_code == 200 else oci.Index()
    if any(m.digest == desc.digest for m in old.manifests):
        return
    await registry.request(
        "PUT",
        job.repo,
        path,
        scope=_SCOPE,
        headers={"Content-Type": oci.OCI_INDEX},
        content=oci.encode_index(replace(old, manifests=(*old.manifests, entry))),
        ok=(201,),
    )
