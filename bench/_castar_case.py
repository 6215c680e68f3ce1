"""castar cases the command line has no verb for, as one process each (whole-process timing).

``python -m bench._castar_case save-many --root DIR --count 16 --out DIR IMAGE``: 16
concurrent one-platform saves through ``castar.engine.save.exporter.save_many`` (platforms
taken in turn from the image's index). ``push-many --root DIR --count 16 IMAGE
HOST/REPO``: 16 concurrent one-platform pushes of IMAGE (platforms in turn) to tags of one
repository through one registry client; it prints how often each blob was uploaded (the
``pushed`` of every ``PushResult``) and exits 1 when any blob went up more than once.
``load`` and ``save`` drive the library the way ``castar load``/``castar save`` do, for
trees where the CLI is missing. Imports castar's store and engine; nothing in castar
imports this.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import anyio

from castar.engine import oci
from castar.engine.load import importer
from castar.engine.save import exporter
from castar.store.root import open_root


async def _platforms(root: str, image: str) -> list[str]:
    """The platform specifiers of ``image``'s index, in index order."""
    from castar.engine import platforms as plat

    async with open_root(root) as store:
        (record,) = [i for i in await store.images.list() if i.name == image]
        data = await store.content.read_all(record.target.digest, limit=oci.MAX_DOCUMENT)
        if not oci.is_index(record.target.media_type):
            return []
        found = [
            plat.format(d.platform)
            for d in oci.decode_index(data).manifests
            if d.platform is not None and d.platform.os != "unknown"
        ]
        return found


async def _save_many(args: argparse.Namespace) -> int:
    specs = await _platforms(args.root, args.image)
    out = Path(args.out)
    await anyio.Path(out).mkdir(parents=True, exist_ok=True)
    jobs = [
        exporter.SaveJob(
            names=[args.image],
            sink=out / f"save-{i}.tar",
            options=exporter.SaveOptions.parse([specs[i % len(specs)]] if specs else None),
        )
        for i in range(args.count)
    ]
    async with open_root(args.root) as store:
        results = await exporter.save_many(store, jobs)
    print(sum(r.size for r in results))
    return 0


async def _push_many(args: argparse.Namespace) -> int:
    from castar.engine.registry import push as _push
    from castar.engine.registry.client import Registry, parse_ref

    specs = await _platforms(args.root, args.image)
    host = parse_ref(args.dest)[0]
    results: list[_push.PushResult] = []
    async with open_root(args.root) as store, Registry(host) as registry:

        async def one(i: int) -> None:
            options = _push.PushOptions.parse([specs[i % len(specs)]] if specs else None)
            roles = (store.content, store.images, store.leases)
            ref = f"{args.dest}:p{i}"
            r = await _push.push(*roles, args.image, ref, options, registry=registry)
            results.append(r)

        async with anyio.create_task_group() as tg:
            for i in range(args.count):
                tg.start_soon(one, i)
    uploads = collections.Counter(str(d.digest) for r in results for d in r.pushed)
    reached = collections.Counter(str(d.digest) for r in results for d in (*r.pushed, *r.skipped))
    shared = sorted(d for d, n in reached.items() if n == len(results) and len(results) > 1)
    twice = {d: n for d, n in uploads.items() if n > 1}
    print(
        f"{len(results)} pushes, {sum(uploads.values())} uploads of {len(uploads)} blobs "
        f"({sum(r.sent for r in results):,} bytes), "
        f"{sum(len(r.skipped) for r in results)} found present; "
        + "; ".join(f"{d[:19]}… in every push: uploaded {uploads[d]}x" for d in shared)
        + "".join(f"; {d[:19]}… uploaded {n}x" for d, n in twice.items())
    )
    return 1 if twice else 0


async def _load(args: argparse.Namespace) -> int:
    source: object = "-" if args.input in (None, "-") else Path(args.input)
    async with open_root(args.root) as store:
        options = importer.LoadOptions.parse(args.platform)
        await importer.load(store.content, store.images, store.leases, source, options)
    return 0


async def _save(args: argparse.Namespace) -> int:
    sink: object = "-" if args.output in (None, "-") else Path(args.output)
    async with open_root(args.root) as store:
        await exporter.save(
            store, [args.image], sink, exporter.SaveOptions.parse(platforms=args.platform)
        )
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._castar_case")
    parser.add_argument("--backend", default="asyncio", choices=["asyncio", "trio"])
    parser.add_argument("--root", required=True)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("save-many")
    p.add_argument("image")
    p.add_argument("--count", type=int, default=16)
    p.add_argument("--out", required=True)
    p = sub.add_parser("push-many")
    p.add_argument("image")
    p.add_argument("dest", help="HOST/REPO: pushes go to HOST/REPO:p0, :p1, ...")
    p.add_argument("--count", type=int, default=16)
    p = sub.add_parser("load")
    p.add_argument("-i", "--input")
    p.add_argument("--platform", action="append")
    p = sub.add_parser("save")
    p.add_argument("image")
    p.add_argument("-o", "--output")
    p.add_argument("--platform", action="append")
    args = parser.parse_args(argv)
    run = {"save-many": _save_many, "push-many": _push_many, "load": _load, "save": _save}[
        args.command
    ]
    return anyio.run(run, args, backend=args.backend)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
