"""Shared fixtures: every async test runs on asyncio and on trio (STYLE §3.8)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


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
