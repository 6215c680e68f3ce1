"""Go's ``%q`` verb (``strconv.Quote``): how containerd and docker quote names in messages.

Owns the one quoting routine that error texts copied from Go need (PLAT-1/2 platform
specifiers, reference normalisation). Pure: stdlib only; never anyio or castar modules.
"""

from __future__ import annotations

from typing import Final

__all__ = ["quote"]

_GO_ESCAPES: Final = {
    "\a": "\\a", "\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "\v": "\\v"
}  # fmt: skip


def quote(s: str) -> str:
    """``s`` in double quotes, as Go's ``%q`` prints it.

    Quotes and backslashes get a backslash; control characters take Go's short escapes
    (newline, tab…) or a hex escape; other unprintable characters a unicode escape.
    """
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch in _GO_ESCAPES:
            out.append(_GO_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x80:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return '"' + "".join(out) + '"'
