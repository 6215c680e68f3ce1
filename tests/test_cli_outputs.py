"""Outputs and inputs that cannot work: a castar error with its exit code, never a traceback
and never a wrong success (ERR-7, ERR-8, IMP-1); through ``python -m castar`` and the library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import anyio
import pytest
import zstandard

import castar as castar_api
from castar.engine import synth
from castar.engine.load.decompress import ZSTD, DecompressedSource
from castar.store import open_root
from castar.store.errors import MalformedArchive, Unavailable

NAME = "docker.io/library/synth:latest"
SPEC = synth.SynthSpec(name=NAME, platforms=("linux/amd64",), layers=2, layer_size=256 << 10)
EXIT_OTHER, EXIT_USAGE, EXIT_INVALID = 1, 2, 4


def castar(root: Path, *args: str | Path, **kw: object) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "castar", "--root", str(root), *map(str, args)]
    kw.setdefault("stdin", subprocess.DEVNULL)
    kw.setdefault("stdout", subprocess.PIPE)
    return subprocess.run(argv, text=True, stderr=subprocess.PIPE, timeout=120, check=False, **kw)  # type: ignore[call-overload, no-any-return]


def one_error(cp: subprocess.CompletedProcess[str], code: int, *needles: str) -> None:
    assert cp.returncode == code, cp.stderr
    (line,) = cp.stderr.strip().splitlines()
    assert line.startswith("castar: error: ")
    for needle in needles:
        assert needle in line


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("outputs")
    synth.write_path(SPEC, work / "a.tar")
    assert castar(work / "root", "load", "-i", work / "a.tar", cwd=work).returncode == 0
    return work


def leases(root: Path) -> list[str]:
    async def read() -> list[str]:
        async with open_root(root) as store:
            return [le.id for le in await store.leases.list()]

    return anyio.run(read)


def test_save_cut_short_by_its_reader_fails_and_a_cut_listing_succeeds(work: Path) -> None:
    # ERR-7: `castar save IMG | head -c 1000` is not a success; `castar images | head -1` is.
    for argv, code in ((["save", NAME], EXIT_OTHER), (["images"], 0)):
        read, write = os.pipe()
        with os.fdopen(write, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "castar", "--root", work / "root", *argv],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.PIPE, text=True, cwd=work,
            )  # fmt: skip
        with os.fdopen(read, "rb") as reader:
            reader.read(40 if argv == ["images"] else 1000)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()  # a save that hangs must not outlive the test (and spin on)
        assert proc.returncode == code, err
        if code:
            (line,) = err.strip().splitlines()
            assert line.startswith("castar: error: output <stdout> closed after ")
        else:
            assert err == ""
    assert leases(work / "root") == []


async def test_a_save_into_a_pipe_with_no_reader_is_unavailable_and_leaves_no_lease(
    work: Path,
) -> None:
    # ERR-7, through the library: a broken pipe is the save's own error, not BrokenPipeError.
    read, write = os.pipe()
    os.close(read)
    try:
        async with castar_api.open_store(work / "root") as store:
            with pytest.raises(Unavailable, match=r"output <fd \d+> closed after \d+ bytes"):
                await store.save([NAME], write)
            assert await store.leases.list() == []
    finally:
        os.close(write)


@pytest.mark.parametrize(
    ("env", "args", "needles"),
    [
        ({}, ["lease", "create", "--expire", "99999999999999999999h"], ["--expire", "too long"]),
        ({}, ["lease", "create", "--expire", "5x"], ["bad duration"]),
        ({"CASTAR_BACKEND": "bogus"}, ["images"], ["bogus", "asyncio", "trio"]),
    ],
    ids=["expire-overflow", "expire-malformed", "backend"],
)
def test_bad_command_line_values_are_usage_errors(work: Path, env, args, needles) -> None:
    # ERR-8
    cp = castar(work / "root", *args, cwd=work, env={**os.environ, **env})
    one_error(cp, EXIT_USAGE, *needles)
    assert leases(work / "root") == []


@pytest.mark.parametrize("command", ["save", "load"])
def test_a_closed_stdout_or_stdin_is_a_usage_error(work: Path, command: str) -> None:
    # ERR-8: `castar save IMG >&-`, `castar load <&-`
    std = {"stdout": 1} if command == "save" else {"stdin": 0}
    argv = [sys.executable, "-m", "castar", "--root", str(work / "root"), command]
    argv += [NAME] if command == "save" else []
    closed = ("stdout" if command == "save" else "stdin") + " is closed"
    cp = subprocess.run(
        argv, stderr=subprocess.PIPE, text=True, timeout=120, check=False, cwd=work,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(),
        preexec_fn=lambda: os.close(next(iter(std.values()))),
    )  # fmt: skip
    one_error(cp, EXIT_USAGE, closed)


def two_frames_then_junk() -> bytes:
    data = bytes(range(256)) * 64
    packed = zstandard.ZstdCompressor().compress(data)
    return packed + zstandard.ZstdCompressor().compress(data[:100]) + b"\x00\x01\x02\x03junk"


class Bytes:
    name = "<test>"

    def __init__(self, data: bytes) -> None:
        self._data = data

    async def receive(self, max_bytes: int = 1 << 20) -> bytes:
        if not self._data:
            raise anyio.EndOfStream
        out, self._data = self._data[:max_bytes], self._data[max_bytes:]
        return out


async def test_a_bad_zstd_frame_in_the_first_read_is_malformed() -> None:
    # IMP-1: the bytes sniffed before the stream (a pipe's first MiB) are checked like the rest.
    head = two_frames_then_junk()
    src = DecompressedSource(Bytes(b""), ZSTD, head)
    with pytest.raises(MalformedArchive, match="zstd archive <test>: corrupt compressed data"):
        await drain(src)


async def drain(src: DecompressedSource) -> None:
    while True:
        await src.receive()


def test_a_bad_zstd_frame_from_a_pipe_exits_4_as_from_a_file(work: Path) -> None:
    bad = work / "bad.tar.zst"
    bad.write_bytes(two_frames_then_junk())
    from_file = castar(work / "r2", "load", "-i", bad, cwd=work)
    argv = [sys.executable, "-m", "castar", "--root", str(work / "r2"), "load"]
    piped = subprocess.run(
        argv, input=bad.read_bytes(), capture_output=True, timeout=120, check=False, cwd=work
    )
    from_pipe = subprocess.CompletedProcess(argv, piped.returncode, "", piped.stderr.decode())
    for cp in (from_file, from_pipe):
        one_error(cp, EXIT_INVALID, "zstd archive", "corrupt compressed data")
