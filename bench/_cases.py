"""The cases of ``python -m bench``: what castar, the baselines and the peers run in each.

Owns ``Case`` and ``build``: start-up against the interpreter's and anyio's floors, the
small archives' load and save (also beside a busy writer), load (file, pipe, tmpfs, one
and two platforms, gzip and zstd archives), save (file, pipe, two and one platforms, 16
concurrent), the round trip, and pull and push (all platforms, one, 16 concurrent pushes
sharing a base layer) against the harness's own registry, each with the same-work
baselines (sha256sum, GNU tar, a sync Python copy, ``dd conv=fsync``, curl moving the
same blobs) and peers (skopeo, containerd's ctr, umoci) that apply. Commands are shell
strings run under ``bash -c``. Imports only the harness and the peer helpers.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from bench._peers import REGISTRY, Containerd, DockerRegistry, ensure_dir_gone
from bench._workload import IMAGE, Archives, Workload
from bench.harness import Entry

if TYPE_CHECKING:
    from collections.abc import Callable

#: Every case id, in run order (``--cases`` picks from these).
CASE_IDS = (
    "start-floor",
    "start-version",
    "start-help",
    "start-images",
    "small-load",
    "small-save",
    "busy-load",
    "alpine-load",
    "alpine-save",
    "load-file",
    "load-shm",
    "load-pipe",
    "load-one",
    "load-two",
    "load-gzip",
    "load-zstd",
    "save-file",
    "save-pipe",
    "save-two",
    "save-one",
    "save-16",
    "roundtrip",
    "pull",
    "pull-one",
    "push",
    "push-one",
    "push-16",
)
REGISTRY_CASES = ("pull", "pull-one", "push", "push-one", "push-16")
ACCEPT = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)
ONE = "linux/arm64"  # the platform one-platform cases select (after amd64 in every preset)
#: Cases left out by ``--castar-only``: the floors are baselines, and the busy writer's
#: gigabytes of dirty pages are no smoke test.
NOT_CASTAR_ONLY = ("start-floor", "busy-load")
ANYIO_FLOOR = "import anyio, sqlite3; anyio.run(anyio.sleep, 0)"
SHM = Path("/dev/shm")
MIB = 1 << 20


@dataclass(slots=True)
class Case:
    """One measured situation; ``bytes`` is the MB/s basis for every tool in it.

    Load cases count the (uncompressed) input archive, so a one-platform load's rate is
    over the whole archive and rates compare as times do. Save cases count castar's
    output, read after its first run.
    """

    id: str
    title: str
    bytes: int
    entries: list[Entry] = field(default_factory=list)
    cleanup: Callable[[], None] | None = None
    bytes_from: str = ""  # another case whose (resolved) bytes this one counts


@dataclass(slots=True)
class Options:
    """What to include (from the command line)."""

    castar_only: bool = False
    peers: tuple[str, ...] = ("skopeo", "ctr", "umoci")
    backend: str = "asyncio"
    cases: tuple[str, ...] = ()  # empty: all
    skipped: list[dict[str, str]] = field(default_factory=list)


def _fresh(*paths: Path) -> Callable[[], None]:
    def setup() -> None:
        for p in paths:
            ensure_dir_gone(p)

    return setup


class BusyWriter:
    """A ``dd`` writing gigabytes without syncing into ``path``, started on first use."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the writer (once) and wait until its dirty pages pile up."""
        if self._proc is not None:
            return
        free = shutil.disk_usage(self.path.parent).free
        count = min(16 << 30, free // 4) // MIB
        self._proc = subprocess.Popen(
            ["dd", "if=/dev/zero", f"of={self.path}", "bs=1M", f"count={count}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self._proc.poll() is None:
            with contextlib.suppress(FileNotFoundError):
                if self.path.stat().st_size >= 1 << 30:
                    break
            time.sleep(0.05)

    def stop(self) -> None:
        """Kill the writer and remove its file."""
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.kill()
            proc.wait()
        ensure_dir_gone(self.path)


def warmup(small: Archives, root: Path) -> list[str]:
    """Untimed commands that import what the cases import (the bytecode caches fill)."""
    py, r = shlex.quote(sys.executable), shlex.quote(str(root))
    a, gz, zst = (shlex.quote(str(p)) for p in (small.plain, small.gzip, small.zstd))
    castar = f"{py} -m castar --root {r}"
    return [
        f"{castar} --help; {castar} images",
        f"{castar} load -q -i {a} && {castar} save -q {IMAGE} -o {r}.tar",
        f"{castar} load -q -i {gz}; {castar} load -q -i {zst}; rm -rf {r} {r}.tar",
        f"{py} -c {shlex.quote(ANYIO_FLOOR)}",
        # httpx imports its transport (httpcore) when a client is made, not when imported
        f"{py} -c 'import castar.engine.registry.pull, castar.engine.registry.push, httpx; "
        "httpx.AsyncClient()'",
    ]


def _loaded(castar: str, root: Path, archive: Path, out: Path) -> Callable[[], None]:
    """Setup for a save: ``root`` holds ``archive`` (loaded once, untimed); ``out`` is gone."""

    def setup() -> None:
        if not (root / "done").exists():
            ensure_dir_gone(root)
            subprocess.run(
                [*shlex.split(castar), "--root", str(root), "load", "-i", str(archive)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            (root / "done").touch()
        ensure_dir_gone(out)

    return setup


def build(
    arch: Archives,
    workload: Workload,
    work: Path,
    opts: Options,
    ctrd: Containerd | None,
    small: dict[str, Archives] | None = None,
    reg: DockerRegistry | None = None,
    shared: tuple[Path, int] | None = None,
) -> list[Case]:
    """Every case for this workload, minus the ones ``opts`` leaves out (noted in skipped).

    ``small`` names the small archives (``_workload.SMALL``) whose cases run too; ``reg``
    the registry of the pull and push cases, ``shared`` push-16's archive (16 platforms
    sharing a base layer) and the bytes of its blobs.
    """
    py = shlex.quote(sys.executable)
    store, saved_store, out, dest = (
        work / "store",
        work / "saved-store",
        work / "out",
        work / "dest",
    )
    a, gz, zst = (shlex.quote(str(p)) for p in (arch.plain, arch.gzip, arch.zstd))
    layout, single = shlex.quote(str(arch.layout)), shlex.quote(str(arch.single))
    o, d = shlex.quote(str(out)), shlex.quote(str(dest))
    if importlib.util.find_spec("castar._cli") is not None:
        castar, quiet = f"{py} -m castar --backend {opts.backend}", " -q"
        every = " --all-platforms"
    else:  # a tree without the CLI yet: the same library calls through bench._castar_case
        castar, quiet = f"{py} -m bench._castar_case --backend {opts.backend}", ""
        every = ""
    load = f"{castar} --root {shlex.quote(str(store))} load{quiet}"
    save = f"{castar} --root {shlex.quote(str(saved_store))} save{quiet} {IMAGE}"
    n_plat = len(workload.platforms)
    one = ONE if ONE in workload.platforms else workload.platforms[0]
    two = ",".join(workload.platforms[:2])
    peer = {
        p: (not opts.castar_only and p in opts.peers and shutil.which(p) is not None)
        for p in ("skopeo", "ctr", "umoci")
    }
    peer["ctr"] = peer["ctr"] and ctrd is not None
    base = not opts.castar_only
    skopeo = "skopeo copy -q"
    ctr = ctrd.ctr if ctrd is not None else "ctr"

    def skopeo_save(src: str) -> Entry:
        label = "skopeo copy --all oci: oci-archive:"
        return Entry(
            "skopeo", "peer", label, f"{skopeo} --all oci:{src} oci-archive:{o}", _fresh(out)
        )

    def skopeo_load(src: str) -> Entry:
        label = "skopeo copy --all oci-archive: oci:"
        return Entry(
            "skopeo", "peer", label, f"{skopeo} --all oci-archive:{src} oci:{d}:x", _fresh(dest)
        )

    saved_ready = _loaded(castar, saved_store, arch.plain, out)

    def ctr_loaded() -> None:
        assert ctrd is not None
        if ctrd.state != "loaded" or ctrd.pid is None:
            ctrd.start(fresh=True)
            subprocess.run(
                [
                    *ctrd.ctr.split(),
                    "images",
                    "import",
                    "--all-platforms",
                    "--no-unpack",
                    str(arch.plain),
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            ctrd.state = "loaded"
        ensure_dir_gone(out)

    def ctr_dirty() -> None:
        assert ctrd is not None
        ctrd.start(fresh=True)
        ctrd.state = "dirty"
        ensure_dir_gone(out)

    cases: list[Case] = []

    def case(cid: str, title: str, nbytes: int, cleanup: Callable[[], None] | None = None) -> Case:
        c = Case(cid, title, nbytes, cleanup=cleanup)
        cases.append(c)
        return c

    clean_load = _fresh(store, dest, out)

    # -- start-up and small archives ----------------------------------------------------------
    if base:
        c = case("start-floor", "the interpreter's floor and any anyio program's", 0)
        c.entries += [
            Entry("python", "baseline", "python -c pass", f"{py} -c pass"),
            Entry(
                "anyio",
                "baseline",
                f'python -c "{ANYIO_FLOOR}"',
                f"{py} -c {shlex.quote(ANYIO_FLOOR)}",
            ),
        ]
    empty = work / "empty-store"
    for cid, args, what in (
        ("start-version", "--version", "castar --version"),
        ("start-help", "--help", "castar --help"),
        ("start-images", f"--backend {opts.backend} --root {shlex.quote(str(empty))} images", ""),
    ):
        what = what or "castar images (an empty store)"
        c = case(cid, what, 0, _fresh(empty))
        c.entries.append(Entry("castar", "castar", what, f"{py} -m castar {args}", _fresh(empty)))
    for name, sa in (small or {}).items():
        sq, sroot, saved = (
            shlex.quote(str(sa.plain)),
            work / f"{name}-store",
            work / f"{name}-saved",
        )
        small_load = f"{castar} --root {shlex.quote(str(sroot))} load{quiet}{every} -i {sq}"
        n = len(sa.image.platforms)
        c = case(f"{name}-load", f"load a {n}-platform {sa.size / 1e6:.2f} MB archive", sa.size)
        c.cleanup = _fresh(sroot, dest)
        c.entries.append(
            Entry(
                "castar", "castar", "castar load --all-platforms -i FILE", small_load, _fresh(sroot)
            )
        )
        if peer["skopeo"]:
            c.entries.append(skopeo_load(sq))
        c = case(f"{name}-save", f"save the {n}-platform {sa.size / 1e6:.2f} MB image", 0)
        c.cleanup = _fresh(saved, out)
        c.entries.append(
            Entry(
                "castar",
                "castar",
                "castar save -o FILE",
                f"{castar} --root {shlex.quote(str(saved))} save{quiet} {IMAGE} -o {o}",
                _loaded(castar, saved, sa.plain, out),
                output=out,
            )
        )
        if peer["skopeo"]:
            c.entries.append(skopeo_save(shlex.quote(str(sa.layout))))
        if name == "small" and base:
            busy = BusyWriter(work / "busy.dd")
            fresh_root = _fresh(sroot)

            def beside(busy: BusyWriter = busy, fresh: Callable[[], None] = fresh_root) -> None:
                busy.start()
                fresh()

            c = case("busy-load", "the small load while dd writes GBs unsynced", sa.size)
            c.cleanup = busy.stop
            c.entries.append(
                Entry(
                    "castar",
                    "castar",
                    "castar load --all-platforms (dd beside)",
                    small_load,
                    beside,
                )
            )

    # -- load ---------------------------------------------------------------------------------
    c = case("load-file", "load all platforms from a file", arch.size, clean_load)
    c.entries.append(
        Entry("castar", "castar", "castar load -i FILE", f"{load} -i {a}", _fresh(store))
    )
    if base:
        c.entries += [
            Entry(
                "python",
                "baseline",
                "sync read+sha256+write of the blobs (1 thread)",
                f"{py} -m bench._baseline {layout}/blobs/sha256 {d}",
                _fresh(dest),
            ),
            Entry(
                "python-syncfs",
                "baseline",
                "the same, then one syncfs (the one-sync baseline)",
                f"{py} -m bench._baseline --sync {layout}/blobs/sha256 {d}",
                _fresh(dest),
            ),
            Entry(
                "dd",
                "baseline",
                "dd bs=1M conv=fsync of the case's bytes (the durable limit)",
                f"dd if=/dev/zero of={d} bs=1M count={math.ceil(arch.size / MIB)} conv=fsync "
                "status=none",
                _fresh(dest),
            ),
            Entry(
                "sha256sum",
                "baseline",
                "sha256sum over the blob files",
                f"cd {layout}/blobs/sha256 && sha256sum -- * > /dev/null",
            ),
            Entry(
                "tar",
                "baseline",
                "tar -xf FILE",
                f"mkdir -p {d} && tar -xf {a} -C {d}",
                _fresh(dest),
            ),
        ]
    if peer["ctr"]:
        c.entries.append(
            Entry(
                "ctr",
                "peer",
                "ctr images import --all-platforms --no-unpack",
                f"{ctr} images import --all-platforms --no-unpack {a}",
                ctr_dirty,
                ctrd,
            )
        )
    if peer["skopeo"]:
        c.entries.append(skopeo_load(a))

    if SHM.is_dir():
        shm = SHM / f"castar-bench-{work.name}"
        shm_store, shm_dest = shm / "store", shm / "dest"
        c = case("load-shm", "load all platforms into a store on tmpfs", arch.size, _fresh(shm))
        c.entries.append(
            Entry(
                "castar",
                "castar",
                "castar --root /dev/shm/… load -i FILE",
                f"{castar} --root {shlex.quote(str(shm_store))} load{quiet} -i {a}",
                _fresh(shm_store),
            )
        )
        if base:
            c.entries.append(
                Entry(
                    "python",
                    "baseline",
                    "sync read+sha256+write of the blobs into tmpfs (1 thread)",
                    f"{py} -m bench._baseline {layout}/blobs/sha256 {shlex.quote(str(shm_dest))}",
                    _fresh(shm_dest),
                )
            )
    else:
        opts.skipped.append({"case": "load-shm", "tool": "*", "note": f"no {SHM}"})

    c = case("load-pipe", "load all platforms from a pipe", arch.size, clean_load)
    c.entries.append(
        Entry("castar", "castar", "cat FILE | castar load", f"cat {a} | {load}", _fresh(store))
    )
    if base:
        c.entries.append(
            Entry(
                "tar",
                "baseline",
                "cat FILE | tar -xf -",
                f"mkdir -p {d} && cat {a} | tar -xf - -C {d}",
                _fresh(dest),
            )
        )
    if peer["ctr"]:
        c.entries.append(
            Entry(
                "ctr",
                "peer",
                "cat FILE | ctr images import --all-platforms -",
                f"cat {a} | {ctr} images import --all-platforms --no-unpack -",
                ctr_dirty,
                ctrd,
            )
        )

    if n_plat >= 2:
        c = case("load-one", f"load one platform ({one}) of {n_plat}", arch.size, clean_load)
        c.entries.append(
            Entry(
                "castar",
                "castar",
                f"castar load --platform {one}",
                f"{load} -i {a} --platform {one}",
                _fresh(store),
            )
        )
        if peer["ctr"]:
            c.entries.append(
                Entry(
                    "ctr",
                    "peer",
                    f"ctr images import --platform {one}",
                    f"{ctr} images import --platform {one} --no-unpack {a}",
                    ctr_dirty,
                    ctrd,
                )
            )
        if peer["skopeo"]:
            os_, arch_ = one.split("/")[:2]
            c.entries.append(
                Entry(
                    "skopeo",
                    "peer",
                    f"skopeo copy --override-arch {arch_} oci-archive: oci:",
                    f"{skopeo} --override-os {os_} --override-arch {arch_} "
                    f"oci-archive:{a} oci:{d}:x",
                    _fresh(dest),
                )
            )
        if peer["umoci"]:
            bundle = shlex.quote(str(dest / "bundle"))
            c.entries.append(
                Entry(
                    "umoci",
                    "peer",
                    f"umoci unpack of a {one} layout (extracts the rootfs too)",
                    f"mkdir -p {d} && umoci unpack --rootless --image {single}:latest {bundle}",
                    _fresh(dest),
                )
            )
    else:
        opts.skipped.append({"case": "load-one", "tool": "*", "note": "needs >= 2 platforms"})

    if n_plat >= 3:
        c = case("load-two", f"load two platforms ({two}) of {n_plat}", arch.size, clean_load)
        c.entries.append(
            Entry(
                "castar",
                "castar",
                "castar load --platform A,B",
                f"{load} -i {a} --platform {two}",
                _fresh(store),
            )
        )
        if not opts.castar_only:
            opts.skipped.append(
                {
                    "case": "load-two",
                    "tool": "ctr/skopeo",
                    "note": "select one platform or all, not two",
                }
            )
    else:
        opts.skipped.append({"case": "load-two", "tool": "*", "note": "needs >= 3 platforms"})

    for kind, path, flag, unpack in (
        ("gzip", gz, "-z", "gzip -dc"),
        ("zstd", zst, "--zstd", "zstd -dcq"),
    ):
        c = case(
            f"load-{kind}",
            f"load a {kind}-compressed archive (whole archive)",
            arch.size,
            clean_load,
        )
        c.entries.append(
            Entry(
                "castar",
                "castar",
                f"castar load -i FILE.{kind}",
                f"{load} -i {path}",
                _fresh(store),
            )
        )
        if base:
            c.entries.append(
                Entry(
                    "tar",
                    "baseline",
                    f"tar {flag} -xf FILE",
                    f"mkdir -p {d} && tar {flag} -xf {path} -C {d}",
                    _fresh(dest),
                )
            )
        if peer["ctr"]:
            c.entries.append(
                Entry(
                    "ctr",
                    "peer",
                    # ctr 1.6 reads only plain tars ("invalid tar header"): decompress for it
                    f"{unpack} | ctr images import --all-platforms -",
                    f"{unpack} {path} | {ctr} images import --all-platforms --no-unpack -",
                    ctr_dirty,
                    ctrd,
                )
            )

    # -- save ---------------------------------------------------------------------------------
    clean_save = _fresh(out, dest)
    c = case("save-file", "save all platforms to a file", 0, clean_save)
    c.entries.append(
        Entry("castar", "castar", "castar save -o FILE", f"{save} -o {o}", saved_ready, output=out)
    )
    if base:
        c.entries.append(
            Entry(
                "tar",
                "baseline",
                "tar -cf FILE (the layout)",
                f"tar -cf {o} -C {layout} .",
                _fresh(out),
            )
        )
    if peer["ctr"]:
        c.entries.append(
            Entry(
                "ctr",
                "peer",
                "ctr images export --all-platforms",
                f"{ctr} images export --all-platforms {o} {IMAGE}",
                ctr_loaded,
                ctrd,
            )
        )
    if peer["skopeo"]:
        c.entries.append(skopeo_save(layout))

    c = case("save-pipe", "save all platforms to a pipe", 0, clean_save)
    c.bytes_from = "save-file"  # a pipe leaves no file: count what save-file wrote
    c.entries.append(
        Entry(
            "castar",
            "castar",
            "castar save | cat",
            f"{save} | cat > /dev/null",
            saved_ready,
            output=None,
        )
    )
    if base:
        c.entries.append(
            Entry(
                "tar",
                "baseline",
                "tar -cf - (the layout) | cat",
                f"tar -cf - -C {layout} . | cat > /dev/null",
            )
        )
    if peer["ctr"]:
        c.entries.append(
            Entry(
                "ctr",
                "peer",
                "ctr images export --all-platforms - | cat",
                f"{ctr} images export --all-platforms - {IMAGE} | cat > /dev/null",
                ctr_loaded,
                ctrd,
            )
        )

    if n_plat >= 3:
        c = case("save-two", f"save two platforms ({two}) to a file", 0, clean_save)
        c.entries.append(
            Entry(
                "castar",
                "castar",
                "castar save --platform A,B -o FILE",
                f"{save} --platform {two} -o {o}",
                saved_ready,
                output=out,
            )
        )
    if n_plat >= 2:
        c = case("save-one", f"save one platform ({one}) to a file", 0, clean_save)
        c.entries.append(
            Entry(
                "castar",
                "castar",
                f"castar save --platform {one} -o FILE",
                f"{save} --platform {one} -o {o}",
                saved_ready,
                output=out,
            )
        )
        if peer["ctr"]:
            c.entries.append(
                Entry(
                    "ctr",
                    "peer",
                    f"ctr images export --platform {one}",
                    f"{ctr} images export --platform {one} {o} {IMAGE}",
                    ctr_loaded,
                    ctrd,
                )
            )
        if peer["skopeo"]:
            os_, arch_ = one.split("/")[:2]
            c.entries.append(
                Entry(
                    "skopeo",
                    "peer",
                    f"skopeo copy --override-arch {arch_} oci: oci-archive:",
                    f"{skopeo} --override-os {os_} --override-arch {arch_} oci:{layout} "
                    f"oci-archive:{o}",
                    _fresh(out),
                )
            )

    c = case("save-16", "16 concurrent one-platform saves (one process, save_many)", 0, clean_save)
    c.entries.append(
        Entry(
            "castar",
            "castar",
            "save_many: 16 saves, platforms in turn",
            f"{py} -m bench._castar_case --backend {opts.backend} --root "
            f"{shlex.quote(str(saved_store))} save-many --count 16 --out {o} {IMAGE} > /dev/null",
            saved_ready,
            output=out,
        )
    )

    # -- round trip ---------------------------------------------------------------------------
    c = case(
        "roundtrip",
        "load a file into a fresh store, then save it to a file",
        arch.size,
        _fresh(store, out, dest),
    )
    c.entries.append(
        Entry(
            "castar",
            "castar",
            "castar load -i FILE && castar save -o FILE",
            f"{load} -i {a} && {castar} --root {shlex.quote(str(store))} save{quiet} {IMAGE} "
            f"-o {o}",
            _fresh(store, out),
        )
    )
    if peer["ctr"]:
        c.entries.append(
            Entry(
                "ctr",
                "peer",
                "ctr images import --all-platforms && ctr images export --all-platforms",
                f"{ctr} images import --all-platforms --no-unpack {a} && "
                f"{ctr} images export --all-platforms {o} {IMAGE}",
                ctr_dirty,
                ctrd,
            )
        )
    if peer["skopeo"]:
        c.entries.append(
            Entry(
                "skopeo",
                "peer",
                "skopeo copy --all oci-archive: oci-archive:",
                f"{skopeo} --all oci-archive:{a} oci-archive:{o}",
                _fresh(out),
            )
        )

    if reg is not None:
        cases += _registry_cases(arch, work, opts, reg, shared, one, castar, saved_ready, peer)
    else:
        opts.skipped.append(
            {"case": ",".join(REGISTRY_CASES), "tool": "*", "note": f"no {REGISTRY}"}
        )

    _skip_missing(opts)
    if opts.castar_only:
        cases = [c for c in cases if c.id not in NOT_CASTAR_ONLY]
    if opts.cases:
        cases = [c for c in cases if c.id in opts.cases]
    return cases


def _skip_missing(opts: Options) -> None:
    if opts.castar_only:
        opts.skipped.append({"case": "*", "tool": "baselines, peers", "note": "--castar-only"})
        return
    for p in opts.peers:
        need = ("containerd", "ctr") if p == "ctr" else (p,)
        missing = [n for n in need if shutil.which(n) is None]
        if missing:
            opts.skipped.append(
                {"case": "*", "tool": p, "note": f"{', '.join(missing)} not installed"}
            )


def _registry_cases(
    arch: Archives,
    work: Path,
    opts: Options,
    reg: DockerRegistry,
    shared: tuple[Path, int] | None,
    one: str,
    castar: str,
    saved_ready: Callable[[], None],
    peer: dict[str, bool],
) -> list[Case]:
    """pull, pull-one, push, push-one and push-16 against ``reg`` on loopback.

    Every case counts the bytes of every blob of the image (documents included), also
    when one platform is moved: rates compare as times do. A pull starts from a fresh
    store and a registry holding the image (pushed once, untimed); a push from the loaded
    store and an empty registry (restarted on fresh storage before every run).
    """
    py = shlex.quote(sys.executable)
    store, saved_store, dest = work / "store", work / "saved-store", work / "dest"
    shared_store = work / "shared-store"
    d = shlex.quote(str(dest))
    ref = f"{reg.host}/bench/synth:latest"
    skopeo = "skopeo copy -q"
    nbytes = sum(b.size for b in arch.image.blobs)
    os_, arch_ = one.split("/")[:2]
    pull = f"{castar} --root {shlex.quote(str(store))} pull -q"
    push = f"{castar} --root {shlex.quote(str(saved_store))} push -q"
    cases: list[Case] = []

    def holds_image(*gone: Path) -> Callable[[], None]:
        def setup() -> None:
            if reg.state != "image":
                reg.start(fresh=True)
                saved_ready()
                subprocess.run(
                    [*shlex.split(push), IMAGE, ref], check=True, stdout=subprocess.DEVNULL
                )
                reg.state = "image"
            for p in gone:
                ensure_dir_gone(p)

        return setup

    def forget() -> None:  # after a push case, what the registry holds is unknown
        reg.state = ""

    def empty(*then: Callable[[], None]) -> Callable[[], None]:
        def setup() -> None:
            for f in then:
                f()
            reg.start(fresh=True)

        return setup

    blobs = [b for b in arch.image.blobs if not _is_document(b.media_type)]
    get_cfg = work / "curl-get.cfg"
    lines = [f'header = "Accept: {ACCEPT}"']
    for i, b in enumerate(arch.image.blobs):
        kind = "manifests" if _is_document(b.media_type) else "blobs"
        lines += [f'url = "{reg.url}/v2/bench/synth/{kind}/{b.digest}"', f'output = "{dest}/{i}"']
    get_cfg.write_text("\n".join(lines) + "\n")
    put_sh, files = work / "curl-put.sh", arch.layout / "blobs" / "sha256"
    put_sh.write_text(
        "set -euo pipefail\n"
        f"base={reg.url}/v2/bench/synth/blobs/uploads/\n"
        "up() {\n"
        '  loc=$(curl -sSf -X POST -D - -o /dev/null "$base" | tr -d "\\r"'
        " | sed -n 's/^[Ll]ocation: //p')\n"
        "  curl -sSf -o /dev/null -X PUT -H 'Content-Type: application/octet-stream' "
        '--data-binary "@$2" "$loc&digest=$1"\n'
        "}\n"
        + "".join(f"up {b.digest} {shlex.quote(str(files / b.digest.encoded))}\n" for b in blobs)
    )
    curl = not opts.castar_only and shutil.which("curl") is not None
    base = not opts.castar_only

    layout = shlex.quote(str(arch.layout))
    one_of = f"{skopeo} --override-os {os_} --override-arch {arch_}"
    dd = f"dd if=/dev/zero of={d} bs=1M count={math.ceil(nbytes / MIB)} conv=fsync status=none"
    pulled, pushed, into = holds_image(dest), empty(), holds_image(store)
    rows: dict[tuple[str, str], list[tuple[str, str, str, Callable[[], None]]]] = {
        ("pull", "pull all platforms from the registry (loopback)"): [
            ("castar", "castar pull --all-platforms", f"{pull} --all-platforms {ref}", into),
            (
                "curl",
                "curl GET of every blob to a file (one connection)",
                f"mkdir -p {d} && curl -sSf -K {shlex.quote(str(get_cfg))}",
                pulled,
            ),
            ("dd", "dd bs=1M conv=fsync of the case's bytes (the durable limit)", dd, _fresh(dest)),
            (
                "skopeo",
                "skopeo copy --all docker:// oci:",
                f"{skopeo} --all --src-tls-verify=false docker://{ref} oci:{d}:x",
                pulled,
            ),
        ],
        ("pull-one", f"pull one platform ({one}) of {len(arch.image.platforms)}"): [
            ("castar", f"castar pull --platform {one}", f"{pull} --platform {one} {ref}", into),
            (
                "skopeo",
                f"skopeo copy --override-arch {arch_} docker:// oci:",
                f"{one_of} --src-tls-verify=false docker://{ref} oci:{d}:x",
                pulled,
            ),
        ],
        ("push", "push all platforms to an empty registry (loopback)"): [
            ("castar", "castar push", f"{push} {IMAGE} {ref}", empty(saved_ready)),
            (
                "curl",
                "curl POST + PUT --data-binary of every blob (manifests aside)",
                f"bash {shlex.quote(str(put_sh))}",
                pushed,
            ),
            (
                "skopeo",
                "skopeo copy --all oci: docker://",
                f"{skopeo} --all --dest-tls-verify=false oci:{layout} docker://{ref}",
                pushed,
            ),
        ],
        ("push-one", f"push one platform ({one}) to an empty registry"): [
            (
                "castar",
                f"castar push --platform {one}",
                f"{push} --platform {one} {IMAGE} {ref}",
                empty(saved_ready),
            ),
            (
                "skopeo",
                f"skopeo copy --override-arch {arch_} oci: docker://",
                f"{one_of} --dest-tls-verify=false oci:{layout} docker://{ref}",
                pushed,
            ),
        ],
    }
    use = {"castar": True, "curl": curl, "dd": base, "skopeo": peer["skopeo"]}
    kinds = {"castar": "castar", "curl": "baseline", "dd": "baseline", "skopeo": "peer"}
    for (cid, title), entries in rows.items():
        c = Case(cid, title, nbytes, cleanup=forget if cid.startswith("push") else None)
        c.entries += [Entry(t, kinds[t], what, cmd, up) for t, what, cmd, up in entries if use[t]]
        cases.append(c)

    if shared is None:  # not asked for: its archive is not written
        return cases
    summary = work / "push-16.txt"
    c = Case(
        "push-16",
        "16 concurrent one-platform pushes sharing a base layer (one process, one client)",
        shared[1],
    )
    c.cleanup = forget
    cases.append(c)
    c.entries.append(
        Entry(
            "castar",
            "castar",
            "16 pushes to one repository, platforms in turn",
            f"{py} -m bench._castar_case --backend {opts.backend} --root "
            f"{shlex.quote(str(shared_store))} push-many --count 16 {IMAGE} "
            f"{reg.host}/bench/shared > {shlex.quote(str(summary))}",
            empty(_loaded(castar, shared_store, shared[0], summary)),
            report=summary,
        )
    )
    return cases


def _is_document(media_type: str) -> bool:
    return "manifest" in media_type or "index" in media_type
