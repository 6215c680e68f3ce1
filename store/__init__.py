"""castar.store: digests, the content store, the metadata database, leases and GC.

Knows nothing about OCI documents, tar or platforms: those live in castar.engine, which builds
on this package. Names load on first use (PEP 562), so ``import castar.store.digest`` does not
import anyio.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
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

_HOMES = {
    "content": ("ContentStore", "Descriptor", "Info", "Writer"),
    "gc": ("GCReport",),
    "images": ("Image", "ImageStore"),
    "leases": ("Lease", "LeaseManager", "current_lease"),
    "root": ("Root", "default_root", "open_root"),
}
_HOME = {name: module for module, names in _HOMES.items() for name in names}

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


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"castar.store.{module}"), name)
