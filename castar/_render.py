"""Terminal rendering for the CLI: human sizes and the ``images --tree`` table (TREE-3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from castar.engine import platforms, reference

if TYPE_CHECKING:
    from collections.abc import Container, Sequence

    from castar.engine.images import ImageTree

__all__ = ["format_size", "render_tree", "table"]


def format_size(size: int) -> str:
    """Decimal units with 3 significant digits, as Docker prints them (``4.09MB``, ``0B``)."""
    units = ("B", "kB", "MB", "GB", "TB", "PB", "EB")
    value = float(size)
    i = 0
    while value >= 1000 and i < len(units) - 1:
        value /= 1000
        i += 1
    return f"{value:.3g}{units[i]}"


_FAINT, _RESET = "\x1b[2m", "\x1b[0m"


def table(rows: Sequence[Sequence[str]], right: Container[int] = ()) -> list[str]:
    """Columns three spaces apart, each as wide as its widest cell; ``right`` ones right-aligned."""
    widths = [max(len(r[i]) for r in rows if r) for i in range(len(rows[0]))]

    def line(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=False))  # an empty row is an empty line
        return "   ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in pairs).rstrip()

    return [line(r) for r in rows]


def render_tree(trees: Sequence[ImageTree], *, terminal: bool) -> list[str]:
    """``images --tree`` (TREE-3): unavailable rows are faint, or off a terminal say so."""
    extra = [] if terminal else [""]
    rows = [["IMAGE", "ID", "DISK USAGE", "CONTENT SIZE"] + ([] if terminal else ["AVAILABLE"])]
    faint: set[int] = set()
    for t in trees:
        names = [reference.display_name(n) for n in t.names] or ["<untagged>"]
        sizes = [format_size(t.disk_usage), format_size(t.content_size)]
        rows.append([names[0], t.target.digest.encoded[:12], *sizes, *extra])
        rows.extend([n, "", "", "", *extra] for n in names[1:])
        for i, m in enumerate(t.platforms):
            branch = "└─ " if i == len(t.platforms) - 1 else "├─ "
            label = platforms.format(m.platform) if m.platform is not None else "unknown"
            size = format_size(m.content_size)
            cells = [branch + label, m.descriptor.digest.encoded[:12], size, size]
            if not terminal:
                cells.append("yes" if m.available else "no")
            elif not m.available:
                faint.add(len(rows))
            rows.append(cells)
        rows.append([])
    out = [f"{_FAINT}{s}{_RESET}" if i in faint else s for i, s in enumerate(table(rows, {2, 3}))]
    while out and not out[-1]:
        out.pop()
    return out
