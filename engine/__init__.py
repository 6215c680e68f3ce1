"""castar.engine: platforms, the OCI model, the tar codec, and image load/save.

Builds on castar.store; pure modules (tarcodec, platforms, oci) import no I/O library.
"""

from __future__ import annotations
