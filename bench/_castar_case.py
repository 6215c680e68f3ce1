"""castar cases the command line has no verb for, as one process each (whole-process timing).

``python -m bench._castar_case save-many --root DIR --count 16 --out DIR IMAGE``: 16
concurrent one-platform saves through ``castar.engine.save.exporter.save_many`` (platforms
taken in turn from the image's index). ``load`` and ``save`` drive the library the way
``castar load``/``castar save`` do, for trees where the CLI is missing. Imports castar's
store and engine; nothing in castar imports this.
"""

from __future__ import annotations

import argparse
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
    p = sub.add_parser("load")
    p.add_argument("-i", "--input")
    p.add_argument("--platform", action="append")
    p = sub.add_parser("save")
    p.add_argument("image")
    p.add_argument("-o", "--output")
    p.add_argument("--platform", action="append")
    args = parser.parse_args(argv)
    run = {"save-many": _save_many, "load": _load, "save": _save}[args.command]
    return anyio.run(run, args, backend=args.backend)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
