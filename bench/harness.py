"""The benchmark harness behind ``python -m bench``: timed whole-process runs.

Owns ``Entry`` (one tool's command in a case), ``Run``/``Result`` and ``measure``: one
whole process per run under ``/usr/bin/time -v`` (wall time from the harness, peak RSS
from time), an untimed setup before each run, a per-run timeout. Workloads and archives
are in ``bench._workload``, cases in ``bench._cases``, the report in ``bench._report``.
Imports no castar.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from bench import _cases

TIME = "/usr/bin/time"
TIMED_OUT = "timed out"
REPO = Path(__file__).resolve().parent.parent


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
        report: a file the command writes whose text, after the runs, is the result's note.
    """

    tool: str
    kind: str
    label: str
    command: str
    setup: Callable[[], None] | None = None
    daemon: Any = None
    output: Path | None = None
    report: Path | None = None


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
    warmup: Sequence[str] = (),
) -> list[Result]:
    """Measure every entry of every case, castar first so its output sets the case bytes.

    The ``warmup`` commands run once first, untimed.

    A peer or baseline that times out is not run again in later cases (noted); castar is.
    """
    env = bench_env(scratch)
    for cmd in warmup:  # untimed: the bytecode caches every later run finds
        subprocess.run(["bash", "-c", cmd], env=env, cwd=REPO, capture_output=True, check=False)
    results: list[Result] = []
    resolved: dict[str, int] = {}
    slow: dict[str, str] = {}  # tool -> the case it timed out in
    for case in cases:
        case_bytes = resolved.get(case.bytes_from, case.bytes)
        if case.bytes_from and case.bytes_from not in resolved:
            case_bytes = _castar_save_size(case, env, scratch)
        try:
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
                if entry.report is not None and done and entry.report.exists():
                    err = " | ".join(x for x in (entry.report.read_text().strip(), err) if x)
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
                    log(f"    {'note' if results[-1].ok else 'failed'}: {err}")
        finally:  # a busy writer or a tmpfs store is gone also when a case is interrupted
            if case.cleanup is not None:
                case.cleanup()
        resolved[case.id] = case_bytes
    return results


def bench_env(scratch: Path) -> dict[str, str]:
    """The environment of every timed process.

    Bytecode is cached as an installed program's is (``PYTHONDONTWRITEBYTECODE`` would
    make every run compile castar's and the stdlib's sources again), in a cache beside
    the scratch directory rather than in the source tree.
    """
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(scratch.parent / "pycache")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["TMPDIR"] = str(scratch / "tmp")  # skopeo unpacks oci-archive: sources there
    (scratch / "tmp").mkdir(parents=True, exist_ok=True)
    return env


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


def start_time(scratch: Path, runs: int = 3) -> float:
    """Median seconds for ``python -m castar --version``: the fixed cost in every castar case."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "castar", "--version"],
            cwd=REPO,
            env=bench_env(scratch),
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
