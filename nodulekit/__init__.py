"""nodulekit: from a raw LIDC-IDRI download to trained, evaluated multitask nodule models."""
from __future__ import annotations

__version__ = "0.1.0"
