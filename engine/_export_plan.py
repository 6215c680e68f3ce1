"""What save planning starts from: the targets named and the nodes the lookup fetched.

Pure: never anyio, the store or I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    from castar.engine import oci
    from castar.engine import platforms as plat

__all__ = ["Node", "Target"]


@dataclass(frozen=True, slots=True)
class Node:
    """What the store holds for one digest: enough to plan without further I/O."""

    present: bool
    labels: Mapping[str, str] = field(default_factory=dict)
    children: tuple[oci.Descriptor, ...] = ()
    document: bytes | None = None  # indexes only: the raw bytes, for pruning
    platform: plat.Platform | None = None  # manifests only: from the config
    referrers: tuple[oci.Descriptor, ...] = ()  # SAVE-1: present referrers, subject-annotated


@dataclass(frozen=True, slots=True)
class Target:
    reference: str  # as given by the caller
    name: str | None  # full name for the annotations; None → exported without names
    desc: oci.Descriptor

    @property
    def who(self) -> str:
        """What messages call it: the name, else the caller's reference."""
        return self.name or self.reference
