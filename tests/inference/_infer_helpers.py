"""Helpers of the ``nodulekit infer`` tests (imported as ``_infer_helpers``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_nifti(scan, path: Path, orientation: str = "RAS") -> Path:
    """A loaded scan's HU as an image file with its axes flipped to ``orientation`` (world mm kept)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(scan.hu_zyx)
    image.SetSpacing(tuple(float(v) for v in scan.spacing_xyz_mm))
    image.SetOrigin(tuple(float(v) for v in scan.origin_xyz_mm))
    image.SetDirection(tuple(float(v) for v in scan.direction.reshape(-1)))
    sitk.WriteImage(sitk.DICOMOrient(image, orientation), str(path))
    return path


def threshold_predictions(model, images, *, batch_size=32, device=None, masks=None):
    """A stand-in for ``predict_patches`` whose masks are known: foreground where the windowed CT is
    above 0.35 + 0.125 (about -300 HU for [-1000, 400] -> [0, 1]); malignancy = mean intensity."""
    from nodulekit.inference.predict import PatchPredictions

    images = np.asarray(images, dtype=np.float32)
    seg = np.clip((images - 0.35) * 4, 0, 1).astype(np.float32)
    return PatchPredictions(seg, {"malignancy": images.reshape(len(images), -1).mean(axis=1)})
