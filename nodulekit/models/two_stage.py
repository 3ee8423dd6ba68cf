"""Paper 003's coarse-to-fine inference and its reader-agreement analysis (Ni et al. 2022, QIMS
12:292; papers/003_1acb948d5a20bb04.txt).

Chaining (section "Methods", Fig. 1: "the 3D MU-Net located the rough region of interest ...
Then, based on the 3D segmentation result, the ROI slices were extracted automatically and fed
into the trained 2.5D MSU-Net"), as pure tensor functions:

1. :func:`roi_range`: the ROI slices of a cube are those where the coarse probability exceeds
   ``threshold`` anywhere, taken as one range from the first to the last (a slice missed inside
   the nodule is refined too; slices outside the range are "ignored during the next fine
   segmentation stage" and stay 0);
2. :func:`plan_slabs`: slabs of ``depth`` (4) slices as the ``msunet`` crop preset makes them
   (:mod:`nodulekit.patches.crop`): one every ``depth`` slices from the first ROI slice, the
   last one ending at the last ROI slice; fewer ROI slices than ``depth``: their z extent (each
   slice +- 0.5) resampled to ``depth`` slices ("Interpolation is applied to nodules with less
   than 4 ROI slices");
3. :func:`refine_cubes`: every slab of every cube through ``refine`` (MSU-Net) at once, then each
   slab's probabilities written back to its slices (linear interpolation back for resampled
   slabs; the mean where slabs overlap): one 3D mask per nodule, and per characteristic the mean
   of its slabs' class probabilities.

The cube (``munet3d`` preset) and the slabs (``msunet`` preset) share the grid (1 mm, centred on
the nodule, 64x64 in-plane) and the intensity window, so slabs are cut from the cube directly.

Reader agreement (Table 6) is part of every evaluation whose patch store has reader masks:
:mod:`nodulekit.evaluation.readers`.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch

from nodulekit.errors import NodulekitError

Refine = Callable[[torch.Tensor], Mapping[str, torch.Tensor]]


@dataclass(frozen=True)
class SlabPlan:
    """One slab of a cube: ``positions`` (``depth`` z positions, in slice units, where the slab's
    slices are sampled) and ``targets`` (the integer slices its prediction is written to)."""

    positions: torch.Tensor
    targets: torch.Tensor


def roi_range(coarse_prob: torch.Tensor, threshold: float = 0.5) -> tuple[int, int] | None:
    """First and last slice (axis 0) of ``coarse_prob`` ``(D, H, W)`` with a voxel > ``threshold``."""
    hit = torch.nonzero((coarse_prob > threshold).flatten(1).any(dim=1)).flatten()
    if hit.numel() == 0:
        return None
    return int(hit[0]), int(hit[-1])


def plan_slabs(first: int, last: int, depth: int = 4) -> list[SlabPlan]:
    """The slabs covering ROI slices ``first..last`` (inclusive), as the msunet crop preset."""
    n = last - first + 1
    if n < 1 or depth < 1:
        raise NodulekitError(f"plan_slabs: empty ROI {first}..{last} or depth {depth}")
    targets_all = torch.arange(first, last + 1, dtype=torch.float64)
    if n < depth:
        step = n / depth
        positions = (first - 0.5) + step * (torch.arange(depth, dtype=torch.float64) + 0.5)
        return [SlabPlan(positions, targets_all)]
    starts = list(range(first, last - depth + 2, depth))
    if starts[-1] + depth - 1 < last:
        starts.append(last - depth + 1)
    plans = []
    for start in starts:
        positions = torch.arange(start, start + depth, dtype=torch.float64)
        plans.append(SlabPlan(positions, positions))
    return plans


def sample_z(volume: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``volume`` ``(D, ...)`` linearly interpolated along axis 0 at ``positions`` ``(P,)``
    (slice units, clamped to ``[0, D - 1]``) -> ``(P, ...)``."""
    pos = positions.to(device=volume.device, dtype=torch.float64).clamp(0, volume.shape[0] - 1)
    lo = pos.floor().long()
    hi = (lo + 1).clamp(max=volume.shape[0] - 1)
    frac = (pos - lo).to(volume.dtype).reshape(-1, *([1] * (volume.ndim - 1)))
    return volume[lo] * (1 - frac) + volume[hi] * frac


def interp_rows(values: torch.Tensor, positions: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Rows ``values`` ``(P, ...)`` known at increasing ``positions`` ``(P,)``, linearly
    interpolated at ``targets`` ``(T,)`` (constant beyond the ends) -> ``(T, ...)``."""
    pos = positions.to(device=values.device, dtype=torch.float64)
    if pos.numel() == 1:
        return values[:1].expand(targets.numel(), *values.shape[1:]).clone()
    t = targets.to(device=values.device, dtype=torch.float64).clamp(float(pos[0]), float(pos[-1]))
    hi = torch.searchsorted(pos, t, right=True).clamp(1, pos.numel() - 1)
    lo = hi - 1
    frac = ((t - pos[lo]) / (pos[hi] - pos[lo])).to(values.dtype).reshape(-1, *([1] * (values.ndim - 1)))
    return values[lo] * (1 - frac) + values[hi] * frac


def nodule_plans(coarse_prob: torch.Tensor, depth: int, threshold: float, fallback: str) -> list[SlabPlan]:
    """The slabs of one cube; with no ROI slice: the ``depth`` central slices (``fallback =
    "centre"``: the crop centres the nodule) or none (``"none"``)."""
    found = roi_range(coarse_prob, threshold)
    if found is not None:
        return plan_slabs(*found, depth=depth)
    if fallback == "none":
        return []
    if fallback != "centre":
        raise NodulekitError(f"fallback = {fallback!r}; allowed: centre, none")
    first = max(0, coarse_prob.shape[0] // 2 - depth // 2)
    return plan_slabs(first, min(coarse_prob.shape[0] - 1, first + depth - 1), depth)


def refine_cubes(cubes: torch.Tensor, coarse_prob: torch.Tensor, refine: Refine, depth: int = 4,
                 threshold: float = 0.5, fallback: str = "centre") -> dict[str, torch.Tensor]:
    """Chain the stages: coarse masks pick the slices, ``refine`` segments slabs, slabs -> 3D masks.

    Args:
        cubes: ``(N, D, H, W)`` cubes (the munet3d crop; also the msunet intensities).
        coarse_prob: ``(N, D, H, W)`` the coarse stage's nodule probabilities.
        refine: ``(M, depth, H, W)`` slabs -> ``{"seg": (M, depth, H, W) probabilities,
            <task>: (M, C) class probabilities}`` (:func:`msunet_refiner`).
        depth, threshold, fallback: see :func:`plan_slabs`, :func:`roi_range`, :func:`nodule_plans`.
    Returns:
        ``{"seg": (N, D, H, W) fine probabilities (0 outside the refined slices),
        <task>: (N, C) mean class probabilities of each cube's slabs (NaN without slab)}``.
    """
    if cubes.shape != coarse_prob.shape or cubes.ndim != 4:
        raise NodulekitError(f"refine_cubes: cubes {tuple(cubes.shape)} and coarse {tuple(coarse_prob.shape)} "
                             "must both be (N, D, H, W)")
    plans = [nodule_plans(coarse_prob[i], depth, threshold, fallback) for i in range(cubes.shape[0])]
    slabs = [sample_z(cubes[i], plan.positions) for i, nodule in enumerate(plans) for plan in nodule]
    fine = torch.zeros_like(cubes, dtype=torch.float32)
    if not slabs:
        return {"seg": fine}
    predicted = refine(torch.stack(slabs))
    seg = predicted["seg"].to(device=fine.device, dtype=torch.float32)
    result = {"seg": _assemble(fine, plans, seg)}
    for task, probs in predicted.items():
        if task != "seg":
            result[task] = _mean_per_nodule(plans, probs.to(torch.float32))
    return result


def _assemble(fine: torch.Tensor, plans: Sequence[Sequence[SlabPlan]], seg: torch.Tensor) -> torch.Tensor:
    """Write each slab's ``(depth, H, W)`` probabilities to its target slices; overlaps averaged."""
    k = 0
    for i, nodule in enumerate(plans):
        counts = torch.zeros(fine.shape[1], dtype=fine.dtype, device=fine.device)
        for plan in nodule:
            rows = plan.targets.long().to(fine.device)
            fine[i, rows] += interp_rows(seg[k], plan.positions, plan.targets)
            counts[rows] += 1
            k += 1
        covered = counts > 0
        fine[i, covered] /= counts[covered].reshape(-1, 1, 1)
    return fine


def _mean_per_nodule(plans: Sequence[Sequence[SlabPlan]], probs: torch.Tensor) -> torch.Tensor:
    out = torch.full((len(plans), probs.shape[1]), math.nan, dtype=probs.dtype, device=probs.device)
    k = 0
    for i, nodule in enumerate(plans):
        if nodule:
            out[i] = probs[k:k + len(nodule)].mean(dim=0)
        k += len(nodule)
    return out


def msunet_refiner(model: torch.nn.Module, batch_size: int = 64) -> Refine:
    """``refine`` for :func:`refine_cubes` from a trained MSU-Net: eval mode, no gradient, its
    :meth:`~nodulekit.models.msunet.MSUNet.probabilities`, in chunks of ``batch_size`` slabs."""

    @torch.no_grad()
    def refine(slabs: torch.Tensor) -> dict[str, torch.Tensor]:
        model.eval()
        parts: dict[str, list[torch.Tensor]] = {}
        device = next(model.parameters()).device
        for chunk in slabs.split(batch_size):
            probs = model.probabilities(model(chunk.to(device=device, dtype=torch.float32)))
            for name, values in probs.items():
                parts.setdefault(name, []).append(values.float().cpu())
        return {name: torch.cat(values) for name, values in parts.items()}

    return refine


@torch.no_grad()
def coarse_probabilities(model: torch.nn.Module, cubes: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """The 3D MU-Net's nodule probabilities ``(N, D, H, W)`` for cubes ``(N, D, H, W)``."""
    model.eval()
    device = next(model.parameters()).device
    out = [torch.sigmoid(model(chunk[:, None].to(device=device, dtype=torch.float32))["seg"])[:, 0].cpu()
           for chunk in cubes.split(batch_size)]
    return torch.cat(out)
