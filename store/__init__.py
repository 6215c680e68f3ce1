"""castar.store: digests, the content store, the metadata database, leases and GC.

Knows nothing about OCI documents, tar or platforms (DESIGN.md §1): those live
in castar.engine, which builds on this package.
"""

from __future__ import annotations
