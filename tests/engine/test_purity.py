"""The pure engine modules never import an async library (design-rules pure-modules).

Each module is imported in a fresh interpreter with the package ``__init__`` files
replaced by bare packages (they re-export the async store and facade), so what is
checked is exactly what the module and the private modules it is split into pull in.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

_CHECK = """
import importlib, importlib.util, sys, types
root = importlib.util.find_spec("castar").submodule_search_locations[0]
for pkg, path in (("castar", root), ("castar.store", root + "/store"),
                  ("castar.engine", root + "/engine")):
    module = types.ModuleType(pkg)
    module.__path__ = [path]
    sys.modules[pkg] = module
importlib.import_module(sys.argv[1])
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("anyio", "trio", "asyncio"))
assert not loaded, loaded
"""

PURE = [
    "castar.engine.tarcodec",
    "castar.engine._tarheader",
    "castar.engine.platforms",
    "castar.engine._platform",
    "castar.engine._matchers",
    "castar.engine.oci",
    "castar.engine._json",
    "castar.engine._mediatypes",
    "castar.engine.reference",
    "castar.engine._goquote",
    "castar.engine.synth",
    "castar.engine._synthlayer",
    "castar.engine._export_plan",
    "castar.engine._save_plan",
]


def _check(module: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CHECK, module], check=False, capture_output=True, text=True
    )


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_no_async_library(module: str) -> None:
    result = _check(module)
    assert result.returncode == 0, result.stderr


def test_the_check_catches_a_module_that_imports_anyio() -> None:
    assert _check("castar.engine._tario").returncode != 0
