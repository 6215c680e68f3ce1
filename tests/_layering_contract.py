"""The layering contract on castar's real import graph; run as ``python THIS ROOT``.

ROOT is a source root holding ``castar/`` (with its ``store``/``engine`` links). Prints one
line per broken rule (``module: layers|pure: rule: chain``), exits 1 if any. The rules:
castar.store imports neither castar.engine nor the facade; castar.engine does not import
the facade; no library module imports ``bench``; a pure module imports, directly or
through castar modules, no async, database or I/O library and no castar module that is
not pure, and a fresh interpreter importing it has none of them loaded.
"""

from __future__ import annotations

import subprocess
import sys

#: The modules that import no async, database or I/O library; kept here only.
PURE = (
    "castar.engine.tarcodec",
    "castar.engine.platforms",
    "castar.engine.oci",
    "castar.engine._json",
    "castar.engine.reference",
    "castar.engine._goquote",
    "castar.engine.synth",
    "castar.engine._synthlayer",
    "castar.engine.save.plan",
    "castar.store.digest",
    "castar.store.gc",
    "castar.store.labels",
)
#: What pure modules may import from castar besides each other.
PURE_DEPENDENCIES = ("castar", "castar.store", "castar.engine", "castar.store.errors")
IO_LIBRARIES = ("anyio", "asyncio", "trio", "sqlite3", "aiofiles", "rich", "subprocess", "socket")
_FRESH = """
import sys
sys.path.insert(0, sys.argv[1])
__import__(sys.argv[2])
print(" ".join(m for m in sys.argv[3:] if m in sys.modules))
"""


def _is_facade(module: str) -> bool:
    return not module.startswith(("castar.store", "castar.engine"))


def violations(root: str) -> list[str]:
    """Every broken rule under ``root``, one line each."""
    import grimp  # only the contract process needs it

    sys.path.insert(0, root)
    graph = grimp.build_graph("castar", include_external_packages=True, cache_dir=None)
    runtime = grimp.build_graph(
        "castar", include_external_packages=True, cache_dir=None, exclude_type_checking_imports=True
    )
    castar = sorted(m for m in graph.modules if m.split(".")[0] == "castar")
    facade = [m for m in castar if _is_facade(m)]
    engine = [m for m in castar if m.startswith("castar.engine")]
    found: list[str] = []

    def check(g: grimp.ImportGraph, importers: list[str], imported: list[str], rule: str) -> None:
        for importer in importers:
            for target in imported:
                if target in g.modules and (chain := g.find_shortest_chain(importer, target)):
                    found.append(f"{importer}: {rule}: {' -> '.join(chain)}")

    store = [m for m in castar if m.startswith("castar.store")]
    check(graph, store, engine + facade, "layers: the store imports the engine or the facade")
    check(graph, engine, facade, "layers: the engine imports the facade")
    check(
        graph,
        [m for m in castar if not _is_facade(m)],
        ["bench"],
        "layers: a library imports bench",
    )
    allowed = set(PURE) | set(PURE_DEPENDENCIES)
    for module in PURE:
        check(runtime, [module], list(IO_LIBRARIES), "pure: imports an I/O library")
        impure = [m for m in castar if m not in allowed]
        check(runtime, [module], impure, "pure: imports a module that is not pure")
        fresh = subprocess.run(
            [sys.executable, "-c", _FRESH, root, module, *IO_LIBRARIES],
            capture_output=True, text=True, check=True, cwd=root,
        )  # fmt: skip
        if loaded := fresh.stdout.split():
            found.append(f"{module}: pure: a fresh import loads {', '.join(loaded)}")
    return found


if __name__ == "__main__":
    lines = violations(sys.argv[1])
    print("\n".join(lines))
    raise SystemExit(1 if lines else 0)
