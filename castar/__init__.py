"""castar: an async content-addressed store for container images.

The public names, each loaded on first use; the layers are mapped in docs/interfaces.md.
"""

from __future__ import annotations

import typing

from castar.store import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from castar._api import Store as Store
    from castar._api import open_store as open_store
    from castar.engine.images import ImageDetails as ImageDetails
    from castar.engine.images import ImageService as ImageService
    from castar.engine.images import ImageTree as ImageTree
    from castar.engine.images import ManifestRow as ManifestRow
    from castar.engine.images import Removal as Removal
    from castar.engine.load.importer import LoadOptions as LoadOptions
    from castar.engine.oci import Descriptor as Descriptor
    from castar.engine.platforms import Platform as Platform
    from castar.engine.save.exporter import ExportResult as ExportResult
    from castar.engine.save.exporter import SaveJob as SaveJob
    from castar.engine.save.exporter import SaveOptions as SaveOptions
    from castar.engine.save.exporter import SavePlan as SavePlan
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
    from castar.store.errors import NotImplementedKind as NotImplementedKind
    from castar.store.errors import PermissionDenied as PermissionDenied
    from castar.store.errors import SizeMismatch as SizeMismatch
    from castar.store.errors import Unauthenticated as Unauthenticated
    from castar.store.errors import Unavailable as Unavailable
    from castar.store.errors import UnsupportedMediaType as UnsupportedMediaType
    from castar.store.gc import GCReport as GCReport
    from castar.store.images import Image as Image
    from castar.store.leases import Lease as Lease
    from castar.store.root import default_root as default_root
    from castar.store.verify import BlobProblem as BlobProblem
    from castar.store.verify import VerifyReport as VerifyReport

_EXPORTS = {
    "castar._api": "Store open_store",
    "castar.engine.save.exporter": "ExportResult SaveJob SaveOptions SavePlan",
    "castar.engine.load.importer": "LoadOptions",
    "castar.engine.images": "ImageDetails ImageService ImageTree ManifestRow Removal",
    "castar.engine.oci": "Descriptor",
    "castar.engine.platforms": "Platform",
    "castar.store.root": "default_root",
    "castar.store.content": "Info",
    "castar.store.errors": "AlreadyExists CastarError Conflict DataLoss DigestMismatch"
    " FailedPrecondition InvalidArgument MalformedArchive MalformedManifest NotFound"
    " NotImplementedKind PermissionDenied SizeMismatch Unauthenticated Unavailable"
    " UnsupportedMediaType",
    "castar.store.gc": "GCReport",
    "castar.store.images": "Image",
    "castar.store.leases": "Lease",
    "castar.store.verify": "BlobProblem VerifyReport",
}

if not typing.TYPE_CHECKING:  # PEP 562
    __getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__version__ = "0.1.0"

__all__ = sorted([*" ".join(_EXPORTS.values()).split(), "__version__"])
