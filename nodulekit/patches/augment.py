"""Offline augmentation of patches: recipes of the papers, sampled parameters, deterministic ops.

Principle 6 of STYLE.md (torchio's ``RandomFlip``): :func:`sample_copy` draws the parameters of one
augmented copy with a numpy ``Generator`` and returns them as JSON-able dicts; :func:`apply_copy`
applies them deterministically to a patch's image, mask and agreement map together. The dicts are
what the ``augmentation`` column of an augmented store logs, so every copy can be traced and redone.

Ops (the names of ``--ops``), applied in the fixed order of :data:`OP_ORDER`:

=========== ===================================================================================
crop        keep a centred window of ``ratio`` x the side (ratio ~ U[0.5, 1.0]) and resize it back
            to the patch size (paper 000 section 3.1.2: "randomly cropping based on the center of
            the image at a ratio of 50% to 100%"); ratio is a side fraction, not an area fraction
zoom        magnify x ``factor`` about the centre, cropped back to the patch size (000: 110%)
scale       magnify x ``factor`` ~ U[0.9, 1.1] about the centre (003, range not given: ours)
rotate      rotate by ``deg`` ~ U[-180, 180] in the y-x plane (003, range not given: ours)
translate   shift by whole pixels, each axis ~ U{-6..6} (002 section III.D: "[-6, 6] pixels")
rot90       rotate by k x 90 degrees, k ~ U{1, 2, 3} (002; 004 section 2.4)
flip        flip one random axis (002: "horizontally or vertically"; 001, 004)
hflip       flip x (000: "horizontally and vertically flipping")
vflip       flip y (000)
noise       add Gaussian noise to the image only, sigma ~ U[0, 0.03] x the normalised range
            (004 section 2.4, sigma not given: ours)
=========== ===================================================================================

Interpolation: flips, rot90 and translations move whole pixels (exact for the three arrays).
Consecutive interpolating ops (crop, zoom, scale, rotate) are merged into one affine map and
resampled once, linearly, for the image and the agreement map; the mask is then recomputed as
``agreement >= clevel`` (less a 1e-6 tolerance), crop's rule, so masks stay consistent with the
consensus level.
Outside the patch the image is filled with air (-1024 HU in the store's window and
normalisation, as crop fills outside the scan), the agreement with 0, the mask with False.

Geometries (axis order inside a patch is z, y, x):

- ``2d`` (H, W): every op in the y-x plane.
- ``2.5d`` (S, H, W): the same in-plane op on all S consecutive slices (one slab, one transform);
  the slice axis is never flipped, rotated or scaled, so the slab stays a slab of consecutive slices.
- ``3d`` (D, H, W): flips and translations on z, y, x; rot90 only in planes whose two axes have the
  same spacing and size (1 mm cubes: any plane; cascade's 0.7 x 0.7 x 1.0 mm: y-x only), so no
  rotation distorts the anatomy; rotate turns about z (in the y-x plane); crop, zoom and scale
  magnify all three axes equally.
- ``views9`` (9, H, W): each view gets its own independently sampled 2D ops. A 3D rotation of the
  cube would permute and resample the nine planes, so one 2D op on all views is not the views of a
  transformed cube; MT-CNN trains one 2D model per view (002 section III.B), and independent 2D
  augmentation of each view is exactly what each of those models sees in the paper.

Recipes (``--for`` picks the preset's one, :data:`PRESET_RECIPES` for ``mtcnn-cube`` and ``munet3d``;
``--ops`` / ``--factor`` override): see :data:`RECIPES`.
Each copy applies every op of its recipe with the op's probability, and at least one op (when none
is drawn, one op chosen uniformly is applied), so no copy is a duplicate of its original.

The fold rule (which copies a training run may use) is :func:`split_by_fold`.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.io.patch_store import FILL_HU, MASK_TOL

OP_ORDER = ("crop", "zoom", "scale", "rotate", "translate", "rot90", "flip", "hflip", "vflip", "noise")
INTERPOLATING = frozenset({"crop", "zoom", "scale", "rotate"})
DIGITS = 6  # sampled floats are rounded before use, so the logged value is exactly the applied one

#: Default settings of each op (a recipe or ``--ops name:p`` can change ``p`` only).
OP_SETTINGS: dict[str, dict[str, Any]] = {
    "crop": {"ratio": (0.5, 1.0)},
    "zoom": {"factor": 1.1},
    "scale": {"factor": (0.9, 1.1)},
    "rotate": {"max_deg": 180.0},
    "translate": {"max_px": 6},
    "rot90": {},
    "flip": {},
    "hflip": {},
    "vflip": {},
    "noise": {"sigma_fraction": (0.0, 0.03)},
}


@dataclass(frozen=True)
class OpSpec:
    """One op of a recipe and the probability that a copy applies it."""

    name: str
    p: float = 1.0

    def as_params(self) -> dict[str, Any]:
        return {"name": self.name, "p": self.p, **OP_SETTINGS[self.name]}

    def label(self) -> str:
        """``name:p(setting=value, lo..hi)``, e.g. ``crop:0.5(ratio=0.5..1.0)``: complete and short."""
        settings = ",".join(f"{k}={'..'.join(map(str, v)) if isinstance(v, tuple) else v}"
                            for k, v in OP_SETTINGS[self.name].items())
        return f"{self.name}:{self.p:g}" + (f"({settings})" if settings else "")


@dataclass(frozen=True)
class Recipe:
    """How many copies per patch (``factor``) and which ops each copy draws from."""

    name: str
    factor: int
    ops: tuple[OpSpec, ...]
    source: str = ""

    def as_params(self) -> dict[str, Any]:
        return {"name": self.name, "factor": self.factor, "ops": [op.as_params() for op in self.ops]}

    def ops_label(self) -> str:
        return ",".join(op.label() for op in self.ops)


RECIPES: dict[str, Recipe] = {
    # 000 section 3.1.2: "augmented ... by 9 times": read as the training set growing to 9x its size,
    # i.e. 8 copies per original (--factor 9 gives the other reading, 9 copies).
    "mtnet": Recipe("mtnet", 8, (OpSpec("crop", 0.5), OpSpec("zoom", 0.5), OpSpec("hflip", 0.5),
                                 OpSpec("vflip", 0.5)), "paper 000 section 3.1.2"),
    # 002 section III.D: "four augmented data using random image translation, rotation, and flip".
    "mtcnn": Recipe("mtcnn", 4, (OpSpec("translate"), OpSpec("rot90"), OpSpec("flip")),
                    "paper 002 section III.D"),
    # 003 Discussion: "augmented by rotation, flipping, and scaling"; factor and ranges not given.
    "msunet": Recipe("msunet", 4, (OpSpec("rotate", 0.5), OpSpec("flip", 0.5), OpSpec("scale", 0.5)),
                     "paper 003 Discussion (factor and ranges ours)"),
    # 001 section 3.1: "random flips" (on the fly in the paper; an offline version for --for dgnet).
    "dgnet": Recipe("dgnet", 1, (OpSpec("flip"),), "paper 001 section 3.1 (factor ours)"),
    # 004 section 2.4: flip (p 0.5), rot90, Gaussian noise, on the fly in the paper: prefer
    # nodulekit.patches.gpu_augment; this offline version exists for --for cascade.
    "cascade": Recipe("cascade", 4, (OpSpec("flip", 0.5), OpSpec("rot90"), OpSpec("noise", 0.5)),
                      "paper 004 section 2.4 (offline, factor ours)"),
}

#: The recipe of each crop preset (``--for``) whose name is not a recipe's.
PRESET_RECIPES: dict[str, str] = {"mtcnn-cube": "mtcnn", "munet3d": "msunet"}

DEFAULT_OPS_P = 0.5  # probability of each op named in --ops without ":p"


def recipe_for_preset(preset: str) -> str | None:
    """The default recipe of a crop preset, None when it has none."""
    name = PRESET_RECIPES.get(preset, preset)
    return name if name in RECIPES else None


def parse_ops(text: str) -> tuple[OpSpec, ...]:
    """``"flip,rot90:1,noise:0.2"`` -> op specs (``name`` or ``name:p``), in :data:`OP_ORDER`."""
    specs: dict[str, OpSpec] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        name, _, p_text = item.partition(":")
        if name not in OP_SETTINGS:
            raise NodulekitError(f"--ops {name!r}: unknown op; choose from {', '.join(OP_ORDER)}")
        try:
            p = float(p_text) if p_text else DEFAULT_OPS_P
        except ValueError:
            raise NodulekitError(f"--ops {item!r}: the probability after ':' must be a number") from None
        if not 0.0 < p <= 1.0:
            raise NodulekitError(f"--ops {item!r}: the probability must be in (0, 1]")
        specs[name] = OpSpec(name, p)
    if not specs:
        raise NodulekitError("--ops: name at least one op")
    return tuple(specs[name] for name in OP_ORDER if name in specs)


def resolve_recipe(recipe: str, ops: str | None = None, factor: int | None = None) -> Recipe:
    """The recipe named ``recipe``, with ``--ops`` / ``--factor`` overrides applied."""
    if recipe not in RECIPES:
        raise NodulekitError(f"--recipe {recipe!r}: choose one of {', '.join(RECIPES)}")
    base = RECIPES[recipe]
    if factor is not None and factor < 1:
        raise NodulekitError(f"--factor {factor}: must be at least 1 (copies per original patch)")
    op_specs = parse_ops(ops) if ops is not None else base.ops
    name = base.name if ops is None and factor is None else f"{base.name}+custom"
    return Recipe(name, base.factor if factor is None else factor, op_specs, base.source)


# -- layout of a geometry ----------------------------------------------------------------------

@dataclass(frozen=True)
class PatchLayout:
    """Which axes of one patch (no N axis) the ops act on, and the fill values outside the patch.

    ``spatial``: axes that translate / flip / magnify; ``plane``: the (y, x) axes; ``rot90_planes``:
    axis pairs rot90 may turn; ``per_view``: views9, every view augmented as its own 2D patch.
    """

    geometry: str
    patch_shape: tuple[int, ...]
    spatial: tuple[int, ...]
    plane: tuple[int, int]
    rot90_planes: tuple[tuple[int, int], ...]
    image_fill: float
    clevel: float
    per_view: bool = False

    @property
    def view_layout(self) -> "PatchLayout":
        """The 2D layout of one view of a views9 patch."""
        return PatchLayout("2d", self.patch_shape[1:], (0, 1), (0, 1), ((0, 1),) if _square(self.patch_shape[1:]) else (),
                           self.image_fill, self.clevel)


def _square(shape: Sequence[int]) -> bool:
    return len(shape) == 2 and shape[0] == shape[1]


def air_value(hu_window: Sequence[float], normalize: str) -> float:
    """-1024 HU (air, crop's fill outside the scan) after the store's window and normalisation."""
    lo, hi = float(hu_window[0]), float(hu_window[1])
    clipped = min(max(FILL_HU, lo), hi)
    unit = (clipped - lo) / (hi - lo) if hi > lo else 0.0
    return {"01": unit, "pm1": 2.0 * unit - 1.0}.get(normalize, clipped)


def intensity_range(hu_window: Sequence[float], normalize: str) -> float:
    """Width of the normalised intensity range (noise sigmas are fractions of it)."""
    return {"01": 1.0, "pm1": 2.0}.get(normalize, float(hu_window[1]) - float(hu_window[0]))


def patch_layout(geometry: str, patch_shape: Sequence[int], spacing_zyx_mm: Sequence[float] | None,
                 image_fill: float, clevel: float) -> PatchLayout:
    """The layout of a store's patches (see the module docstring for the rules per geometry)."""
    shape = tuple(int(s) for s in patch_shape)
    if geometry == "2d":
        return PatchLayout(geometry, shape, (0, 1), (0, 1), ((0, 1),) if _square(shape) else (), image_fill, clevel)
    if geometry in ("2.5d", "views9"):
        planes = ((1, 2),) if _square(shape[1:]) else ()
        return PatchLayout(geometry, shape, (1, 2), (1, 2), planes, image_fill, clevel, per_view=geometry == "views9")
    if geometry == "3d":
        spacing = tuple(spacing_zyx_mm) if spacing_zyx_mm is not None else (1.0, 1.0, 1.0)
        planes = tuple((a, b) for a, b in ((1, 2), (0, 1), (0, 2))
                       if shape[a] == shape[b] and math.isclose(spacing[a], spacing[b], rel_tol=1e-6))
        return PatchLayout(geometry, shape, (0, 1, 2), (1, 2), planes, image_fill, clevel)
    raise NodulekitError(f"geometry {geometry!r}: augment knows 2d, 2.5d, 3d and views9")


def check_recipe(recipe: Recipe, layout: PatchLayout) -> None:
    """A clear error when an op cannot act on these patches (rot90 on non-square planes)."""
    one = layout.view_layout if layout.per_view else layout
    if any(op.name == "rot90" for op in recipe.ops) and not one.rot90_planes:
        raise NodulekitError(f"rot90 needs square planes; these {layout.geometry} patches are {layout.patch_shape}")


# -- sampling ------------------------------------------------------------------------------------

_AXIS_NAMES = ("z", "y", "x")


def _axis_name(layout: PatchLayout, axis: int) -> str:
    return _AXIS_NAMES[axis - len(layout.patch_shape) + 3]


def _uniform(rng: np.random.Generator, bounds: Sequence[float]) -> float:
    return round(float(rng.uniform(bounds[0], bounds[1])), DIGITS)


def sample_op(name: str, rng: np.random.Generator, layout: PatchLayout, value_range: float) -> dict[str, Any]:
    """The parameters of one op for one copy (JSON-able; ``op`` names the deterministic op)."""
    settings = OP_SETTINGS[name]
    if name == "crop":
        return {"op": "crop", "ratio": _uniform(rng, settings["ratio"])}
    if name in ("zoom", "scale"):
        factor = settings["factor"]
        return {"op": name, "factor": float(factor) if name == "zoom" else _uniform(rng, factor)}
    if name == "rotate":
        return {"op": "rotate", "deg": _uniform(rng, (-settings["max_deg"], settings["max_deg"]))}
    if name == "translate":
        shift = rng.integers(-settings["max_px"], settings["max_px"] + 1, size=len(layout.spatial))
        return {"op": "translate", "shift_px": {_axis_name(layout, a): int(s) for a, s in zip(layout.spatial, shift)}}
    if name == "rot90":
        plane = layout.rot90_planes[int(rng.integers(len(layout.rot90_planes)))]
        return {"op": "rot90", "k": int(rng.integers(1, 4)), "plane": [_axis_name(layout, a) for a in plane]}
    if name == "flip":
        return {"op": "flip", "axis": _axis_name(layout, layout.spatial[int(rng.integers(len(layout.spatial)))])}
    if name in ("hflip", "vflip"):
        return {"op": "flip", "axis": "x" if name == "hflip" else "y"}
    sigma = _uniform(rng, settings["sigma_fraction"]) * value_range
    return {"op": "noise", "sigma": round(sigma, DIGITS), "seed": int(rng.integers(2**31))}


def _sample_ops(recipe: Recipe, rng: np.random.Generator, layout: PatchLayout, value_range: float) -> list[dict]:
    drawn = [op.name for op in recipe.ops if rng.random() < op.p]
    if not drawn:  # at least one op, so no copy equals its original
        drawn = [recipe.ops[int(rng.integers(len(recipe.ops)))].name]
    return [sample_op(name, rng, layout, value_range) for name in sorted(drawn, key=OP_ORDER.index)]


def sample_copy(recipe: Recipe, rng: np.random.Generator, layout: PatchLayout,
                value_range: float = 1.0) -> dict[str, Any]:
    """The parameters of one augmented copy: ``{"ops": [...]}``, or ``{"views": [[...] x 9]}``."""
    if layout.per_view:
        view = layout.view_layout
        return {"views": [_sample_ops(recipe, rng, view, value_range) for _ in range(layout.patch_shape[0])]}
    return {"ops": _sample_ops(recipe, rng, layout, value_range)}


def patch_rng(seed: int, source_index: int) -> np.random.Generator:
    """The generator of one source patch: its copies depend on (seed, index) only, not on chunking."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(source_index)]))


# -- applying ------------------------------------------------------------------------------------

@dataclass
class PatchArrays:
    """One patch: image (float32), mask (bool), agreement (float32), all of the patch shape."""

    image: np.ndarray
    mask: np.ndarray
    agreement: np.ndarray


@dataclass
class _Affine:
    """Output -> input map on the spatial axes, in pixels: ``input = matrix @ output + offset``."""

    matrix: np.ndarray
    offset: np.ndarray

    def then(self, other: "_Affine") -> "_Affine":
        """This transform followed by ``other``."""
        return _Affine(self.matrix @ other.matrix, self.matrix @ other.offset + self.offset)


def _op_affine(op: Mapping[str, Any], layout: PatchLayout) -> _Affine:
    """The map of one interpolating op about the patch centre, over all axes of the patch."""
    ndim = len(layout.patch_shape)
    centre = (np.asarray(layout.patch_shape, dtype=np.float64) - 1.0) / 2.0
    matrix = np.eye(ndim)
    if op["op"] == "rotate":
        theta = math.radians(op["deg"])
        y, x = layout.plane
        matrix[y, y], matrix[y, x], matrix[x, y], matrix[x, x] = (math.cos(theta), -math.sin(theta),
                                                                  math.sin(theta), math.cos(theta))
    else:  # crop keeps ratio x the side (magnify 1/ratio); zoom and scale magnify by factor
        magnify = 1.0 / op["ratio"] if op["op"] == "crop" else op["factor"]
        for axis in layout.spatial:
            matrix[axis, axis] = 1.0 / magnify
    return _Affine(matrix, centre - matrix @ centre)


def _resample(patch: PatchArrays, affine: _Affine, layout: PatchLayout) -> PatchArrays:
    from scipy import ndimage

    def warp(array: np.ndarray, fill: float) -> np.ndarray:
        return ndimage.affine_transform(array, affine.matrix, affine.offset, order=1, mode="constant", cval=fill)

    agreement = warp(patch.agreement, 0.0)
    return PatchArrays(warp(patch.image, layout.image_fill), agreement >= layout.clevel - MASK_TOL, agreement)


def _translate(array: np.ndarray, shift: Mapping[int, int], fill: Any) -> np.ndarray:
    out = np.full_like(array, fill)
    src: list[slice] = [slice(None)] * array.ndim
    dst: list[slice] = [slice(None)] * array.ndim
    for axis, s in shift.items():
        n = array.shape[axis]
        if abs(s) >= n:
            return out
        src[axis] = slice(max(0, -s), n - max(0, s))
        dst[axis] = slice(max(0, s), n - max(0, -s))
    out[tuple(dst)] = array[tuple(src)]
    return out


def _axis(layout: PatchLayout, name: str) -> int:
    return len(layout.patch_shape) - 3 + _AXIS_NAMES.index(name)


def _exact(patch: PatchArrays, op: Mapping[str, Any], layout: PatchLayout) -> PatchArrays:
    """Flip, rot90 or translate: whole pixels, the same on the three arrays."""
    fills = (layout.image_fill, False, 0.0)
    arrays = (patch.image, patch.mask, patch.agreement)
    if op["op"] == "flip":
        axis = _axis(layout, op["axis"])
        out = [np.flip(a, axis) for a in arrays]
    elif op["op"] == "rot90":
        axes = tuple(_axis(layout, name) for name in op["plane"])
        out = [np.rot90(a, op["k"], axes) for a in arrays]
    else:
        shift = {_axis(layout, name): int(s) for name, s in op["shift_px"].items()}
        out = [_translate(a, shift, fill) for a, fill in zip(arrays, fills)]
    return PatchArrays(*(np.ascontiguousarray(a) for a in out))


def _noise(patch: PatchArrays, op: Mapping[str, Any]) -> PatchArrays:
    noise = np.random.default_rng(op["seed"]).normal(0.0, op["sigma"], patch.image.shape)
    return PatchArrays((patch.image + noise).astype(np.float32), patch.mask, patch.agreement)


def apply_ops(patch: PatchArrays, ops: Sequence[Mapping[str, Any]], layout: PatchLayout) -> PatchArrays:
    """Apply sampled ops in order; consecutive interpolating ops are resampled once."""
    pending: _Affine | None = None
    for op in ops:
        if op["op"] in INTERPOLATING:
            step = _op_affine(op, layout)
            pending = step if pending is None else pending.then(step)
            continue
        if pending is not None:
            patch, pending = _resample(patch, pending, layout), None
        patch = _noise(patch, op) if op["op"] == "noise" else _exact(patch, op, layout)
    return _resample(patch, pending, layout) if pending is not None else patch


def apply_copy(patch: PatchArrays, params: Mapping[str, Any], layout: PatchLayout) -> PatchArrays:
    """Apply the parameters of :func:`sample_copy` (deterministic: same params, same output)."""
    if "views" not in params:
        return apply_ops(patch, params["ops"], layout)
    view = layout.view_layout
    views = [apply_ops(PatchArrays(patch.image[v], patch.mask[v], patch.agreement[v]), ops, view)
             for v, ops in enumerate(params["views"])]
    return PatchArrays(*(np.stack([getattr(p, name) for p in views]) for name in ("image", "mask", "agreement")))


def augmentation_json(params: Mapping[str, Any] | None) -> str:
    """The ``augmentation`` column: canonical JSON of the applied params, ``{}`` for an original."""
    return json.dumps(params or {}, sort_keys=True, separators=(",", ":"))


# -- the fold rule -------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoldSplit:
    """Row indices of a store for one training run: ``train`` (originals and copies), ``validation``."""

    train: np.ndarray
    validation: np.ndarray


def split_by_fold(table: Mapping[str, np.ndarray], validation_folds: Sequence[int],
                  held_out_folds: Sequence[int] = ()) -> FoldSplit:
    """Rows a run validating on ``validation_folds`` may train on and validate on.

    Why this is leak-free: folds are by patient (consensus-label), and every augmented copy keeps
    its source's ``fold`` and ``patient_id``. Training takes every row (original or copy) whose fold
    is neither a validation fold nor held out; validation takes only the *originals* of the
    validation folds. So a validation patient's patches are never augmented for that run, and no
    copy made from them is trained on. The store may hold copies of every fold because in K-fold
    cross-validation every fold trains in K - 1 of the K runs; ``held_out_folds`` (``augment
    --val-fold``: a fixed validation/test split) are folds that never train, and get no copies.
    Stores without ``is_augmented`` (crop's) are all originals.
    """
    folds = np.asarray(table["fold"])
    augmented = np.asarray(table.get("is_augmented", np.zeros(len(folds), dtype=bool)), dtype=bool)
    validating = np.isin(folds, list(validation_folds))
    training = ~validating & ~np.isin(folds, list(held_out_folds))
    return FoldSplit(np.flatnonzero(training), np.flatnonzero(validating & ~augmented))
