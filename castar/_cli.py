"""The ``castar`` command line: argparse, one ``anyio.run`` per command, one exit-code table.

The only place that catches CastarError broadly (design rule errors-seam).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import re
import signal
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NoReturn

import anyio

from castar import __version__
from castar._demo import PLATFORMS as DEMO_PLATFORMS
from castar._demo import parse_size, run_demo
from castar._progress import open_progress
from castar._render import format_size, render_tree, table
from castar.engine import oci, platforms, reference
from castar.engine.registry import auth
from castar.store import digest as digests
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
    from anyio.abc import TaskStatus

    from castar._api import Store
    from castar.store import Image

    Command = Callable[[Store, argparse.Namespace], Awaitable[int]]

__all__ = ["EXIT_CODES", "main"]

EXIT_OTHER: Final = 1
EXIT_USAGE: Final = 2

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


def _exit_code(exc: BaseException) -> int | None:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return EXIT_OTHER if isinstance(exc, CastarError | OSError) else None


def _message(exc: BaseException) -> str:
    if isinstance(exc, OSError) and not isinstance(exc, CastarError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        return f"{where}{exc.strerror.lower()}"
    return str(exc) or type(exc).__name__


def _dump(obj: object) -> None:
    print(json.dumps(obj, indent=2, default=_json_default))


def _json_default(obj: object) -> object:
    if isinstance(obj, datetime):
        return obj.isoformat()
    if isinstance(obj, Mapping):  # labels and annotations (read-only mappings)
        return dict(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serializable")


def _progress_mode(args: argparse.Namespace) -> str:
    """``-q`` silences progress; ``--json`` output keeps the terminal free of bars."""
    if args.quiet or (args.progress == "auto" and getattr(args, "json", False)):
        return "none"
    return str(args.progress)


# -- load / save --------------------------------------------------------------------------


async def _cmd_load(store: Store, args: argparse.Namespace) -> int:
    # parsed here so a bad spec exits 4 before the store is touched; parsed once
    plats = platforms.parse_list(args.platform) if args.platform else None
    max_size = parse_size(args.max_size) if args.max_size is not None else None
    source: object
    if args.input in (None, "-"):
        if sys.stdin is None:
            raise UsageError("stdin is closed: use -i FILE or redirect stdin")
        if sys.stdin.isatty():
            raise InvalidArgument(
                "requested load from stdin, but stdin is a terminal: use -i FILE or redirect stdin"
            )
        source = "-"
    else:
        source = Path(args.input)
        if not await anyio.Path(source).exists():  # FIFOs (-i <(zcat a.tar.gz)) are fine
            raise NotFound(f"archive {source}")
    with open_progress("Loading", mode=_progress_mode(args)) as bar:
        images = await store.load(
            source,
            platforms=plats,
            all_platforms=args.all_platforms,
            name=args.name,
            progress=bar,
            max_size=max_size,
        )
    return _print_images(args, images, "Loaded")


def _print_images(args: argparse.Namespace, images: list[Image], verb: str) -> int:
    if args.json:
        _dump([{"name": i.name, "target": str(i.target.digest)} for i in images])
        return 0
    for i in images:  # LOAD-5
        if reference.is_dangling(i.name):
            print(f"{verb} image ID: {i.target.digest}")
        else:
            print(f"{verb} image: {reference.display_name(i.name)}")
    return 0


async def _cmd_pull(store: Store, args: argparse.Namespace) -> int:
    plats = platforms.parse_list(args.platform) if args.platform else None
    with open_progress("Pulling", mode=_progress_mode(args)) as bar:
        images = await store.pull(
            args.ref, platforms=plats, all_platforms=args.all_platforms, progress=bar
        )
    return _print_images(args, images, "Pulled")


async def _cmd_save(store: Store, args: argparse.Namespace) -> int:
    from castar.engine.save.exporter import SaveJob, SaveOptions

    # built first so a bad spec exits 4 before anything else is checked
    options = SaveOptions.parse(args.platform, missing=args.missing, write_behind=args.write_behind)
    if args.dry_run:
        plan = (await store.plan_save(args.images, options)).to_json()
        if args.json:
            _dump(plan)
        else:
            _plan_summary(plan)
        return 0
    to_stdout = args.output in (None, "-")
    if to_stdout and sys.stdout is None:
        raise UsageError("stdout is closed: use -o FILE or redirect stdout")
    if to_stdout and sys.stdout.isatty():
        raise InvalidArgument(
            "cowardly refusing to write an image archive to a terminal: "
            "use -o FILE or redirect stdout"
        )
    # The sink writes a file unnamed and puts it in place only on success (stdout, devices
    # and FIFOs in place), so a failed or killed save leaves no half archive.
    sink: str | Path = "-" if to_stdout else Path(args.output)
    if isinstance(sink, Path) and not await anyio.Path(sink).parent.is_dir():
        raise NotFound(f"output directory {sink.parent} (for {sink})")
    with open_progress("Saving", mode=_progress_mode(args)) as bar:
        (result,) = await store.save_many([SaveJob(args.images, sink, options, bar)])
    if args.json and not to_stdout:
        _dump(result.to_json())
    return 0


def _plan_summary(plan: dict[str, Any]) -> None:
    """``save --dry-run`` for people: each entry, its platforms, and what the archive holds."""
    for image in plan["images"]:
        name = reference.display_name(image["name"]) if image["name"] else image["reference"]
        kind = "index" if oci.is_index(image["mediaType"]) else "manifest"
        print(f"{name} -> {kind} {image['digest']}")
        for p in image["platforms"]:
            print(f"  {p['platform']:<24} {p['state']}")
        for p in image["notFound"]:
            print(f"  {p:<24} not in image")
    blobs = sum(1 for m in plan["members"] if m["digest"])
    print(f"{blobs} blobs, {format_size(plan['size'])} archive")
    for warning in plan["warnings"]:
        print(f"warning: {warning}")


# -- push -----------------------------------------------------------------------------------


async def _cmd_push(store: Store, args: argparse.Namespace) -> int:
    plats = platforms.parse_list(args.platform) if args.platform else None  # bad spec: exit 4
    with open_progress("Pushing", mode=_progress_mode(args)) as bar:
        result = await store.push(
            args.image, args.ref, platforms=plats, jobs=args.jobs, index=args.index, progress=bar
        )
    if args.json:
        _dump(result.to_json())
        return 0
    new = " (a new index of the platforms asked for)" if result.new_index else ""
    print(f"Pushed {result.ref}: {result.target.digest}{new}")
    sent = format_size(result.sent)
    print(f"{len(result.pushed)} uploaded ({sent}), {len(result.skipped)} already present")
    return 0


# -- images, inspect, tag, rm ----------------------------------------------------------------


async def _cmd_images(store: Store, args: argparse.Namespace) -> int:
    names = [i.name for i in await store.images.list(args.filter)] if args.filter else None
    trees = await store.images.tree(names)
    if args.json:
        _dump([t.to_json() for t in trees])
    elif args.tree:
        print("\n".join(render_tree(trees, terminal=sys.stdout.isatty())))
    else:
        rows = [["IMAGE", "ID", "CREATED", "CONTENT SIZE", "PLATFORMS"]]
        rows += [
            [
                n,
                t.target.digest.encoded[:12],
                t.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                format_size(t.content_size),
                f"{sum(m.available for m in t.platforms)}/{len(t.platforms)}",
            ]
            for t in trees
            for n in [reference.display_name(n) for n in t.names] or ["<untagged>"]
        ]
        print("\n".join(table(rows)))
    return 0


async def _cmd_inspect(store: Store, args: argparse.Namespace) -> int:
    _dump((await store.images.inspect(args.image, platform=args.platform)).to_json())
    return 0


async def _cmd_tag(store: Store, args: argparse.Namespace) -> int:
    await store.images.tag(args.source, args.target)
    return 0


async def _cmd_rm(store: Store, args: argparse.Namespace) -> int:
    for removal in await store.images.remove(args.images, force=args.force):
        print(str(removal))
    return 0


# -- gc, lease, verify ---------------------------------------------------------------------


async def _cmd_gc(store: Store, args: argparse.Namespace) -> int:
    if args.why is not None:
        try:
            digest = digests.parse(args.why)
        except InvalidArgument as exc:
            raise InvalidArgument(f'digest "{args.why}": {exc.message}') from exc
        if not await store.content.exists(digest):
            raise NotFound(f"content digest {args.why}")
        path = await store.explain(args.why)
        if args.json:
            _dump({"digest": args.why, "path": path, "garbage": not path})
        elif path:
            print(" -> ".join(path))
        else:
            print(f"{args.why} is garbage: no image, lease or ingest keeps it alive")
        return 0
    report = await store.gc(dry_run=args.dry_run)
    if args.json:
        _dump(dataclasses.asdict(report))  # digests are str: JSON as they are
        return 0
    verb = "Would delete" if report.dry_run else "Deleted"
    for what, items in (
        ("image", report.images_removed),
        ("lease", report.leases_removed),
        ("ingest", report.ingests_removed),
        ("blob", report.removed),
    ):
        for item in items:
            print(f"{verb} {what}: {item}")
    freed = "would free" if report.dry_run else "freed"
    print(f"{len(report.removed)} blobs, {format_size(report.bytes_freed)} {freed}")
    return 0


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
    try:
        return timedelta(seconds=sum(float(n) * _UNITS[u] for n, u in parts))
    except OverflowError:
        raise argparse.ArgumentTypeError(f'duration "{text}" is too long') from None


def _labels(values: Sequence[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for v in values or ():
        key, sep, value = v.partition("=")
        if not sep or not key:
            raise InvalidArgument(f'bad label "{v}": expected key=value')
        out[key] = value
    return out


def _when(dt: datetime | None) -> str:
    return "never" if dt is None else dt.strftime("%Y-%m-%dT%H:%M:%SZ")


async def _cmd_lease(store: Store, args: argparse.Namespace) -> int:
    if args.lease_command == "create":
        lease = await store.leases.create(args.id, expire=args.expire, labels=_labels(args.label))
        print(lease.id)
    elif args.lease_command == "ls":
        leases = await store.leases.list()
        if args.json:
            _dump([{**dataclasses.asdict(le), "expires_at": le.expires_at} for le in leases])
        else:
            rows = [["ID", "CREATED", "EXPIRES", "LABELS"]]
            for le in leases:
                labels = ",".join(f"{k}={v}" for k, v in sorted(le.labels.items()))
                rows.append([le.id, _when(le.created_at), _when(le.expires_at), labels])
            print("\n".join(table(rows)))
    else:
        for lease_id in args.ids:
            await store.leases.delete(lease_id)
            print(lease_id)
    return 0


async def _cmd_verify(store: Store, args: argparse.Namespace) -> int:
    with open_progress("Verifying", mode=_progress_mode(args)) as bar:
        report = await store.verify(args.images or None, progress=bar)
    if args.json:
        _dump(report.to_json())
    else:
        for problem in report.problems:
            print(str(problem))
        print(f"{report.checked} blobs checked, {format_size(report.bytes_checked)} hashed")
    if not report.ok:
        raise DataLoss(f"{len(report.problems)} of {report.checked} blobs are missing or corrupt")
    return 0


async def _cmd_demo(store: Store, args: argparse.Namespace) -> int:
    await run_demo(store, size=args.size, platforms=args.platforms, progress=_progress_mode(args))
    return 0


# -- login and logout: no store, castar's registry auth file -----------------------------


async def _cmd_login(args: argparse.Namespace) -> int:
    host = args.registry
    if args.command == "logout":
        path = await anyio.to_thread.run_sync(auth.logout, host)
        text = f"Removed the credentials for {host} from {path}"
    else:
        user, password = await anyio.to_thread.run_sync(_login_inputs, args)
        path = await anyio.to_thread.run_sync(auth.login, host, user, password)
        text = f"Credentials for {host} saved in {path}"
    if args.json:
        text = json.dumps({"registry": host, "file": str(path)}, indent=2)
    print(text)
    return 0


def _login_inputs(args: argparse.Namespace) -> tuple[str, str]:
    if not (sys.stdin.isatty() or (args.username and args.password_stdin)):
        raise InvalidArgument(f"login {args.registry}: no terminal: give -u USER --password-stdin")
    import getpass

    user = args.username or input("Username: ")
    password = sys.stdin.read().rstrip("\r\n") if args.password_stdin else getpass.getpass()
    return user, password


def _login_parsers(sub: argparse._SubParsersAction[_Parser]) -> None:
    for name, help_, example in (
        ("login", "save credentials for a registry (never printed)",
         "printf %s \"$TOKEN\" | castar login ghcr.io -u me --password-stdin"),
        ("logout", "forget a registry's credentials", "castar logout ghcr.io"),
    ):  # fmt: skip
        p = sub.add_parser(name, help=help_, description=help_, parents=[_common(True)],
                           epilog=f"example:\n  {example}",
                           formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
        p.set_defaults(run=_cmd_login, storeless=True)
        p.add_argument("registry", metavar="REGISTRY", type=auth.registry_host,
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
_COMMANDS: Final[dict[str, tuple[Command, str, str, bool, bool]]] = {
    "load": (_cmd_load, "load an OCI or Docker image archive",
             "castar load -i alpine.tar --platform linux/arm64", True, True),
    "save": (_cmd_save, "save images to an OCI archive (with Docker manifest.json)",
             "castar save alpine:latest --platform linux/amd64 -o alpine.tar", True, True),
    "pull": (_cmd_pull, "pull an image from a registry",
             "castar pull 127.0.0.1:5000/alpine:3 --platform linux/arm64", True, True),
    "push": (_cmd_push, "push an image to a registry (--platform: only those platforms)",
             "castar push alpine:latest registry.example:5000/alpine:3", True, True),
    "images": (_cmd_images, "list images", "castar images --tree", True, False),
    "inspect": (_cmd_inspect, "show an image's record, platforms and documents",
                "castar inspect alpine --platform linux/arm64", False, False),
    "tag": (_cmd_tag, "give an image another name", "castar tag alpine myalpine:1", False, False),
    "rm": (_cmd_rm, "remove image names (content goes at the next gc)",
           "castar rm alpine:latest", False, False),
    "gc": (_cmd_gc, "delete what no image, lease or ingest keeps alive",
           "castar gc --dry-run", True, False),
    "lease": (_cmd_lease, "create, list or remove leases",
              "castar lease create --expire 1h --label owner=ci", False, False),
    "verify": (_cmd_verify, "re-hash stored blobs; exit 6 if any is missing or corrupt",
               "castar verify alpine:latest", True, True),
    "demo": (_cmd_demo, "generate a multi-platform archive, load two platforms, show, save, "
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
    for name, (run, help_, example, json_flag, quiet) in _COMMANDS.items():
        cmd[name] = sub.add_parser(
            name,
            help=help_,
            description=help_,
            epilog=f"example:\n  {example}",
            parents=[_common(json_flag, quiet)],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        cmd[name].set_defaults(run=run)
    for name in ("load", "save", "pull"):
        cmd[name].add_argument("--platform", action="append", metavar="P[,P...]",
                               help="platforms, e.g. linux/amd64,linux/arm64/v8")  # fmt: skip
    p = cmd["load"]
    p.add_argument("-i", "--input", metavar="FILE", help="archive to read (default: stdin)")
    p.add_argument("--all-platforms", action="store_true", help="load every platform")
    p.add_argument("--name", metavar="PREFIX", help="name images whose archive only gives a tag")
    p.add_argument("--max-size", metavar="SIZE", help="refuse archives over SIZE (e.g. 10G)")
    p = cmd["pull"]
    p.add_argument("ref", metavar="REF", help="[registry/]repository[:tag|@digest]")
    p.add_argument("--all-platforms", action="store_true", help="pull every platform")
    p = cmd["save"]
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("-o", "--output", metavar="FILE", help="archive to write (default: stdout)")
    p.add_argument("--missing", choices=["sparse", "prune", "fail"], default="sparse",
                   help="content not in the store: omit it (sparse, default), write an index "
                   "of the exported platforms only (prune), or fail")  # fmt: skip
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
                   help=f"how many (2-{len(DEMO_PLATFORMS)}), or a list (default: 4)")  # fmt: skip
    _login_parsers(sub)
    return parser


async def _command(args: argparse.Namespace) -> int:
    from castar._api import open_store  # after parsing: --help needs no store or engine

    if getattr(args, "storeless", False):
        return int(await args.run(args))
    async with open_store(args.root) as store:
        return int(await args.run(store, args))


async def _cancel_on_signal(
    scope: anyio.CancelScope, ended: list[int], *, task_status: TaskStatus[None]
) -> None:
    # ERR-6: the first SIGINT or SIGTERM cancels the command; leaving restores the defaults,
    # so a second one ends the process at once.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            ended.append(128 + signum)
            scope.cancel()
            return


async def _run(args: argparse.Namespace) -> int:
    """The command under anyio cancellation by a signal (``finally`` blocks run): 128 + it."""
    ended: list[int] = []
    code = EXIT_OTHER
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(_cancel_on_signal, tg.cancel_scope, ended)
            code = await _command(args)
            tg.cancel_scope.cancel()
    except Exception:
        if not ended:
            raise
    return ended[0] if ended else code


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``castar`` command line; returns the exit code (see ``castar --help``)."""
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    if args.backend not in _BACKENDS:
        parser.error(f'backend "{args.backend}" (from $CASTAR_BACKEND): use asyncio or trio')
    try:
        return anyio.run(_run, args, backend=args.backend)
    except BaseException as group:
        exc: BaseException = group
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if isinstance(exc, KeyboardInterrupt):  # a signal before (or after) the handler's time
            return 128 + signal.SIGINT
        if not isinstance(exc, Exception):
            raise
        if isinstance(exc, BrokenPipeError):
            # ERR-7: a closed pipe (castar images | head) is not an error; keep the exit flush
            # quiet. save fails with its own error instead (the archive is cut short).
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        code = _exit_code(exc)
        if code is None or args.debug:
            traceback.print_exception(exc)
        print(f"castar: error: {_message(exc)}", file=sys.stderr)
        return code if code is not None else EXIT_OTHER
