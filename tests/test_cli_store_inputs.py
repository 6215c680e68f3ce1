"""Store roots and names the command line is given: read-only stores, bad roots, bad names.

Commands run in-process through castar._cli.main, once per anyio backend (``--backend``).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from castar._cli import main
from castar.engine import synth

SPEC = synth.SynthSpec(name="synth", platforms=("linux/amd64",), layers=2, layer_size=64 << 10)
EXIT_USAGE, EXIT_PRECONDITION, EXIT_DATA_LOSS = 2, 5, 6


@pytest.fixture(params=["asyncio", "trio"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def run(
    root: Path | str, *args: str | Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """``castar --root ROOT --backend BACKEND ARGS`` in-process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main(["--root", str(root), "--backend", backend, *map(str, args)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("castar: error: ")
    return lines[0]


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding ``a.tar`` (the synth archive) and ``root``, a store it was loaded into."""
    where = tmp_path_factory.mktemp("loaded")
    synth.write_path(SPEC, where / "a.tar")
    assert main(["--root", str(where / "root"), "load", "-q", "-i", str(where / "a.tar")]) == 0
    return where


def _mount(*args: str) -> bool:
    if shutil.which("mount") is None:
        return False
    return subprocess.run(["mount", *args], capture_output=True, check=False).returncode == 0


def _read_only_copy(src: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the store ``src`` that cannot be written: a read-only tmpfs when root (whom
    ``chmod`` does not stop), else the copy with every write bit cleared."""
    if os.geteuid() != 0:
        shutil.copytree(src, tmp_path / "root")
        subprocess.run(["chmod", "-R", "a-w", tmp_path / "root"], check=True)
        yield tmp_path / "root"
        subprocess.run(["chmod", "-R", "u+w", tmp_path / "root"], check=True)
        return
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _mount("-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)):
        pytest.skip("mounting a tmpfs is not permitted here")
    try:
        shutil.copytree(src, mnt / "root")
        assert _mount("-o", "remount,ro", str(mnt))
        yield mnt / "root"
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.fixture
def read_only_root(loaded: Path, tmp_path: Path) -> Iterator[Path]:
    """The loaded store, read-only."""
    yield from _read_only_copy(loaded / "root", tmp_path)


def test_read_commands_work_on_a_read_only_store(
    read_only_root: Path, tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = read_only_root  # LAY-6
    code, out, _ = run(root, "images", backend=backend, capsys=capsys)
    assert code == 0
    assert "synth:latest" in out
    assert run(root, "inspect", "synth", backend=backend, capsys=capsys)[0] == 0
    assert run(root, "verify", backend=backend, capsys=capsys)[0] == 0
    out_tar = tmp_path / "out.tar"
    assert run(root, "save", "synth", "-o", out_tar, backend=backend, capsys=capsys)[0] == 0
    with tarfile.open(out_tar) as tar:
        assert {"index.json", "manifest.json", "oci-layout"} <= set(tar.getnames())


@pytest.mark.parametrize(
    "args",
    [
        ("load", "-q", "-i", "ARCHIVE"),
        ("rm", "synth"),
        ("tag", "synth", "other:1"),
        ("gc",),
        ("lease", "create"),
    ],
)
def test_writes_to_a_read_only_store_fail_with_a_clear_error(
    read_only_root: Path,
    loaded: Path,
    args: tuple[str, ...],
    backend: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [str(loaded / "a.tar") if a == "ARCHIVE" else a for a in args]  # LAY-6
    code, _, err = run(read_only_root, *argv, backend=backend, capsys=capsys)
    assert code == EXIT_PRECONDITION, err
    assert f"store is read-only: {read_only_root}" in error_line(err)
    code, out, _ = run(read_only_root, "images", backend=backend, capsys=capsys)
    assert code == 0
    assert "synth:latest" in out


@pytest.fixture
def read_only_root_with_a_dead_owner(loaded: Path, tmp_path: Path) -> Iterator[Path]:
    """The loaded store, read-only, holding the owner lock a killed command leaves (LEASE-8)."""
    copy = tmp_path / "copy"
    shutil.copytree(loaded / "root", copy)
    (copy / "owners" / "dead").mkdir(parents=True)
    (copy / "owners" / "dead" / "lock").touch()
    yield from _read_only_copy(copy, tmp_path)


def test_gc_on_a_read_only_store_touches_no_owner_lock(
    read_only_root_with_a_dead_owner: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = read_only_root_with_a_dead_owner  # LAY-6
    code, _, err = run(root, "gc", backend=backend, capsys=capsys)
    assert code == EXIT_PRECONDITION, err
    assert f"store is read-only: {root}" in error_line(err)
    digest = json.loads(run(root, "images", "--json", backend=backend, capsys=capsys)[1])[0]["id"]
    code, out, err = run(root, "gc", "--why", digest, backend=backend, capsys=capsys)
    assert code == 0, err
    assert "synth" in out


@pytest.mark.parametrize("kind", ["proc", "long", "file"])
def test_a_root_that_cannot_hold_a_store_is_a_usage_error_naming_it(
    tmp_path: Path, kind: str, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_bytes(b"not a store")  # LAY-7, ERR-9
    root = {"proc": "/proc", "long": str(tmp_path / ("x" * 5000)), "file": str(tmp_path / "file")}
    code, _, err = run(root[kind], "images", backend=backend, capsys=capsys)
    assert code == EXIT_USAGE, err
    line = error_line(err)
    assert f"store root {root[kind][:60]}" in line
    assert len(line) < 300
    assert not Path("/proc/meta.db").exists()
    assert (tmp_path / "file").read_bytes() == b"not a store"


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if "meta.db" not in p.name)


@pytest.mark.parametrize("name", ["../x", "a" * 10_000, "upper/Case", "x" * 256])
def test_a_bad_name_to_record_is_a_usage_error_before_anything_is_written(
    loaded: Path, tmp_path: Path, name: str, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"  # IMG-8, ERR-9
    shutil.copytree(loaded / "root", root)
    before = (_tree(root), run(root, "images", backend=backend, capsys=capsys)[1])
    for argv in (
        ("load", "-q", "-i", loaded / "a.tar", "--name", name),
        ("tag", "synth", name),
        ("tag", "no-such-image", name),
    ):
        code, _, err = run(root, *argv, backend=backend, capsys=capsys)
        assert code == EXIT_USAGE, err
        line = error_line(err)
        assert f'image name "{name[:60]}' in line
        assert len(line) < 400
    assert (_tree(root), run(root, "images", backend=backend, capsys=capsys)[1]) == before


def test_a_load_name_is_a_repository(
    loaded: Path, tmp_path: Path, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"  # IMG-8
    argv = ("load", "-q", "-i", loaded / "a.tar", "--name")
    code, _, err = run(root, *argv, "foo:1", backend=backend, capsys=capsys)
    assert code == EXIT_USAGE
    assert "a repository takes no tag or digest" in error_line(err)
    assert run(root, *argv, "localhost:5000/my/app", backend=backend, capsys=capsys)[0] == 0
    assert (
        run(root, "tag", "synth", "localhost:5000/my/app:2", backend=backend, capsys=capsys)[0] == 0
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An archive whose layers are over the small-blob size: each goes through an ingest."""
    path = tmp_path_factory.mktemp("big") / "big.tar"
    synth.write_path(synth.SynthSpec(name="big", layers=1, layer_size=(1 << 20) + 4096), path)
    return path


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_a_blob_replaced_by_a_directory_is_data_loss_and_a_reload_repairs_it(
    big: Path, tmp_path: Path, which: str, backend: str, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"  # CS-8
    assert run(root, "load", "-q", "-i", big, backend=backend, capsys=capsys)[0] == 0
    blobs = sorted((root / "blobs" / "sha256").iterdir(), key=lambda p: p.stat().st_size)
    victim = blobs[-1] if which == "largest" else blobs[0]
    victim.unlink()
    victim.mkdir()
    (victim / "junk").write_bytes(b"x")
    out = tmp_path / "out.tar"
    code, _, err = run(root, "save", "big", "-o", out, backend=backend, capsys=capsys)
    assert code == EXIT_DATA_LOSS, err
    assert f"{victim} is not a file" in error_line(err)
    code, out_text, _ = run(root, "verify", backend=backend, capsys=capsys)
    assert code == EXIT_DATA_LOSS
    assert f"corrupt blob sha256:{victim.name}" in out_text
    assert run(root, "load", "-q", "-i", big, backend=backend, capsys=capsys)[0] == 0
    assert victim.is_file()
    assert run(root, "verify", backend=backend, capsys=capsys)[0] == 0
    assert run(root, "save", "big", "-o", out, backend=backend, capsys=capsys)[0] == 0
