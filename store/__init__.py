"""castar.store: digests, the content store, the metadata database, leases and GC (no OCI).

Names are imported on first use (PEP 562), so ``castar.store.digest`` loads alone.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from castar.store.content import ContentStore as ContentStore
    from castar.store.content import Descriptor as Descriptor
    from castar.store.content import Info as Info
    from castar.store.content import Writer as Writer
    from castar.store.gc import GCReport as GCReport
    from castar.store.images import Image as Image
    from castar.store.images import ImageStore as ImageStore
    from castar.store.leases import Lease as Lease
    from castar.store.leases import LeaseManager as LeaseManager
    from castar.store.leases import current_lease as current_lease
    from castar.store.root import Root as Root
    from castar.store.root import default_root as default_root
    from castar.store.root import open_root as open_root


def lazy_exports(
    package: str, exports: dict[str, str]
) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """A package's PEP 562 ``__getattr__`` and ``__dir__`` for ``{module: "name name"}``."""
    where = {name: module for module, names in exports.items() for name in names.split()}
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:  # noqa: N807 - the PEP 562 hook
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = namespace[name] = getattr(importlib.import_module(where[name]), name)
        return value

    def __dir__() -> list[str]:  # noqa: N807 - the PEP 562 hook
        return sorted({*namespace, *where})

    return __getattr__, __dir__


if not TYPE_CHECKING:
    __getattr__, __dir__ = lazy_exports(
        __name__,
        {
            "castar.store.content": "ContentStore Descriptor Info Writer",
            "castar.store.gc": "GCReport",
            "castar.store.images": "Image ImageStore",
            "castar.store.leases": "Lease LeaseManager current_lease",
            "castar.store.root": "Root default_root open_root",
        },
    )

__all__ = [
    "ContentStore",
    "Descriptor",
    "GCReport",
    "Image",
    "ImageStore",
    "Info",
    "Lease",
    "LeaseManager",
    "Root",
    "Writer",
    "current_lease",
    "default_root",
    "open_root",
]
