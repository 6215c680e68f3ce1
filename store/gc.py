"""GC marking: containerd ``pkg/gc`` Tricolor/Sweep as pure functions (design rule seam-gc)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, NamedTuple, final

from castar.store.labels import FLAT, ROOT, expired

if TYPE_CHECKING:
    from collections.abc import Collection, Iterable, Mapping, Sequence
    from datetime import datetime

    from castar.store._schema import GCGraph
    from castar.store.digest import Digest

__all__ = [
    "GCReport",
    "Node",
    "decide",
    "describe",
    "mark",
    "path_to",
    "roots_and_edges",
    "sweep",
]


class Node(NamedTuple):
    """A graph node: kind is ``lease``, ``image``, ``content`` or ``ingest``; flat per GC-1."""

    kind: str
    key: str
    flat: bool = False


def mark(roots: Iterable[Node], edges: Mapping[Node, Iterable[Node]]) -> set[Node]:
    """Every node reachable from ``roots`` (tri-colour DFS, GC-9), flat bits stripped."""
    grays = list(roots)
    seen: set[Node] = set()
    black: set[Node] = set()
    while grays:
        node = grays.pop()
        if node in seen:
            continue
        seen.add(node)
        black.add(Node(node.kind, node.key))
        grays.extend(n for n in edges.get(node, ()) if n not in seen)
    return black


def sweep(reachable: set[Node], all_nodes: Iterable[Node]) -> list[Node]:
    """The nodes of ``all_nodes`` not in ``reachable``, in input order (containerd ``Sweep``)."""
    return [n for n in all_nodes if Node(n.kind, n.key) not in reachable]


def path_to(
    roots: Sequence[Node], edges: Mapping[Node, Iterable[Node]], target: Node
) -> list[Node]:
    """A shortest path from one of ``roots`` to ``target`` (flat bits stripped); [] if none."""
    parent: dict[Node, Node | None] = {}
    queue: deque[Node] = deque()
    for r in roots:
        if r not in parent:
            parent[r] = None
            queue.append(r)
    while queue:
        node = queue.popleft()
        if Node(node.kind, node.key) == target:
            path = []
            cur: Node | None = node
            while cur is not None:
                path.append(Node(cur.kind, cur.key))
                cur = parent[cur]
            return path[::-1]
        for n in edges.get(node, ()):
            if n not in parent:
                parent[n] = node
                queue.append(n)
    return []


#: The node kind of each lease resource type (an ingest has no flat bit).
_RESOURCE_KINDS: Final = {"content": "content", "images": "image", "ingests": "ingest"}


def roots_and_edges(
    graph: GCGraph, now: datetime, dead: Collection[str] = ()
) -> tuple[list[Node], dict[Node, list[Node]], list[Node]]:
    """Roots (GC-2), edges (GC-4..6) and every node of a snapshot, at ``now``.

    A lease whose owner is in ``dead`` is expired (LEASE-8).
    """
    roots: list[Node] = []
    edges: dict[Node, list[Node]] = {}
    all_nodes: list[Node] = []

    def add(src: Node, dst: Node) -> None:
        edges.setdefault(src, []).append(dst)

    flat_leases = set()
    for lease in graph.leases:
        node = Node("lease", lease.id)
        all_nodes.append(node)
        if lease.labels.get(FLAT):
            flat_leases.add(lease.id)
        if not expired(lease.labels, now) and graph.owners.get(lease.id) not in dead:
            roots.append(node)
    for lease_id, type_, resource in graph.resources:
        if kind := _RESOURCE_KINDS.get(type_):
            flat = kind != "ingest" and lease_id in flat_leases
            add(Node("lease", lease_id), Node(kind, resource, flat))
    for name, target, labels in graph.images:
        node = Node("image", name)
        all_nodes.append(node)
        if not expired(labels, now):
            roots.append(node)
        add(node, Node("content", target))
        add(Node("image", name, True), Node("content", target, True))
    for digest, (_, labels) in graph.content.items():
        all_nodes.append(Node("content", digest))
        if any(k.startswith(ROOT) for k in labels):
            roots.append(Node("content", digest))
    for ref, expected, expires_at in graph.ingests:
        node = Node("ingest", ref)
        all_nodes.append(node)
        if expires_at is not None and expires_at > now:
            roots.append(node)
        if expected is not None:
            add(node, Node("content", expected))
    for e in graph.edges:
        add(Node(e.src_kind, e.src), Node(e.dst_kind, e.dst))
    return roots, edges, all_nodes


def decide(graph: GCGraph, now: datetime, dead: Collection[str] = ()) -> list[tuple[str, str]]:
    """The (kind, key) pairs a collection at ``now`` removes from the metadata."""
    roots, edges, all_nodes = roots_and_edges(graph, now, dead)
    return [(n.kind, n.key) for n in sweep(mark(roots, edges), all_nodes)]


def describe(node: Node) -> str:
    """How ``Store.explain`` names a node: content by its digest, others as ``<kind> <key>``."""
    return node.key if node.kind == "content" else f"{node.kind} {node.key}"


@final
@dataclass(frozen=True, slots=True)
class GCReport:
    """What one collection removed (or, with ``dry_run``, would remove)."""

    removed: list[Digest]
    bytes_freed: int
    images_removed: list[str]
    leases_removed: list[str]
    ingests_removed: list[str]
    dry_run: bool
