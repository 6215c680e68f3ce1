"""SIGINT and SIGTERM end a command through anyio cancellation: exit 130 or 143, no lease left.

Each case runs ``python -m castar`` as a subprocess blocked where it waits for someone else (a
FIFO nobody reads, a pipe nobody writes), waits for its operation lease, then sends the signal.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from castar.engine import synth
from castar.store import open_root

NAME = "docker.io/library/synth:latest"
HANG_GUARD = 60.0  # seconds: only a stuck process ever takes this long


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("signals")
    spec = synth.SynthSpec(name=NAME, platforms=("linux/amd64",), layers=1, layer_size=4096)
    synth.write_path(spec, work / "a.tar")
    load = [sys.executable, "-m", "castar", "--root", work / "root", "load", "-i", work / "a.tar"]
    subprocess.run(load, cwd=work, check=True, capture_output=True, timeout=HANG_GUARD)
    return work / "root"


def leases(root: Path) -> list[dict[str, str]]:
    async def read() -> list[dict[str, str]]:
        async with open_root(root) as store:
            return [dict(le.labels) for le in await store.leases.list()]

    return anyio.run(read)


def wait_until(ready: Callable[[], bool], proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + HANG_GUARD
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never got to its wait"
        time.sleep(0.02)


def end_by_signal(
    root: Path, signum: int, label: str, *args: str | Path, **kw: object
) -> subprocess.CompletedProcess[bytes]:
    """Start castar ARGS, wait for its lease labelled ``label``, send ``signum``; its result."""
    argv = [sys.executable, "-m", "castar", "--root", root, *args]
    kw.setdefault("stdin", subprocess.DEVNULL)
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)  # type: ignore[call-overload]
    try:
        wait_until(lambda: any(label in le for le in leases(root)), proc)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=HANG_GUARD)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


SIGNALS = pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["INT", "TERM"]
)
BACKENDS = pytest.mark.parametrize("backend", ["asyncio", "trio"])


@SIGNALS
@BACKENDS
def test_a_signal_ends_a_save_to_a_fifo_nobody_reads_and_removes_its_lease(
    root: Path, tmp_path: Path, signum: int, code: int, backend: str
) -> None:
    # ERR-6: the open of a FIFO waits for its reader cancellably.
    fifo = tmp_path / "out.tar"
    os.mkfifo(fifo)
    cp = end_by_signal(
        root, signum, "castar.export", "--backend", backend, "save", NAME, "-o", fifo, cwd=tmp_path
    )
    assert cp.returncode == code, cp.stderr
    assert b"Traceback" not in cp.stderr
    assert leases(root) == []


@SIGNALS
@BACKENDS
def test_a_signal_ends_a_load_from_a_pipe_nobody_writes_and_removes_its_lease(
    root: Path, tmp_path: Path, signum: int, code: int, backend: str
) -> None:
    # ERR-6: a read left blocked in a worker thread does not hold up the exit.
    read, write = os.pipe()  # the write end stays open (and silent) until the test is done
    try:
        with os.fdopen(read, "rb") as stdin:
            cp = end_by_signal(
                root, signum, "castar.import", "--backend", backend, "load", stdin=stdin,
                cwd=tmp_path,
            )  # fmt: skip
    finally:
        os.close(write)
    assert cp.returncode == code, cp.stderr
    assert b"Traceback" not in cp.stderr
    assert leases(root) == []
