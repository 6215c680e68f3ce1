"""The standing reliability suite (issue 15): marker ``stress``, out of the default run.

``pytest -m stress tests/stress`` runs the short pass CI runs; ``CASTAR_STRESS=long`` (what
``python -m bench.reliability`` runs) the long one. The moves and checks live in
``_harness.py`` and friends, imported by ``bench.reliability`` too.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the helpers are imported as tests.stress._harness
    sys.path.insert(0, str(REPO))

# The registry tests' real registry (docker-registry), for the pull and push kills.
from tests.registry.conftest import registry as registry  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if item.path.is_relative_to(here):
            item.add_marker(pytest.mark.stress)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The commands' working directory goes with the session (it must have stayed empty)."""
    import shutil

    from tests.stress import _harness

    for path in _harness._NEUTRAL:
        shutil.rmtree(path, ignore_errors=True)
