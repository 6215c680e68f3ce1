"""What byte sources (``_streams``) and sinks (``save.sinks``) share: chunk size, names, files.

``FileEndpoint`` opens a path or fd once in a worker thread, mapping its open errors once
(design rule errors-seam). anyio only; imports no store module but its errors.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Final, Self

import anyio

from castar.store.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from types import TracebackType

__all__ = ["CHUNK_SIZE", "Endpoint", "FileEndpoint", "describe", "file_target"]

#: Default read size and the size sinks coalesce small writes up to (design rule io-chunk).
CHUNK_SIZE: Final = 1 << 20


class Endpoint:
    """A source or sink: ``async with`` opens it, and closes it shielded on the way out."""

    #: What to name in messages: the path, ``<stdin>``, ``<fd N>`` or the object.
    name: str

    async def open(self) -> None:
        """Open the underlying file if not done yet."""

    async def aclose(self) -> None:
        """Release what ``open_source``/``open_sink`` opened itself."""

    async def _abort(self) -> None:
        """Leave on an error; sinks drop their buffered bytes first."""
        await self.aclose()

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        with anyio.CancelScope(shield=True):
            await (self.aclose() if exc_type is None else self._abort())


class FileEndpoint:
    """A path or fd, opened once in a worker thread (``_open_sync``), never after ``aclose``."""

    _role = "file"

    def __init__(self, target: str | os.PathLike[str] | int, name: str) -> None:
        self.name = name
        self._target = target
        self._closed = False

    @property
    def _owned(self) -> bool:
        """Whether ``open`` opened the file itself (a path), so ``aclose`` closes it."""
        return not isinstance(self._target, int)

    def _is_open(self) -> bool:
        raise NotImplementedError

    def _open_sync(self) -> None:
        raise NotImplementedError

    def _not_open(self) -> RuntimeError:
        return RuntimeError(f"{self._role} {self.name} is not open yet: use `async with` or open()")

    async def open(self) -> None:
        """Open the file in a worker thread unless it is open."""
        if self._is_open():
            return
        if self._closed:
            raise anyio.ClosedResourceError(f"{self._role} {self.name} is closed")
        try:
            await anyio.to_thread.run_sync(self._open_sync)
        except FileNotFoundError as exc:
            raise NotFound(f"archive {self.name}: {exc.strerror or exc}") from exc
        except (IsADirectoryError, NotADirectoryError) as exc:
            raise InvalidArgument(f"archive {self.name}: {exc.strerror or exc}") from exc


def describe(obj: object) -> str:
    """An adapted object's ``name`` when it is a string, else ``<TypeName>``."""
    name = getattr(obj, "name", None)
    return name if isinstance(name, str) else f"<{type(obj).__name__}>"


def file_target(
    obj: object, std_fd: int, std_name: str
) -> tuple[str | os.PathLike[str] | int, str] | None:
    """What a file endpoint opens and its name (``"-"`` is ``std_fd``), None for a non-file."""
    if isinstance(obj, str) and obj == "-":
        return std_fd, std_name
    if isinstance(obj, str | os.PathLike):
        return obj, os.fspath(obj)
    if isinstance(obj, int) and not isinstance(obj, bool):
        return obj, f"<fd {obj}>"
    return None
