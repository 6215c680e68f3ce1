"""The layering contract (tests/_layering_contract.py) holds, and it catches a planted import.

The contract runs in a fresh interpreter on the real import graph, with every package
``__init__`` as it is; the public facade and ``castar --version`` load no async library.
"""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CONTRACT = Path(__file__).with_name("_layering_contract.py")
ROOT = Path(__file__).parents[1]
PURE = runpy.run_path(str(CONTRACT))["PURE"]


def _contract(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(CONTRACT), str(root)], capture_output=True, text=True, check=False
    )


@pytest.fixture(scope="module")
def broken() -> list[str]:
    result = _contract(ROOT)
    assert result.stderr == ""
    return result.stdout.splitlines()


def test_layers_import_only_downwards(broken: list[str]) -> None:
    assert [line for line in broken if ": layers: " in line] == []


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_io_library(broken: list[str], module: str) -> None:
    assert [line for line in broken if line.startswith(f"{module}: pure: ")] == []


def test_the_contract_names_a_planted_import_and_its_chain(tmp_path: Path) -> None:
    for folder in ("castar", "store", "engine"):
        shutil.copytree(ROOT / folder, tmp_path / folder, symlinks=True)
    with (tmp_path / "engine" / "_json.py").open("a") as f:
        f.write("import anyio\n")
    with (tmp_path / "store" / "digest.py").open("a") as f:
        f.write("import castar.engine\n")
    result = _contract(tmp_path)
    assert result.returncode == 1
    lines = result.stdout.splitlines()
    assert (
        "castar.engine.oci: pure: imports an I/O library: "
        "castar.engine.oci -> castar.engine._json -> anyio"
    ) in lines
    assert "castar.engine._json: pure: a fresh import loads anyio" in lines
    assert (
        "castar.store.digest: layers: the store imports the engine or the facade: "
        "castar.store.digest -> castar.engine"
    ) in lines


def test_the_facade_and_castar_version_load_no_async_library() -> None:
    check = (
        "import sys, castar, castar.__main__ as cli\n"
        "assert cli.main(['--version']) == 0\n"
        "print(sorted({'anyio', 'sqlite3', 'trio'} & set(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True
    )
    assert result.stdout == "castar 0.1.0\n[]\n"
