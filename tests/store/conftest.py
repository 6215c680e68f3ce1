"""Fixtures the store tests share: a settable clock and a store opened on it.

Test files annotate with ``Clock`` through ``if TYPE_CHECKING: from conftest import Clock``
(pytest's importlib mode does not put this folder on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from castar.store import Root, open_root

#: Microseconds on purpose: second-precision ``gc.expire`` labels must round, not copy (LEASE-2).
START = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)


class Clock:
    """A settable clock: expiry tests move ``now`` forward instead of sleeping."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[Root]:
    """A fresh store at ``tmp_path/root`` whose timestamps and expiries follow ``clock``."""
    async with open_root(tmp_path / "root", clock=clock) as s:
        yield s
