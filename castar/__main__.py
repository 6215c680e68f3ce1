"""The ``castar`` console script and ``python -m castar``; the commands live in castar._cli.

``--version`` answers here, before the commands (and anyio, sqlite3) are imported.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``castar`` command line; returns the exit code (see ``castar --help``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        from castar import __version__

        print(f"castar {__version__}")
        return 0
    from castar._cli import main as cli

    return cli(args)


if __name__ == "__main__":
    raise SystemExit(main())
