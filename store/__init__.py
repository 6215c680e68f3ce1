"""castar.store: digests, the content store, the metadata database, leases and GC.

Knows nothing about OCI documents, tar or platforms (DESIGN.md §1): those live
in castar.engine, which builds on this package.
"""

from __future__ import annotations

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
