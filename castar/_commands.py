"""The ``castar`` commands: one coroutine per command, run by :func:`run` under anyio.

:mod:`castar._cli` parses the command line without loading this module (``--help`` and a
usage error need no engine); it imports it to run the command chosen.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sys
import traceback
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from castar._api import open_store
from castar._cli import EXIT_OTHER, EXIT_SIGNALLED, exit_code, message
from castar._progress import open_progress
from castar._render import format_size, render_tree, table
from castar.engine import oci, platforms, reference
from castar.store import digest as digests
from castar.store.errors import DataLoss, InvalidArgument, NotFound, UsageError

if TYPE_CHECKING:
    import argparse

    from anyio.abc import TaskStatus

    from castar._api import Store
    from castar.store import Image

__all__ = ["run"]


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
            max_size=args.max_size,
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
        results = await store.pull_many(
            args.refs,
            platforms=plats,
            all_platforms=args.all_platforms,
            jobs=args.jobs,
            progress=bar,
        )
    rows: list[dict[str, object]] = []  # PULL-4: a row per image recorded, per failed ref
    errors: list[tuple[str, BaseException]] = []
    for r in results:
        rows += [{"ref": r.ref, "name": i.name, "target": str(i.target.digest)} for i in r.images]
        if r.error is not None:
            errors.append((r.ref, r.error))
            rows.append({"ref": r.ref, "error": message(r.error), "exit": exit_code(r.error)})
    if args.json:
        _dump(rows)
    else:
        _print_images(args, [i for r in results for i in r.images], "Pulled")
    for ref, exc in errors:
        if args.debug:
            traceback.print_exception(exc)
        print(f"castar: error: {ref}: {message(exc)}", file=sys.stderr)
    return (exit_code(errors[0][1]) or EXIT_OTHER) if errors else 0


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
    from castar._demo import run_demo  # start-up: only the demo needs it

    await run_demo(store, size=args.size, platforms=args.platforms, progress=_progress_mode(args))
    return 0


# -- login and logout: no store, castar's registry auth file -----------------------------


async def _cmd_login(args: argparse.Namespace) -> int:
    from castar.engine.registry import auth  # start-up: only login and logout need it

    host = args.registry
    if args.command == "logout":
        path = await anyio.to_thread.run_sync(auth.logout, host)
        text = f"Removed the credentials for {host} from {path}"
    else:
        # a prompt or an idle --password-stdin pipe must not outlast Ctrl-C (ERR-6)
        user, password = await anyio.to_thread.run_sync(_login_inputs, args, abandon_on_cancel=True)
        auth.check_user(host, user)
        from castar.engine.registry.client import check_credentials  # httpx: registry work only

        await check_credentials(host, user, password)  # as Docker: nothing saved unless accepted
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


async def _command(args: argparse.Namespace) -> int:
    command = globals()[f"_cmd_{args.run}"]
    if getattr(args, "storeless", False):
        return int(await command(args))
    async with open_store(args.root) as store:
        return int(await command(store, args))


async def _cancel_on_signal(
    scope: anyio.CancelScope, ended: list[int], *, task_status: TaskStatus[None]
) -> None:
    # ERR-6: the first SIGINT or SIGTERM cancels the command; leaving restores the defaults,
    # so a second one ends the process at once.
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            ended.append(EXIT_SIGNALLED + signum)
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


def run(args: argparse.Namespace) -> int:
    """Run the parsed command on its backend; a signal's end is 128 + its number (ERR-6)."""
    return anyio.run(_run, args, backend=args.backend)
