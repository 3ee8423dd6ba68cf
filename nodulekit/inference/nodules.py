"""One scan's nodules through a model: patches at given points, predictions back in the scan.

:class:`ModelPlan` is what runs on the patches: one model, an ensemble of runs of one model
(cross-validation folds: their probabilities averaged, :func:`~nodulekit.inference.predict.
average_predictions`) or paper 003's two stages (3D MU-Net cubes -> 2.5D MSU-Net slabs,
:func:`~nodulekit.inference.predict.predict_two_stage`). :func:`predict_scan` cuts each nodule's
patches with the crop stage's code (:mod:`nodulekit.patches`: same grids, spacing, HU window and
normalisation as training), centred on the given point instead of a consensus centroid:

- ``3d`` / ``views9`` / two-stage: one cube (or its nine views) per nodule, all nodules in one batch;
- ``2d`` (mtnet, dgnet): native slices, grown from the nodule's slice outwards. Wave 1 is every
  nodule's centre slice (one batch); each following wave adds the next slice above and below for
  the nodules whose mask still continues there, until the predicted mask stops (no pixel touching
  the previous slice's mask), the scan ends, or the nodule's extent is reached: its radius plus one
  slice when the diameter is known, else the in-plane extent of the centre slice's mask plus one
  slice (:data:`Z_GROWTH_PER_INPLANE_EXTENT`), and never more than half the patch's in-plane width.
  On each slice the kept
  mask is the predicted component at the centre (the one nearest to it) and the components that
  touch the previous slice's mask. Class probabilities: the mean over the slices with a mask (the
  centre slice when there is none); the per-slice values are kept too.

Masks back in the scan: each patch's foreground probability is resampled onto the scan voxels it
covers (:func:`nodulekit.patches.resample.sample`: exact when the grids align, as for native 2D
slices; SimpleITK linear otherwise) and thresholded at 0.5. A nodule's mask is the 3D component
(26-connected) holding the given point, or the one nearest to it (``mask_distance_mm`` says how
far). Where two nodules' masks overlap, a voxel goes to the one with the higher probability.
Measures (:func:`nodulekit.labels.consensus.measure`, the labels' definitions): ``volume_mm3``
(voxels x voxel volume), ``diameter_mm`` (largest in-plane distance between mask pixel centres on
one slice), the mask centroid; ``mask_at_patch_edge`` (1.0 when the mask reaches the border of a
patch it came from: the model saw only part of the object, so the nodule is larger than the patch
or, more often, the model over-segments; its measures are then lower bounds at best).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nodulekit.errors import NodulekitError
from nodulekit.inference.inputs import NoduleLocation, Scan
from nodulekit.io.patch_store import FILL_HU
from nodulekit.patches.crop import slice_grid, window_hu
from nodulekit.patches.presets import PRESETS, CropGeometry, resolve_geometry
from nodulekit.patches.resample import Grid, VoxelSource, covered_region, sample
from nodulekit.patches.views import nine_views

#: Foreground threshold of resampled probabilities.
THRESHOLD = 0.5
#: Model names of paper 003's two stages.
COARSE, FINE = "munet3d", "msunet"
#: 2D growth without a known diameter: at most this many times the centre slice's in-plane mask
#: extent above and below it (plus one slice). Measured on the 50 % consensus masks of all 2669
#: LIDC nodules (bundled annotations): 7 (0.26 %) reach further from their centroid slice
#: (factor 0.75: 19, 0.71 %; factor 0.5: 67, 2.5 %).
Z_GROWTH_PER_INPLANE_EXTENT = 1.0


# -- what runs on the patches --------------------------------------------------------------------
def geometry_of(model: Any) -> CropGeometry:
    """The crop geometry a loaded model was trained on: its patch store's (``store_info``: geometry,
    size, spacing, HU window, normalisation) when that store is on this machine, else its crop
    preset at its patch size."""
    info = getattr(model, "store_info", None)
    preset = str(getattr(info, "preset", "") or model.crop_preset)
    if preset not in PRESETS:
        preset = str(model.crop_preset)
    if preset not in PRESETS:
        raise NodulekitError(f"{_where(model)}: unknown crop preset {preset!r}")
    if info is None:
        size = int(tuple(getattr(model, "patch_shape", ()) or PRESETS[preset].patch_shape)[-1])
        return PRESETS[preset] if size == PRESETS[preset].size else resolve_geometry(preset, size=size)
    spacing = info.spacing_zyx_mm
    if spacing is not None and info.geometry == "2d":
        spacing = (1.0, *spacing[1:])  # 2d stores resampled in-plane record z as 0: slices stay native
    return resolve_geometry(preset, geometry=info.geometry, size=int(info.patch_shape[-1]),
                            spacing_mm="native" if spacing is None else tuple(spacing), hu_window=info.hu_window,
                            normalize=info.normalize)


def _where(model: Any) -> str:
    return str(getattr(model, "run_dir", None) or getattr(model, "path", None) or model.name)


@dataclass
class ModelPlan:
    """What runs on the patches (module docstring). ``members``: the loaded models of an ensemble
    (one for a single model); ``pairs``: (coarse, fine) models of the two-stage chain."""

    name: str
    geometry: CropGeometry
    members: list[Any] = field(default_factory=list)
    pairs: list[tuple[Any, Any]] = field(default_factory=list)
    _layout_done: bool = field(default=False, init=False, repr=False)

    @property
    def two_stage(self) -> bool:
        return bool(self.pairs)

    @property
    def description(self) -> str:
        if self.two_stage:
            n = len(self.pairs)
            return f"{COARSE} -> {FINE} (two stages{f', {n} pairs averaged' if n > 1 else ''})"
        n = len(self.members)
        return self.name + (f" (ensemble of {n} runs, probabilities averaged)" if n > 1 else "")

    @property
    def models(self) -> list[Any]:
        return [m for pair in self.pairs for m in pair] if self.two_stage else list(self.members)

    def predict(self, images: np.ndarray, *, batch_size: int, device: str | None, precision: str = "fp32") -> Any:
        """Predictions (``seg_prob``, ``class_prob``) for ``images`` (N, *patch_shape), averaged over
        members. ``precision``: ``fp32``, or ``bf16`` (autocast; probabilities still float32)."""
        from nodulekit.inference import predict as engine

        self._channels_last()
        with autocast(device or "cpu", precision):
            if self.two_stage:
                outputs = [engine.predict_two_stage(coarse, fine, images, batch_size=batch_size, device=device)
                           for coarse, fine in self.pairs]
            else:
                outputs = [engine.predict_patches(m, images, batch_size=batch_size, device=device)
                           for m in self.members]
        return outputs[0] if len(outputs) == 1 else engine.average_predictions(outputs)


    def _channels_last(self) -> None:
        """2D models: conv weights in channels-last layout (once). oneDNN's kernels for it are about
        1.2-1.3x faster for MT-Net and DG-Net on the CPU (bf16); same results up to float rounding."""
        if self.geometry.geometry != "2d" or self._layout_done:
            return
        import torch

        for model in self.models:
            module = getattr(model, "module", None)
            if isinstance(module, torch.nn.Module):
                module.to(memory_format=torch.channels_last)
        self._layout_done = True


PRECISIONS = ("auto", "fp32", "bf16")


def resolve_precision(precision: str, device: str) -> str:
    """``auto``: bf16 on CUDA (as :mod:`nodulekit.inference.predict` does anyway) and on CPUs with
    native bf16 instructions (AVX512-BF16 / AMX: about 1.7x faster there), fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise NodulekitError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if precision != "auto":
        return precision
    if device.startswith("cuda"):
        return "bf16"
    import torch

    try:
        native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        native = False
    return "bf16" if native else "fp32"


def autocast(device: str, precision: str) -> Any:
    """The autocast context of ``precision`` on ``device`` (a no-op for fp32)."""
    import contextlib

    if precision != "bf16":
        return contextlib.nullcontext()
    import torch

    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=torch.bfloat16)


def plan_models(models: Sequence[Any]) -> ModelPlan:
    """The plan for the loaded ``models``: one model, an ensemble of one model's runs, or the two
    stages (every ``munet3d`` and ``msunet`` given, paired in order; an msunet may also carry its
    own coarse model as ``coarse``). One clear error for any other mix."""
    if not models:
        raise NodulekitError("give at least one --model")
    for m in models:
        if getattr(m, "needs_masks", False):
            raise NodulekitError(f"{_where(m)}: a {m.name} run that classifies the CT masked by the ground-truth "
                                 "mask (model.mode = gt_masked, a baseline of paper 004); new scans have no ground "
                                 "truth: use a run of another mode")
    fines = [m for m in models if m.name == FINE]
    coarses = [m for m in models if m.name == COARSE]
    if fines:
        others = sorted({m.name for m in models} - {FINE, COARSE})
        if others:
            raise NodulekitError(f"--model mixes {FINE} with {', '.join(others)}: give runs of one model "
                                 f"(or {COARSE} + {FINE} for paper 003's two stages)")
        if not coarses:
            coarses = [c for c in (getattr(f, "coarse", None) for f in fines) if c is not None]
            if len(coarses) != len(fines):
                raise NodulekitError(f"{FINE} refines the coarse masks of a {COARSE} model (paper 003): add the "
                                     f"{COARSE} run as another --model")
        if len(coarses) == len(fines):
            pairs = list(zip(coarses, fines))
        elif len(coarses) == 1 or len(fines) == 1:
            pairs = [(c, f) for c in coarses for f in fines]
        else:
            raise NodulekitError(f"{len(coarses)} {COARSE} and {len(fines)} {FINE} runs: give as many of each "
                                 "(paired in order, fold by fold) or one of either")
        geometry = geometry_of(pairs[0][0])
        for coarse, fine in pairs:
            g = geometry_of(fine)
            if g.hu_window != geometry.hu_window or g.spacing_zyx_mm != geometry.spacing_zyx_mm or \
                    g.size != geometry.size:
                raise NodulekitError(f"{_where(fine)}: its slabs ({g.size} px, {g.spacing_zyx_mm} mm, HU "
                                     f"{g.hu_window}) do not match the {COARSE} cubes ({geometry.size} px, "
                                     f"{geometry.spacing_zyx_mm} mm, HU {geometry.hu_window}) of {_where(coarse)}")
        return ModelPlan(FINE, geometry, pairs=pairs)
    names = sorted({m.name for m in models})
    if len(names) > 1:
        raise NodulekitError(f"--model mixes {', '.join(names)}: an ensemble averages runs of one model "
                             "(e.g. its cross-validation folds)")
    geometry = geometry_of(models[0])
    for m in models[1:]:
        if geometry_of(m) != geometry:
            raise NodulekitError(f"{_where(m)}: trained on other patches than {_where(models[0])} "
                                 f"({geometry_of(m).fingerprint_params()} vs {geometry.fingerprint_params()})")
    return ModelPlan(names[0], geometry, members=list(models))


# -- results ---------------------------------------------------------------------------------------
@dataclass
class NodulePrediction:
    """One nodule's outputs.

    ``index``: 1-based within the scan (the mask label). ``class_prob``: task -> P(class 1) (a 0-d
    array) or class probabilities (C,). ``box``: the scan voxels (z, y, x slices) of ``prob`` (the
    foreground probability) and ``mask`` (final, after component choice and overlaps); None without
    a segmentation output. ``slices``: per-slice details of 2D models. ``measures``: see
    :func:`measure_nodule`.
    """

    index: int
    location: NoduleLocation
    centre_zyx_mm: np.ndarray
    class_prob: dict[str, np.ndarray] = field(default_factory=dict)
    box: tuple[slice, slice, slice] | None = None
    prob: np.ndarray | None = None
    mask: np.ndarray | None = None
    slices: list[dict[str, Any]] = field(default_factory=list)
    measures: dict[str, float] = field(default_factory=dict)


@dataclass
class ScanPrediction:
    """All nodules of one scan; ``labels``: (z, y, x) label map of the working grid (nodule i = i,
    uint8 or uint16), None when the model has no segmentation output."""

    nodules: list[NodulePrediction]
    labels: np.ndarray | None
    seconds: float = 0.0
    n_patches: int = 0


def predict_scan(plan: ModelPlan, scan: Scan, locations: Sequence[NoduleLocation], *, batch_size: int = 16,
                 device: str | None = None, precision: str = "fp32") -> ScanPrediction:
    """Every location of ``scan`` through ``plan`` (module docstring); ``locations`` must lie inside.
    ``precision``: ``fp32`` or ``bf16`` (:func:`resolve_precision`)."""
    import time

    from nodulekit.heap import reuse_freed_memory

    start = time.perf_counter()
    with reuse_freed_memory():  # each batch reuses the last one's pages (nodulekit.heap)
        nodules, labels, n_patches = _predict_scan(plan, scan, locations, batch_size=batch_size, device=device,
                                                   precision=precision)
    return ScanPrediction(nodules, labels, time.perf_counter() - start, n_patches)


def _predict_scan(plan: ModelPlan, scan: Scan, locations: Sequence[NoduleLocation], *, batch_size: int,
                  device: str | None, precision: str) -> tuple[list[NodulePrediction], np.ndarray | None, int]:
    source = VoxelSource.from_array(scan.hu_zyx, scan.grid.origin_zyx_mm, scan.grid.spacing_zyx_mm, FILL_HU)
    nodules = [NodulePrediction(i, loc, scan.grid_mm(loc.xyz_mm)) for i, loc in enumerate(locations, start=1)]
    pieces: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in nodules]

    def run(images: np.ndarray) -> Any:
        return plan.predict(images, batch_size=batch_size, device=device, precision=precision)

    if plan.geometry.geometry == "2d":
        n_patches, has_seg = _predict_slices(plan, scan, source, nodules, pieces, run)
    elif plan.geometry.geometry == "2.5d":
        raise NodulekitError(f"{plan.name}: 2.5D slabs need the coarse masks of paper 003's first stage; "
                             f"add the {COARSE} run as another --model")
    else:
        n_patches, has_seg = _predict_cubes(plan, scan, source, nodules, pieces, run)
    for nodule, parts in zip(nodules, pieces):
        if has_seg:
            _assemble(nodule, parts, scan)
    labels = paint_labels(nodules, scan.grid.shape_zyx) if has_seg else None
    for nodule in nodules:
        nodule.measures = measure_nodule(nodule, scan) if has_seg else {}
    return nodules, labels, n_patches


def _class_rows(predictions: Any, n: int) -> list[dict[str, np.ndarray]]:
    rows: list[dict[str, np.ndarray]] = [{} for _ in range(n)]
    for task, values in (getattr(predictions, "class_prob", None) or {}).items():
        values = np.asarray(values, dtype=np.float64)
        for i in range(n):
            rows[i][task] = values[i]
    return rows


# -- cubes (3d, views9, two-stage) -----------------------------------------------------------------
def _predict_cubes(plan: ModelPlan, scan: Scan, source: VoxelSource, nodules: list[NodulePrediction],
                   pieces: list[list[tuple[np.ndarray, np.ndarray]]], run: Callable[[np.ndarray], Any]
                   ) -> tuple[int, bool]:
    g = plan.geometry
    assert g.spacing_zyx_mm is not None
    grids = [Grid.centred(n.centre_zyx_mm, (g.size,) * 3, g.spacing_zyx_mm) for n in nodules]
    images = []
    for grid in grids:
        hu = sample(source, grid)
        if g.geometry == "views9":
            hu = nine_views(hu, g.views_sampling)
        images.append(window_hu(hu, g.hu_window, g.normalize))
    predicted = run(np.stack(images).astype(np.float32))
    for nodule, row in zip(nodules, _class_rows(predicted, len(nodules))):
        nodule.class_prob = row
    seg = getattr(predicted, "seg_prob", None)
    if seg is not None and g.geometry != "views9":
        for i, grid in enumerate(grids):
            piece = to_scan(scan.grid, grid, np.asarray(seg[i], dtype=np.float32))
            if piece is not None:
                pieces[i].append(piece)
    return len(images), seg is not None and g.geometry != "views9"


# -- native slices (2d) ----------------------------------------------------------------------------
@dataclass
class _SliceState:
    """2D growth of one nodule: slice index -> (patch grid, probability, kept mask, class probs)."""

    centre_k: int
    max_steps: int
    done: dict[int, tuple[Grid, np.ndarray, np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict)


def _extent_steps(kept: np.ndarray, spacing_yx_mm: Sequence[float], slice_mm: float) -> int:
    """Slices above/below the centre allowed by its mask's in-plane extent (module docstring)."""
    rows, cols = np.flatnonzero(kept.any(axis=1)), np.flatnonzero(kept.any(axis=0))
    extent_mm = max((rows[-1] - rows[0] + 1) * spacing_yx_mm[0], (cols[-1] - cols[0] + 1) * spacing_yx_mm[1])
    return int(math.ceil(Z_GROWTH_PER_INPLANE_EXTENT * extent_mm / slice_mm)) + 1


def _touches_border(mask: np.ndarray, axes: Sequence[int]) -> bool:
    """Whether ``mask`` has a True voxel on the first or last index of any of ``axes``."""
    return any(np.take(mask, 0, axis=a).any() or np.take(mask, -1, axis=a).any() for a in axes)


def _max_steps(geometry: CropGeometry, scan: Scan, diameter_mm: float | None) -> int:
    dz, dy = scan.grid.spacing_zyx_mm[0], scan.grid.spacing_zyx_mm[1]
    pixel = geometry.spacing_zyx_mm[1] if geometry.spacing_zyx_mm is not None else dy
    half_mm = diameter_mm / 2 if diameter_mm else geometry.size * pixel / 2
    return max(0, int(math.ceil(half_mm / dz)) + (1 if diameter_mm else 0))


def _predict_slices(plan: ModelPlan, scan: Scan, source: VoxelSource, nodules: list[NodulePrediction],
                    pieces: list[list[tuple[np.ndarray, np.ndarray]]], run: Callable[[np.ndarray], Any]
                    ) -> tuple[int, bool]:
    g = plan.geometry
    n_slices = scan.grid.shape_zyx[0]
    states = [_SliceState(min(max(int(round(float(scan.grid.mm_to_index(n.centre_zyx_mm)[0]))), 0), n_slices - 1),
                          _max_steps(g, scan, n.location.diameter_mm)) for n in nodules]
    wave = [(i, s.centre_k, 0) for i, s in enumerate(states)]
    n_patches, has_seg = 0, True
    while wave:
        grids = [slice_grid(scan.grid, k, k, nodules[i].centre_zyx_mm, g.size, g.spacing_zyx_mm) for i, k, _ in wave]
        images = np.stack([window_hu(sample(source, grid)[0], g.hu_window, g.normalize) for grid in grids])
        predicted = run(images)
        n_patches += len(wave)
        seg = getattr(predicted, "seg_prob", None)
        has_seg = seg is not None
        classes = _class_rows(predicted, len(wave))
        following = []
        for j, ((i, k, step), grid) in enumerate(zip(wave, grids)):
            state = states[i]
            prob = np.asarray(seg[j], dtype=np.float32).reshape(g.size, g.size) if has_seg else \
                np.zeros((g.size, g.size), np.float32)
            raw = prob >= THRESHOLD
            if step == 0:
                centre_px = grid.mm_to_index(nodules[i].centre_zyx_mm)[1:]
                kept = component_near(raw, centre_px, grid.spacing_zyx_mm[1:])[0]
                if kept.any() and not nodules[i].location.diameter_mm:
                    state.max_steps = min(state.max_steps, _extent_steps(kept, grid.spacing_zyx_mm[1:],
                                                                         scan.grid.spacing_zyx_mm[0]))
            else:
                kept = touching(raw, state.done[k - step][2])
            state.done[k] = (grid, prob, kept, classes[j])
            if not kept.any() or not has_seg:
                continue
            for direction in ((-1, 1) if step == 0 else (step,)):
                nxt = k + direction
                if 0 <= nxt < n_slices and abs(nxt - state.centre_k) <= state.max_steps:
                    following.append((i, nxt, direction))
        wave = following
    for nodule, state, parts in zip(nodules, states, pieces):
        with_mask = [k for k in sorted(state.done) if state.done[k][2].any()]
        used = with_mask or ([state.centre_k] if state.centre_k in state.done else [])
        tasks = state.done[used[0]][3].keys() if used else ()
        nodule.class_prob = {t: np.mean([state.done[k][3][t] for k in used], axis=0) for t in tasks}
        centre = nodule.centre_zyx_mm
        nodule.slices = [{"slice": k, "z_mm": float(scan.world_mm((state.done[k][0].origin_zyx_mm[0], *centre[1:]))[2]),
                          "mask_pixels": int(state.done[k][2].sum()),
                          **{t: _jsonable(v) for t, v in state.done[k][3].items()}} for k in sorted(state.done)]
        if has_seg:
            for k in with_mask:
                grid, prob, kept, _ = state.done[k]
                piece = to_scan(scan.grid, grid, (prob * kept)[None])
                if piece is not None:
                    parts.append(piece)
    return n_patches, has_seg


def _jsonable(value: np.ndarray) -> float | list[float]:
    value = np.asarray(value)
    return float(value) if value.ndim == 0 else [float(v) for v in value.reshape(-1)]


def component_near(mask: np.ndarray, centre_index: Sequence[float],
                   spacing: Sequence[float]) -> tuple[np.ndarray, float]:
    """The connected component of ``mask`` (2D: 8-connected, 3D: 26-connected) holding the point at
    ``centre_index`` (continuous voxel index), else the one nearest to it; and its distance in mm
    (0 when it holds the point's voxel). An empty mask gives itself and NaN."""
    from scipy import ndimage

    if not mask.any():
        return mask, float("nan")
    labels, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
    points = np.argwhere(labels > 0)
    offsets = (points - np.asarray(centre_index, dtype=np.float64)[None, :]) * np.asarray(spacing)[None, :]
    distances = np.sqrt((offsets ** 2).sum(axis=1))
    nearest = int(np.argmin(distances))
    label = labels[tuple(points[nearest])]
    centre = np.round(np.asarray(centre_index)).astype(int)
    inside = bool(np.all(centre >= 0) and np.all(centre < mask.shape) and labels[tuple(centre)] == label)
    return labels == label, 0.0 if inside else float(distances[nearest])


def touching(mask: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """The 8-connected components of ``mask`` (2D) that touch ``previous`` (same grid) dilated by one pixel."""
    from scipy import ndimage

    if not mask.any() or not previous.any():
        return np.zeros_like(mask)
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    near = ndimage.binary_dilation(previous, structure=np.ones((3, 3), dtype=bool))
    keep = np.unique(labels[near & mask])
    return np.isin(labels, keep[keep > 0])


# -- back into the scan ----------------------------------------------------------------------------
def to_scan(scan_grid: Grid, patch_grid: Grid, prob: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``prob`` (on ``patch_grid``) on the scan voxels inside the patch: (start voxel (3,), block), or None."""
    region = covered_region(patch_grid, scan_grid)
    if region is None:
        return None
    start = np.array([r.start for r in region], dtype=np.int64)
    shape = [r.stop - r.start for r in region]
    block = sample(VoxelSource(np.ascontiguousarray(prob, dtype=np.float32), patch_grid, 0.0),
                   scan_grid.shifted(start, shape))
    return start, block


def _assemble(nodule: NodulePrediction, parts: list[tuple[np.ndarray, np.ndarray]], scan: Scan) -> None:
    """Pieces -> the nodule's box, probability (max where pieces overlap) and chosen component."""
    centre = scan.grid.mm_to_index(nodule.centre_zyx_mm)
    if not parts:
        k = np.clip(np.round(centre).astype(np.int64), 0, np.asarray(scan.grid.shape_zyx) - 1)
        nodule.box = tuple(slice(int(v), int(v) + 1) for v in k)  # type: ignore[assignment]
        nodule.prob = np.zeros((1, 1, 1), np.float32)
        nodule.mask = np.zeros((1, 1, 1), bool)
        nodule.measures = {"mask_distance_mm": float("nan")}
        return
    lo = np.min([s for s, _ in parts], axis=0)
    hi = np.max([s + np.asarray(b.shape) for s, b in parts], axis=0)
    prob = np.zeros(tuple(hi - lo), np.float32)
    for start, block in parts:
        at = tuple(slice(int(a), int(a) + n) for a, n in zip(start - lo, block.shape))
        np.maximum(prob[at], block, out=prob[at])
    mask, distance = component_near(prob >= THRESHOLD, centre - lo, scan.grid.spacing_zyx_mm)
    nodule.box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[assignment]
    nodule.prob, nodule.mask = prob, mask
    # Every piece of a nodule covers the same in-plane region (one patch centre); 2D pieces are
    # one slice thick, so only a 3D patch has z borders.
    edge_axes = (0, 1, 2) if any(b.shape[0] > 1 for _, b in parts) else (1, 2)
    nodule.measures = {"mask_distance_mm": distance, "mask_at_patch_edge": float(_touches_border(mask, edge_axes))}


def paint_labels(nodules: Sequence[NodulePrediction], shape_zyx: Sequence[int]) -> np.ndarray:
    """Label map of the scan (nodule i = i). A voxel claimed by several nodules goes to the one with
    the higher probability (the first on ties); each nodule's ``mask`` is updated to what it keeps."""
    dtype = np.uint8 if len(nodules) < 256 else np.uint16
    labels = np.zeros(tuple(shape_zyx), dtype=dtype)
    by_index = {n.index: n for n in nodules}
    for nodule in nodules:
        if nodule.mask is None or not nodule.mask.any():
            continue
        view = labels[nodule.box]
        claim = nodule.mask.copy()
        for other in np.unique(view[claim]):
            if other == 0:
                continue
            rival = by_index[int(other)]
            where = claim & (view == other)
            offset = [a.start - b.start for a, b in zip(nodule.box, rival.box)]  # type: ignore[union-attr]
            points = np.argwhere(where)
            theirs = rival.prob[tuple((points + offset).T)]  # type: ignore[index]
            mine = nodule.prob[tuple(points.T)]  # type: ignore[index]
            lose = points[mine <= theirs]
            claim[tuple(lose.T)] = False
            win = points[mine > theirs] + offset
            rival.mask[tuple(win.T)] = False  # type: ignore[index]
        view[claim] = nodule.index
        nodule.mask = claim
    return labels


def measure_nodule(nodule: NodulePrediction, scan: Scan) -> dict[str, float]:
    """Measures of the nodule's final mask: ``mask_voxels``, ``volume_mm3``, ``diameter_mm``,
    ``centroid_{x,y,z}_mm`` (world), ``mask_distance_mm`` and ``mask_at_patch_edge``; NaN where the
    mask is empty."""
    from nodulekit.labels.consensus import NoduleMasks, measure

    distance = nodule.measures.get("mask_distance_mm", float("nan"))
    nan = float("nan")
    out = {"mask_voxels": 0.0, "volume_mm3": 0.0, "diameter_mm": nan, "centroid_x_mm": nan, "centroid_y_mm": nan,
           "centroid_z_mm": nan, "mask_distance_mm": distance,
           "mask_at_patch_edge": nodule.measures.get("mask_at_patch_edge", 0.0)}
    if nodule.mask is None or not nodule.mask.any():
        return out
    box = np.array([[s.start, s.stop - 1] for s in nodule.box], dtype=np.int64)  # type: ignore[union-attr]
    z_mm = scan.grid.index_to_mm(np.stack([np.arange(scan.grid.shape_zyx[0]), np.zeros(scan.grid.shape_zyx[0]),
                                           np.zeros(scan.grid.shape_zyx[0])], axis=1))[:, 0]
    m = measure(NoduleMasks(box, np.zeros((0,) + nodule.mask.shape, bool), nodule.mask.astype(np.float32),
                            nodule.mask), scan.grid.spacing_zyx_mm, z_mm, scan.grid.origin_zyx_mm[::-1])
    world = scan.world_mm(np.asarray(m.centroid_xyz_mm)[::-1])
    out.update(mask_voxels=float(m.consensus_voxels), volume_mm3=m.volume_mm3, diameter_mm=m.diameter_mm,
               centroid_x_mm=float(world[0]), centroid_y_mm=float(world[1]), centroid_z_mm=float(world[2]))
    return out
