"""The wheel holds castar.store and castar.engine as real files (DESIGN §1)."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_installs_in_a_fresh_venv_and_imports_subpackages(tmp_path: Path) -> None:
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
            str(ROOT),
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
    # --no-deps: importing the subpackages needs no dependency; CI's install resolves them.
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True)
    out = subprocess.run(
        [
            str(py),
            "-c",
            "import castar.store.digest, castar.engine, castar.store.errors as e;"
            "print(castar.store.digest.__file__)",
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    ).stdout
    assert str(env_dir) in out
