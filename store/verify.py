"""Re-hashing of stored blobs: which recorded blobs are missing or corrupt on disk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, final

import anyio
import anyio.from_thread
import anyio.to_thread

from castar.store.blobs import rehash
from castar.store.digest import Digest, from_hasher, hasher, parse
from castar.store.errors import DataLoss, NotFound
from castar.store.labels import is_content_ref

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator
    from pathlib import Path

    from castar.store.content import ContentStore
    from castar.store.progress import ProgressCallback

__all__ = ["BlobProblem", "VerifyReport", "verify"]

#: Two blobs in flight saturate the machine's hashing (design rule io-limiter).
_IN_FLIGHT = 2


@final
@dataclass(frozen=True, slots=True)
class BlobProblem:
    """One recorded blob that is ``missing`` (no file) or ``corrupt``; ``detail`` says what."""

    digest: Digest
    kind: Literal["missing", "corrupt"]
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} blob {self.digest}: {self.detail}"


@final
@dataclass(frozen=True, slots=True)
class VerifyReport:
    """What :func:`verify` checked and found, by digest; ``absent`` were never stored (fine)."""

    checked: int
    bytes_checked: int
    problems: tuple[BlobProblem, ...]
    absent: tuple[Digest, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every checked blob is present and intact."""
        return not self.problems

    def raise_for_problems(self) -> None:
        """Raise :class:`~castar.store.errors.DataLoss` naming the first problem, if any."""
        if self.problems:
            first = self.problems[0]
            more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
            raise DataLoss(f"{first}{more}")

    def to_json(self) -> dict[str, Any]:
        """A JSON-able mapping (``castar verify --json``)."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "bytes_checked": self.bytes_checked,
            "problems": [
                {"digest": str(p.digest), "kind": p.kind, "detail": p.detail} for p in self.problems
            ],
            "absent": [str(d) for d in self.absent],
        }


async def _subtree(
    content: ContentStore, roots: Iterable[str]
) -> tuple[dict[Digest, int], list[Digest]]:
    """Recorded blobs reachable from ``roots`` along reference labels, and the absent ones."""
    recorded: dict[Digest, int] = {}
    absent: list[Digest] = []
    seen: set[Digest] = set()
    stack = [parse(r) for r in roots]
    while stack:
        d = stack.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            info = await content.info(d)
        except NotFound:
            absent.append(d)
            continue
        recorded[d] = info.size
        for key, value in info.labels.items():
            if is_content_ref(key):
                try:
                    stack.append(parse(value))
                except ValueError:
                    continue  # GC-5: values are not validated; a bad one is no edge
    return recorded, sorted(absent)


def _check_file(path: Path, digest: Digest, size: int) -> tuple[int, BlobProblem | None]:
    """Hash one blob file (runs in a worker thread); returns (bytes hashed, problem)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return 0, BlobProblem(digest, "missing", f"no file at {path}")
    h = hasher(digest.algorithm)
    try:
        done = rehash(fd, h, anyio.from_thread.check_cancelled)
    except OSError as exc:
        return 0, BlobProblem(digest, "corrupt", f"reading {path}: {exc.strerror or exc}")
    finally:
        os.close(fd)
    if done != size:
        return done, BlobProblem(digest, "corrupt", f"{path} holds {done} bytes, recorded {size}")
    actual = from_hasher(h)
    if actual != digest:
        return done, BlobProblem(digest, "corrupt", f"{path} hashes to {actual}")
    return done, None


async def verify(
    content: ContentStore,
    digests: Iterable[str] | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> VerifyReport:
    """Re-hash recorded blobs (two at once) and report the bad ones; nothing is changed.

    ``digests`` are roots checked with what they reference (GC-5); None checks every blob.
    """
    if digests is None:
        todo = {info.digest: info.size for info in await content.walk()}
        absent: list[Digest] = []
    else:
        todo, absent = await _subtree(content, digests)
    order = sorted(todo)
    total = sum(todo.values())
    problems: list[BlobProblem] = []
    hashed = 0
    items: Iterator[Digest] = iter(order)

    async def worker() -> None:
        nonlocal hashed
        for d in items:  # shared iterator: no await between next() calls
            n, problem = await anyio.to_thread.run_sync(
                _check_file, content.path(d), d, todo[d], abandon_on_cancel=False
            )
            hashed += n
            if problem is not None:
                problems.append(problem)
            if progress is not None:
                progress(hashed, total, d)

    async with anyio.create_task_group() as tg:
        for _ in range(min(_IN_FLIGHT, len(order))):
            tg.start_soon(worker)
    problems.sort(key=lambda p: p.digest)
    return VerifyReport(
        checked=len(order), bytes_checked=hashed, problems=tuple(problems), absent=tuple(absent)
    )
