"""On-the-fly augmentation of a training batch, as torch ops on the batch's own device.

The training loader reads patches from the store and the model config chooses offline copies
(``nodulekit augment``), these on-the-fly ops, or both. Running them on the GPU where training runs
keeps the loader from becoming the bottleneck (paper 004 section 2.4 augments on the fly: flip,
rot90, Gaussian noise).

Batches: images ``(N, C, H, W)`` (2D; a 2.5d slab or the views as channels) or ``(N, C, D, H, W)``
(3D); masks and agreement maps ``(N, *spatial)`` or ``(N, C', *spatial)``. Each sample of the batch
draws its own parameters; the same spatial transform is applied to its image, mask and agreement
(and to all its channels: to augment the nine views of a views9 patch independently, as offline
augment does, pass them as samples, ``(N * 9, 1, H, W)``).

Ops, in this order (each with its own probability per sample):

- ``flip``: each listed axis flipped with probability ``p`` (torchio's ``RandomFlip``).
- ``rot90``: with probability ``p``, k x 90 degrees (k ~ U{1, 2, 3}) in one of the listed planes
  (default the y-x plane; list z-y / z-x planes only for isotropic cubes).
- ``affine``: with probability ``p``, rotation in the y-x plane (``max_deg``), isotropic scale
  (``scale`` range, > 1 magnifies) and translation (``max_shift_px`` per axis), one
  ``affine_grid`` / ``grid_sample`` per array: bilinear for images and agreement, the mask
  ``nearest`` or ``threshold`` (bilinear >= 0.5) by ``mask_mode``; when an agreement map is given
  the mask is ``agreement >= clevel`` instead, the rule of crop and offline augment. Outside the
  patch: ``image_fill`` (air in the store's normalisation, e.g. 0 for ``01``, -1 for ``pm1``).
- ``noise``: with probability ``p``, Gaussian noise with sigma ~ U[``sigma``] on the image only.

Flips and rot90 move whole pixels; samples without an affine keep their exact pixels.

Principle 6 of STYLE.md: :meth:`BatchAugment.sample` draws a :class:`BatchParams` with one torch
generator (seeded, one per device), :meth:`BatchAugment.apply` applies it deterministically;
``forward`` does both and returns the params with the batch so they can be logged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nodulekit.io.patch_store import MASK_TOL

_AXES = ("z", "y", "x")
MASK_MODES = ("nearest", "threshold")


@dataclass(frozen=True)
class OnTheFlyConfig:
    """Settings of :class:`BatchAugment`; probabilities of 0 switch an op off."""

    flip_p: float = 0.0
    flip_axes: tuple[str, ...] = ("y", "x")
    rot90_p: float = 0.0
    rot90_planes: tuple[tuple[str, str], ...] = (("y", "x"),)
    affine_p: float = 0.0
    max_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    max_shift_px: float = 4.0
    noise_p: float = 0.0
    noise_sigma: tuple[float, float] = (0.0, 0.03)
    image_fill: float = 0.0
    clevel: float = 0.5
    mask_mode: str = "nearest"

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> "OnTheFlyConfig":
        """From a model config's table, e.g. TOML ``{flip = {p = 0.5, axes = ["z", "y", "x"]},
        rot90 = {p = 1.0}, affine = {p = 0.3, max_deg = 10}, noise = {p = 0.5, sigma = [0, 0.02]},
        image_fill = 0.0}``."""
        flat: dict[str, Any] = {}
        for key, value in config.items():
            if key in ("flip", "rot90", "affine", "noise") and isinstance(value, Mapping):
                for sub, sub_value in value.items():
                    name = f"{key}_{sub}" if sub in ("p", "axes", "planes", "sigma") else sub
                    flat[name] = sub_value
            else:
                flat[key] = value
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(flat) - known)
        if unknown:
            raise ValueError(f"on-the-fly augmentation: unknown setting(s) {unknown}; known: {sorted(known)}")
        tuples = {"flip_axes", "scale", "noise_sigma"}
        flat = {k: (tuple(v) if k in tuples else v) for k, v in flat.items()}
        if "rot90_planes" in flat:
            flat["rot90_planes"] = tuple(tuple(p) for p in flat["rot90_planes"])
        config_ = cls(**flat)
        config_.validate()
        return config_

    def validate(self) -> None:
        for name in ("flip_p", "rot90_p", "affine_p", "noise_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"on-the-fly augmentation: {name} {getattr(self, name)} must be in [0, 1]")
        axes = set(self.flip_axes) | {a for plane in self.rot90_planes for a in plane}
        if not axes <= set(_AXES):
            raise ValueError(f"on-the-fly augmentation: axes are named z, y, x (got {sorted(axes)})")
        if self.mask_mode not in MASK_MODES:
            raise ValueError(f"on-the-fly augmentation: mask_mode {self.mask_mode!r}: choose {MASK_MODES}")


#: On-the-fly settings of the papers that augment during training (model configs may start from these).
PRESETS: dict[str, dict[str, Any]] = {
    # 004 section 2.4: flip a random axis (p 0.5), rot90 about a random axis, Gaussian noise
    # (sigma not given: ours); z-y / z-x rot90 left out because 0.7 x 0.7 x 1.0 mm voxels are anisotropic.
    "cascade": {"flip": {"p": 0.5, "axes": ["z", "y", "x"]}, "rot90": {"p": 0.75}, "noise": {"p": 0.5},
                "image_fill": -1.0},
    # 001 section 3.1: random flips.
    "dgnet": {"flip": {"p": 0.5}},
}


@dataclass
class BatchParams:
    """What :meth:`BatchAugment.sample` drew for a batch (tensors on the batch's device).

    ``flip`` (N, n_flip_axes) bool; ``rot90_k`` (N,) int64, 0 = none; ``rot90_plane`` (N,) index into
    the config's planes; ``affine`` (N,) bool; ``theta`` (N, d, d + 1) the ``affine_grid`` matrices
    (normalised x, y[, z] order, output -> input); ``noise`` image-shaped noise or None.
    """

    flip: torch.Tensor
    rot90_k: torch.Tensor
    rot90_plane: torch.Tensor
    affine: torch.Tensor
    theta: torch.Tensor
    noise: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)

    def as_log(self) -> list[dict[str, Any]]:
        """Per-sample JSON-able parameters (for tracing; moves the small tensors to the CPU)."""
        out = []
        sigma = self.extras.get("noise_sigma")
        for i in range(len(self.rot90_k)):
            out.append({"flip": self.flip[i].tolist(), "rot90_k": int(self.rot90_k[i]),
                        "rot90_plane": int(self.rot90_plane[i]), "affine": bool(self.affine[i]),
                        "theta": self.theta[i].tolist(), "noise_sigma": None if sigma is None else float(sigma[i])})
        return out


def _dim(spatial_ndim: int, axis: str) -> int:
    """Tensor dimension of a named axis in an (N, C, *spatial) tensor."""
    return 2 + spatial_ndim - 3 + _AXES.index(axis)


def _uniform(n: int, bounds: Sequence[float], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    lo, hi = float(bounds[0]), float(bounds[1])
    return lo + (hi - lo) * torch.rand(n, generator=generator, device=device)


def _theta(deg: torch.Tensor, scale: torch.Tensor, shift_px: torch.Tensor, spatial: Sequence[int]) -> torch.Tensor:
    """``affine_grid`` matrices (N, d, d + 1): rotation in y-x, magnification ``scale``, shift in px.

    Built in pixels about the centre (x, y[, z] order), then conjugated to normalised coordinates
    (align_corners=False: pixel = normalised * size / 2), so rotations are rigid on any shape.
    """
    n, d = len(deg), len(spatial)
    sizes_xyz = torch.tensor(list(reversed(spatial)), dtype=deg.dtype, device=deg.device)
    rad = deg * (math.pi / 180.0)
    linear = torch.eye(d, dtype=deg.dtype, device=deg.device).repeat(n, 1, 1)
    linear[:, 0, 0], linear[:, 0, 1] = torch.cos(rad), -torch.sin(rad)
    linear[:, 1, 0], linear[:, 1, 1] = torch.sin(rad), torch.cos(rad)
    linear = linear / scale.view(n, 1, 1)
    half = sizes_xyz / 2.0
    normalised = linear * half.view(1, 1, d) / half.view(1, d, 1)
    return torch.cat([normalised, (shift_px / half).unsqueeze(-1)], dim=2)


def _as_channels(tensor: torch.Tensor | None, spatial: Sequence[int]) -> torch.Tensor | None:
    if tensor is None:
        return None
    return tensor.reshape(tensor.shape[0], -1, *spatial)


_ROT_REV_P = torch.tensor([False, True, True, False])
_ROT_REV_Q = torch.tensor([False, False, True, True])


def _gather(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x`` (N, C, *spatial) rearranged by a per-sample flat index map (N, 1, prod(spatial))."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    return flat.gather(2, index.expand(-1, flat.shape[1], -1)).view(x.shape)


def _select(flags: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    return torch.where(flags.view(-1, *([1] * (old.ndim - 1))), new, old)


class BatchAugment(nn.Module):
    """Random flips, rot90, small affine and intensity noise on a batch, on the batch's device.

    ``BatchAugment({"flip": {"p": 0.5}, "rot90": {"p": 0.5}}, seed=0)(images, masks)`` returns
    ``{"images", "masks", ["agreement"], "params"}``. One generator per device, seeded with
    ``seed`` (the same seed gives the same draws on the same device type; CPU and CUDA streams differ).
    """

    def __init__(self, config: Mapping[str, Any] | OnTheFlyConfig, seed: int | None = None) -> None:
        super().__init__()
        self.config = config if isinstance(config, OnTheFlyConfig) else OnTheFlyConfig.from_dict(config)
        self.config.validate()
        self.seed = seed
        self._generators: dict[str, torch.Generator] = {}

    def generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            g = torch.Generator(device=device)
            # no seed: one draw from torch's global generator (reproducible under torch.manual_seed)
            g.manual_seed(self.seed if self.seed is not None else int(torch.randint(2**62, (1,)).item()))
            self._generators[key] = g
        return self._generators[key]

    @torch.no_grad()
    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> BatchParams:
        """Draw the parameters of every sample of ``images`` (N, C, *spatial)."""
        c, device, n = self.config, images.device, images.shape[0]
        spatial = images.shape[2:]
        g = generator or self.generator(device)
        flip = torch.rand(n, len(c.flip_axes), generator=g, device=device) < c.flip_p
        rot_on = torch.rand(n, generator=g, device=device) < c.rot90_p
        k = torch.randint(1, 4, (n,), generator=g, device=device) * rot_on
        plane = torch.randint(0, len(c.rot90_planes), (n,), generator=g, device=device)
        affine = torch.rand(n, generator=g, device=device) < c.affine_p
        deg = _uniform(n, (-c.max_deg, c.max_deg), g, device)
        scale = _uniform(n, c.scale, g, device)
        shift = (2 * torch.rand(n, len(spatial), generator=g, device=device) - 1) * c.max_shift_px
        params = BatchParams(flip, k, plane, affine, _theta(deg, scale, shift, spatial).to(images.dtype))
        if c.noise_p > 0:
            sigma = _uniform(n, c.noise_sigma, g, device) * (torch.rand(n, generator=g, device=device) < c.noise_p)
            noise = torch.randn(images.shape, generator=g, device=device, dtype=images.dtype)
            params.noise = noise * sigma.to(images.dtype).view(n, *([1] * (images.ndim - 1)))
            params.extras["noise_sigma"] = sigma
        return params

    @torch.no_grad()
    def apply(self, params: BatchParams, images: torch.Tensor, masks: torch.Tensor | None = None,
              agreement: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Apply drawn parameters (deterministic). Masks keep their dtype and shape."""
        spatial = images.shape[2:]
        arrays = {"images": images, "masks": _as_channels(masks, spatial), "agreement": _as_channels(agreement, spatial)}
        arrays = {k: v for k, v in arrays.items() if v is not None}
        index = self._rigid_index(params, spatial, images.device)
        if index is not None:
            arrays = {k: _gather(v, index) for k, v in arrays.items()}
        if self.config.affine_p > 0:
            arrays = self._affine(arrays, params)
        if params.noise is not None:
            arrays["images"] = arrays["images"] + params.noise
        out = dict(arrays)
        for name, original in (("masks", masks), ("agreement", agreement)):
            if original is not None:
                out[name] = out[name].reshape(original.shape)
        return out

    def forward(self, images: torch.Tensor, masks: torch.Tensor | None = None,
                agreement: torch.Tensor | None = None, generator: torch.Generator | None = None) -> dict[str, Any]:
        params = self.sample(images, generator)
        return {**self.apply(params, images, masks, agreement), "params": params}

    def _rigid_index(self, params: BatchParams, spatial: Sequence[int], device: torch.device) -> torch.Tensor | None:
        """Flips then rot90 of every sample as one flat index map (N, 1, prod(spatial)), or None.

        Both ops are signed axis permutations: output axis a reads input axis ``src[a]``, reversed
        when ``rev[a]``. So the input index of an output pixel is a sum of one small term per axis,
        and each array is then one ``gather`` (no per-sample loop, no host sync).
        """
        c = self.config
        if c.flip_p == 0 and c.rot90_p == 0:
            return None
        n, ndim = len(params.rot90_k), len(spatial)
        src = torch.arange(ndim, device=device).expand(n, ndim).clone()
        rev = torch.zeros(n, ndim, dtype=torch.bool, device=device)
        if c.rot90_p > 0:
            for j, plane in enumerate(c.rot90_planes):
                p, q = (_dim(ndim, axis) - 2 for axis in plane)
                if spatial[p] != spatial[q]:
                    raise ValueError(f"rot90 in plane {plane} needs a square plane, got spatial shape {tuple(spatial)}")
                on = params.rot90_plane == j
                k = params.rot90_k
                # output p / q read input (src, reversed) for k = 0..3: rot90 as torch.rot90(x, k, (p, q))
                src_p, rev_p = torch.tensor([p, q, p, q], device=device)[k], _ROT_REV_P.to(device)[k]
                src_q, rev_q = torch.tensor([q, p, q, p], device=device)[k], _ROT_REV_Q.to(device)[k]
                src[:, p], rev[:, p] = torch.where(on, src_p, src[:, p]), torch.where(on, rev_p, rev[:, p])
                src[:, q], rev[:, q] = torch.where(on, src_q, src[:, q]), torch.where(on, rev_q, rev[:, q])
        if c.flip_p > 0:  # a flip of input axis b reverses the output axis that reads b
            flipped = torch.zeros(n, ndim, dtype=torch.bool, device=device)
            for i, axis in enumerate(c.flip_axes):
                flipped[:, _dim(ndim, axis) - 2] = params.flip[:, i]
            rev = rev ^ flipped.gather(1, src)
        strides = torch.tensor([math.prod(spatial[a + 1:]) for a in range(ndim)], device=device)
        index = torch.zeros((n,) + (1,) * ndim, dtype=torch.int64, device=device)
        for a, size in enumerate(spatial):
            steps = torch.arange(size, device=device)
            term = torch.where(rev[:, a, None], size - 1 - steps, steps) * strides[src[:, a]][:, None]
            index = index + term.view(n, *[size if b == a else 1 for b in range(ndim)])
        return index.reshape(n, 1, -1)

    def _affine(self, arrays: dict[str, torch.Tensor], params: BatchParams) -> dict[str, torch.Tensor]:
        """One ``grid_sample`` for image and agreement together (bilinear), one for a mask without agreement."""
        c = self.config
        images = arrays["images"]
        grid = F.affine_grid(params.theta, list(images.shape), align_corners=False)

        def warp(x: torch.Tensor, mode: str) -> torch.Tensor:
            return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)

        n_image = images.shape[1]
        agreement = arrays.get("agreement")
        bilinear = [images - c.image_fill] + ([agreement.to(images.dtype)] if agreement is not None else [])
        warped = warp(torch.cat(bilinear, dim=1) if len(bilinear) > 1 else bilinear[0], "bilinear")
        out = {"images": _select(params.affine, warped[:, :n_image] + c.image_fill, images)}
        if agreement is not None:
            out["agreement"] = _select(params.affine, warped[:, n_image:].to(agreement.dtype), agreement)
        if "masks" in arrays:
            masks = arrays["masks"]
            if agreement is not None:
                mask = warped[:, n_image:] >= c.clevel - MASK_TOL
            elif c.mask_mode == "nearest":
                mask = warp(masks.to(images.dtype), "nearest") > 0.5
            else:
                mask = warp(masks.to(images.dtype), "bilinear") >= 0.5
            out["masks"] = _select(params.affine, mask.to(masks.dtype), masks)
        return out
