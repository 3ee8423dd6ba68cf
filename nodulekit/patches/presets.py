"""Patch geometry presets: each model's input geometry as its paper describes it.

A :class:`CropGeometry` says what one ``crop/<preset>`` stage instance extracts per cohort nodule.
``nodulekit crop --for MODEL`` starts from the preset and explicit options override single fields
(:func:`resolve_geometry`). Sources: ../shared/papers/README.md and the paper texts beside it.

==============  =======  ================  =================  ==============  =========  =======
preset          geometry patch shape       spacing z,y,x mm   HU window       normalize  cohort
==============  =======  ================  =================  ==============  =========  =======
``mtnet``       2d       (64, 64)          native             [-1000, 400]    01         mtnet
``dgnet``       2d       (128, 128)        native             [-1000, 400]    01         luna16
``mtcnn``       views9   (9, 64, 64)       1, 1, 1            [-1000, 400]    01         mtcnn
``mtcnn-cube``  3d       (64, 64, 64)      1, 1, 1            [-1000, 400]    01         mtcnn
``msunet``      2.5d     (4, 64, 64)       1, 1, 1            [-1000, 500]    01         msunet
``munet3d``     3d       (64, 64, 64)      1, 1, 1            [-1000, 500]    01         msunet
``cascade``     3d       (32, 32, 32)      1.0, 0.7, 0.7      [-1024, 400]    pm1        luna16
==============  =======  ================  =================  ==============  =========  =======

Choices where a paper is vague (also in docs/patches.md):

- ``mtnet`` (paper 000, section 3.1.2 "uniformly cropped into 64x64 CT patches", 8-bit RGB images):
  native in-plane pixels, no in-plane resampling (the model resizes to 224); the window of the
  8-bit images is not given, [-1000, 400] is our choice.
- ``dgnet`` (paper 001, section 4.1): 128 x 128 regions of the LUNA16 nodules, plus "some empty
  slices adjacent to the lung nodule" so that slices with and without nodule are balanced
  (``empty_ratio`` 1.0). Intensities min-max normalised to [0, 1] (eq. 6) after our window.
- ``mtcnn`` (paper 002, section III.A "View extraction"): 1 mm isotropic, [-1000, 400] -> [0, 1], 64^3 cube with the
  nodule at the centre, nine views (:mod:`nodulekit.patches.views`). The store of ``mtcnn`` holds
  the views (what its training loop reads); ``mtcnn-cube`` holds the cube.
- ``msunet`` / ``munet3d`` (paper 003, "Data preprocessing"): 1 mm isotropic, [-1000, 500]
  (the paper's 10-bit quantisation is a storage detail: stored here as float in [0, 1]);
  2.5D slabs of 4 consecutive 1 mm slices, "every 4 slices of the nodule" (non-overlapping,
  ``slab_stride`` 4), nodules with fewer than 4 slices interpolated to 4.
- ``cascade`` (paper 004, section 3.1, eq. 5): 0.7 x 0.7 x 1.0 mm (x, y, z), 32^3, [-1024, 400] -> [-1, 1].
  Its own cohort is private; on LIDC we take the LUNA16 nodules (>= 3 readers, thin regular
  slices), whose primary ``label`` is -1: the model config picks a label column (every
  ``label_*`` and characteristic column is in the store).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from nodulekit.errors import NodulekitError
from nodulekit.io.patch_store import GEOMETRIES

NORMALIZATIONS = ("01", "pm1", "none")
VIEW_SAMPLINGS = ("isotropic", "corner")
#: ``--cohort all``: every nodule of the nodule store, primary label -1.
ALL_NODULES = "all"


@dataclass(frozen=True)
class CropGeometry:
    """What one crop stage instance extracts per nodule (axis order z, y, x; mm; HU).

    ``size``: edge of the square (2d, 2.5d, views9) or cube (3d) in output pixels.
    ``spacing_zyx_mm``: output spacing; None = the scan's own pixels (2d only: native slices and
    in-plane pixels). For 2d a given spacing resamples in-plane only (slices stay native).
    ``empty_ratio`` (2d): empty slices per nodule slice (dgnet). ``slab_depth`` / ``slab_stride``
    (2.5d): slices per slab and the step between slab starts. ``views_sampling`` (views9): see
    :func:`nodulekit.patches.views.nine_views`.
    """

    preset: str
    geometry: str
    size: int
    spacing_zyx_mm: tuple[float, float, float] | None
    hu_window: tuple[float, float]
    normalize: str
    cohort: str
    empty_ratio: float = 0.0
    slab_depth: int = 4
    slab_stride: int = 4
    views_sampling: str = "isotropic"
    source: str = ""

    @property
    def patch_shape(self) -> tuple[int, ...]:
        """Shape of one patch: (H, W), (S, H, W), (D, H, W) or (9, H, W)."""
        if self.geometry == "2d":
            return (self.size, self.size)
        if self.geometry == "2.5d":
            return (self.slab_depth, self.size, self.size)
        if self.geometry == "views9":
            return (9, self.size, self.size)
        return (self.size, self.size, self.size)

    def validate(self) -> None:
        """A clear one-line error for options that do not fit together."""
        if self.geometry not in GEOMETRIES:
            raise NodulekitError(f"--geometry {self.geometry!r}: choose one of {', '.join(GEOMETRIES)}")
        if self.size < 2:
            raise NodulekitError(f"--size {self.size}: need at least 2 pixels")
        if self.normalize not in NORMALIZATIONS:
            raise NodulekitError(f"--normalize {self.normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
        lo, hi = self.hu_window
        if not lo < hi:
            raise NodulekitError(f"--hu-window {lo:g} {hi:g}: LO must be below HI")
        if self.spacing_zyx_mm is None and self.geometry != "2d":
            raise NodulekitError(f"--geometry {self.geometry} needs --spacing-mm (native spacing is 2d only)")
        if self.spacing_zyx_mm is not None and not all(s > 0 and math.isfinite(s) for s in self.spacing_zyx_mm):
            raise NodulekitError(f"--spacing-mm {self.spacing_zyx_mm}: spacings must be positive")
        if self.empty_ratio < 0 or (self.empty_ratio > 0 and self.geometry != "2d"):
            raise NodulekitError(f"--empty-ratio {self.empty_ratio:g}: a ratio >= 0, for --geometry 2d only")
        if self.slab_depth < 1 or self.slab_stride < 1:
            raise NodulekitError("slab depth and stride must be >= 1")
        if self.views_sampling not in VIEW_SAMPLINGS:
            raise NodulekitError(f"--views-sampling {self.views_sampling!r}: choose one of {', '.join(VIEW_SAMPLINGS)}")

    def fingerprint_params(self) -> dict[str, Any]:
        """Every field that changes the patches; fields that do not apply to the geometry are None.

        Constants of the code (``FILL_HU``) are covered by the stage's code version instead."""
        return {
            "preset": self.preset, "geometry": self.geometry, "size": self.size,
            "spacing_zyx_mm": None if self.spacing_zyx_mm is None else list(self.spacing_zyx_mm),
            "hu_window": list(self.hu_window), "normalize": self.normalize, "cohort": self.cohort,
            "empty_ratio": self.empty_ratio if self.geometry == "2d" else None,
            "slab_depth": self.slab_depth if self.geometry == "2.5d" else None,
            "slab_stride": self.slab_stride if self.geometry == "2.5d" else None,
            "views_sampling": self.views_sampling if self.geometry == "views9" else None,
        }


PRESETS: dict[str, CropGeometry] = {
    "mtnet": CropGeometry("mtnet", "2d", 64, None, (-1000.0, 400.0), "01", "mtnet",
                          source="paper 000, Tang & Zhang 2024, section 3.1.2"),
    "dgnet": CropGeometry("dgnet", "2d", 128, None, (-1000.0, 400.0), "01", "luna16", empty_ratio=1.0,
                          source="paper 001, Zhang et al. 2024, section 4.1"),
    "mtcnn": CropGeometry("mtcnn", "views9", 64, (1.0, 1.0, 1.0), (-1000.0, 400.0), "01", "mtcnn",
                          source="paper 002, Zhai et al. 2020, section III.A"),
    "mtcnn-cube": CropGeometry("mtcnn-cube", "3d", 64, (1.0, 1.0, 1.0), (-1000.0, 400.0), "01", "mtcnn",
                               source="paper 002, Zhai et al. 2020, section III.A"),
    "msunet": CropGeometry("msunet", "2.5d", 64, (1.0, 1.0, 1.0), (-1000.0, 500.0), "01", "msunet",
                           source="paper 003, Ni et al. 2022, data preprocessing"),
    "munet3d": CropGeometry("munet3d", "3d", 64, (1.0, 1.0, 1.0), (-1000.0, 500.0), "01", "msunet",
                            source="paper 003, Ni et al. 2022, data preprocessing"),
    "cascade": CropGeometry("cascade", "3d", 32, (1.0, 0.7, 0.7), (-1024.0, 400.0), "pm1", "luna16",
                            source="paper 004, Wang et al. 2021, section 3.1"),
}


def parse_spacing(text: str | None) -> tuple[float, float, float] | None | str:
    """``"1"`` -> (1, 1, 1); ``"1,0.7,0.7"`` (z, y, x) -> (1, 0.7, 0.7); ``"native"`` -> None.

    Returns ``"preset"`` for None/empty text (keep the preset's spacing).
    """
    if text is None or not text.strip():
        return "preset"
    if text.strip().lower() == "native":
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if len(values) == 1:
        values *= 3
    if len(values) != 3:
        raise NodulekitError(f"--spacing-mm {text!r}: give one value (isotropic) or three z,y,x values in mm, "
                             "e.g. 1 or 1,0.7,0.7, or 'native'")
    return (values[0], values[1], values[2])


def resolve_geometry(preset: str, *, geometry: str | None = None, size: int | None = None,
                     spacing_mm: str | tuple[float, float, float] | None = None,
                     hu_window: tuple[float, float] | None = None, normalize: str | None = None,
                     cohort: str | None = None, empty_ratio: float | None = None,
                     views_sampling: str | None = None) -> CropGeometry:
    """The preset's geometry with the given options overriding it (None = keep the preset's value).

    ``spacing_mm``: text for :func:`parse_spacing` or a z, y, x tuple.
    """
    if preset not in PRESETS:
        raise NodulekitError(f"--for {preset!r}: choose one of {', '.join(PRESETS)}")
    base = PRESETS[preset]
    changes: dict[str, Any] = {}
    if geometry is not None:
        changes["geometry"] = geometry
        if geometry != "2d":
            changes["empty_ratio"] = 0.0
    if size is not None:
        changes["size"] = int(size)
    if spacing_mm is not None:
        spacing = parse_spacing(spacing_mm) if isinstance(spacing_mm, str) else tuple(float(s) for s in spacing_mm)
        if spacing != "preset":
            changes["spacing_zyx_mm"] = spacing
    if hu_window is not None:
        changes["hu_window"] = (float(hu_window[0]), float(hu_window[1]))
    if normalize is not None:
        changes["normalize"] = normalize
    if cohort is not None:
        changes["cohort"] = cohort
    if empty_ratio is not None:
        changes["empty_ratio"] = float(empty_ratio)
    if views_sampling is not None:
        changes["views_sampling"] = views_sampling
    resolved = replace(base, **changes)
    if resolved.geometry != "2d" and resolved.spacing_zyx_mm is None and "spacing_zyx_mm" not in changes:
        resolved = replace(resolved, spacing_zyx_mm=(1.0, 1.0, 1.0))  # e.g. mtnet --geometry 3d
    resolved.validate()
    return resolved
