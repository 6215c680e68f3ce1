"""The benchmark harness behind ``python -m bench``: workloads, archives, timed runs.

Owns the presets, the ``Workload`` → archives step (castar's own generator,
``castar.engine.synth``, deterministic for a seed), and ``measure``: one whole
process per run under ``/usr/bin/time -v`` (wall time from the harness, peak RSS
from time), with an untimed setup before each run. Cases are in ``bench._cases``,
the report in ``bench._report``. Imports castar only for the generator.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from castar.engine import synth

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bench import _cases

#: The platforms workloads take from, in order (``--platforms N`` takes the first N).
PLATFORMS = (
    "linux/amd64",
    "linux/arm64",
    "linux/arm/v7",
    "linux/arm/v6",
    "linux/386",
    "linux/ppc64le",
    "linux/s390x",
    "linux/riscv64",
)
MIB = 1 << 20
TIME = "/usr/bin/time"
TIMED_OUT = "timed out"
IMAGE = "docker.io/library/synth:latest"
REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True, slots=True)
class Workload:
    """The synthetic image every case of one run works on."""

    platforms: tuple[str, ...] = PLATFORMS[:4]
    layers: int = 4
    layer_size: int = 16 * MIB
    compression: str = "none"
    shared_fraction: float = 0.0
    attestations: bool = False
    order: str = "castar"
    seed: int = 0

    def spec(self) -> synth.SynthSpec:
        """The generator's spec for this workload."""
        return synth.SynthSpec(
            name=IMAGE,
            platforms=self.platforms,
            layers=self.layers,
            layer_size=self.layer_size,
            compression=self.compression,  # type: ignore[arg-type]
            shared_fraction=self.shared_fraction,
            attestations=self.attestations,
            order=self.order,  # type: ignore[arg-type]
            seed=self.seed,
        )

    def key(self) -> str:
        """A short stable name for the archives of this workload (cache directory)."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """One line for the report."""
        extra = []
        if self.shared_fraction:
            extra.append(f"shared {self.shared_fraction:g}")
        if self.attestations:
            extra.append("attestations")
        if self.compression != "none":
            extra.append(f"{self.compression} layers")
        extra.append(f"{self.order} order")
        extra.append(f"seed {self.seed}")
        return (
            f"{len(self.platforms)} platform{'s' if len(self.platforms) != 1 else ''} x "
            f"{self.layers} layers x "
            f"{_size(self.layer_size)} ({', '.join(extra)})"
        )


@dataclass(frozen=True, slots=True)
class Preset:
    """A named workload plus its default number of runs."""

    workload: Workload
    runs: int
    about: str


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        Workload(platforms=PLATFORMS[:3], layers=2, layer_size=128 << 10),
        1,
        "3 x 2 x 128 KiB: seconds, the CI smoke run",
    ),
    "medium": Preset(Workload(platforms=PLATFORMS[:4], layers=4, layer_size=16 * MIB), 3, ""),
    "large": Preset(Workload(platforms=PLATFORMS, layers=4, layer_size=64 * MIB), 3, "~2 GiB"),
    "many": Preset(
        Workload(platforms=PLATFORMS[:1], layers=5000, layer_size=16 << 10),
        3,
        "one platform, 5,000 layers of 16 KiB",
    ),
    "shared": Preset(
        Workload(platforms=PLATFORMS[:4], layers=4, layer_size=16 * MIB, shared_fraction=0.5),
        3,
        "half of each platform's layers shared by all",
    ),
}


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit == "B" else f"{n:.4g} {unit}"
        n /= 1024
    raise AssertionError


# -- archives -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Archives:
    """The inputs every case of a run shares (written once per workload, then reused).

    Attributes:
        plain: the archive (``castar`` or ``containerd`` order as asked).
        gzip: ``plain`` gzip-compressed as a whole (level 1).
        zstd: ``plain`` zstd-compressed as a whole (level 1).
        layout: the same image as an OCI layout directory (tar -cf, sha256sum, skopeo).
        single: a one-platform layout of the same blobs, ``index.json`` pointing at
            the selected platform's manifest (umoci reads only that).
        size: bytes of ``plain``.
        blobs: number of distinct blobs.
        image: the plan (digests, per-platform descriptors).
    """

    plain: Path
    gzip: Path
    zstd: Path
    layout: Path
    single: Path
    size: int
    blobs: int
    image: synth.SynthImage = field(repr=False)


def prepare(workload: Workload, cache: Path, one_platform: str) -> Archives:
    """Write (or reuse) the archives of ``workload`` under ``cache/<key>/``."""
    d = cache / workload.key()
    done = d / "done.json"
    image = synth.plan(workload.spec())
    paths = Archives(
        d / "archive.tar",
        d / "archive.tar.gz",
        d / "archive.tar.zst",
        d / "layout",
        d / "single",
        image.size,
        len(image.blobs),
        image,
    )
    if done.exists() and json.loads(done.read_text()).get("size") == image.size:
        return paths
    # Written beside and renamed into place, so a concurrent or interrupted bench never
    # sees half an archive set.
    shutil.rmtree(d, ignore_errors=True)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=f".{d.name}-"))
    try:
        synth.write_path(image, tmp / paths.plain.name)
        _compress(tmp / paths.plain.name, tmp / paths.gzip.name, "gzip")
        _compress(tmp / paths.plain.name, tmp / paths.zstd.name, "zstd")
        synth.write_layout(image, tmp / paths.layout.name)
        _single_layout(image, tmp / paths.layout.name, tmp / paths.single.name, one_platform)
        (tmp / done.name).write_text(json.dumps({"size": image.size, **asdict(workload)}))
        try:
            tmp.rename(d)
        except OSError:  # another bench got there first with the same archives
            if not done.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return paths


def _compress(src: Path, dst: Path, kind: str) -> None:
    with open(src, "rb") as fin, open(dst, "wb") as raw:
        if kind == "gzip":
            # isal when installed: the fast deflate (IO-LIMITS §2.11); level 1 either way.
            try:
                make: Any = importlib.import_module("isal.igzip").IGzipFile
            except ImportError:
                make = importlib.import_module("gzip").GzipFile
            out: Any = make(filename="", fileobj=raw, mode="wb", compresslevel=1, mtime=0)
        else:
            import zstandard

            out = zstandard.ZstdCompressor(level=1).stream_writer(raw, closefd=False)
        with out:
            while chunk := fin.read(MIB):
                out.write(chunk)


def _single_layout(image: synth.SynthImage, layout: Path, dst: Path, spec: str) -> None:
    """A layout whose index.json names one platform's manifest; blobs hard-linked."""
    from castar.engine import platforms as plat

    want = plat.normalize(plat.parse(spec))
    chosen = next((p for p in image.platforms if p.platform == want), image.platforms[0])
    (dst / "blobs" / "sha256").mkdir(parents=True)
    for desc in (chosen.manifest, chosen.config, *chosen.layers):
        name = desc.digest.encoded
        target = dst / "blobs" / "sha256" / name
        if not target.exists():
            os.link(layout / "blobs" / "sha256" / name, target)
    shutil.copy(layout / "oci-layout", dst / "oci-layout")
    entry = {
        "mediaType": chosen.manifest.media_type,
        "digest": str(chosen.manifest.digest),
        "size": chosen.manifest.size,
        "annotations": {"org.opencontainers.image.ref.name": "latest"},
    }
    index = {"schemaVersion": 2, "manifests": [entry]}
    (dst / "index.json").write_text(json.dumps(index))


# -- timed runs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Run:
    """One timed process: wall seconds, peak RSS (KiB), exit status."""

    seconds: float
    rss_kib: int
    rc: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One tool's command within a case.

    Attributes:
        tool: ``castar`` or the peer/baseline name (``ctr``, ``skopeo``, ``tar`` ...).
        kind: ``castar``, ``baseline`` or ``peer``.
        label: what is run, for the table (``ctr images import --all-platforms``).
        command: the shell command timed (``bash -c``, pipefail).
        setup: untimed, before each run (fresh store, output removed).
        daemon: a daemon whose peak RSS adds to the client's (containerd).
        output: a file whose size, after the first run, becomes the case's bytes.
    """

    tool: str
    kind: str
    label: str
    command: str
    setup: Callable[[], None] | None = None
    daemon: Any = None
    output: Path | None = None


@dataclass(slots=True)
class Result:
    """Every run of one entry of one case."""

    case: str
    tool: str
    kind: str
    label: str
    command: str
    bytes: int
    runs: list[Run]
    note: str = ""

    @property
    def ok(self) -> bool:
        """Every run exited 0."""
        return bool(self.runs) and all(r.rc == 0 for r in self.runs)

    @property
    def median(self) -> float:
        """Median wall seconds of the runs."""
        return statistics.median(r.seconds for r in self.runs)

    @property
    def mbps(self) -> float:
        """Case bytes / median seconds, in MB/s (10^6 bytes)."""
        return self.bytes / self.median / 1e6 if self.ok and self.median > 0 else 0.0

    @property
    def best_mbps(self) -> float:
        """Case bytes / fastest run, in MB/s: what the tool does when the machine is quiet."""
        fastest = min((r.seconds for r in self.runs), default=0.0)
        return self.bytes / fastest / 1e6 if self.ok and fastest > 0 else 0.0

    @property
    def spread(self) -> float:
        """(max - min) / median of the run times, as a fraction."""
        times = [r.seconds for r in self.runs]
        return (max(times) - min(times)) / self.median if self.median > 0 else 0.0

    @property
    def rss_kib(self) -> int:
        """The largest peak RSS over the runs, in KiB."""
        return max((r.rss_kib for r in self.runs), default=0)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Result:
        """Back from :meth:`to_json` (``--report``, ``--compare``)."""
        return cls(
            obj["case"],
            obj["tool"],
            obj["kind"],
            obj["label"],
            obj["command"],
            obj["bytes"],
            [Run(**r) for r in obj["runs"]],
            obj.get("note", ""),
        )

    def to_json(self) -> dict[str, Any]:
        """Everything, every run included."""
        return {
            "case": self.case,
            "tool": self.tool,
            "kind": self.kind,
            "label": self.label,
            "command": self.command,
            "bytes": self.bytes,
            "ok": self.ok,
            "median_s": self.median if self.runs else None,
            "spread": self.spread if self.runs else None,
            "mbps": self.mbps,
            "best_mbps": self.best_mbps,
            "rss_kib": self.rss_kib,
            "runs": [asdict(r) for r in self.runs],
            "note": self.note,
        }


def measure(
    entry: Entry, runs: int, scratch: Path, *, env: dict[str, str], timeout: float = 0
) -> tuple[list[Run], str]:
    """Run ``entry.command`` ``runs`` times as whole processes; stops at the first failure.

    A run that takes longer than ``timeout`` seconds (0: no limit) is killed with its
    whole process group and counts as failed (``TIMED_OUT`` in the note).

    Returns:
        The runs and, when a run failed, the tail of its stderr.
    """
    done: list[Run] = []
    scratch.mkdir(parents=True, exist_ok=True)
    rss_file, err_file = scratch / "time.txt", scratch / "stderr.txt"
    argv = ["bash", "-c", f"set -euo pipefail; {entry.command}"]
    # /usr/bin/time -v reports the peak RSS; without it, wait4's rusage of bash (which
    # covers every process bash waited for) gives the same figure.
    timed = Path(TIME).exists()
    if timed:
        argv = [TIME, "-v", "-o", str(rss_file), *argv]
    for _ in range(runs):
        if entry.setup is not None:
            entry.setup()
        if entry.daemon is not None:
            entry.daemon.reset_peak()
        with open(err_file, "wb") as err:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err,
                env=env,
                cwd=REPO,
                start_new_session=True,  # its own process group: a timeout kills it all
            )
            expired = threading.Event()

            def kill(pgid: int = proc.pid, expired: threading.Event = expired) -> None:
                expired.set()
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)

            timer = threading.Timer(timeout, kill) if timeout > 0 else None
            if timer is not None:
                timer.start()
            try:
                _, status, usage = os.wait4(proc.pid, 0)
            except BaseException:  # interrupted: leave no benchmark process behind
                kill()
                proc.wait()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            seconds = time.perf_counter() - t0
            proc.returncode = rc = os.waitstatus_to_exitcode(status)
        if expired.is_set():
            done.append(Run(seconds, 0, rc or -9))
            return done, f"{TIMED_OUT} after {timeout:g} s"
        rss = _max_rss(rss_file) if timed else usage.ru_maxrss
        if entry.daemon is not None:
            rss += entry.daemon.peak_kib()
        done.append(Run(seconds, rss, rc))
        if rc != 0:
            tail = err_file.read_text(errors="replace").strip().splitlines()[-6:]
            return done, " | ".join(tail)
    return done, ""


def _max_rss(path: Path) -> int:
    try:
        for line in path.read_text().splitlines():
            if "Maximum resident set size" in line:
                return int(line.rsplit(":", 1)[1])
    except (OSError, ValueError):
        pass
    return 0


def run_cases(
    cases: Sequence[_cases.Case],
    runs: int,
    scratch: Path,
    *,
    log: Callable[[str], None],
    timeout: float = 0,
) -> list[Result]:
    """Measure every entry of every case, castar first so its output sets the case bytes.

    A peer or baseline that times out is not run again in later cases (noted); castar is.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TMPDIR"] = str(scratch / "tmp")  # skopeo unpacks oci-archive: sources there
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    results: list[Result] = []
    resolved: dict[str, int] = {}
    slow: dict[str, str] = {}  # tool -> the case it timed out in
    for case in cases:
        case_bytes = resolved.get(case.bytes_from, case.bytes)
        if case.bytes_from and case.bytes_from not in resolved:
            case_bytes = _castar_save_size(case, env, scratch)
        for entry in case.entries:
            log(f"  {case.id:<14} {entry.tool:<9} {entry.label}")
            done: list[Run] = []
            if entry.tool in slow:
                err = f"not run: {TIMED_OUT} in {slow[entry.tool]}"
            else:
                try:
                    done, err = measure(entry, runs, scratch / "proc", env=env, timeout=timeout)
                except Exception as exc:  # a setup step of a peer failed: note it, go on
                    err = f"setup failed: {exc}"
                if err.startswith(TIMED_OUT) and entry.kind != "castar":
                    slow[entry.tool] = case.id
            if entry.output is not None and done and done[0].rc == 0 and entry.output.exists():
                case_bytes = _tree_size(entry.output)
            results.append(
                Result(
                    case.id,
                    entry.tool,
                    entry.kind,
                    entry.label,
                    entry.command,
                    case_bytes,
                    done,
                    err,
                )
            )
            if err:
                log(f"    failed: {err}")
        resolved[case.id] = case_bytes
        if case.cleanup is not None:
            case.cleanup()
    return results


def _castar_save_size(case: _cases.Case, env: dict[str, str], scratch: Path) -> int:
    """The size of what castar's first entry writes, measured once through ``wc -c``."""
    entry = case.entries[0]
    if entry.setup is not None:
        entry.setup()
    cmd = entry.command.replace("| cat > /dev/null", "| wc -c")
    out = subprocess.run(
        ["bash", "-c", f"set -euo pipefail; {cmd}"],
        capture_output=True,
        env=env,
        cwd=REPO,
        check=False,
    )
    try:
        return int(out.stdout.split()[-1])
    except (IndexError, ValueError):
        return 0


def start_time(runs: int = 3) -> float:
    """Median seconds for ``python -m castar --version``: the fixed cost in every castar case."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "castar", "--version"],
            cwd=REPO,
            capture_output=True,
            check=False,
        )
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _tree_size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def host() -> dict[str, Any]:
    """What the figures were measured on."""
    import platform

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
    }
