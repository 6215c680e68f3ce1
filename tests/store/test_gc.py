"""Garbage collection: pure mark/sweep, the label vocabulary, and containerd TestGCRoots-style
tables through the public store (GC-1..10, TV-48..51)."""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from castar.store import Descriptor, Root, _txn
from castar.store.digest import Digest, compute
from castar.store.gc import Node, decide, mark, sweep
from castar.store.ingest import LocalContentStore
from castar.store.labels import Edge, label_edges

if TYPE_CHECKING:
    from conftest import Clock

REF = "containerd.io/gc.ref.content"
MT = "application/octet-stream"


def D(name: str) -> Digest:  # noqa: N802 - short like the names in the tables
    """Blob ``name`` holds the bytes of its name, so its digest is known before it exists."""
    return compute(name.encode())


def rfc(dt: datetime) -> str:
    return dt.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- pure core -----------------------------------------------------------------------------


def C(key: str, flat: bool = False) -> Node:  # noqa: N802
    return Node("content", key, flat)


def test_mark_follows_edges_through_cycles() -> None:
    edges = {C("a"): [C("b")], C("b"): [C("c"), C("a")], C("x"): [C("a")]}
    assert mark([C("a")], edges) == {C("a"), C("b"), C("c")}  # GC-9
    assert mark([], edges) == set()


def test_mark_strips_flat_bit_and_flat_nodes_keep_own_edges() -> None:
    # A flat content node has no edges (GC-4); the non-flat visit of the same blob does.
    edges = {C("i"): [C("m")], Node("image", "img", True): [C("i", True)]}
    assert mark([Node("image", "img", True)], edges) == {Node("image", "img"), C("i")}
    assert mark([C("i", True), C("i")], edges) == {C("i"), C("m")}


def test_sweep_returns_unmarked_in_input_order() -> None:
    nodes = [C("a"), C("b"), Node("lease", "l"), C("c")]
    assert sweep({C("b")}, nodes) == [C("a"), Node("lease", "l"), C("c")]


@pytest.mark.parametrize(
    ("key", "edge"),
    [
        (REF, Edge(REF, "content", "P", "content", "V")),
        (f"{REF}.m.0", Edge(f"{REF}.m.0", "content", "P", "content", "V")),
        (f"{REF}/a", Edge(f"{REF}/a", "content", "P", "content", "V")),
        (f"{REF}X", None),  # GC-5: no separator
        ("containerd.io/gc.ref.snapshot.overlayfs", None),
        (
            "containerd.io/gc.ref.image",
            Edge("containerd.io/gc.ref.image", "content", "P", "image", "V"),
        ),
        (
            "containerd.io/gc.bref.content.x",  # GC-6: the target keeps the owner
            Edge("containerd.io/gc.bref.content.x", "content", "V", "content", "P"),
        ),
        ("containerd.io/gc.root", None),
        ("other", None),
    ],
)
def test_label_edges(key: str, edge: Edge | None) -> None:
    assert label_edges("content", "P", {key: "V"}) == ([] if edge is None else [edge])


# --- TestGCRoots-style tables through the public store --------------------------------------

Build = Callable[[Root, datetime], Awaitable[None]]


def blob(name: str, **refs: str) -> Build:
    """A blob; ``l0="L1"`` adds label ``…gc.ref.content.l.0`` = digest of blob L1."""
    labels = {}
    for short, target in refs.items():
        key = _key(short)
        digest_valued = key.startswith((REF, "containerd.io/gc.bref.content"))
        labels[key] = D(target) if digest_valued else target

    async def build(store: Root, now: datetime) -> None:
        await store.content.write_blob(name.encode(), labels=labels)

    return build


def _key(short: str) -> str:
    table = {
        "root": "containerd.io/gc.root",
        "m0": f"{REF}.m.0",
        "m1": f"{REF}.m.1",
        "config": f"{REF}.config",
        "l0": f"{REF}.l.0",
        "slash": f"{REF}/a",
        "nosep": f"{REF}X",
        "bref": "containerd.io/gc.bref.content",
        "refimage": "containerd.io/gc.ref.image",
    }
    return table[short]


def labelled(name: str, labels: Mapping[str, str]) -> Build:
    async def build(store: Root, now: datetime) -> None:
        await store.content.write_blob(name.encode(), labels=dict(labels))

    return build


def image(name: str, target: str, expire: timedelta | None = None, ref: str = "") -> Build:
    async def build(store: Root, now: datetime) -> None:
        labels = {} if expire is None else {"containerd.io/gc.expire": rfc(now + expire)}
        if ref:
            labels[f"{REF}.extra"] = D(ref)
        await store.images.create(name, Descriptor(MT, D(target), len(target)), labels=labels)

    return build


@dataclass
class lease:  # noqa: N801 - reads as a builder in the tables
    id: str
    content: list[str] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    expire: str | timedelta | None = None
    flat: bool = False

    async def __call__(self, store: Root, now: datetime) -> None:
        labels = {"containerd.io/gc.flat": "1"} if self.flat else {}
        if isinstance(self.expire, timedelta):
            labels["containerd.io/gc.expire"] = rfc(now + self.expire)
        elif self.expire is not None:
            labels["containerd.io/gc.expire"] = self.expire
        await store.leases.create(self.id, labels=labels)
        for name in self.content:
            await store.leases.add_resource(self.id, "content", D(name))
        for name in self.images:
            await store.leases.add_resource(self.id, "images", name)


# TV-48's graph: index I -> manifests M1, M2; M1 -> config C1, layer L1; Z unreferenced.
TV48 = [
    blob("I", m0="M1", m1="M2"),
    blob("M1", config="C1", l0="L1"),
    blob("M2"),
    blob("C1"),
    blob("L1"),
    blob("Z"),
]

CASES: list[tuple[str, list[Build], set[str]]] = [
    ("tv48-image-keeps-its-tree", [*TV48, image("img", "I")], {"I", "M1", "M2", "C1", "L1", "img"}),
    ("tv48-no-image-nothing-kept", TV48, set()),
    ("tv49-expired-lease-goes", [blob("Z"), lease("l", ["Z"], expire=timedelta(hours=-1))], set()),
    (
        "tv49-live-lease-keeps",
        [blob("Z"), lease("l", ["Z"], expire=timedelta(hours=1))],
        {"Z", "lease:l"},
    ),
    (
        "tv49-unparsable-expiry-keeps",
        [blob("Z"), lease("l", ["Z"], expire="not-a-time")],
        {"Z", "lease:l"},
    ),
    ("tv50-gc-root-keeps-its-refs", [blob("R", root="x", l0="L1"), blob("L1")], {"R", "L1"}),
    ("tv50-no-separator-is-no-ref", [blob("R", root="x", nosep="L1"), blob("L1")], {"R"}),
    ("tv50-slash-separator-is-a-ref", [blob("R", root="x", slash="L1"), blob("L1")], {"R", "L1"}),
    ("tv51-flat-lease-keeps-only-listed", [*TV48, lease("f", ["I"], flat=True)], {"I", "lease:f"}),
    (
        "gc4-flat-lease-image-keeps-only-target",
        [
            *TV48,
            image("img", "I", expire=timedelta(hours=-1)),
            lease("f", images=["img"], flat=True),
        ],
        {"I", "img", "lease:f"},
    ),
    (
        "gc4-lease-image-keeps-tree",
        [*TV48, image("img", "I", expire=timedelta(hours=-1)), lease("l", images=["img"])],
        {"I", "M1", "M2", "C1", "L1", "img", "lease:l"},
    ),
    (
        "gc4-image-ref-label-keeps-content",
        [blob("I"), blob("Z"), image("img", "I", ref="Z")],
        {"I", "Z", "img"},
    ),
    ("gc3-expired-image-goes", [blob("I"), image("img", "I", expire=timedelta(hours=-1))], set()),
    (
        "gc3-expired-image-kept-by-ref-label",
        [
            blob("I"),
            image("img", "I", expire=timedelta(hours=-1)),
            labelled("R", {"containerd.io/gc.root": "", "containerd.io/gc.ref.image": "img"}),
        ],
        {"R", "img", "I"},
    ),
    (
        "gc6-back-reference-lives-with-target",
        [blob("A"), blob("B", bref="A"), image("img", "A")],
        {"A", "B", "img"},
    ),
    ("gc6-back-reference-dies-with-target", [blob("A"), blob("B", bref="A")], set()),
]


@pytest.mark.parametrize(("builds", "survivors"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_gc_roots(
    store: Root, clock: Clock, builds: list[Build], survivors: set[str]
) -> None:
    for build in builds:
        await build(store, clock.now)
    names = {D(n): n for n in ["I", "M1", "M2", "C1", "L1", "Z", "R", "A", "B"]}
    await store.gc()
    kept = {names[i.digest] for i in await store.content.walk()}
    kept |= {i.name for i in await store.images.list()}
    kept |= {f"lease:{x.id}" for x in await store.leases.list()}
    assert kept == survivors
    for digest, name in names.items():  # the content sweep follows the records
        assert (store.root / "blobs/sha256" / digest.encoded).exists() == (name in survivors)
    second = await store.gc()  # converged: nothing more to do
    assert (second.removed, second.images_removed, second.leases_removed) == ([], [], [])


async def test_report_counts_removals_and_bytes(store: Root, clock: Clock) -> None:
    for build in [*TV48, image("img", "I")]:
        await build(store, clock.now)
    await store.images.delete("img")
    await lease("old", ["Z"], expire=timedelta(hours=-1))(store, clock.now)
    report = await store.gc()
    assert report.removed == sorted(D(n) for n in ["I", "M1", "M2", "C1", "L1", "Z"])
    assert report.bytes_freed == len("IM1M2C1L1Z")
    assert (report.leases_removed, report.images_removed, report.dry_run) == (["old"], [], False)


async def test_dry_run_reports_the_same_and_deletes_nothing(store: Root, clock: Clock) -> None:
    for build in [*TV48, image("img", "I", expire=timedelta(hours=-1))]:
        await build(store, clock.now)
    before = await store.content.walk()
    dry = await store.gc(dry_run=True)
    assert dry.dry_run
    assert await store.content.walk() == before
    assert [i.name for i in await store.images.list()] == ["img"]
    real = await store.gc()
    assert (dry.removed, dry.bytes_freed, dry.images_removed) == (
        real.removed,
        real.bytes_freed,
        real.images_removed,
    )
    assert real.images_removed == ["img"]
    assert len(real.removed) == 6


async def test_explain_names_the_root_path(store: Root, clock: Clock) -> None:
    for build in [*TV48, image("docker.io/library/alpine:latest", "I")]:
        await build(store, clock.now)
    assert await store.explain(D("L1")) == [
        "image docker.io/library/alpine:latest",
        D("I"),
        D("M1"),
        D("L1"),
    ]
    assert await store.explain(D("Z")) == []
    assert await store.explain(D("never-written")) == []


async def test_unrecorded_backend_blob_is_removed(store: Root) -> None:
    backend = LocalContentStore(store.root)
    w = await backend.open_writer("raw")
    await w.write(b"orphan")
    await w.commit(6, None)  # in the backend only: no record
    report = await store.gc()
    assert report.removed == [D("orphan")]
    assert report.bytes_freed == 6
    assert not (store.root / "blobs/sha256" / D("orphan").encoded).exists()


async def test_unrecorded_backend_ingest_is_aborted_unless_held(store: Root) -> None:
    backend = LocalContentStore(store.root)
    idle = await backend.open_writer("idle")
    await idle.write(b"x")
    await idle.close()
    held = await backend.open_writer("held")
    await held.write(b"y")
    try:
        report = await store.gc()  # GC-10: never abort an ingest a live writer holds
        assert report.ingests_removed == ["idle"]
        assert [s.ref for s in await backend.list_ingests()] == ["held"]
    finally:
        await held.close()
    assert (await store.gc()).ingests_removed == ["held"]


async def test_a_dead_writers_unnamed_ingest_goes_at_once_a_fresh_or_held_one_stays(
    store: Root,
) -> None:
    # ING-16: a writer killed after taking its lock and before naming its ingest left a
    # directory no listing shows: with no `ref` ("dead"), or with `ref` but a torn status
    # ("torn": killed while writing `updatedat` by an older castar); a lock file with no time
    # in it is a writer between `mkdir` and the lock ("fresh"), kept until the grace ends.
    from castar.store.ingest import UNNAMED_GRACE, lock_dir

    ingest = store.root / "ingest"
    dead, torn, fresh, stale, held = (
        ingest / n for n in ("dead", "torn", "fresh", "stale", "held")
    )

    def make() -> int:
        for path in (dead, torn, held):
            os.close(lock_dir(path, path.name))
        (dead / "data").write_bytes(b"partial")
        (torn / "ref").write_text("torn")
        (torn / "startedat").write_text("2026-01-01T00:00:00Z")
        for path in (fresh, stale):
            path.mkdir()
            (path / "lock").touch()
        old = time.time() - UNNAMED_GRACE - 5
        os.utime(stale, (old, old))
        return lock_dir(held, "held")

    holder = await anyio.to_thread.run_sync(make)
    try:
        assert await store.content.list_statuses() == []  # none of them is listed
        assert (await store.gc(dry_run=True)).ingests_removed == ["dead", "stale", "torn"]
        assert dead.exists()
        assert (await store.gc()).ingests_removed == ["dead", "stale", "torn"]
        assert not dead.exists()
        assert not torn.exists()
        assert not stale.exists()
        assert fresh.exists()  # its writer may be about to take the lock
        assert held.exists()  # a live writer holds it
    finally:
        os.close(holder)


async def test_gc_removes_what_a_killed_making_or_removal_left_and_keeps_a_held_one(
    store: Root,
) -> None:
    # ING-16: an ingest directory is made as a `.new-` scratch and removed by renaming it to
    # `.trash-` first. A kill inside a removal leaves a `.trash-` one, maybe with `ref` still in
    # it: no listing shows it and gc removes it at once. A kill inside a making leaves a `.new-`
    # one whose lock is free or not made yet: gc removes it at once, unlisted (no ingest); one
    # whose maker holds the lock stays.
    from castar.store.ingest import lock_dir

    ingest = store.root / "ingest"
    trash, dead, bare, held = (
        ingest / n for n in (".trash-1", ".new-dead", ".new-bare", ".new-held")
    )

    def make() -> int:
        os.close(lock_dir(trash, "t"))
        (trash / "ref").write_text("half-removed")
        (trash / "startedat").write_text("2026-01-01T00:00:00Z")
        (trash / "updatedat").write_text("2026-01-01T00:00:00Z")
        os.close(lock_dir(dead, "d"))
        bare.mkdir()
        return lock_dir(held, "h")

    holder = await anyio.to_thread.run_sync(make)
    try:
        assert await store.content.list_statuses() == []
        assert (await store.gc(dry_run=True)).ingests_removed == []
        assert bare.exists()
        assert (await store.gc()).ingests_removed == []
        assert sorted(p.name for p in ingest.iterdir()) == [".new-held"]
    finally:
        os.close(holder)


async def test_a_maker_whose_scratch_a_gc_takes_starts_again(
    store: Root, monkeypatch: pytest.MonkeyPatch
) -> None:
    # ING-16: a gc removes a `.new-` scratch without a lock at once, also a live maker's that
    # is between `mkdir` and creating the lock: that maker makes a new scratch and succeeds.
    from castar.store import ingest as ingest_mod

    real_open = os.open
    swept: list[str] = []

    def racing_open(
        path: str | os.PathLike[str], flags: int, mode: int = 0o777, **kw: int | None
    ) -> int:
        p = Path(path)
        if p.name == "lock" and p.parent.name.startswith(".new-") and not swept:
            swept.append(p.parent.name)
            assert ingest_mod.sweep_scratch(p.parent)  # a gc, just before the lock is made
        return real_open(path, flags, mode, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", racing_open)
    w = await LocalContentStore(store.root).open_writer("raced")
    await w.close()
    monkeypatch.setattr(os, "open", real_open)
    assert swept
    assert [s.ref for s in await store.content.list_statuses()] == ["raced"]
    assert not (store.root / "ingest" / swept[0]).exists()


async def test_an_ingest_directory_gets_its_name_with_its_lock_taken_and_marked(
    store: Root, monkeypatch
) -> None:
    # ING-16: no directory is ever under an ingest's name without a writer's mark in its lock,
    # so a gc never has to guess whether a writer is about to take it.
    from castar.store.ingest import ingest_dir

    real = os.rename
    seen: list[tuple[bool, int]] = []

    def rename(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        if os.path.basename(dst) == ingest_dir(store.root, "marked").name:
            seen.append((os.path.exists(dst), os.stat(os.path.join(src, "lock")).st_size))
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    w = await LocalContentStore(store.root).open_writer("marked")
    await w.close()
    assert len(seen) == 1
    assert seen[0][0] is False  # not there before it is renamed into place
    assert seen[0][1] > 0  # its lock has the maker's time in it
    monkeypatch.setattr(os, "rename", real)
    assert [s.ref for s in await store.content.list_statuses()] == ["marked"]


async def test_a_writer_names_its_ingest_last(store: Root, monkeypatch) -> None:
    # ING-16: killed at any point of opening, a writer leaves a named, listable ingest or an
    # unnamed one: `ref` is written after the status files a listing reads.
    from castar.store import ingest as ingest_mod

    order: list[str] = []
    real = ingest_mod._write_atomic

    def spy(path: os.PathLike[str], text: str) -> None:
        order.append(os.path.basename(path))
        real(path, text)

    monkeypatch.setattr(ingest_mod, "_write_atomic", spy)
    w = await LocalContentStore(store.root).open_writer("named-last")
    await w.close()
    assert order[: order.index("ref") + 1] == ["startedat", "updatedat", "ref"]


async def test_dry_run_reports_orphan_files_and_ingests_and_touches_nothing(store: Root) -> None:
    # GC-10's content and ingest sweeps, dry: the same report as the real run, nothing deleted
    backend = LocalContentStore(store.root)
    w = await backend.open_writer("raw")
    await w.write(b"orphan")
    await w.commit(6, None)  # a blob file with no record
    idle = await backend.open_writer("idle")
    await idle.write(b"x")
    await idle.close()  # an ingest with no row
    dry = await store.gc(dry_run=True)
    assert (dry.removed, dry.bytes_freed, dry.ingests_removed) == ([D("orphan")], 6, ["idle"])
    assert (store.root / "blobs/sha256" / D("orphan").encoded).exists()
    assert [s.ref for s in await backend.list_ingests()] == ["idle"]
    real = await store.gc()
    assert (real.removed, real.bytes_freed, real.ingests_removed) == (
        dry.removed,
        dry.bytes_freed,
        dry.ingests_removed,
    )
    assert await backend.walk() == []
    assert await backend.list_ingests() == []


async def test_gc_keeps_blob_recorded_after_metadata_sweep(store: Root) -> None:
    # A blob deleted (record gone) and re-written before the next GC keeps its file.
    await store.content.write_blob(b"Z", labels={"containerd.io/gc.root": "1"})
    await store.content.delete(D("Z"))
    await store.content.write_blob(b"Z", labels={"containerd.io/gc.root": "1"})
    assert (await store.gc()).removed == []
    assert store.content.path(D("Z")).read_bytes() == b"Z"


async def test_gc_interrupted_after_metadata_sweep_converges_next_time(
    store: Root, clock: Clock
) -> None:
    for build in TV48:
        await build(store, clock.now)
    # A crash right after the metadata sweep: records gone, files still there.
    _, doomed = await store._db.write(_txn.gc_sweep, lambda g: decide(g, clock.now), False)
    assert len(doomed) == 6
    assert await store.content.walk() == []
    assert (store.root / "blobs/sha256" / D("Z").encoded).exists()
    report = await store.gc()  # the content sweep works from state, not from a list
    assert report.removed == sorted(D(n) for n in ["I", "M1", "M2", "C1", "L1", "Z"])
    assert not any((store.root / "blobs/sha256").iterdir())


@given(
    st.lists(st.tuples(st.integers(0, 12), st.integers(0, 12)), max_size=40),
    st.sets(st.integers(0, 12), max_size=4),
)
@settings(max_examples=150, deadline=None)
def test_mark_equals_naive_reachability(pairs: list[tuple[int, int]], roots: set[int]) -> None:
    edges: dict[Node, list[Node]] = {}
    for a, b in pairs:
        edges.setdefault(C(str(a)), []).append(C(str(b)))
    reached = set(roots)
    changed = True
    while changed:  # fixed point of "a reached and a -> b"
        changed = False
        for a, b in pairs:
            if a in reached and b not in reached:
                reached.add(b)
                changed = True
    assert mark([C(str(r)) for r in roots], edges) == {C(str(n)) for n in reached}
    everything = [C(str(n)) for n in range(13)]
    assert set(sweep(mark([C(str(r)) for r in roots], edges), everything)) == {
        C(str(n)) for n in range(13) if n not in reached
    }


async def test_gc_running_beside_commits_in_one_process_keeps_leased_blobs(store: Root) -> None:
    written: list[Digest] = []
    done = False
    stopped = anyio.Event()

    async def writer() -> None:
        nonlocal done
        async with store.leases.hold():
            for i in range(40):
                written.append((await store.content.write_blob(f"blob-{i}".encode())).digest)
            for d in written:  # everything committed is still there while the lease holds
                assert await store.content.read_all(d, limit=64)
            done = True
            # The lease outlives every collection started beside it: one still running when
            # the lease goes would rightly collect everything.
            await stopped.wait()

    async def collector() -> None:
        while not done:
            report = await store.gc()
            assert report.removed == []
        stopped.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        tg.start_soon(collector)
    assert sorted((await store.gc()).removed) == sorted(written)
