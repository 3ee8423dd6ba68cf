"""Offline augmentation ops: alignment of image / mask / agreement after every op, exactness,
determinism, the papers' recipes, geometry rules and the fold rule."""
from __future__ import annotations

import numpy as np
import pytest

from nodulekit.errors import NodulekitError
from nodulekit.patches.augment import (OP_ORDER, RECIPES, PatchArrays, air_value, apply_copy, apply_ops,
                                       augmentation_json, check_recipe, parse_ops, patch_layout, patch_rng,
                                       recipe_for_preset, resolve_recipe, sample_copy, sample_op, split_by_fold)

CLEVEL = 0.5
GEOMETRIES = {"2d": ((24, 24), None), "2.5d": ((4, 24, 24), (1.0, 1.0, 1.0)),
              "3d": ((12, 12, 12), (1.0, 1.0, 1.0)), "views9": ((9, 16, 16), (1.0, 1.0, 1.0))}
SPATIAL_OPS = [op for op in OP_ORDER if op != "noise"]


def blob_patch(shape: tuple[int, ...], rng: np.random.Generator) -> PatchArrays:
    """An off-centre smooth blob in [0, 1]; agreement = image, mask = image >= clevel."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    centre = [n / 2 + rng.uniform(-2, 2) for n in shape]
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    image = (np.exp(-r2 / (2 * (min(shape[-2:]) / 5) ** 2)) + 0.05 * rng.random(shape)).clip(0, 1).astype(np.float32)
    return PatchArrays(image, image >= CLEVEL, image.copy())


def layout_of(geometry: str):
    shape, spacing = GEOMETRIES[geometry]
    return patch_layout(geometry, shape, spacing, image_fill=0.0, clevel=CLEVEL)


@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("op", SPATIAL_OPS)
def test_mask_and_agreement_follow_the_image_after_every_op(geometry, op):
    layout = layout_of(geometry)
    one = layout.view_layout if layout.per_view else layout
    rng = np.random.default_rng(7)
    patch = blob_patch(layout.patch_shape, rng)
    for trial in range(3):
        if layout.per_view:
            params = {"views": [[sample_op(op, rng, one, 1.0)] for _ in range(layout.patch_shape[0])]}
        else:
            params = {"ops": [sample_op(op, rng, one, 1.0)]}
        out = apply_copy(patch, params, layout)
        assert out.image.shape == out.mask.shape == out.agreement.shape == layout.patch_shape
        assert out.image.dtype == np.float32 and out.mask.dtype == bool
        np.testing.assert_array_equal(out.agreement, out.image)  # same interpolation, same fill (air = 0)
        np.testing.assert_array_equal(out.mask, out.image >= CLEVEL)
        assert out.mask.any(), (op, params)  # the nodule stays in the patch


def test_noise_changes_only_the_image():
    layout = layout_of("2d")
    patch = blob_patch(layout.patch_shape, np.random.default_rng(0))
    op = sample_op("noise", np.random.default_rng(1), layout, 1.0)
    out = apply_ops(patch, [op], layout)
    assert 0 <= op["sigma"] <= 0.03 and not np.array_equal(out.image, patch.image)
    np.testing.assert_array_equal(out.mask, patch.mask)
    np.testing.assert_array_equal(out.agreement, patch.agreement)
    np.testing.assert_array_equal(apply_ops(patch, [op], layout).image, out.image)  # noise seed is logged


def test_exact_ops_against_numpy():
    layout = layout_of("2d")
    patch = blob_patch(layout.patch_shape, np.random.default_rng(2))
    assert np.array_equal(apply_ops(patch, [{"op": "flip", "axis": "x"}], layout).image, patch.image[:, ::-1])
    assert np.array_equal(apply_ops(patch, [{"op": "flip", "axis": "y"}], layout).mask, patch.mask[::-1])
    assert np.array_equal(apply_ops(patch, [{"op": "rot90", "k": 3, "plane": ["y", "x"]}], layout).agreement,
                          np.rot90(patch.agreement, 3))
    dot = np.zeros((24, 24), np.float32)
    dot[10, 12] = 1.0
    moved = apply_ops(PatchArrays(dot, dot > 0, dot), [{"op": "translate", "shift_px": {"y": -6, "x": 5}}], layout)
    assert np.argwhere(moved.mask).tolist() == [[4, 17]] and moved.image.sum() == 1.0


def disc(size: int, radius: float) -> PatchArrays:
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    image = (np.hypot(yy, xx) <= radius).astype(np.float32)
    return PatchArrays(image, image >= CLEVEL, image.copy())


def test_crop_zoom_scale_rotate_magnify_and_turn_about_the_centre():
    layout = patch_layout("2d", (64, 64), None, 0.0, CLEVEL)
    patch = disc(64, 8.0)
    area = patch.mask.sum()
    for op, ratio in (({"op": "crop", "ratio": 0.5}, 4.0), ({"op": "zoom", "factor": 1.1}, 1.21),
                      ({"op": "scale", "factor": 0.9}, 0.81)):
        out = apply_ops(patch, [op], layout)
        assert out.mask.sum() / area == pytest.approx(ratio, rel=0.08), op
        assert np.argwhere(out.mask).mean(axis=0) == pytest.approx([31.5, 31.5], abs=0.1)  # about the centre
    bar = np.zeros((64, 64), np.float32)
    bar[30:34, 10:54] = 1.0
    turned = apply_ops(PatchArrays(bar, bar >= CLEVEL, bar), [{"op": "rotate", "deg": 90.0}], layout)
    assert np.abs(turned.image - np.rot90(bar)).max() < 1e-4


def test_interpolating_ops_are_resampled_once_and_fill_with_air():
    layout = patch_layout("2d", (32, 32), None, image_fill=-1.0, clevel=CLEVEL)
    patch = PatchArrays(np.ones((32, 32), np.float32), np.ones((32, 32), bool), np.ones((32, 32), np.float32))
    out = apply_ops(patch, [{"op": "scale", "factor": 0.5}, {"op": "rotate", "deg": 45.0}], layout)
    assert out.image[0, 0] == -1.0 and out.agreement[0, 0] == 0.0 and not out.mask[0, 0]
    assert out.image[16, 16] == 1.0 and out.mask[16, 16]
    assert air_value((-1000, 400), "01") == 0.0 and air_value((-1024, 400), "pm1") == -1.0
    assert air_value((-1000, 400), "none") == -1000.0


def test_same_seed_same_copy_and_other_seed_other_copy():
    layout = layout_of("2d")
    patch = blob_patch(layout.patch_shape, np.random.default_rng(3))
    recipe = RECIPES["msunet"]
    first = [sample_copy(recipe, patch_rng(5, 11), layout) for _ in range(2)]
    again = [sample_copy(recipe, patch_rng(5, 11), layout) for _ in range(2)]
    assert first == again
    assert augmentation_json(first[0]) != augmentation_json(sample_copy(recipe, patch_rng(6, 11), layout))
    np.testing.assert_array_equal(apply_copy(patch, first[0], layout).image, apply_copy(patch, again[0], layout).image)


def test_recipes_follow_the_papers():
    layout = layout_of("2d")
    rng = np.random.default_rng(0)
    mtcnn = [sample_copy(RECIPES["mtcnn"], rng, layout)["ops"] for _ in range(200)]
    assert RECIPES["mtcnn"].factor == 4 and all([o["op"] for o in ops] == ["translate", "rot90", "flip"] for ops in mtcnn)
    shifts = [s for ops in mtcnn for s in ops[0]["shift_px"].values()]
    assert min(shifts) == -6 and max(shifts) == 6
    assert {ops[1]["k"] for ops in mtcnn} == {1, 2, 3} and {ops[2]["axis"] for ops in mtcnn} == {"y", "x"}
    mtnet = [sample_copy(RECIPES["mtnet"], rng, layout)["ops"] for _ in range(200)]
    assert RECIPES["mtnet"].factor == 8 and all(ops for ops in mtnet)  # x9 = original + 8, never an identity copy
    ratios = [o["ratio"] for ops in mtnet for o in ops if o["op"] == "crop"]
    assert 0.5 <= min(ratios) < 0.55 and 0.95 < max(ratios) <= 1.0
    assert {o["factor"] for ops in mtnet for o in ops if o["op"] == "zoom"} == {1.1}
    for ops in mtnet + [sample_copy(RECIPES["msunet"], rng, layout)["ops"] for _ in range(50)]:
        names = [o["op"] for o in ops]
        assert names == sorted(names, key=lambda n: OP_ORDER.index(n)), names  # one resampling per copy


def test_3d_rot90_only_in_isotropic_planes_and_2p5d_keeps_the_slab():
    aniso = patch_layout("3d", (8, 8, 8), (1.0, 0.7, 0.7), 0.0, CLEVEL)
    assert aniso.rot90_planes == ((1, 2),)
    assert len(patch_layout("3d", (8, 8, 8), (1.0, 1.0, 1.0), 0.0, CLEVEL).rot90_planes) == 3
    slab = patch_layout("2.5d", (4, 16, 16), (1.0, 1.0, 1.0), 0.0, CLEVEL)
    base = blob_patch((16, 16), np.random.default_rng(4))
    levels = np.arange(1, 5, dtype=np.float32)[:, None, None] / 4
    patch = PatchArrays(base.image * levels, base.mask[None].repeat(4, 0), base.agreement * levels)
    for name in SPATIAL_OPS:
        op = sample_op(name, np.random.default_rng(9), slab, 1.0)
        out = apply_ops(patch, [op], slab)
        flat = apply_ops(PatchArrays(base.image, base.image >= 0.0, base.agreement), [op],
                         patch_layout("2d", (16, 16), None, 0.0, 0.0))
        np.testing.assert_allclose(out.image, flat.image * levels, atol=1e-6)  # same op on every slice, in order


def test_views9_views_get_independent_2d_ops():
    layout = layout_of("views9")
    rng = np.random.default_rng(5)
    patch = blob_patch(layout.patch_shape, rng)
    params = sample_copy(RECIPES["mtcnn"], rng, layout)
    assert len(params["views"]) == 9 and len({augmentation_json({"ops": v}) for v in params["views"]}) > 1
    out = apply_copy(patch, params, layout)
    view = layout.view_layout
    for v in (0, 8):
        single = apply_ops(PatchArrays(patch.image[v], patch.mask[v], patch.agreement[v]), params["views"][v], view)
        np.testing.assert_array_equal(out.image[v], single.image)


def test_ops_option_parsing_and_overrides():
    assert [(o.name, o.p) for o in parse_ops("flip, rot90:1,crop")] == [("crop", 0.5), ("rot90", 1.0), ("flip", 0.5)]
    for bad in ("spin", "flip:2", "flip:x", ""):
        with pytest.raises(NodulekitError, match="--ops"):
            parse_ops(bad)
    custom = resolve_recipe("mtcnn", "flip", 2)
    assert custom.factor == 2 and [o.name for o in custom.ops] == ["flip"] and custom.name == "mtcnn+custom"
    with pytest.raises(NodulekitError, match="--factor"):
        resolve_recipe("mtcnn", None, 0)
    assert [recipe_for_preset(p) for p in ("mtnet", "mtcnn-cube", "munet3d", "other")] == ["mtnet", "mtcnn", "msunet", None]
    with pytest.raises(NodulekitError, match="square"):
        check_recipe(RECIPES["mtcnn"], patch_layout("2d", (16, 20), None, 0.0, CLEVEL))


def test_fold_rule_never_uses_an_augmented_patch_of_a_validation_fold():
    folds = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3])
    table = {"fold": folds, "is_augmented": np.array([0, 1, 1, 0, 1, 1, 0, 1, 1, 0], bool)}
    for k in range(3):
        split = split_by_fold(table, [k], held_out_folds=[3])
        assert not table["is_augmented"][split.validation].any()
        assert set(folds[split.validation]) == {k} and len(split.validation) == 1
        assert k not in set(folds[split.train]) and 3 not in set(folds[split.train])
        assert table["is_augmented"][split.train].sum() == 4  # the copies of the two other folds
    test = split_by_fold(table, [3])  # the held-out fold evaluated: originals only
    assert test.validation.tolist() == [9]
    assert split_by_fold({"fold": folds}, [0]).validation.tolist() == [0, 1, 2]  # a crop store: all originals
