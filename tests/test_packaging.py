"""The wheel holds castar.store and castar.engine as real files (design rule package-layout)."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_imports_subpackages(
    tmp_path: Path, source_copy: Path
) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "build",
            "--wheel",
            "--no-isolation",
            "--outdir",
            str(dist),
            str(source_copy),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("castar-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "castar/store/digest.py" in names
    assert "castar/engine/__init__.py" in names
    assert not any(n.startswith(("store/", "engine/", "tests/", "bench/")) for n in names)

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py = env_dir / "bin" / "python"
    # The wheel alone (no index needed); its dependencies come from this test's own
    # environment through a .pth line. Site dirs listed in a .pth are appended after the
    # fresh venv's own site-packages, and their .pth files (this checkout's editable-install
    # hook) are not run, so castar can only be imported from the installed wheel.
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    (Path(purelib) / "castar-test-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    out = subprocess.run(
        [
            str(py),
            "-c",
            "import castar, castar.store.digest, castar.engine.tarcodec;"
            "print(castar.store.digest.__file__); print(castar.engine.tarcodec.__file__)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    lines = out.split()
    assert len(lines) == 2
    assert all(line.startswith(str(env_dir)) for line in lines), lines
