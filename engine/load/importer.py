"""Import ("load") of OCI and Docker image archives into a store (docs/behaviour.md, Load).

Must not import the exporter, the CLI or the facade. Tar names are only ever map keys.
"""

from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, final

import anyio

from castar.engine import graph, oci, reference
from castar.engine import platforms as plats
from castar.engine._streams import open_source
from castar.engine.load.archive import Progress, Session, read_archive
from castar.engine.load.resolve import EmptyWalk, Walk, fetch_needed, keep, resolve, walk_index
from castar.store.digest import Digest
from castar.store.errors import CastarError, NotFound

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from castar.engine.platforms import Platform
    from castar.store import Image
    from castar.store.progress import ProgressCallback
    from castar.store.roles import BlobIngester, ImageRecords, Leases

__all__ = ["LoadOptions", "add_ref_prefix", "filter_ref_prefix", "load", "record"]


@final
@dataclass(frozen=True, slots=True)
class LoadOptions:
    """What to load.

    Attributes:
        platforms: platforms to keep, any of them matching (LOAD-1); empty keeps all.
        all_platforms: keep every platform even when ``platforms`` is given.
        skip_missing: tolerate manifests missing from archive and store; None means
            True when no platform is requested (LOAD-2), else False.
        name: for ``ref.name`` tags: a prefix (``"repo/x"`` names ``latest`` ``repo/x:latest``)
            or a translator (:func:`add_ref_prefix`, :func:`filter_ref_prefix`).
        max_size: refuse archives whose (decompressed) size exceeds this many bytes.
    """

    platforms: tuple[Platform, ...] = ()
    all_platforms: bool = False
    skip_missing: bool | None = None
    name: str | Callable[[str], str] | None = None
    max_size: int | None = None

    @classmethod
    def parse(
        cls,
        platforms: Iterable[str | Platform] | str | None = None,
        *,
        all_platforms: bool = False,
        skip_missing: bool | None = None,
        name: str | Callable[[str], str] | None = None,
        max_size: int | None = None,
    ) -> LoadOptions:
        """Options from user input: specifiers (comma lists, no duplicates) or Platforms."""
        given = [platforms] if isinstance(platforms, str) else platforms or ()
        return cls(tuple(plats.parse_list(given)), all_platforms, skip_missing, name, max_size)


# -- names (IMP-11, TV-64) -----------------------------------------------------------------


def _ref_translator(image: str, *, check_prefix: bool) -> Callable[[str], str]:
    def translate(ref: str) -> str:
        if not image:
            return ""
        if any(c in ref for c in "/:@"):  # already a full reference
            rest = ref.removeprefix(image)
            if check_prefix and (rest == ref or rest[:1] not in ("", "/", ":", "@")):
                return ""
            return ref
        return f"{image}:{ref}"

    return translate


def add_ref_prefix(image: str) -> Callable[[str], str]:
    """Translator naming bare ``ref.name`` tags ``<image>:<tag>`` (containerd ``AddRefPrefix``).

    Full references (containing ``/``, ``:`` or ``@``) are kept as they are (TV-64).
    """
    return _ref_translator(image, check_prefix=False)


def filter_ref_prefix(image: str) -> Callable[[str], str]:
    """Like :func:`add_ref_prefix`, but full references outside ``image`` are dropped (TV-64)."""
    return _ref_translator(image, check_prefix=True)


async def record(content: BlobIngester, images: ImageRecords, walk: Walk) -> list[Image]:
    """Label the kept graph (GC-7), then create or re-target the image records (IMP-15)."""
    await content.update_labels_many(walk.labels.items())  # skips parents skipped as missing
    olds = await images.get_many({n for n, _ in walk.replaced}) if walk.replaced else {}
    keep = []
    for normalized, target in walk.replaced:
        # LOAD-1: the image a name is taken from stays alive as a dangling record
        old = olds.get(normalized)
        if old is None or old.target.digest == target.digest:
            continue
        labels = {
            k: v
            for k, v in old.labels.items()
            if k not in (oci.ANNOTATION_IMAGE_NAME, oci.ANNOTATION_REF_NAME)
        }
        keep.append((reference.dangling_name(old.target.digest), old.target, labels))
    out: dict[str, Image] = {}
    for image in await images.put_many(walk.queued, keep=keep):  # one transaction (IMP-15)
        out.pop(image.name, None)
        out[image.name] = image
    return list(out.values())


# -- LOAD-4: do the loaded images provide what was asked for? --------------------------------


async def _provides(sess: Session, walk: Walk, target: oci.Descriptor) -> bool:
    """Whether a complete manifest under ``target`` matches (SAVE-6), from the walk's documents."""
    if target.digest not in walk.needed:  # left out by the filter: nothing of it was loaded
        return False
    for node in await graph.walk(sess.reader, [target], keep=lambda d: keep(sess, d)):
        if not (oci.is_manifest(node.descriptor.media_type) and node.present):
            continue
        try:
            platform = await graph.manifest_platform(sess.reader, node.descriptor)
        except NotFound:
            continue
        if platform is None or not sess.matcher.match(platform):
            continue
        if all([await sess.content.exists(b.digest) for b in node.children]):
            return True
    return False


async def _verify_platforms(sess: Session, walk: Walk, images: list[Image], wanted: str) -> None:
    if not images:
        raise NotFound(f"no images providing the requested platform(s) found: {wanted}")
    lacking = []
    for image in images:
        t = image.target
        target = oci.Descriptor(t.media_type, Digest(t.digest), t.size)
        if not await _provides(sess, walk, target):
            lacking.append(reference.display_name(image.name))
    if len(lacking) == 1:
        raise NotFound(
            f"image {lacking[0]} was loaded, but doesn't provide the requested platform ({wanted})"
        )
    if lacking:
        raise NotFound(
            f"images [{', '.join(lacking)}] were loaded, but don't provide the requested"
            f" platform ({wanted})"
        )


async def load(
    content: BlobIngester,
    images: ImageRecords,
    leases: Leases,
    source: object,
    options: LoadOptions,
    *,
    progress: ProgressCallback | None = None,
) -> list[Image]:
    """Import an OCI or Docker image archive and record its images (last: IMP-15).

    Plain, gzip or zstd (IMP-1). A seekable plain tar is read index-first, reading only
    the needed blobs not yet stored; any other source in one pass, the blobs it wrote that
    the selection does not use deleted before it returns (LOAD-8). Blobs are verified
    (IMP-4) and synced once before any record points at them, all under a lease (GC-11): a
    failure changes no image.

    Args:
        content: the blobs to import into.
        images: the image records to write.
        leases: the import runs under a lease of these.
        source: a path, an int fd, ``"-"`` for stdin, an anyio ``ByteReceiveStream``
            or any object with ``async read(n)``.
        options: what to load.
        progress: called on the loop with (done, total or None, entry) per MiB or 0.1 s.

    Returns:
        The images recorded, in archive order (unnamed ones as ``moby-dangling@<digest>``).

    Raises:
        MalformedArchive: not a tar, truncated, unsafe names, unrecognised format,
            over ``max_size``.
        DigestMismatch: ``blob <name>: unexpected digest <d>, expected <d>`` (IMP-4).
        NotFound: a needed manifest is missing, nothing matched, or the LOAD-3/LOAD-4
            platform errors.
        InvalidArgument: a bad name or oversized JSON document.
    """
    requested = () if options.all_platforms else options.platforms
    host = plats.only(plats.host())
    matcher = plats.match_any_with_preference(host, requested) if requested else plats.ALL
    skip_missing = not requested if options.skip_missing is None else options.skip_missing  # LOAD-2
    wanted = "[" + " ".join(plats.format_all(p) for p in requested) + "]"
    name = options.name
    if isinstance(name, str) and name:
        reference.check_name(name, repository=True)  # IMG-8, before anything is written
    translator = add_ref_prefix(name) if isinstance(name, str) else name
    sess = Session(content, matcher, skip_missing, translator, Progress(progress))
    try:
        try:
            async with leases.hold(labels={"castar.import": sess.session}):
                async with open_source(source) as src:  # a seekable file is read until the end
                    await read_archive(sess, src, options.max_size)
                    walk = await walk_index(sess, await resolve(sess))
                    await sess.ensure_small(sess.unstored(walk.needed))  # small blobs first
                    await fetch_needed(sess, walk)
                # Blobs were committed without fsync: syncing the unsynced blob files (not the
                # file system) makes them durable before any label or image points at them
                # (design rule io-sync).
                await content.sync()
                loaded = await record(content, images, walk)
        except BaseException:
            # LOAD-10: a failed load gives its space back now, not at the next GC; a cleanup
            # that fails too (the disk is still full) leaves the rest to GC, this error stands.
            with anyio.CancelScope(shield=True), suppress(CastarError):
                await content.drop_unused(sess.created)
            raise
    except NotFound as exc:
        if not requested:
            raise
        why = (
            "not found: image might be filtered out"
            if isinstance(exc, EmptyWalk)
            else f"found, but some content is missing: {exc}"
        )
        raise NotFound(f"requested platform(s) ({wanted}) {why}") from exc
    if unused := sess.created.difference(walk.needed):
        await content.drop_unused(unused)  # LOAD-8: what the selection leaves out goes now
    if requested:
        await _verify_platforms(sess, walk, loaded, wanted)  # LOAD-4
    return loaded
