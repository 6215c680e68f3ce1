"""castar: an async content-addressed store for container images.

The public import surface. Library code lives in ``castar.store`` (content,
metadata, leases, GC) and ``castar.engine`` (platforms, OCI model, tar codec,
load and save); this module re-exports what users need.
"""

from __future__ import annotations

from castar.engine.platforms import Platform as Platform
from castar.store.content import Descriptor as Descriptor
from castar.store.content import Info as Info
from castar.store.errors import AlreadyExists as AlreadyExists
from castar.store.errors import CastarError as CastarError
from castar.store.errors import Conflict as Conflict
from castar.store.errors import DataLoss as DataLoss
from castar.store.errors import DigestMismatch as DigestMismatch
from castar.store.errors import FailedPrecondition as FailedPrecondition
from castar.store.errors import InvalidArgument as InvalidArgument
from castar.store.errors import MalformedArchive as MalformedArchive
from castar.store.errors import MalformedManifest as MalformedManifest
from castar.store.errors import NotFound as NotFound
from castar.store.errors import SizeMismatch as SizeMismatch
from castar.store.errors import Unavailable as Unavailable
from castar.store.errors import UnsupportedMediaType as UnsupportedMediaType
from castar.store.gc import GCReport as GCReport
from castar.store.images import Image as Image
from castar.store.leases import Lease as Lease

__version__ = "0.1.0"

__all__ = [
    "AlreadyExists",
    "CastarError",
    "Conflict",
    "DataLoss",
    "Descriptor",
    "DigestMismatch",
    "FailedPrecondition",
    "GCReport",
    "Image",
    "Info",
    "InvalidArgument",
    "Lease",
    "MalformedArchive",
    "MalformedManifest",
    "NotFound",
    "Platform",
    "SizeMismatch",
    "Unavailable",
    "UnsupportedMediaType",
    "__version__",
]
