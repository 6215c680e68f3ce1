"""Shared fixtures: every async test runs on asyncio and on trio (design-rules tests-backends)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

#: Tests never write into the checkout: Hypothesis keeps no example database, and its caches
#: go to the session's temporary directory instead of ``.hypothesis/`` in the working one.
settings.register_profile("castar", database=None)
settings.load_profile("castar")
_HYPOTHESIS_HOME = tempfile.mkdtemp(prefix="castar-hypothesis-")
set_hypothesis_home_dir(_HYPOTHESIS_HOME)
atexit.register(shutil.rmtree, _HYPOTHESIS_HOME, ignore_errors=True)

#: The checkout's root: the folders a source copy needs, and the file that configures them.
CHECKOUT = Path(__file__).resolve().parent.parent
_SOURCE = ("castar", "store", "engine", "pyproject.toml", "README.md")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Run each async test once per anyio backend."""
    return str(request.param)


@pytest.fixture(autouse=True)
def _blockbuster(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail asyncio-leg tests that block the event loop (blockbuster sees asyncio loops only)."""
    if (
        "anyio_backend" not in request.fixturenames
        or request.getfixturevalue("anyio_backend") != "asyncio"
    ):
        yield
        return
    from blockbuster import blockbuster_ctx

    with blockbuster_ctx(["castar"]) as bb:
        yield
        del bb


@pytest.fixture
def source_copy(tmp_path: Path) -> Path:
    """A copy of the library's source (castar/ keeps its symlinks) to change, build or check.

    Tests that plant a file or build a wheel work on this copy, so nothing writes into the
    checkout.
    """
    root = tmp_path / "src"
    root.mkdir()
    for name in _SOURCE:
        source = CHECKOUT / name
        if source.is_dir():
            shutil.copytree(source, root / name, symlinks=True, ignore=_not_source)
        else:
            shutil.copy2(source, root / name)
    return root


def _not_source(folder: str, names: list[str]) -> list[str]:
    return [n for n in names if n == "__pycache__" or n.endswith(".egg-info")]
