"""Registry clients for tests: the real client, recording every request it makes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from castar.engine.registry.client import Registry

if TYPE_CHECKING:
    import httpx


class Recording(Registry):
    """``calls`` holds each request's (method, path), ``headers`` its headers, in order."""

    def __init__(self, host: str, **kw: Any) -> None:
        super().__init__(host, **kw)
        self.calls: list[tuple[str, str]] = []
        self.headers: list[dict[str, str]] = []

    async def request(self, method: str, repo: str, path: str, **kw: Any) -> httpx.Response:
        self.calls.append((method, path))
        self.headers.append(dict(kw.get("headers") or {}))
        return await super().request(method, repo, path, **kw)
