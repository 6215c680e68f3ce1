"""``castar`` and ``python -m castar``: ``--version`` answers before anyio and sqlite3 load."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        from castar import __version__

        print(f"castar {__version__}")
        return 0
    from castar._cli import main as cli

    return cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
