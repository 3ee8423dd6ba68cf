"""The LIDC-shaped phantom: real LIDC geometry and reads, synthetic images (see :mod:`.writer`)."""
from __future__ import annotations

from nodulekit.phantom.writer import PhantomParams, PhantomScan, PhantomSummary, write_phantom

__all__ = ["PhantomParams", "PhantomScan", "PhantomSummary", "write_phantom"]
