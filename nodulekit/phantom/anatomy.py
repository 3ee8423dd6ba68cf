"""Synthetic thorax anatomy in HU on a real scan's grid (numpy only, deterministic per rng).

Everything is an analytic function of world coordinates (mm; the full 512 grid is centred on
x = y = 0), so a cropped window or slab shows the same anatomy as the full scan, apart from the
random texture and noise. Layers, painted in this order:

- outside the scanner's circular field of view: -3024 HU (stored -2000 with intercept -1024,
  the LIDC padding value); air inside the field of view: -1000 HU;
- body ellipse: soft tissue ~20 HU with a subcutaneous fat rim (-100 HU) and smooth texture;
- two lungs (ellipses whose size follows the position in the scan's full z range) at about
  -850 HU with smooth texture, plus a ball of lung around every nodule (``lung_balls``) so each
  real nodule position lies in parenchyma whatever the synthetic lung shape;
- bone outside the lungs: a rib ring (ribs as stripes in z), spine and sternum, ~+700 HU;
- vessels: random branching tubes (~+40 HU) from each hilum, drawn only inside the lungs;
- Gaussian noise (``noise_hu`` standard deviation).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

AIR_HU = -1000.0
OUTSIDE_FOV_HU = -3024.0
LUNG_HU = -850.0
SOFT_TISSUE_HU = 20.0
FAT_HU = -100.0
BONE_HU = 700.0
VESSEL_HU = 40.0


@dataclass(frozen=True)
class Grid:
    """Voxel centres of the written volume in world mm.

    ``z_mm`` (nz,) ascending slice positions; ``y_mm`` (ny,), ``x_mm`` (nx,) pixel centres;
    ``fov_radius_mm``: half the full 512-pixel field of view; ``z_range_mm``: the full scan's
    first and last slice z (not just the written slab).
    """

    z_mm: np.ndarray
    y_mm: np.ndarray
    x_mm: np.ndarray
    fov_radius_mm: float
    z_range_mm: tuple[float, float]

    @property
    def shape(self) -> tuple[int, int, int]:
        return (len(self.z_mm), len(self.y_mm), len(self.x_mm))

    @property
    def pixel_spacing_mm(self) -> float:
        return float(self.x_mm[1] - self.x_mm[0]) if len(self.x_mm) > 1 else 1.0

    def index_range(self, axis: int, lo_mm: float, hi_mm: float) -> slice:
        """Indices along ``axis`` (0 z, 1 y, 2 x) whose centres lie in [lo_mm, hi_mm]."""
        coords = (self.z_mm, self.y_mm, self.x_mm)[axis]
        return slice(int(np.searchsorted(coords, lo_mm, "left")),
                     int(np.searchsorted(coords, hi_mm, "right")))


@dataclass(frozen=True)
class LungBall:
    """A sphere of lung parenchyma forced around a nodule (centre (z, y, x) mm, radius mm)."""

    center_zyx_mm: tuple[float, float, float]
    radius_mm: float


def _linear_weights(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) linear-interpolation matrix spreading ``n_in`` knots over ``n_out`` samples."""
    pos = np.linspace(0.0, n_in - 1.0, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = (pos - lo).astype(np.float32)
    weights = np.zeros((n_out, n_in), dtype=np.float32)
    weights[np.arange(n_out), lo] = 1.0 - frac
    weights[np.arange(n_out), lo + 1] = frac
    return weights


def smooth_texture(shape: tuple[int, int, int], rng: np.random.Generator, cell: Sequence[int],
                   amplitude_hu: float) -> np.ndarray:
    """Smooth random field float32 ``shape``: coarse noise (one knot per ``cell`` voxels),
    linearly interpolated along each axis (three small matrix products)."""
    coarse = tuple(max(2, -(-s // c) + 1) for s, c in zip(shape, cell))
    field = rng.standard_normal(coarse, dtype=np.float32) * np.float32(amplitude_hu)
    wz, wy, wx = (_linear_weights(s, c) for s, c in zip(shape, coarse))
    field = np.tensordot(wz, field, axes=(1, 0))            # (nz, cy, cx)
    field = np.matmul(wy[None], field)                       # (nz, ny, cx)
    return np.ascontiguousarray(np.matmul(field, wx.T))      # (nz, ny, nx)


def _ellipse(y: np.ndarray, x: np.ndarray, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2


def lung_scale(grid: Grid) -> np.ndarray:
    """(nz,) lung size factor: small at the apex and base of the full scan, largest mid-way."""
    z0, z1 = grid.z_range_mm
    t = (grid.z_mm - z0) / max(z1 - z0, 1e-6)
    return 0.45 + 0.55 * np.sin(np.pi * (0.1 + 0.8 * t))


def lung_mask(grid: Grid, balls: Sequence[LungBall] = ()) -> np.ndarray:
    """bool (z, y, x): two lung ellipses scaled per slice, plus the nodules' lung balls."""
    r = grid.fov_radius_mm
    y = grid.y_mm[:, None]
    x = grid.x_mm[None, :]
    e = np.minimum(*[_ellipse(y, x, 0.0, side * 0.37 * r, 0.52 * r, 0.29 * r) for side in (-1.0, 1.0)])
    mask = e[None] < (lung_scale(grid) ** 2)[:, None, None]
    for ball in balls:
        cz, cy, cx = ball.center_zyx_mm
        rad = ball.radius_mm
        zs, ys, xs = (grid.index_range(0, cz - rad, cz + rad), grid.index_range(1, cy - rad, cy + rad),
                      grid.index_range(2, cx - rad, cx + rad))
        d2 = ((grid.z_mm[zs, None, None] - cz) ** 2 + (grid.y_mm[None, ys, None] - cy) ** 2
              + (grid.x_mm[None, None, xs] - cx) ** 2)
        mask[zs, ys, xs] |= d2 <= rad * rad
    return mask


def _body_layers(grid: Grid, hu: np.ndarray) -> None:
    """Body soft tissue and fat rim, bone ring / spine / sternum (all slices), in place."""
    r = grid.fov_radius_mm
    y = grid.y_mm[:, None]
    x = grid.x_mm[None, :]
    body = _ellipse(y, x, 0.05 * r, 0.0, 0.74 * r, 0.92 * r)
    plane = np.full(body.shape, AIR_HU, dtype=np.float32)
    plane[body < 1.0] = FAT_HU
    plane[_ellipse(y, x, 0.05 * r, 0.0, 0.74 * r - 12.0, 0.92 * r - 12.0) < 1.0] = SOFT_TISSUE_HU
    spine = _ellipse(y, x, 0.58 * r, 0.0, 0.08 * r, 0.08 * r) < 1.0
    sternum = _ellipse(y, x, -0.60 * r, 0.0, 0.03 * r, 0.07 * r) < 1.0
    plane[spine | sternum] = BONE_HU
    hu[:] = plane[None]
    ring = np.flatnonzero((body > 0.70) & (body < 0.80))
    angle = np.abs(np.arctan2(y - 0.05 * r, x)).ravel()[ring]
    ribs = np.cos(2 * np.pi * (grid.z_mm[:, None] + 8.0 * angle[None, :]) / 30.0) > 0.45
    flat = hu.reshape(hu.shape[0], -1)
    flat[:, ring] = np.where(ribs, np.float32(BONE_HU), flat[:, ring])


def _segment(grid: Grid, hu: np.ndarray, lungs: np.ndarray, a: np.ndarray, b: np.ndarray,
             radius_mm: float) -> None:
    """Draw a tube from ``a`` to ``b`` ((z, y, x) mm) at VESSEL_HU inside ``lungs`` (soft edge)."""
    lo, hi = np.minimum(a, b) - radius_mm - 1, np.maximum(a, b) + radius_mm + 1
    sl = tuple(grid.index_range(ax, lo[ax], hi[ax]) for ax in range(3))
    if any(s.stop <= s.start for s in sl):
        return
    pz, py, px = np.meshgrid(grid.z_mm[sl[0]] - a[0], grid.y_mm[sl[1]] - a[1],
                             grid.x_mm[sl[2]] - a[2], indexing="ij", sparse=True)
    d = b - a
    t = np.clip((pz * d[0] + py * d[1] + px * d[2]) / max(float(d @ d), 1e-9), 0.0, 1.0)
    dist = np.sqrt((pz - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (px - t * d[2]) ** 2)
    alpha = np.clip((radius_mm - dist) / grid.pixel_spacing_mm + 0.5, 0.0, 1.0).astype(np.float32)
    alpha *= lungs[sl]
    block = hu[sl]
    block += alpha * (VESSEL_HU - block)


def _vessel_tree(grid: Grid, hu: np.ndarray, lungs: np.ndarray, rng: np.random.Generator,
                 root: np.ndarray, direction: np.ndarray, length_mm: float, radius_mm: float,
                 depth: int) -> None:
    end = root + direction * length_mm
    _segment(grid, hu, lungs, root, end, radius_mm)
    if depth == 0:
        return
    for _ in range(2):
        turn = rng.normal(0.0, 0.55, 3)
        child = direction + turn
        child /= np.linalg.norm(child)
        _vessel_tree(grid, hu, lungs, rng, end, child, length_mm * rng.uniform(0.65, 0.85),
                     radius_mm * 0.72, depth - 1)


def draw_vessels(grid: Grid, hu: np.ndarray, lungs: np.ndarray, rng: np.random.Generator,
                 trees_per_lung: int = 5, depth: int = 5) -> None:
    """Branching tubes from both hila (the same trees whatever window/slab is written)."""
    r = grid.fov_radius_mm
    z0, z1 = grid.z_range_mm
    for side in (-1.0, 1.0):
        for tree in range(trees_per_lung):
            zc = z0 + (z1 - z0) * (0.35 + 0.3 * tree / max(trees_per_lung - 1, 1))
            root = np.array([zc, rng.normal(0.0, 0.05 * r), side * 0.15 * r])
            direction = np.array([rng.normal(0, 0.6), rng.normal(0, 0.5), side * 1.0])
            direction /= np.linalg.norm(direction)
            _vessel_tree(grid, hu, lungs, rng, root, direction, 0.16 * r, 5.0, depth)


def synthesize_thorax(grid: Grid, rng: np.random.Generator, balls: Sequence[LungBall] = ()
                      ) -> tuple[np.ndarray, np.ndarray]:
    """The anatomy without nodules and without noise; returns (hu float32 (z,y,x), lungs bool).

    Call :func:`finish` after painting nodules to add noise and the field-of-view padding.
    """
    hu = np.empty(grid.shape, dtype=np.float32)
    _body_layers(grid, hu)
    cell_mm = 6.0
    ps = grid.pixel_spacing_mm
    dz = float(np.median(np.diff(grid.z_mm))) if len(grid.z_mm) > 1 else 1.0
    cell = (max(1, round(cell_mm / dz)), max(1, round(cell_mm / ps)), max(1, round(cell_mm / ps)))
    lungs = lung_mask(grid, balls)
    amplitude = np.where(lungs, np.float32(30.0), np.float32(12.0) * (hu > AIR_HU))
    hu[lungs] = LUNG_HU
    hu += smooth_texture(grid.shape, rng, cell, 1.0) * amplitude
    draw_vessels(grid, hu, lungs, rng)
    return hu, lungs


def finish(grid: Grid, hu: np.ndarray, rng: np.random.Generator, noise_hu: float = 18.0) -> np.ndarray:
    """Add Gaussian noise, pad outside the circular field of view; int16 HU (z, y, x)."""
    hu += rng.standard_normal(hu.shape, dtype=np.float32) * np.float32(noise_hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    outside = (grid.y_mm[:, None] ** 2 + grid.x_mm[None, :] ** 2) > grid.fov_radius_mm ** 2
    hu[:, outside] = OUTSIDE_FOV_HU
    return np.rint(hu).astype(np.int16)
