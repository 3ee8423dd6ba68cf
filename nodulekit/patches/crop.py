"""Per-nodule patch extraction: CT, agreement map and consensus mask in each preset's geometry.

Every patch is centred on the nodule's consensus centroid (the mean voxel index of its
consensus mask, in the scan's mm frame, see :mod:`nodulekit.patches.resample`):

- ``3d``: a cube of ``size`` voxels at ``spacing_zyx_mm``;
- ``views9``: that cube's nine views (:func:`nodulekit.patches.views.nine_views`);
- ``2d``: one patch per native slice on which the consensus is non-empty (``kind`` ``nodule``),
  plus, with ``empty_ratio`` > 0, ``round(empty_ratio x nodule slices)`` nearby slices that no
  read of any nodule of the scan touches within the patch (``kind`` ``empty``, label -1; nearest
  first, alternately below and above; paper 001, section 4.1). Native spacing: the scan's own
  pixels, the window snapped to whole pixels (centre within half a pixel of the centroid, no
  interpolation); a given spacing resamples in-plane only;
- ``2.5d``: slabs of ``slab_depth`` consecutive slices at ``spacing_zyx_mm`` over the slices
  where the resampled mask is non-empty (ROI slices), one slab every ``slab_stride`` slices, the
  last one ending at the last ROI slice; with fewer ROI slices than ``slab_depth``, their z range
  is resampled to ``slab_depth`` slices (column ``slab_spacing_z_mm``; paper 003).

CT: linear resampling, -1024 HU outside the scan, then the HU window and normalisation.
Masks: the agreement map resampled linearly (0 outside its frame), thresholded at the nodule's
``clevel`` (``agreement >= clevel - 1e-6``, the tolerance absorbing float error of the
interpolation weights), so masks stay consistent with the consensus level.
Reader masks (``reader_masks``, one per read of the nodule, for paper 003's Table 6): each
read's 0/1 mask resampled exactly as the agreement map (same grid, same linear interpolation,
the same nine views, the same slab slices) and thresholded at 0.5 with the same tolerance
(:func:`nodulekit.io.patch_store.reader_mask`). Linear-then-0.5 rather than nearest neighbour:
it is the consensus rule applied to one read, so where the reads agree every reader mask equals
the consensus mask at clevel 0.5, and a model's Dice against a reader and against the consensus
carry the same resampling. ``empty`` slices get empty reader masks, like their agreement.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from nodulekit.io.nodule_store import NoduleRecord
from nodulekit.io.patch_store import FILL_HU, MASK_TOL, READER_COUNT_COLUMN, PatchBatch, pad_readers, reader_mask
from nodulekit.io.reads import CHARACTERISTICS
from nodulekit.patches.presets import CropGeometry
from nodulekit.patches.resample import Grid, VoxelSource, sample
from nodulekit.patches.views import nine_views

#: Nodule-table columns copied into every patch row, besides ``cohort_*`` and ``label_*``.
CARRIED_COLUMNS = ("diameter_mm", "volume_mm3", "n_readers", "slice_thickness_mm", "regular_z",
                   "ambiguous_group", *CHARACTERISTICS)


@dataclass
class NoduleInput:
    """One cohort nodule: its masks (nodule store), table row (python values) and primary label."""

    record: NoduleRecord
    row: dict[str, Any]
    label: int

    @property
    def key(self) -> str:
        return f"{self.record.series_uid}/{self.record.nodule_id}"


def window_hu(hu: np.ndarray, window: tuple[float, float], normalize: str) -> np.ndarray:
    """Clip HU to ``window``; ``01`` maps it to [0, 1], ``pm1`` to [-1, 1], ``none`` keeps HU."""
    lo, hi = window
    clipped = np.clip(hu, lo, hi).astype(np.float32)
    if normalize == "none":
        return clipped
    unit = (clipped - np.float32(lo)) / np.float32(hi - lo)
    return unit if normalize == "01" else unit * np.float32(2) - np.float32(1)


def consensus_mask(agreement: np.ndarray, clevel: float) -> np.ndarray:
    return agreement >= clevel - MASK_TOL


def consensus_centroid_vox(record: NoduleRecord) -> np.ndarray | None:
    """Mean voxel index (z, y, x) of the consensus mask in the scan, None when it is empty."""
    index = np.argwhere(record.consensus)
    if not len(index):
        return None
    return index.mean(axis=0) + np.asarray(record.bbox_zyx)[:, 0]


def agreement_source(record: NoduleRecord, scan_grid: Grid) -> VoxelSource:
    """The nodule's agreement map (its bbox frame) placed in the scan's mm frame, 0 outside."""
    origin = scan_grid.index_to_mm(np.asarray(record.bbox_zyx)[:, 0])
    return VoxelSource.from_array(np.asarray(record.agreement, dtype=np.float32), origin,
                                  scan_grid.spacing_zyx_mm, 0.0)


def n_reads(record: NoduleRecord) -> int:
    """Reads with a mask in the record (0 when it carries none)."""
    masks = np.asarray(record.reader_masks)
    if masks.ndim != 4 or not len(masks):
        return 0
    if masks.shape[1:] != np.shape(record.agreement):
        raise ValueError(f"nodule {record.series_uid}/{record.nodule_id}: reader masks {masks.shape[1:]} and "
                         f"agreement {np.shape(record.agreement)} are not in one frame")
    return int(len(masks))


def label_sources(record: NoduleRecord, scan_grid: Grid) -> list[VoxelSource]:
    """The agreement map, then each read's 0/1 mask (same frame, 0 outside), as sources to sample."""
    origin = scan_grid.index_to_mm(np.asarray(record.bbox_zyx)[:, 0])
    readers = [VoxelSource.from_array(np.asarray(m, dtype=np.float32), origin, scan_grid.spacing_zyx_mm, 0.0)
               for m in np.asarray(record.reader_masks)[:n_reads(record)]]
    return [agreement_source(record, scan_grid), *readers]


def sample_labels(record: NoduleRecord, scan_grid: Grid, grid: Grid) -> np.ndarray:
    """Agreement and read masks sampled on ``grid``: float32 (1 + reads, *grid.shape_zyx), channel 0
    the agreement."""
    return np.stack([sample(source, grid) for source in label_sources(record, scan_grid)])


def nodule_patches(scan: VoxelSource, nodule: NoduleInput, geometry: CropGeometry,
                   avoid_boxes_zyx: Sequence[np.ndarray] = ()) -> PatchBatch:
    """All patches of one nodule (see the module docstring); empty batch for an empty consensus.

    ``scan``: the scan's HU (fill -1024). ``avoid_boxes_zyx``: inclusive voxel boxes (3, 2) of
    every nodule of the scan, kept out of dgnet's empty slices.
    """
    centroid = consensus_centroid_vox(nodule.record)
    if centroid is None:
        return empty_batch(geometry)
    centre_mm = scan.grid.index_to_mm(centroid)
    if geometry.geometry in ("3d", "views9"):
        return _cube_patch(scan, nodule, geometry, centre_mm)
    if geometry.geometry == "2d":
        return _slice_patches(scan, nodule, geometry, centre_mm, avoid_boxes_zyx)
    return _slab_patches(scan, nodule, geometry, centre_mm)


def empty_batch(geometry: CropGeometry) -> PatchBatch:
    shape = (0, *geometry.patch_shape)
    return PatchBatch(np.zeros(shape, np.float32), np.zeros(shape, bool), np.zeros(shape, np.float32), [],
                      np.zeros((0, 0, *geometry.patch_shape), bool))


def concat_batches(batches: Sequence[PatchBatch], geometry: CropGeometry) -> PatchBatch:
    """One batch of several; reader masks padded to the most reads of any of them."""
    batches = [b for b in batches if len(b)]
    if not batches:
        return empty_batch(geometry)
    n_slots = max(b.reader_masks.shape[1] for b in batches if b.reader_masks is not None)
    readers = np.concatenate([pad_readers(b.reader_masks, n_slots) for b in batches if b.reader_masks is not None])
    return PatchBatch(np.concatenate([b.images for b in batches]), np.concatenate([b.masks for b in batches]),
                      np.concatenate([b.agreement for b in batches]), [r for b in batches for r in b.rows], readers)


# -- rows ---------------------------------------------------------------------------------------
def patch_row(nodule: NoduleInput, scan_grid: Grid, *, kind: str, slice_offset: int,
              centre_zyx_mm: Sequence[float], label: int | None = None) -> dict[str, Any]:
    """One table row: the schema's columns (nodulekit.io.patch_store), the patch centre in mm, the
    nodule's cohort/label/characteristic columns."""
    row = nodule.row
    spacing = scan_grid.spacing_zyx_mm
    out: dict[str, Any] = {
        "nodule_key": nodule.key, "patient_id": str(row["patient_id"]), "series_uid": nodule.record.series_uid,
        "nodule_id": int(nodule.record.nodule_id), "fold": int(row["fold"]),
        "label": int(nodule.label if label is None else label), "kind": kind, "slice_offset": int(slice_offset),
        "source_spacing_z_mm": float(spacing[0]), "source_spacing_y_mm": float(spacing[1]),
        "source_spacing_x_mm": float(spacing[2]),
        "centre_z_mm": float(centre_zyx_mm[0]), "centre_y_mm": float(centre_zyx_mm[1]),
        "centre_x_mm": float(centre_zyx_mm[2]), "in_cohort": True,
    }
    for col, value in row.items():
        if col.startswith(("cohort_", "label_")) or col in CARRIED_COLUMNS:
            out[col] = value
    return out


# -- 3d cubes and nine views ---------------------------------------------------------------------
def _cube_patch(scan: VoxelSource, nodule: NoduleInput, geometry: CropGeometry, centre_mm: np.ndarray) -> PatchBatch:
    n = geometry.size
    assert geometry.spacing_zyx_mm is not None
    grid = Grid.centred(centre_mm, (n, n, n), geometry.spacing_zyx_mm)
    hu = sample(scan, grid)
    labels = sample_labels(nodule.record, scan.grid, grid)
    if geometry.geometry == "views9":
        hu = nine_views(hu, geometry.views_sampling).astype(np.float32)
        labels = np.stack([nine_views(channel, geometry.views_sampling) for channel in labels]).astype(np.float32)
    row = patch_row(nodule, scan.grid, kind="nodule", slice_offset=0, centre_zyx_mm=grid.centre_zyx_mm)
    return _batch([window_hu(hu, geometry.hu_window, geometry.normalize)], [labels], nodule.record.clevel, [row])


def _batch(images: list[np.ndarray], labels: list[np.ndarray], clevel: float,
           rows: list[dict[str, Any]]) -> PatchBatch:
    """Patches from images and label stacks (1 + reads, *patch_shape): agreement, then the read masks."""
    stacked = np.stack(labels).astype(np.float32)
    agreement = np.ascontiguousarray(stacked[:, 0])
    for row in rows:
        row[READER_COUNT_COLUMN] = int(stacked.shape[1] - 1)
    return PatchBatch(np.stack(images).astype(np.float32), consensus_mask(agreement, clevel), agreement, rows,
                      reader_mask(stacked[:, 1:]))


# -- 2d slices ------------------------------------------------------------------------------------
def slice_grid(scan_grid: Grid, k_lo: int, k_hi: int, centre_mm: np.ndarray, size: int,
               spacing_zyx_mm: tuple[float, float, float] | None) -> Grid:
    """Native slices k_lo..k_hi; in-plane either the scan's pixels (window snapped to whole
    pixels) or ``spacing_zyx_mm``'s y, x spacing centred exactly."""
    z_mm = scan_grid.index_to_mm((k_lo, 0, 0))[0]
    if spacing_zyx_mm is None:
        spacing_yx = np.asarray(scan_grid.spacing_zyx_mm[1:])
        centre_vox = scan_grid.mm_to_index(centre_mm)[1:]
        start_vox = np.round(centre_vox - (size - 1) / 2)
        origin_yx = np.asarray(scan_grid.origin_zyx_mm[1:]) + start_vox * spacing_yx
    else:
        spacing_yx = np.asarray(spacing_zyx_mm[1:])
        origin_yx = centre_mm[1:] - (size - 1) / 2 * spacing_yx
    return Grid((float(z_mm), float(origin_yx[0]), float(origin_yx[1])),
                (scan_grid.spacing_zyx_mm[0], float(spacing_yx[0]), float(spacing_yx[1])),
                (k_hi - k_lo + 1, size, size))


def _slice_patches(scan: VoxelSource, nodule: NoduleInput, geometry: CropGeometry, centre_mm: np.ndarray,
                   avoid_boxes_zyx: Sequence[np.ndarray]) -> PatchBatch:
    rec = nodule.record
    bbox = np.asarray(rec.bbox_zyx)
    nodule_k = [int(bbox[0, 0] + k) for k in np.flatnonzero(rec.consensus.any(axis=(1, 2)))]
    centre_k = int(round(float(scan.grid.mm_to_index(centre_mm)[0])))
    probe = slice_grid(scan.grid, centre_k, centre_k, centre_mm, geometry.size, geometry.spacing_zyx_mm)
    n_empty = int(round(geometry.empty_ratio * len(nodule_k)))
    empty_k = empty_slices((int(bbox[0, 0]), int(bbox[0, 1])), n_empty, scan.grid.shape_zyx[0],
                           _window_box_yx(scan.grid, probe), avoid_boxes_zyx) if n_empty else []
    wanted = sorted(set(nodule_k) | set(empty_k))
    grid = slice_grid(scan.grid, wanted[0], wanted[-1], centre_mm, geometry.size, geometry.spacing_zyx_mm)
    hu = window_hu(sample(scan, grid), geometry.hu_window, geometry.normalize)
    labels = sample_labels(rec, scan.grid, grid)
    centre_yx = grid.centre_zyx_mm[1:]
    images, slice_labels, rows = [], [], []
    for kind, ks in (("nodule", nodule_k), ("empty", empty_k)):
        for k in ks:
            i = k - wanted[0]
            z_mm = grid.index_to_mm((i, 0, 0))[0]
            images.append(hu[i])
            slice_labels.append(labels[:, i] if kind == "nodule" else np.zeros_like(labels[:, i]))
            rows.append(patch_row(nodule, scan.grid, kind=kind, slice_offset=k - centre_k,
                                  centre_zyx_mm=(z_mm, *centre_yx), label=None if kind == "nodule" else -1))
    return _batch(images, slice_labels, rec.clevel, rows)


def _window_box_yx(scan_grid: Grid, grid: Grid) -> np.ndarray:
    """The scan voxels (y, x; inclusive (2, 2)) a 2D patch grid covers."""
    first = scan_grid.mm_to_index(grid.origin_zyx_mm)[1:]
    last = scan_grid.mm_to_index(grid.index_to_mm(np.asarray(grid.shape_zyx) - 1))[1:]
    return np.stack([np.floor(first), np.ceil(last)], axis=1).astype(np.int64)


def empty_slices(nodule_k: tuple[int, int], n_wanted: int, n_slices: int, window_yx: np.ndarray,
                 avoid_boxes_zyx: Sequence[np.ndarray]) -> list[int]:
    """Up to ``n_wanted`` slice indices nearest to the nodule's slice range ``nodule_k`` (inclusive;
    below first, then above, alternately), inside the scan, where the patch window ``window_yx``
    (inclusive voxel box (2, 2)) meets no box of ``avoid_boxes_zyx``."""
    found: list[int] = []
    lo, hi = nodule_k
    for distance in range(1, n_slices + 1):
        for k in (lo - distance, hi + distance):
            if len(found) == n_wanted:
                return found
            if 0 <= k < n_slices and not any(_box_hits(box, k, window_yx) for box in avoid_boxes_zyx):
                found.append(k)
    return found


def _box_hits(box_zyx: np.ndarray, k: int, window_yx: np.ndarray) -> bool:
    box = np.asarray(box_zyx)
    if not box[0, 0] <= k <= box[0, 1]:
        return False
    return bool(np.all(box[1:, 0] <= window_yx[:, 1]) and np.all(window_yx[:, 0] <= box[1:, 1]))


# -- 2.5d slabs -----------------------------------------------------------------------------------
def _slab_patches(scan: VoxelSource, nodule: NoduleInput, geometry: CropGeometry,
                  centre_mm: np.ndarray) -> PatchBatch:
    rec, n, depth = nodule.record, geometry.size, geometry.slab_depth
    assert geometry.spacing_zyx_mm is not None
    dz = geometry.spacing_zyx_mm[0]
    z_range_mm = scan.grid.index_to_mm(np.asarray(rec.bbox_zyx).T)[:, 0]  # z of the frame's first and last slice
    k_min = int(math.floor((z_range_mm[0] - centre_mm[0]) / dz)) - 1
    k_max = int(math.ceil((z_range_mm[1] - centre_mm[0]) / dz)) + 1
    column = Grid.centred(centre_mm, (1, n, n), geometry.spacing_zyx_mm)
    block = Grid((float(centre_mm[0] + k_min * dz), *column.origin_zyx_mm[1:]), geometry.spacing_zyx_mm,
                 (k_max - k_min + 1, n, n))
    hu = sample(scan, block)
    labels = sample_labels(rec, scan.grid, block)
    roi = np.flatnonzero(consensus_mask(labels[0], rec.clevel).any(axis=(1, 2)))
    if len(roi) >= depth:
        starts = list(range(int(roi[0]), int(roi[-1]) - depth + 2, geometry.slab_stride))
        if starts[-1] + depth - 1 < roi[-1]:
            starts.append(int(roi[-1]) - depth + 1)
        slabs = [(hu[s:s + depth], labels[:, s:s + depth], block.shifted((s, 0, 0), (depth, n, n)), k_min + s)
                 for s in starts]
    else:
        slabs = [_interpolated_slab(scan, rec, block, roi, depth, centre_mm, dz)]
    images, slab_labels, rows = [], [], []
    for slab_hu, labels_of_slab, grid, offset in slabs:
        images.append(window_hu(slab_hu, geometry.hu_window, geometry.normalize))
        slab_labels.append(labels_of_slab)
        row = patch_row(nodule, scan.grid, kind="nodule", slice_offset=offset, centre_zyx_mm=grid.centre_zyx_mm)
        row["slab_spacing_z_mm"] = float(grid.spacing_zyx_mm[0])
        rows.append(row)
    return _batch(images, slab_labels, rec.clevel, rows)


def _interpolated_slab(scan: VoxelSource, rec: NoduleRecord, block: Grid, roi: np.ndarray, depth: int,
                       centre_mm: np.ndarray, dz: float) -> tuple[np.ndarray, np.ndarray, Grid, int]:
    """Fewer ROI slices than ``depth``: their z extent (each slice +-dz/2) resampled to ``depth`` slices
    (CT, and the label stack of :func:`sample_labels`)."""
    if len(roi):
        lo = block.index_to_mm((int(roi[0]), 0, 0))[0] - dz / 2
        hi = block.index_to_mm((int(roi[-1]), 0, 0))[0] + dz / 2
    else:
        lo, hi = centre_mm[0] - dz / 2, centre_mm[0] + dz / 2
    step = (hi - lo) / depth
    grid = Grid((float(lo + step / 2), *block.origin_zyx_mm[1:]),
                (float(step), *block.spacing_zyx_mm[1:]), (depth, *block.shape_zyx[1:]))
    offset = int(round((grid.origin_zyx_mm[0] - centre_mm[0]) / dz))
    return sample(scan, grid), sample_labels(rec, scan.grid, grid), grid, offset


# -- one scan ------------------------------------------------------------------------------------
def scan_source(volume_file: Any, origin_xyz_mm: Sequence[float], spacing_zyx_mm: Sequence[float]) -> VoxelSource:
    """The HU of an open volume store (h5py file) as a :class:`VoxelSource` (fill -1024 HU)."""
    return VoxelSource.from_array(volume_file["hu"], tuple(reversed(tuple(origin_xyz_mm))), spacing_zyx_mm, FILL_HU)


def crop_scan(volume_path: Path, nodules: Sequence[NoduleInput], geometry: CropGeometry,
              avoid_boxes_zyx: Sequence[np.ndarray] = ()) -> tuple[PatchBatch, list[dict[str, str]]]:
    """All patches of one scan's nodules, and the nodules left out (``{"nodule_key", "reason"}``).

    ``volume_path``: the scan's volume store (:mod:`nodulekit.io.stores`).
    """
    import h5py

    from nodulekit.io.stores import open_volume_store

    volume = open_volume_store(volume_path)
    batches, skipped = [], []
    with h5py.File(volume_path, "r") as f:
        scan = scan_source(f, volume.origin_xyz_mm, volume.spacing_zyx_mm)
        shape = np.asarray(scan.grid.shape_zyx)
        for nodule in nodules:
            bbox = np.asarray(nodule.record.bbox_zyx)
            if np.any(bbox[:, 0] < 0) or np.any(bbox[:, 1] >= shape):
                skipped.append({"nodule_key": nodule.key, "reason": f"frame {bbox.tolist()} outside the volume "
                                f"{shape.tolist()} (labels and images from different scans?)"})
                continue
            batch = nodule_patches(scan, nodule, geometry, avoid_boxes_zyx)
            if not len(batch):
                skipped.append({"nodule_key": nodule.key, "reason": "empty consensus mask"})
            batches.append(batch)
    return concat_batches(batches, geometry), skipped
