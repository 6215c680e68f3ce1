"""``castar demo``: generate a multi-platform archive, load two platforms, save one, round-trip."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Final

import anyio
import anyio.to_thread

from castar._progress import open_progress
from castar._render import format_size, render_tree
from castar.engine import platforms as plat
from castar.engine import reference
from castar.store.errors import DataLoss, InvalidArgument

if TYPE_CHECKING:
    from collections.abc import Callable

    from castar._api import Store

__all__ = ["NAME", "PLATFORMS", "parse_platforms", "parse_size", "run_demo"]

NAME: Final = "docker.io/library/castar-demo:latest"
#: The platforms ``--platforms N`` takes the first N of.
PLATFORMS: Final = ("linux/amd64", "linux/arm64/v8", "linux/arm/v7", "linux/ppc64le")
_LAYERS: Final = 3
_SIZE = re.compile(r"(\d+(?:\.\d+)?)([kmgt]?)i?b?", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``48M``, ``1G``, ``512k`` (binary units) or a byte count."""
    m = _SIZE.fullmatch(text.strip())
    if m is None:
        raise InvalidArgument(f'bad size "{text}": expected e.g. 64M, 1G or 500000')
    try:
        return int(float(m[1]) * 1024 ** ("kmgt".find(m[2].lower()) + 1 if m[2] else 0))
    except OverflowError:
        raise InvalidArgument(f'size "{text}" is too large') from None


def parse_platforms(value: str) -> list[str]:
    """A count (the first N of :data:`PLATFORMS`) or a comma-separated list of at least two."""
    if value.isdigit():
        n = int(value)
        if not 2 <= n <= len(PLATFORMS):
            raise InvalidArgument(f"--platforms {n}: expected 2 to {len(PLATFORMS)}")
        return list(PLATFORMS[:n])
    specs = [plat.format(p) for p in plat.parse_list([value])]
    if len(specs) < 2:
        raise InvalidArgument(f'--platforms "{value}": the demo needs at least two platforms')
    return specs


def _rate(size: int, seconds: float) -> str:
    return f"{format_size(int(size / max(seconds, 1e-9)))}/s"


async def run_demo(
    store: Store,
    *,
    size: str = "48M",
    platforms: str = "4",
    progress: str = "auto",
    out: Callable[[str], object] = print,
) -> None:
    """Run the demo in ``store`` (the image stays), printing with ``out``; DataLoss if it fails."""
    from castar._api import open_store
    from castar.engine import synth

    plats = parse_platforms(platforms)
    layer_size = max(4096, parse_size(size) // (len(plats) * _LAYERS))
    spec = synth.SynthSpec(name=NAME, platforms=plats, layers=_LAYERS, layer_size=layer_size)
    picked = plats[:2]
    shown = reference.display_name(NAME)
    async with anyio.TemporaryDirectory(prefix="castar-demo-") as tmpdir:
        tmp = Path(tmpdir)
        archive, saved = tmp / "demo.tar", tmp / "one.tar"
        t0 = time.perf_counter()
        await anyio.to_thread.run_sync(synth.write_path, spec, archive)
        archive_size = (await anyio.Path(archive).stat()).st_size
        out(f"castar demo, store {store.root}")
        out(
            f"1. generated {archive.name} ({format_size(archive_size)}): {shown}, "
            f"{len(plats)} platforms x {_LAYERS} layers x {format_size(layer_size)}, "
            f"in {time.perf_counter() - t0:.2f}s"
        )
        t0 = time.perf_counter()
        with open_progress("Loading", mode=progress) as bar:
            await store.load(archive, platforms=picked, progress=bar)
        dt = time.perf_counter() - t0
        trees = await store.images.tree([NAME])
        stored = trees[0].content_size
        out(
            f"2. loaded {' and '.join(picked)} from it: {format_size(stored)} verified and "
            f"stored in {dt:.2f}s ({_rate(stored, dt)}); the other platforms were not read"
        )
        out("3. the image as stored (platforms not loaded are unavailable):")
        for line in render_tree(trees, terminal=sys.stdout.isatty()):
            out(f"   {line}")
        t0 = time.perf_counter()
        with open_progress("Saving", mode=progress) as bar:
            result = await store.save([NAME], saved, platforms=picked[:1], progress=bar)
        dt = time.perf_counter() - t0
        (entry,) = result.images
        blobs = {m.digest for m in result.plan.members if m.digest is not None}
        out(
            f"4. saved {picked[0]} to {saved.name}: {len(blobs)} blobs, "
            f"{format_size(result.size)} in {dt:.3f}s ({_rate(result.size, dt)})"
        )
        t0 = time.perf_counter()
        async with open_store(tmp / "roundtrip") as other:
            (back,) = await other.load(saved)
            report = await other.verify([back.name])
            again = await other.save([back.name], tmp / "again.tar")
        same = {m.digest for m in again.plan.members if m.digest is not None} == blobs
        if back.target.digest != entry.digest or not same or not report.ok:
            raise DataLoss(
                f"demo round trip of {saved.name} failed: loaded {back.target.digest}, "
                f"saved {entry.digest}; same blobs: {same}; {len(report.problems)} bad blobs"
            )
        out(
            f"5. round trip: {saved.name} loaded into a fresh store "
            f"({back.target.digest.encoded[:12]} = the {picked[0]} manifest), "
            f"{report.checked} blobs re-hashed, saved again with the same blobs, "
            f"in {time.perf_counter() - t0:.2f}s"
        )
    out(f"done: try `castar images --tree` and `castar rm {shown}`")
