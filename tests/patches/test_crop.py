"""Per-nodule extraction on a synthetic scan: shape, spacing, centring, fill, masks, slices, slabs, reader masks."""
from __future__ import annotations

import numpy as np
import pytest

from nodulekit.io.nodule_store import NoduleRecord
from nodulekit.patches.crop import (MASK_TOL, NoduleInput, concat_batches, empty_slices, nodule_patches, patch_row,
                                    window_hu)
from nodulekit.patches.presets import resolve_geometry
from nodulekit.patches.resample import Grid, VoxelSource, sample
from nodulekit.patches.views import nine_views

SPACING = (2.5, 0.7, 0.8)  # anisotropic, z, y, x
ORIGIN = (-300.0, 12.3, -45.6)  # non-zero
SHAPE = (40, 110, 100)
SCAN = Grid(ORIGIN, SPACING, SHAPE)
CENTRE_MM = (-257.3, 45.55, -14.05)  # a known position, off the voxel grid
RADIUS_MM = 6.0
BACKGROUND_HU, NODULE_HU = -800.0, 100.0


def distance_mm(centre_mm, grid=SCAN) -> np.ndarray:
    points = grid.index_to_mm(np.indices(grid.shape_zyx).reshape(3, -1).T)
    return np.linalg.norm(points - np.asarray(centre_mm), axis=1).reshape(grid.shape_zyx)


def sphere_scan(centre_mm=CENTRE_MM, radius_mm=RADIUS_MM) -> VoxelSource:
    hu = np.where(distance_mm(centre_mm) <= radius_mm, NODULE_HU, BACKGROUND_HU).astype(np.int16)
    return VoxelSource.from_array(hu, ORIGIN, SPACING, fill=-1024)


def sphere_nodule(centre_mm=CENTRE_MM, radius_mm=RADIUS_MM, clevel=0.5, nodule_id=1) -> NoduleInput:
    """Four readers' nested spheres: agreement 1 / 0.75 / 0.5 / 0.25 in shells of 1 mm."""
    d = distance_mm(centre_mm)
    full = sum(((d <= radius_mm + dr).astype(np.float32) for dr in (-1.0, 0.0, 0.0, 1.0))) / 4
    box = np.array([[i.min(), i.max()] for i in np.nonzero(full)])
    frame = tuple(slice(lo, hi + 1) for lo, hi in box)
    agreement = full[frame]
    record = NoduleRecord("1.2.3", nodule_id, box, agreement >= clevel, agreement, np.zeros((0, 1, 1, 1), bool),
                          np.arange(4), np.arange(4), np.zeros((4, 9), np.int8), clevel)
    row = {"patient_id": "LIDC-IDRI-9999", "series_uid": "1.2.3", "nodule_id": nodule_id, "fold": 2,
           "cohort_mtcnn": True, "label_mtcnn_malignancy": 1, "malignancy": 4.5, "diameter_mm": 2 * radius_mm,
           "bbox_zyx": "ignored", "reader_ids": "0;1;2;3"}
    return NoduleInput(record, row, label=1)


def patch_grid(row, geometry, n_zyx) -> Grid:
    return Grid.centred((row["centre_z_mm"], row["centre_y_mm"], row["centre_x_mm"]), n_zyx, geometry.spacing_zyx_mm)


def centroid_mm(mask: np.ndarray, grid: Grid) -> np.ndarray:
    return grid.index_to_mm(np.argwhere(mask).mean(axis=0))


@pytest.mark.parametrize("preset", ["mtcnn-cube", "munet3d", "cascade"])
def test_cubes_have_the_preset_shape_spacing_and_the_sphere_at_the_centre(preset):
    geometry = resolve_geometry(preset)
    batch = nodule_patches(sphere_scan(), sphere_nodule(), geometry)
    n = geometry.size
    assert batch.images.shape == batch.masks.shape == batch.agreement.shape == (1, n, n, n)
    row = batch.rows[0]
    np.testing.assert_allclose([row["centre_z_mm"], row["centre_y_mm"], row["centre_x_mm"]], CENTRE_MM, atol=0.3)
    grid = patch_grid(row, geometry, (n, n, n))
    np.testing.assert_allclose(centroid_mm(batch.masks[0], grid), CENTRE_MM, atol=0.5)
    bright = batch.images[0] > batch.images[0].min() + 0.5 * np.ptp(batch.images[0])
    np.testing.assert_allclose(centroid_mm(bright, grid), CENTRE_MM, atol=0.5)
    # extent of the 12 mm sphere in output voxels = diameter / output spacing, per axis
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        extent = np.count_nonzero(bright.any(axis=other)) * geometry.spacing_zyx_mm[axis]
        assert abs(extent - 2 * RADIUS_MM) <= 2 * max(geometry.spacing_zyx_mm[axis], SPACING[axis]), (axis, extent)
    lo, hi = (0.0, 1.0) if geometry.normalize == "01" else (-1.0, 1.0)
    assert lo <= batch.images.min() and batch.images.max() <= hi
    assert row["kind"] == "nodule" and row["slice_offset"] == 0 and row["label"] == 1 and row["fold"] == 2
    assert row["label_mtcnn_malignancy"] == 1 and row["cohort_mtcnn"] and "reader_ids" not in row
    assert (row["source_spacing_z_mm"], row["source_spacing_y_mm"], row["source_spacing_x_mm"]) == SPACING


def test_masks_are_the_resampled_agreement_at_clevel():
    geometry = resolve_geometry("cascade")
    batch = nodule_patches(sphere_scan(), sphere_nodule(clevel=0.5), geometry)
    agreement = batch.agreement[0]
    assert len(np.unique(agreement)) > 10  # interpolated, not a copied binary mask
    np.testing.assert_array_equal(batch.masks[0], agreement >= 0.5 - MASK_TOL)
    strict = nodule_patches(sphere_scan(), sphere_nodule(clevel=0.75), geometry)
    np.testing.assert_array_equal(strict.masks[0], strict.agreement[0] >= 0.75 - MASK_TOL)
    assert strict.masks.sum() < batch.masks.sum()


def test_outside_the_scan_is_air_with_zero_agreement():
    corner_mm = SCAN.index_to_mm((2, 5, 4))
    geometry = resolve_geometry("mtcnn-cube", hu_window=(-3000, 3000), normalize="none")
    batch = nodule_patches(sphere_scan(corner_mm, 3.0), sphere_nodule(corner_mm, 3.0), geometry)
    grid = patch_grid(batch.rows[0], geometry, (64, 64, 64))
    index = grid.mm_to_index(SCAN.index_to_mm((-0.5, -0.5, -0.5)))  # the scan's outer faces in patch voxels
    outside = np.zeros((64, 64, 64), bool)
    outside[: int(np.ceil(index[0]))] = True
    outside[:, : int(np.ceil(index[1]))] = True
    outside[:, :, : int(np.ceil(index[2]))] = True
    assert outside.sum() > 64 ** 3 / 4
    assert np.all(batch.images[0][outside] == -1024) and np.all(batch.agreement[0][outside] == 0)
    assert np.all(batch.images[0][~outside] >= BACKGROUND_HU - 1e-3)


def test_views9_are_the_nine_views_of_the_centred_cube():
    batch = nodule_patches(sphere_scan(), sphere_nodule(), resolve_geometry("mtcnn"))
    assert batch.images.shape == (1, 9, 64, 64)
    for view in batch.masks[0]:
        assert view.any()
        np.testing.assert_allclose(np.argwhere(view).mean(axis=0), (31.5, 31.5), atol=1.0)
    np.testing.assert_array_equal(batch.masks[0], batch.agreement[0] >= 0.5 - MASK_TOL)


def test_2d_native_slices_are_exact_scan_pixels_centred_within_half_a_pixel():
    scan, nodule = sphere_scan(), sphere_nodule()
    geometry = resolve_geometry("mtnet")
    batch = nodule_patches(scan, nodule, geometry)
    rec = nodule.record
    slices = np.flatnonzero(rec.consensus.any(axis=(1, 2))) + rec.bbox_zyx[0, 0]
    assert batch.images.shape == (len(slices), 64, 64) and [r["kind"] for r in batch.rows] == ["nodule"] * len(slices)
    centre_vox = SCAN.mm_to_index(CENTRE_MM)
    assert [r["slice_offset"] for r in batch.rows] == (slices - round(centre_vox[0])).tolist()
    for patch, mask, row, k in zip(batch.images, batch.masks, batch.rows, slices):
        start = np.round(SCAN.mm_to_index((0, row["centre_y_mm"], row["centre_x_mm"]))[1:] - 31.5).astype(int)
        np.testing.assert_allclose(start + 31.5, centre_vox[1:], atol=0.5)  # snapped window
        window = scan.data[k, start[0]:start[0] + 64, start[1]:start[1] + 64]
        np.testing.assert_array_equal(patch, window_hu(window, geometry.hu_window, "01"))  # no interpolation
        full = np.zeros(SHAPE, bool)
        full[tuple(slice(lo, hi + 1) for lo, hi in rec.bbox_zyx)] = rec.consensus
        np.testing.assert_array_equal(mask, full[k, start[0]:start[0] + 64, start[1]:start[1] + 64])
        assert row["centre_z_mm"] == pytest.approx(SCAN.index_to_mm((k, 0, 0))[0])


def test_2d_with_a_spacing_resamples_in_plane_only():
    geometry = resolve_geometry("mtnet", spacing_mm="0.4")
    batch = nodule_patches(sphere_scan(), sphere_nodule(), geometry)
    mid = batch.masks[len(batch) // 2]
    rows, cols = np.flatnonzero(mid.any(axis=1)), np.flatnonzero(mid.any(axis=0))
    assert abs(len(rows) * 0.4 - 2 * RADIUS_MM) < 1.5 and abs(len(cols) * 0.4 - 2 * RADIUS_MM) < 1.5
    np.testing.assert_allclose(np.argwhere(mid).mean(axis=0), (31.5, 31.5), atol=1.0)


def test_dgnet_adds_nearby_empty_slices_away_from_every_nodule():
    scan, nodule = sphere_scan(), sphere_nodule()
    rec = nodule.record
    z_lo, z_hi = (int(v) for v in rec.bbox_zyx[0])
    other = np.array([[z_hi + 1, z_hi + 2], [50, 60], [40, 50]])  # another nodule just above, inside the window
    batch = nodule_patches(scan, nodule, resolve_geometry("dgnet"), [rec.bbox_zyx, other])
    kinds = [r["kind"] for r in batch.rows]
    n_nodule = kinds.count("nodule")
    assert kinds.count("empty") == n_nodule and batch.images.shape[1:] == (128, 128)
    empty_k = [r["slice_offset"] + round(SCAN.mm_to_index(CENTRE_MM)[0]) for r in batch.rows if r["kind"] == "empty"]
    assert not set(empty_k) & set(range(z_lo, z_hi + 3))
    assert min(abs(k - z_lo) for k in empty_k) == 1  # nearest first
    for mask, agreement, row in zip(batch.masks, batch.agreement, batch.rows):
        if row["kind"] == "empty":
            assert not mask.any() and not agreement.any() and row["label"] == -1
    ratio2 = nodule_patches(scan, nodule, resolve_geometry("dgnet", empty_ratio=0.5))
    assert [r["kind"] for r in ratio2.rows].count("empty") == round(0.5 * n_nodule)


def test_empty_slices_by_hand():
    window = np.array([[10, 20], [10, 20]])
    far_box = np.array([[0, 3], [30, 40], [30, 40]])  # beside the window: does not block
    near_box = np.array([[7, 7], [15, 25], [0, 12]])  # overlaps the window on slice 7
    assert empty_slices((5, 6), 4, 10, window, [far_box, near_box]) == [4, 3, 8, 2]
    assert empty_slices((0, 8), 5, 10, window, []) == [9]  # the scan ends: fewer than asked


def test_msunet_slabs_cover_the_nodule_slices():
    geometry = resolve_geometry("msunet")
    batch = nodule_patches(sphere_scan(), sphere_nodule(), geometry)
    assert batch.images.shape[1:] == (4, 64, 64)
    offsets = [r["slice_offset"] for r in batch.rows]
    assert offsets == sorted(offsets) and len(batch) >= 3  # 12 mm at 1 mm: at least 3 slabs of 4
    assert all(r["slab_spacing_z_mm"] == 1.0 for r in batch.rows)
    covered = {o + i for o in offsets for i in range(4)}
    assert covered == set(range(min(offsets), max(offsets) + 4))  # consecutive, no gap
    assert batch.masks[0].any() and batch.masks[-1].any()
    np.testing.assert_allclose(np.argwhere(batch.masks[len(batch) // 2]).mean(axis=0)[1:], (31.5, 31.5), atol=1.0)


def test_msunet_interpolates_nodules_thinner_than_4_slices():
    small = (CENTRE_MM[0], CENTRE_MM[1], CENTRE_MM[2])
    batch = nodule_patches(sphere_scan(small, 1.2), sphere_nodule(small, 1.2), resolve_geometry("msunet"))
    assert len(batch) == 1 and batch.images.shape == (1, 4, 64, 64)
    assert batch.rows[0]["slab_spacing_z_mm"] < 1.0
    assert batch.masks[0][1:3].any(axis=(1, 2)).all()


def test_empty_consensus_gives_no_patch():
    nodule = sphere_nodule()
    nodule.record.consensus[:] = False
    assert len(nodule_patches(sphere_scan(), nodule, resolve_geometry("cascade"))) == 0


def test_window_and_row():
    hu = np.array([-2000.0, -1000.0, -300.0, 400.0, 900.0])
    np.testing.assert_allclose(window_hu(hu, (-1000, 400), "01"), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(window_hu(hu, (-1024, 400), "pm1")[[0, 3]], [-1, 1])
    np.testing.assert_allclose(window_hu(hu, (-1000, 500), "none"), [-1000, -1000, -300, 400, 500])
    row = patch_row(sphere_nodule(), SCAN, kind="nodule", slice_offset=0, centre_zyx_mm=CENTRE_MM)
    assert row["nodule_key"] == "1.2.3/1" and row["in_cohort"] and row["malignancy"] == 4.5


# -- reader masks ------------------------------------------------------------------------------------
#: One preset (and option) per geometry and path: native 2D (exact slices), 2D resampled in-plane,
#: 2D with empty slices, nine views, 3D cubes, 2.5D slabs.
READER_CASES = [("mtnet", {}), ("mtnet", {"spacing_mm": "0.4"}), ("dgnet", {}), ("mtcnn", {}), ("cascade", {}),
                ("msunet", {})]


def reads_nodule(reads_mm: list[tuple[float, float]], centre_mm=CENTRE_MM, radius_mm=RADIUS_MM,
                 clevel=0.5) -> NoduleInput:
    """A nodule whose read k is a sphere of ``radius_mm + dr_k`` shifted ``dx_k`` mm in x (``reads_mm``:
    (dr, dx) per read); agreement, consensus and frame built from them as consensus-label does."""
    spheres = np.stack([distance_mm((centre_mm[0], centre_mm[1], centre_mm[2] + dx)) <= radius_mm + dr
                        for dr, dx in reads_mm])
    box = np.array([[i.min(), i.max()] for i in np.nonzero(spheres.any(axis=0))])
    frame = (slice(None), *(slice(lo, hi + 1) for lo, hi in box))
    masks = spheres[frame]
    agreement = (masks.sum(axis=0) / np.float64(len(masks))).astype(np.float32)
    n = len(reads_mm)
    record = NoduleRecord("1.2.3", 1, box, agreement >= clevel, agreement, masks, np.arange(n), np.arange(n),
                          np.zeros((n, 9), np.int8), clevel)
    row = {"patient_id": "LIDC-IDRI-9999", "series_uid": "1.2.3", "nodule_id": 1, "fold": 0, "malignancy": 3.0}
    return NoduleInput(record, row, label=1)


def reader_grid(row: dict, geometry, n_slices: int) -> Grid:
    """The patch's grid rebuilt from its row: centre, the preset's spacing (the scan's where None), slab spacing."""
    spacing = list(geometry.spacing_zyx_mm or SPACING)
    spacing[0] = row.get("slab_spacing_z_mm", SPACING[0] if geometry.geometry == "2d" else spacing[0])
    n = geometry.size
    return Grid.centred((row["centre_z_mm"], row["centre_y_mm"], row["centre_x_mm"]), (n_slices, n, n), spacing)


@pytest.mark.parametrize("preset,options", READER_CASES)
def test_reader_masks_of_agreeing_reads_equal_the_consensus_mask(preset, options):
    geometry = resolve_geometry(preset, **options)
    batch = nodule_patches(sphere_scan(), reads_nodule([(0.0, 0.0)] * 3), geometry)
    assert batch.reader_masks.shape == (len(batch), 3, *geometry.patch_shape)
    assert all(r["n_reader_masks"] == 3 for r in batch.rows)
    assert batch.masks.any()
    for k in range(3):
        np.testing.assert_array_equal(batch.reader_masks[:, k], batch.masks)


def test_thin_nodule_slab_reader_masks_equal_the_consensus_mask():
    small = reads_nodule([(0.0, 0.0)] * 2, radius_mm=1.2)
    batch = nodule_patches(sphere_scan(CENTRE_MM, 1.2), small, resolve_geometry("msunet"))
    assert len(batch) == 1 and batch.rows[0]["slab_spacing_z_mm"] < 1.0  # the interpolated slab
    np.testing.assert_array_equal(batch.reader_masks[:, 0], batch.masks)
    np.testing.assert_array_equal(batch.reader_masks[:, 1], batch.masks)


@pytest.mark.parametrize("preset,options", READER_CASES)
def test_each_reader_mask_is_its_read_resampled_on_the_patch_grid(preset, options):
    """Brute force: every read sampled on the patch grid rebuilt from the row, then >= 0.5."""
    geometry = resolve_geometry(preset, **options)
    reads = [(-1.0, 0.0), (0.0, 1.5), (1.0, -0.8), (0.5, 0.0)]
    nodule = reads_nodule(reads)
    batch = nodule_patches(sphere_scan(), nodule, geometry)
    rec = nodule.record
    origin = SCAN.index_to_mm(rec.bbox_zyx[:, 0])
    assert batch.reader_masks.shape == (len(batch), 4, *geometry.patch_shape)
    differ = 0
    for i, row in enumerate(batch.rows):
        depth = {"2d": 1, "2.5d": geometry.slab_depth}.get(geometry.geometry, geometry.size)
        grid = reader_grid(row, geometry, depth)
        for k in range(4):
            source = VoxelSource.from_array(rec.reader_masks[k].astype(np.float32), origin, SPACING, 0.0)
            values = sample(source, grid)
            if geometry.geometry == "views9":
                values = nine_views(values)
            expected = values.reshape(geometry.patch_shape) >= 0.5 - MASK_TOL
            if row["kind"] == "empty":
                expected[:] = False
            np.testing.assert_array_equal(batch.reader_masks[i, k], expected)
        differ += int((batch.reader_masks[i, 0] != batch.reader_masks[i, 1]).any())
    assert differ  # the reads differ, so the masks do


def test_empty_slices_have_empty_reader_masks_and_a_nodule_without_reads_has_none():
    batch = nodule_patches(sphere_scan(), reads_nodule([(-1.0, 0.0), (1.0, 0.0)]), resolve_geometry("dgnet"))
    empty = np.array([r["kind"] == "empty" for r in batch.rows])
    assert empty.any() and not batch.reader_masks[empty].any() and batch.reader_masks[~empty].any()
    bare = nodule_patches(sphere_scan(), sphere_nodule(), resolve_geometry("cascade"))  # reader_masks (0, ...)
    assert bare.reader_masks.shape == (1, 0, 32, 32, 32) and bare.rows[0]["n_reader_masks"] == 0


def test_concat_pads_reader_masks_to_the_most_reads():
    geometry = resolve_geometry("cascade")
    two = nodule_patches(sphere_scan(), reads_nodule([(0.0, 0.0)] * 2), geometry)
    three = nodule_patches(sphere_scan(), reads_nodule([(0.0, 0.0)] * 3), geometry)
    both = concat_batches([two, three], geometry)
    assert both.reader_masks.shape == (2, 3, 32, 32, 32) and not both.reader_masks[0, 2].any()
    assert [r["n_reader_masks"] for r in both.rows] == [2, 3]
