"""Terminal rendering for the CLI: human sizes and the ``images --tree`` table (TREE-3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from castar.engine import platforms, reference

if TYPE_CHECKING:
    from collections.abc import Sequence

    from castar.engine.images import ImageTree

__all__ = ["format_size", "render_tree"]


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


def render_tree(trees: Sequence[ImageTree], *, terminal: bool) -> list[str]:
    """``images --tree`` (TREE-3): unavailable rows are faint, or off a terminal say so."""
    extra = [] if terminal else [""]
    head = ["IMAGE", "ID", "DISK USAGE", "CONTENT SIZE"] + ([] if terminal else ["AVAILABLE"])
    rows: list[tuple[list[str], bool]] = []  # (cells, faint)
    for t in trees:
        names = [reference.display_name(n) for n in t.names] or ["<untagged>"]
        top = [
            names[0],
            t.target.digest.encoded[:12],
            format_size(t.disk_usage),
            format_size(t.content_size),
        ]
        rows.append((top + extra, False))
        rows.extend(([n, "", "", "", *extra], False) for n in names[1:])
        for i, m in enumerate(t.platforms):
            branch = "└─ " if i == len(t.platforms) - 1 else "├─ "
            label = platforms.format(m.platform) if m.platform is not None else "unknown"
            cells = [
                branch + label,
                m.descriptor.digest.encoded[:12],
                format_size(m.content_size),
                format_size(m.content_size),
            ]
            if not terminal:
                cells.append("yes" if m.available else "no")
            rows.append((cells, terminal and not m.available))
        rows.append(([], False))
    widths = [
        max(len(c[i]) for c in [head, *(cells for cells, _ in rows if cells)])
        for i in range(len(head))
    ]
    right = {2, 3}  # sizes right-aligned

    def line(cells: list[str]) -> str:
        parts = [
            c.rjust(widths[i]) if i in right else c.ljust(widths[i]) for i, c in enumerate(cells)
        ]
        return "   ".join(parts).rstrip()

    out = [line(head)]
    for cells, faint in rows:
        text = line(cells) if cells else ""
        out.append(f"{_FAINT}{text}{_RESET}" if faint else text)
    while out and not out[-1]:
        out.pop()
    return out
