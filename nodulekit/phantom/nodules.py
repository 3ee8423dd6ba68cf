"""Paint nodules into the synthetic thorax where the readers' contours say they are.

For one nodule (a cluster of reads) the **agreement** is the fraction of its reads whose filled
mask (:func:`nodulekit.labels.masks.read_mask`, pylidc convention without contour pixels)
covers a voxel, so edges are fuzzy where readers disagree. The appearance follows the reads'
median ratings (LIDC-FACTS 1.5):

- texture 1-2: ground glass ~ -600 HU; 3: part-solid (ground glass rim, solid core);
  4-5: solid ~ +30 HU;
- calcification 1-5: a calcified core of +500..+1000 HU (1 popcorn: clumps, 2 laminated:
  rings, 3 solid: almost all, 4 non-central: one side, 5 central: centre); 6: none;
- margin: the agreement is blurred with sigma ``0.35 * (5 - margin) + 0.3`` mm in-plane
  (1 = poorly defined -> ~1.7 mm, 5 = sharp -> 0.3 mm);
- spiculation >= 3: ``2 * spiculation`` or more thin (1 pixel) radial spikes of solid tissue
  reaching up to ~1.6 radii from the centre, on every slice of the nodule.

Lobulation, sphericity and internal structure are carried by the contours themselves. Painting
blends ``hu = hu * (1 - alpha) + tissue * alpha`` with ``alpha`` the blurred agreement.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from nodulekit.io.reads import NoduleRead
from nodulekit.labels.masks import read_bbox_zyx, read_mask, union_bbox_zyx

SOLID_HU = 30.0
GGO_HU = -600.0
CALCIFICATION_HU = {1: 900.0, 2: 700.0, 3: 1000.0, 4: 500.0, 5: 800.0}
DEFAULT_RATINGS = {"texture": 5, "calcification": 6, "margin": 4, "spiculation": 1}


@dataclass(frozen=True)
class Appearance:
    """Median ratings of a nodule's reads (rounded half up); defaults where no read rates."""

    texture: int
    calcification: int
    margin: int
    spiculation: int

    @classmethod
    def from_reads(cls, reads: Sequence[NoduleRead]) -> Appearance:
        values = {}
        for name, default in DEFAULT_RATINGS.items():
            rated = [r.characteristics[name] for r in reads
                     if r.characteristics and name in r.characteristics]
            values[name] = int(np.floor(np.median(rated) + 0.5)) if rated else default
        return cls(**values)


def agreement_map(reads: Sequence[NoduleRead], z_positions_mm: np.ndarray, bbox_zyx: np.ndarray,
                  shape_yx: tuple[int, int]) -> np.ndarray:
    """float32 (nz, ny, nx) over ``bbox_zyx``: fraction of ``reads`` whose mask covers each voxel.

    A read whose mask is empty without its contour pixels (a tiny outline) counts with them.
    """
    masks = []
    for read in reads:
        mask = read_mask(read.contours, z_positions_mm, bbox_zyx, shape_yx=shape_yx)
        if not mask.any():
            mask = read_mask(read.contours, z_positions_mm, bbox_zyx, shape_yx=shape_yx,
                             include_contour_points=True)
        masks.append(mask)
    return np.mean(masks, axis=0, dtype=np.float32)


def _depth(core: np.ndarray, pixel_spacing_mm: float) -> np.ndarray:
    """In-plane distance to the nodule edge, normalised to [0, 1] over the nodule."""
    depth = np.stack([ndimage.distance_transform_edt(s, sampling=pixel_spacing_mm) for s in core])
    peak = float(depth.max())
    return (depth / peak).astype(np.float32) if peak > 0 else depth.astype(np.float32)


def _tissue(app: Appearance, core: np.ndarray, depth: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """HU of the nodule's tissue at every voxel of its box (float32)."""
    if app.texture <= 2:
        tissue = np.full(depth.shape, GGO_HU, dtype=np.float32)
    elif app.texture == 3:
        solid_part = np.clip((depth - 0.4) / 0.2, 0.0, 1.0)
        tissue = (GGO_HU + (SOLID_HU - GGO_HU) * solid_part).astype(np.float32)
    else:
        tissue = np.full(depth.shape, SOLID_HU, dtype=np.float32)
    tissue += rng.normal(0.0, 15.0, depth.shape).astype(np.float32)
    calc = app.calcification
    if calc in CALCIFICATION_HU:
        if calc == 1:
            clumps = ndimage.gaussian_filter(rng.standard_normal(depth.shape), 1.0) > 0.15
            region = (depth >= 0.25) & clumps
        elif calc == 2:
            region = (depth >= 0.3) & (np.sin(depth * 3.0 * np.pi) > 0.0)
        elif calc == 3:
            region = depth >= 0.15
        elif calc == 4:
            cols = np.nonzero(core.any(axis=(0, 1)))[0]
            side = np.arange(depth.shape[2]) > (cols.mean() if cols.size else 0)
            region = (depth >= 0.3) & side[None, None, :]
        else:
            region = depth >= 0.5
        tissue[region] = CALCIFICATION_HU[calc]
    return tissue


def _spikes(app: Appearance, core: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """float32 alpha of thin radial spikes (zero unless spiculation >= 3)."""
    spikes = np.zeros(core.shape, dtype=np.float32)
    if app.spiculation < 3:
        return spikes
    n_spikes = 2 * app.spiculation + int(rng.integers(0, 3))
    angles = rng.uniform(0.0, 2 * np.pi, n_spikes)
    reach = rng.uniform(1.2, 1.0 + 0.12 * app.spiculation, n_spikes)
    for k, plane in enumerate(core):
        if not plane.any():
            continue
        ys, xs = np.nonzero(plane)
        cy, cx = ys.mean(), xs.mean()
        radius = np.sqrt(plane.sum() / np.pi)
        for angle, r_end in zip(angles, reach * radius):
            t = np.linspace(0.5 * radius, r_end, max(4, int(4 * r_end)))
            yy = np.rint(cy + t * np.sin(angle)).astype(int)
            xx = np.rint(cx + t * np.cos(angle)).astype(int)
            ok = (yy >= 0) & (yy < plane.shape[0]) & (xx >= 0) & (xx < plane.shape[1])
            fade = np.clip(1.0 - (t - radius) / max(r_end - radius, 1e-6), 0.3, 0.9)
            np.maximum.at(spikes[k], (yy[ok], xx[ok]), fade[ok].astype(np.float32))
    return spikes


def paint_nodule(hu: np.ndarray, reads: Sequence[NoduleRead], z_positions_mm: np.ndarray,
                 pixel_spacing_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Blend one nodule (cluster of reads) into ``hu`` (float32 (z, y, x), in place).

    ``reads``: contours in the volume's pixel frame; ``z_positions_mm``: the volume's slices.
    Returns the painted box (3, 2) inclusive (z index, y, x).
    """
    shape_yx = hu.shape[1:]
    box = union_bbox_zyx([read_bbox_zyx(r.contours, z_positions_mm, shape_yx) for r in reads])
    pad_px = int(np.ceil(6.0 / pixel_spacing_mm)) + int(0.8 * (box[1:, 1] - box[1:, 0]).max())
    pad = np.array([1, pad_px, pad_px])
    limit = np.array(hu.shape) - 1
    box = np.stack([np.maximum(box[:, 0] - pad, 0), np.minimum(box[:, 1] + pad, limit)], axis=1)
    agreement = agreement_map(reads, z_positions_mm, box, shape_yx)
    app = Appearance.from_reads(reads)
    core = agreement >= 0.5
    if not core.any():
        core = agreement > 0
    depth = _depth(core, pixel_spacing_mm)
    sigma_px = (0.35 * (5 - app.margin) + 0.3) / pixel_spacing_mm
    alpha = ndimage.gaussian_filter(agreement, (0.0, sigma_px, sigma_px))
    alpha = np.maximum(alpha, _spikes(app, core, rng))
    np.clip(alpha, 0.0, 1.0, out=alpha)
    tissue = _tissue(app, core, depth, rng)
    view = hu[box[0, 0]:box[0, 1] + 1, box[1, 0]:box[1, 1] + 1, box[2, 0]:box[2, 1] + 1]
    view += alpha * (tissue - view)
    return box


def paint_blob(hu: np.ndarray, center_zyx_px: Sequence[int], spacing_zyx_mm: Sequence[float],
               radius_mm: float = 1.4, value_hu: float = SOLID_HU) -> None:
    """A small soft-edged sphere (for < 3 mm nodule marks), in place on float32 ``hu``."""
    center = np.asarray(center_zyx_px, dtype=float)
    spacing = np.asarray(spacing_zyx_mm, dtype=float)
    half = np.ceil((radius_mm + 1.0) / spacing).astype(int)
    lo = np.maximum(center.astype(int) - half, 0)
    hi = np.minimum(center.astype(int) + half + 1, hu.shape)
    grids = np.meshgrid(*[(np.arange(a, b) - c) * s for a, b, c, s in zip(lo, hi, center, spacing)],
                        indexing="ij", sparse=True)
    dist = np.sqrt(sum(g ** 2 for g in grids))
    alpha = np.clip(radius_mm - dist + 0.5, 0.0, 1.0).astype(np.float32)
    view = hu[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    view += alpha * (np.float32(value_hu) - view)
