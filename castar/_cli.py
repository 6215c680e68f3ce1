"""The ``castar`` command line: argparse, one exit-code table, ``main`` (commands: _commands).

The only place that catches CastarError broadly (design rule errors-exit-codes).
"""

from __future__ import annotations

import argparse
import functools
import os
import re
import sys
from typing import TYPE_CHECKING, Final, NoReturn

from castar import __version__
from castar.store.errors import (
    AlreadyExists,
    CastarError,
    Conflict,
    DataLoss,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    UsageError,
)

if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import timedelta

__all__ = ["EXIT_CODES", "exit_code", "main", "message"]

EXIT_OTHER: Final = 1
EXIT_USAGE: Final = 2
EXIT_SIGNALLED: Final = 128  # ended by a signal: 128 + its number, as shells report


#: The one table from error category to exit code (most specific class wins).
EXIT_CODES: Final[dict[type[BaseException], int]] = {
    UsageError: EXIT_USAGE,
    NotFound: 3,
    FileNotFoundError: 3,
    InvalidArgument: 4,
    IsADirectoryError: 4,
    NotADirectoryError: 4,
    FailedPrecondition: 5,
    AlreadyExists: 5,
    Conflict: 5,
    PermissionError: 5,
    DataLoss: 6,
    Unauthenticated: 7,
    PermissionDenied: 7,
}
_EPILOG = """\
exit codes:
  0  success
  1  other error (unavailable, internal)
  2  usage: bad command line
  3  not found: no such image, blob, lease, file or platform
  4  invalid input: bad platform spec, reference or filter, malformed archive
  5  precondition failed: digest or size mismatch, conflict, already exists
  6  data loss: a stored blob is missing or corrupt
  7  unauthenticated or permission denied by a registry
  130, 143  ended by SIGINT (Ctrl-C) or SIGTERM (128 + the signal's number)

The store is --root DIR, else $CASTAR_ROOT, else $XDG_DATA_HOME/castar,
else ~/.local/share/castar. Try: castar demo
"""

_BACKENDS: Final = ("asyncio", "trio")


def exit_code(exc: BaseException) -> int | None:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_OTHER if isinstance(exc, CastarError | OSError) else None


def message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CastarError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror.lower()}"
    return str(exc) or type(exc).__name__


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def _duration(text: str) -> timedelta | None:
    """``1h``, ``90m``, ``1h30m``, ``2d``; ``0`` or ``never`` mean no expiry (argparse type)."""
    if text in ("0", "never"):
        return None
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(
            f'bad duration "{text}": expected e.g. 90s, 30m, 1h30m, 2d or never'
        )
    from datetime import timedelta

    try:
        return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
    except OverflowError:
        raise argparse.ArgumentTypeError(f'duration "{text}" is too long') from None


def _size(text: str) -> int:
    from castar._demo import parse_size

    try:
        return parse_size(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(exc.message) from None


def _registry_host(text: str) -> str:
    from castar.engine.registry import auth

    return auth.registry_host(text)


def _login_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    for name, help_, example in (
        ("login", "save credentials for a registry (never printed)",
         "printf %s \"$TOKEN\" | castar login ghcr.io -u me --password-stdin"),
        ("logout", "forget a registry's credentials", "castar logout ghcr.io"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=help_, description=help_, parents=[_common(True)],
                           epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.set_defaults(run="login", storeless=True)
        p.add_argument("registry", metavar="REGISTRY", type=_registry_host,
                       help="host[:port], e.g. ghcr.io")  # fmt: skip
    login = sub.choices["login"]
    login.add_argument("-u", "--username", metavar="USER")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")


# -- the parser and main ---------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with castar's one-line error format (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"castar: error: {message} (see: {self.prog} --help)\n")


@functools.cache  # one parent per flag set: argparse copies its actions into each command
def _common(json_flag: bool = False, quiet: bool = False) -> _Parser:
    p = _Parser(add_help=False)
    # Global options are accepted after the command too; SUPPRESS keeps the top-level value.
    p.add_argument("--root", default=argparse.SUPPRESS, help="store directory")
    p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="tracebacks")
    if json_flag:
        p.add_argument("--json", action="store_true", help="machine-readable output")
    if quiet:
        p.add_argument("-q", "--quiet", action="store_true", help="no progress display")
        p.add_argument(
            "--progress",
            choices=["auto", "json", "none"],
            default="auto",
            help="auto: a bar on a terminal's stderr; json: JSON lines on stderr",
        )
    return p


#: name → (help, example, has --json, has -q/--progress); arguments are added in _parser().
_COMMANDS: Final[dict[str, tuple[str, str, bool, bool]]] = {
    "load": ("load an OCI or Docker image archive",
             "castar load -i alpine.tar --platform linux/arm64", True, True),
    "save": ("save images to an OCI archive (with Docker manifest.json)",
             "castar save alpine:latest --platform linux/amd64 -o alpine.tar", True, True),
    "pull": ("pull an image from a registry",
             "castar pull 127.0.0.1:5000/alpine:3 --platform linux/arm64", True, True),
    "push": ("push an image to a registry (--platform: only those platforms)",
             "castar push alpine:latest registry.example:5000/alpine:3", True, True),
    "images": ("list images", "castar images --tree", True, False),
    "inspect": ("show an image's record, platforms and documents",
                "castar inspect alpine --platform linux/arm64", False, False),
    "tag": ("give an image another name", "castar tag alpine myalpine:1", False, False),
    "rm": ("remove image names (content goes at the next gc)",
           "castar rm alpine:latest", False, False),
    "gc": ("delete what no image, lease or ingest keeps alive",
           "castar gc --dry-run", True, False),
    "lease": ("create, list or remove leases",
              "castar lease create --expire 1h --label owner=ci", False, False),
    "verify": ("re-hash stored blobs; exit 6 if any is missing or corrupt",
               "castar verify alpine:latest", True, True),
    "demo": ("generate a multi-platform archive, load two platforms, show, save, "
             "round-trip", "castar demo --size 1G --platforms 4", False, True),
}  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="castar",
        description="castar: a content-addressed store for container images, "
        "with streaming OCI/Docker archive load and save.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--root", default=None, help="store directory (default: see below)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument(
        "--backend",
        choices=_BACKENDS,
        default=os.environ.get("CASTAR_BACKEND", "asyncio"),
        help="event loop (default: $CASTAR_BACKEND or asyncio)",
    )
    parser.add_argument("--version", action="version", version=f"castar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cmd: dict[str, argparse.ArgumentParser] = {}
    for name, (help_, example, json_flag, quiet) in _COMMANDS.items():
        cmd[name] = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            parents=[_common(json_flag, quiet)],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd[name].set_defaults(run=name)
    for name in ("load", "save", "pull"):
        cmd[name].add_argument("--platform", action="append", metavar="P[,P...]",
                               help="platforms, e.g. linux/amd64,linux/arm64/v8")  # fmt: skip
    p = cmd["load"]
    p.add_argument("-i", "--input", metavar="FILE", help="archive to read (default: stdin)")
    p.add_argument("--all-platforms", action="store_true", help="load every platform")
    p.add_argument("--name", metavar="PREFIX", help="name images whose archive only gives a tag")
    p.add_argument("--max-size", metavar="SIZE", type=_size,
                   help="refuse archives over SIZE (e.g. 10G)")  # fmt: skip
    p = cmd["pull"]
    p.add_argument("refs", nargs="+", metavar="REF", help="[registry/]repository[:tag|@digest]")
    p.add_argument("--all-platforms", action="store_true", help="pull every platform")
    p.add_argument("--jobs", type=int, default=4, metavar="N",
                   help="blobs in flight per registry, refs at once (default: 4)")  # fmt: skip
    p = cmd["save"]
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", help="archive to write (default: stdout)")
    p.add_argument("--missing", choices=["sparse", "prune", "fail", "fetch"], default="sparse",
                   help="content not in the store: omit it (sparse, default), write an index "
                   "of the exported platforms only (prune), fail, or pull it first from the "
                   "registry the image came from (fetch)")  # fmt: skip
    p.add_argument("--dry-run", action="store_true", help="print the plan, write nothing")
    p.add_argument("--write-behind", action="store_true",
                   help="keep the archive out of the page cache as it reaches the disk "
                   "(for big archives: runs at the disk's rate)")  # fmt: skip
    p = cmd["push"]
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("ref", nargs="?", metavar="REF", help="destination (default: the image's name)")
    p.add_argument("--platform", action="append", metavar="P[,P...]",
                   help="one: its manifest as the tag; several: a new index of them")  # fmt: skip
    p.add_argument("--jobs", type=int, default=4, metavar="N", help="blobs in flight (default: 4)")
    p.add_argument("--index", choices=["new", "sparse"], default="new",
                   help="several platforms: a new index of them (default), or the image's "
                   "own index, only they pushed (sparse: registries may refuse it)")  # fmt: skip
    p = cmd["images"]
    p.add_argument("--tree", action="store_true", help="one row per platform, with availability")
    p.add_argument("--filter", action="append", metavar="KEY=VALUE",
                   help="reference=GLOB, label=KEY[=VALUE], dangling=true|false")  # fmt: skip
    p = cmd["inspect"]
    p.add_argument("image", metavar="IMAGE")
    p.add_argument("--platform", metavar="P", help="show this platform's manifest and config")
    cmd["tag"].add_argument("source", metavar="SRC")
    cmd["tag"].add_argument("target", metavar="DST")
    cmd["rm"].add_argument("images", nargs="+", metavar="IMAGE")
    cmd["rm"].add_argument("-f", "--force", action="store_true", help="remove an ID's every name")
    cmd["gc"].add_argument("--dry-run", action="store_true", help="report, delete nothing")
    cmd["gc"].add_argument("--why", metavar="DIGEST", help="show which root keeps a blob alive")
    lsub = cmd["lease"].add_subparsers(dest="lease_command", metavar="ACTION", required=True)

    def lease_parser(name: str, help_: str, example: str, **kw: bool) -> argparse.ArgumentParser:
        return lsub.add_parser(name, help=help_, description=help_, parents=[_common(**kw)],
                               epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip

    p = lease_parser("create", "create a lease and print its id", "castar lease create --expire 1h")
    p.add_argument("--id", help="lease id (default: random)")
    p.add_argument("--expire", default="24h", metavar="DURATION", type=_duration,
                   help="e.g. 30m, 1h, 2d, or never (default: 24h)")  # fmt: skip
    p.add_argument("--label", action="append", metavar="KEY=VALUE")
    lease_parser("ls", "list leases", "castar lease ls --json", json_flag=True)
    p = lease_parser("rm", "delete leases", "castar lease rm 1700000000-AbCd")
    p.add_argument("ids", nargs="+", metavar="ID")
    cmd["verify"].add_argument("images", nargs="*", metavar="IMAGE", help="default: every blob")
    p = cmd["demo"]
    p.add_argument("--size", default="48M", help="archive size (default: 48M)")
    p.add_argument("--platforms", default="4", metavar="N|P,P...",
                   help="how many (2-8), or a list (default: 4)")  # fmt: skip
    _login_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``castar`` command line; returns the exit code (see ``castar --help``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.backend not in _BACKENDS:
        parser.error(f'backend "{args.backend}" (from $CASTAR_BACKEND): use asyncio or trio')
    from castar import _commands  # the engine loads for a command, not for --help

    try:
        return _commands.run(args)
    except BaseException as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, KeyboardInterrupt):  # a signal before (or after) the handler's time
            import signal

            return EXIT_SIGNALLED + signal.SIGINT
        if not isinstance(exc, Exception):
            raise
        if isinstance(exc, BrokenPipeError):
            # ERR-7: a closed pipe (castar images | head) is not an error; keep the exit flush
            # quiet. save fails with its own error instead (the archive is cut short).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        code = exit_code(exc)
        if code is None or args.debug:
            import traceback

            traceback.print_exception(exc)
        print(f"castar: error: {message(exc)}", file=sys.stderr)
        return code if code is not None else EXIT_OTHER
