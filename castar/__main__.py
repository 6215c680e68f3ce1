"""``castar`` and ``python -m castar``: ``--version`` answers before anyio and sqlite3 load."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

_SIGNALLED = 128  # castar._cli.EXIT_SIGNALLED, before that module can load


def main(argv: Sequence[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        from castar import __version__

        print(f"castar {__version__}")
        return 0
    try:
        from castar._cli import main as cli

        code = cli(args)
    except KeyboardInterrupt:  # Ctrl-C while castar loads
        return _SIGNALLED + signal.SIGINT
    if code > _SIGNALLED:
        # A worker thread the signal left blocked in a read (an idle pipe) must not hold up
        # the exit: the command's own clean-up has run.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
