"""The reliability campaign's moves and checks, shared by tests/stress and ``bench.reliability``.

Commands run as ``python -m castar`` processes from a directory outside any checkout; the
checks open the store in this process. ``audit`` sorts what it finds into the report's
columns: ``torn`` (verify finds a corrupt or missing blob), ``lost`` (an image that was
complete is not, or the store does not reopen), ``stuck`` (a lock still held, a command
that hangs) and findings (any other broken invariant).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import anyio

from castar import Store, open_store
from castar.engine import reference, synth
from castar.engine.platforms import Platform
from castar.store.errors import CastarError

#: A generous bound on one command: a guard against hangs, never a speed check.
HANG = 300.0
#: Memory a command may use on hostile input (ru_maxrss of the child).
MAX_RSS = 100 << 20

T = TypeVar("T")


def long_run() -> bool:
    """The long campaign (``CASTAR_STRESS=long``, as ``bench.reliability`` sets it)."""
    return os.environ.get("CASTAR_STRESS") == "long"


def knob(short: T, long: T) -> T:
    """``long`` in the long campaign, else ``short`` (the pass CI runs)."""
    return long if long_run() else short


# -- commands ------------------------------------------------------------------------------------


@dataclass
class Run:
    """One finished command: exit code (negative: the signal), output, peak memory, time."""

    rc: int
    out: str
    err: str
    maxrss: int
    seconds: float
    hung: bool = False

    @property
    def error(self) -> str:
        lines = [ln for ln in self.err.splitlines() if ln.startswith("castar: error:")]
        return lines[-1] if lines else ""

    def describe(self) -> str:
        return f"exit {self.rc}: {self.error or self.err[-300:]!r}"


class Command:
    """A running ``castar`` process; ``pipe`` feeds that file through a real pipe on stdin.

    ``feed``: give only that many bytes of it, then hold the pipe open until the process ends.
    ``measure``: start it from a small wrapper process, so its peak memory is its own (a child
    forked straight from this process starts its high-water mark at this process's size).
    """

    def __init__(
        self,
        root: Path,
        *args: str,
        pipe: Path | None = None,
        feed: int | None = None,
        measure: bool = False,
    ) -> None:
        self._done = threading.Event()
        self._out = tempfile.TemporaryFile()  # noqa: SIM115 - closed by wait()
        self._err = tempfile.TemporaryFile()  # noqa: SIM115
        env = {k: v for k, v in os.environ.items() if not k.startswith("CASTAR_")}
        self.started = time.monotonic()
        argv = [sys.executable, "-m", "castar", "--root", str(root), *args]
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MEASURE, *argv] if measure else argv,
            stdin=subprocess.PIPE if pipe is not None else subprocess.DEVNULL,
            stdout=self._out,
            stderr=self._err,
            cwd=neutral_dir(),
            env=env,
            start_new_session=measure,  # the hang guard then ends the wrapper and its child
        )
        self._group = measure
        self._feeder = None
        if pipe is not None:
            self._feeder = threading.Thread(target=self._feed, args=(pipe, feed), daemon=True)
            self._feeder.start()

    def _feed(self, path: Path, feed: int | None) -> None:
        stdin = self.proc.stdin
        assert stdin is not None
        with contextlib.suppress(OSError), stdin, path.open("rb") as f:
            if feed is None:
                shutil.copyfileobj(f, stdin, 1 << 20)
                return
            stdin.write(f.read(feed))
            stdin.flush()
            self._done.wait()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            (os.killpg if self._group else os.kill)(self.proc.pid, signal.SIGKILL)

    def wait(self, timeout: float = HANG) -> Run:
        deadline = time.monotonic() + timeout
        hung = False
        while True:
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                hung = True
                self.kill()
            time.sleep(0.005)
        self._done.set()
        seconds = time.monotonic() - self.started
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        if self._feeder is not None:
            self._feeder.join()
        text = []
        for f in (self._out, self._err):
            f.seek(0)
            text.append(f.read().decode(errors="replace"))
            f.close()
        rss = usage.ru_maxrss
        err, tag, measured = text[1].rpartition(_MAXRSS)
        if tag:
            text[1], rss = err, int(measured)
        return Run(self.proc.returncode, text[0], text[1], rss * 1024, seconds, hung)


_MAXRSS = "\ncastar-stress maxrss "
_MEASURE = f"""
import resource, subprocess, sys
rc = subprocess.call(sys.argv[1:])
sys.stderr.write({_MAXRSS!r} + str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def castar(
    root: Path, *args: str, pipe: Path | None = None, timeout: float = HANG, measure: bool = False
) -> Run:
    """Run one command to its end."""
    return Command(root, *args, pipe=pipe, measure=measure).wait(timeout)


_NEUTRAL: list[Path] = []


def neutral_dir() -> Path:
    """The commands' working directory, outside any checkout; nothing may appear in it."""
    if not _NEUTRAL:
        _NEUTRAL.append(Path(tempfile.mkdtemp(prefix="castar-stress-cwd-")))
    return _NEUTRAL[0]


# -- archives ------------------------------------------------------------------------------------

KEEP = "docker.io/library/keep:latest"
VICTIM = "docker.io/library/victim:latest"
#: Two images that share their linux/amd64 layers (same seed, one platform in common).
SHARED = (("docker.io/library/a:latest", ("linux/amd64", "linux/arm64")),
          ("docker.io/library/b:latest", ("linux/amd64", "linux/arm/v7")))  # fmt: skip


def archive(
    path: Path, name: str, size: int, platforms: Sequence[str] = ("linux/amd64", "linux/arm64"),
    *, seed: int = 0, compression: synth.Compression = "none",
) -> synth.SynthImage:  # fmt: skip
    """A synthetic archive of about ``size`` bytes of layers (4 per platform)."""
    layer = max(size // (4 * len(platforms)), 1 << 10)
    spec = synth.SynthSpec(name, platforms, 4, layer, compression, seed=seed)
    return synth.write_path(spec, path)


# -- checks --------------------------------------------------------------------------------------


@dataclass
class Audit:
    """What one look at a store found, by report column."""

    torn: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def audit(
    root: Path, complete: Sequence[str] = (), printed: Sequence[str] = (), *, every: bool = False
) -> Audit:
    """Reopen the store and check it: verify, names, saves, locks.

    ``complete``: images that must be there with every platform available (``every``: all
    recorded ones); ``printed``: names a command printed, which must resolve.
    """
    found = Audit()
    try:
        anyio.run(_audit, root, complete, printed, every, found)
    except CastarError as exc:
        found.lost.append(f"store does not reopen: {exc}")
    found.stuck += held_locks(root)
    return found


async def _audit(
    root: Path, complete: Sequence[str], printed: Sequence[str], every: bool, found: Audit
) -> None:
    async with open_store(root) as s:
        report = await s.verify()
        found.torn += [str(p) for p in report.problems]
        trees = await s.images.tree()
        whole = set()
        for t in trees:
            found.names += t.names
            rows = [r for r in t.manifests if r.kind == "image"]
            if all(r.available for r in rows):
                whole.update(t.names)
            for name in t.names:
                shown = reference.display_name(name)
                try:
                    image = await s.images.resolve(shown)
                except CastarError as exc:
                    found.findings.append(f"listed name {shown} does not resolve: {exc}")
                    continue
                if image.target.digest != t.target.digest:
                    found.findings.append(f"listed name {shown} resolves to another image")
            for r in rows:
                if t.names and r.available:
                    await _save_one(s, t.names[0], r.platform, found)
        for name in printed:
            try:
                await s.images.resolve(name)
            except CastarError as exc:
                found.findings.append(f"printed name {name} does not resolve: {exc}")
        wanted = set(found.names) if every else set(complete)
        found.lost += [f"{reference.display_name(n)} is not complete" for n in wanted - whole]


async def _save_one(s: Store, name: str, platform: Platform | None, found: Audit) -> None:
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        await s.save([name], null, platforms=None if platform is None else [platform])
    except CastarError as exc:
        shown = reference.display_name(name)
        found.findings.append(f"{shown} lists {platform} available but save fails: {exc}")
    finally:
        os.close(null)


def printed_names(run: Run, verb: str = "Loaded") -> list[str]:
    """The names a load (a pull: ``verb`` ``Pulled``) printed (``Loaded image: NAME``)."""
    tag = f"{verb} image: "
    return [ln[len(tag) :] for ln in run.out.splitlines() if ln.startswith(tag)]


def held_locks(root: Path) -> list[str]:
    """The store's locks some process still holds (tried exclusively, without blocking)."""
    held = []
    for path in [root / "commit.lock", *root.glob("ingest/*/lock"), *root.glob("owners/*/lock")]:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            held.append(f"{path.relative_to(root)} is still locked")
        finally:
            os.close(fd)
    return held


def leftovers(root: Path) -> list[str]:
    """Leases and ingests still there after ``gc`` once no command runs (defect 4 shapes)."""
    if (root / "meta.db").exists():
        castar(root, "gc")
    out = []
    leases = castar(root, "lease", "ls", "--json")
    if leases.rc == 0 and leases.out.strip() not in ("", "[]"):
        out.append("a killed command's lease outlives it (defect 4)")
    ingest = root / "ingest"
    if ingest.is_dir() and any(p.is_dir() for p in ingest.iterdir()):
        out.append("a killed command's ingest outlives it (defect 4)")
    return out


def outside_changes(root: Path, *dirs: Path, allowed: Sequence[Path] = ()) -> list[str]:
    """Files in ``dirs`` (and the commands' cwd) but not in ``root`` nor ``allowed``."""
    keep = {p.resolve() for p in allowed}
    return [
        f"written outside the root: {p}"
        for d in (neutral_dir(), *dirs)
        for p in d.rglob("*")
        if p.is_file() and p.resolve() not in keep and not p.is_relative_to(root)
    ]


def remove(root: Path, *names: str) -> None:
    """Remove image names and collect (in this process)."""

    async def go() -> None:
        async with open_store(root) as s:
            with contextlib.suppress(CastarError):
                await s.images.remove(list(names))
            await s.gc()

    anyio.run(go)


# -- the report ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """One row of the report: how often a case ran and what broke."""

    case: str
    runs: int = 0
    kills: int = 0
    torn: int = 0
    lost: int = 0
    stuck: int = 0
    findings: dict[str, int] = field(default_factory=dict)
    details: list[str] = field(default_factory=list)

    def add(self, found: Audit) -> None:
        self.torn += bool(found.torn)
        self.lost += bool(found.lost)
        self.stuck += bool(found.stuck)
        self.details += found.torn + found.lost + found.stuck
        for f in found.findings:
            self.finding(f)

    def finding(self, text: str) -> None:
        self.findings[text] = self.findings.get(text, 0) + 1

    def problems(self, *known: str) -> list[str]:
        """Everything wrong but findings naming a ``known`` defect; empty when clean."""
        found = [f"{n}x {f}" for f, n in self.findings.items() if not any(k in f for k in known)]
        return self.details + found

    def row(self) -> str:
        found = "; ".join(f"{f} ({n})" for f, n in self.findings.items()) or "-"
        cols = (self.case, self.runs, self.kills, self.torn, self.lost, self.stuck, found)
        return "| " + " | ".join(str(c) for c in cols) + " |"


TABLE_HEAD = "| case | runs | kills | torn | lost | stuck | findings |\n" + "|---" * 7 + "|"


# -- kills ---------------------------------------------------------------------------------------


def _killed(cmd: Command, moment: float, tally: Tally) -> Run:
    time.sleep(moment)
    cmd.kill()
    run = cmd.wait()
    tally.runs += 1
    tally.kills += run.rc == -signal.SIGKILL
    return run


def must(run: Run, what: str, tally: Tally) -> bool:
    if run.hung:
        tally.stuck += 1
        tally.details.append(f"{what} hung")
    elif run.rc != 0:
        tally.finding(f"{what} failed: {run.describe()}")
    return run.rc == 0


def kill_load(work: Path, runs: int, size: int, *, pipe: bool, seed: int = 0) -> Tally:
    """SIGKILL ``load`` (from a file or a pipe) at uniformly random moments, check each time."""
    tally = Tally(f"kill load from a {'pipe' if pipe else 'file'}")
    rng = random.Random(seed)
    root, keep, victim = work / "root", work / "keep.tar", work / "victim.tar"
    archive(keep, KEEP, 1 << 20)
    archive(victim, VICTIM, size, seed=1)
    args = ("load", "-q") if pipe else ("load", "-q", "-i", str(victim))
    source = victim if pipe else None
    must(castar(root, "load", "-q", "-i", str(keep)), "load", tally)
    span = castar(root, *args, pipe=source).seconds
    remove(root, VICTIM)
    for _ in range(runs):
        _killed(Command(root, *args, pipe=source), rng.uniform(0, span), tally)
        tally.add(audit(root, [KEEP]))
        for text in leftovers(root):
            tally.finding(text)
        again = castar(root, *args, pipe=source)
        if must(again, "the repeated load", tally):
            tally.add(audit(root, [KEEP, VICTIM], printed_names(again)))
        remove(root, VICTIM)
    for text in outside_changes(root, work, allowed=[keep, victim]):
        tally.finding(text)
    return tally


def kill_save(work: Path, runs: int, size: int, *, seed: int = 0) -> Tally:
    """SIGKILL ``save -o FILE`` at random moments: the target is whole or absent, no temp stays."""
    tally = Tally("kill save -o FILE")
    rng = random.Random(seed)
    root, src, out = work / "root", work / "keep.tar", work / "out"
    archive(src, KEEP, size)
    must(castar(root, "load", "-q", "-i", str(src)), "load", tally)
    out.mkdir()
    target = out / "saved.tar"
    first = castar(root, "save", "-q", "keep", "-o", str(target))
    span, whole = first.seconds, target.read_bytes() if target.exists() else b""
    for _ in range(runs):
        target.unlink(missing_ok=True)
        _killed(Command(root, "save", "-q", "keep", "-o", str(target)), rng.uniform(0, span), tally)
        tally.add(audit(root, [KEEP]))
        if target.exists() and target.read_bytes() != whole:
            tally.torn += 1
            tally.details.append("a killed save left a partial archive at the -o path")
        for p in out.iterdir():
            if p != target:
                tally.finding("a killed save leaves a temporary file beside the target")
                p.unlink()
    return tally


def kill_gc(work: Path, runs: int, size: int, *, seed: int = 0) -> Tally:
    """SIGKILL ``gc`` (after ``rm`` of an image sharing layers with a kept one), check each time."""
    tally = Tally("kill gc after rm")
    rng = random.Random(seed)
    root = work / "root"
    (a, a_platforms), (b, b_platforms) = SHARED
    paths = [work / "a.tar", work / "b.tar"]
    archive(paths[0], a, size, a_platforms)
    archive(paths[1], b, size, b_platforms)
    for p in paths:
        must(castar(root, "load", "-q", "-i", str(p)), "load", tally)
    castar(root, "rm", b)
    span = castar(root, "gc").seconds
    for _ in range(runs):
        must(castar(root, "load", "-q", "-i", str(paths[1])), "the repeated load", tally)
        castar(root, "rm", b)
        _killed(Command(root, "gc"), rng.uniform(0, span), tally)
        tally.add(audit(root, [a]))
        must(castar(root, "gc"), "gc after a killed gc", tally)
    return tally


# -- registry kills ------------------------------------------------------------------------------


@contextlib.contextmanager
def registry(work: Path) -> Iterator[str]:
    """The registry tests' registry (tests/registry/conftest.py) serving from ``work``: its host.

    ``OSError`` when docker-registry is not installed.
    """
    from tests.registry import conftest as fixtures

    if not os.access(fixtures.BINARY, os.X_OK):
        raise OSError(f"{fixtures.BINARY} is not installed (apt-get install docker-registry)")
    work.mkdir(parents=True, exist_ok=True)
    with contextlib.contextmanager(fixtures._serve)(work) as server:
        yield server.host


def _tagged(ref: str) -> bool:
    """Whether the registry lists ``ref``'s tag (a manifest was put under it)."""
    host, _, rest = ref.partition("/")
    repo, _, tag = rest.rpartition(":")
    try:
        with urllib.request.urlopen(f"http://{host}/v2/{repo}/tags/list", timeout=HANG) as r:
            return tag in (json.load(r).get("tags") or [])
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 404:  # no such repository yet
            return False
        raise


def registry_holds(work: Path, ref: str, digest: str | None, tally: Tally) -> None:
    """The registry holds ``ref`` whole or not at all; ``digest``: it must, with that target.

    Whole: a pull of every platform into a fresh root (in this process) gets ``digest`` and
    an image the audit finds complete.
    """
    if not _tagged(ref):
        if digest is not None:
            tally.details.append(f"{ref}: not in the registry after a push that succeeded")
            tally.lost += 1
        return
    check = work / "check"

    async def pull() -> list[str]:
        async with open_store(check) as s:
            return [str(i.target.digest) for i in await s.pull(ref, all_platforms=True)]

    try:
        try:
            got = anyio.run(pull)
        except CastarError as exc:
            tally.torn += 1
            tally.details.append(f"{ref}: tagged in the registry but does not pull: {exc}")
            return
        if digest is not None and got != [digest]:
            tally.finding(f"{ref}: the registry holds {got}, the push said {digest}")
        found = audit(check, [ref])
        tally.add(found)
    finally:
        shutil.rmtree(check, ignore_errors=True)


def kill_pull(work: Path, runs: int, size: int, host: str, *, seed: int = 0) -> Tally:
    """SIGKILL ``pull`` from the registry at ``host`` at uniformly random moments, check each."""
    tally = Tally("kill pull")
    rng = random.Random(seed)
    root, keep, src = work / "root", work / "keep.tar", work / "victim.tar"
    ref = f"{host}/kills-{secrets.token_hex(4)}/pull:v"
    archive(keep, KEEP, 1 << 20)
    archive(src, VICTIM, size, seed=1)
    for path in (keep, src):
        must(castar(root, "load", "-q", "-i", str(path)), "load", tally)
    must(castar(root, "push", "-q", VICTIM, ref), "push", tally)
    remove(root, VICTIM)
    args = ("pull", "-q", "--all-platforms", ref)
    first = castar(root, *args)
    span = first.seconds
    if printed_names(first, "Pulled") != [reference.display_name(ref)]:
        tally.finding(f"a pull printed {first.out!r}")
    remove(root, ref)
    for _ in range(runs):
        _killed(Command(root, *args), rng.uniform(0, span), tally)
        tally.add(audit(root, [KEEP]))
        for text in leftovers(root):
            tally.finding(text)
        again = castar(root, *args)
        if must(again, "the repeated pull", tally):
            tally.add(audit(root, [KEEP, ref], printed_names(again, "Pulled")))
        remove(root, ref)
    return tally


def kill_push(work: Path, runs: int, size: int, host: str, *, seed: int = 0) -> Tally:
    """SIGKILL ``push`` to the registry at ``host`` at random moments: the store stays whole,
    the registry holds the image whole or not at all, a repeated push succeeds."""
    tally = Tally("kill push")
    rng = random.Random(seed)
    root, src = work / "root", work / "victim.tar"
    repo = f"{host}/kills-{secrets.token_hex(4)}"
    archive(src, VICTIM, size, seed=2)
    must(castar(root, "load", "-q", "-i", str(src)), "load", tally)
    span = castar(root, "push", "-q", VICTIM, f"{repo}/first:v").seconds
    for i in range(runs):
        ref = f"{repo}/push{i}:v"  # a new repository: every blob is uploaded again
        _killed(Command(root, "push", "-q", VICTIM, ref), rng.uniform(0, span), tally)
        tally.add(audit(root, [VICTIM]))
        for text in leftovers(root):
            tally.finding(text)
        registry_holds(work, ref, None, tally)
        again = castar(root, "push", "-q", "--json", VICTIM, ref)
        if must(again, "the repeated push", tally):
            registry_holds(work, ref, json.loads(again.out)["digest"], tally)
    return tally


# -- two processes -------------------------------------------------------------------------------


def load_rm_against_gc(work: Path, seconds: float, size: int) -> Tally:
    """Load + rm + load two images sharing layers while another process runs ``gc`` in a loop."""
    tally = Tally(f"load/rm against a gc loop, {seconds:.0f} s")
    root = work / "root"
    paths = []
    for i, (name, plats) in enumerate(SHARED):
        paths.append((name, work / f"{i}.tar"))
        archive(paths[-1][1], name, size, plats)
    stop = threading.Event()
    gcs: list[Run] = []

    def collect() -> None:
        while not stop.is_set():
            gcs.append(castar(root, "gc"))

    must(castar(root, "load", "-q", "-i", str(paths[0][1])), "load", tally)
    collector = threading.Thread(target=collect, daemon=True)
    collector.start()
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            for name, path in paths:
                tally.runs += 1
                must(castar(root, "load", "-q", "-i", str(path)), "a load beside gc", tally)
                must(castar(root, "rm", name), "an rm beside gc", tally)
                must(castar(root, "load", "-q", "-i", str(path)), "a load beside gc", tally)
    finally:
        stop.set()
        collector.join()
    for run in gcs:
        must(run, "a gc beside loads", tally)
    tally.add(audit(root, every=True))
    tally.case += f" ({len(gcs)} gc runs)"
    return tally


def concurrent_loads(work: Path, processes: int, size: int) -> Tally:
    """``processes`` CLI loads of one archive into one root at once: one consistent result."""
    tally = Tally(f"{processes} concurrent CLI loads")
    root, path = work / "root", work / "one.tar"
    image = archive(path, VICTIM, size)
    cmds = [Command(root, "load", "-q", "-i", str(path)) for _ in range(processes)]
    printed = set()
    for cmd in cmds:
        run = cmd.wait()
        tally.runs += 1
        must(run, "a concurrent load", tally)
        printed.update(printed_names(run))
    found = audit(root, [VICTIM], sorted(printed))
    tally.add(found)
    if found.names != [VICTIM] or printed != {"victim:latest"}:
        tally.finding(f"inconsistent result: records {found.names}, printed {sorted(printed)}")
    del image
    return tally


async def concurrent_store_loads(work: Path, tasks: int, size: int) -> Tally:
    """``tasks`` ``store.load`` calls of one archive at once in one process: one result."""
    tally = Tally(f"{tasks} concurrent store.load tasks")
    path, root = work / "one.tar", work / "root"
    image = await anyio.to_thread.run_sync(archive, path, VICTIM, size)
    results = []

    async def load(s: Store) -> None:
        results.append([(i.name, i.target.digest) for i in await s.load(path)])

    async with open_store(root) as s, anyio.create_task_group() as tg:
        for _ in range(tasks):
            tg.start_soon(load, s)
    tally.runs = len(results)
    if results != [[(VICTIM, image.index.digest)]] * tasks:
        tally.finding(f"inconsistent results: {results}")
    tally.add(await anyio.to_thread.run_sync(audit, root, [VICTIM]))
    return tally


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A small tmpfs at ``path`` (needs root); ``OSError`` when it cannot be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        raise OSError(f"cannot mount a tmpfs: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
