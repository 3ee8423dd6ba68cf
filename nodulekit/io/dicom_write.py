"""A minimal CT Image Storage series writer (tests and the phantom).

Writes one explicit-VR little-endian file per slice, with the geometry attributes that matter for
LIDC-shaped series (LIDC-FACTS section 2.2): ImagePositionPatient, ImageOrientationPatient
(axial unless overridden), PixelSpacing [row, col], SliceThickness, RescaleSlope/Intercept,
InstanceNumber and the three UIDs. The files read with pydicom and SimpleITK.

Problem cases (duplicate slices, odd orientation, other modality, ...) are built by passing
explicit ``z_positions_mm`` / ``instance_numbers`` / ``file_names`` or a ``per_slice`` hook that
edits each dataset before it is written.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from nodulekit.atomic import atomic_path

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
AXIAL_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

#: A hook called as ``per_slice(k, ds)`` for slice k (0-based, source order) before writing.
SliceHook = Callable[[int, "object"], None]


def _uid_for(series_uid: str, k: int) -> str:
    """Deterministic SOPInstanceUID for slice k of a series (<= 64 characters)."""
    from pydicom.uid import generate_uid

    candidate = f"{series_uid}.{k + 1}"
    if len(candidate) <= 64:
        return candidate
    return generate_uid(prefix="2.25.", entropy_srcs=[series_uid, str(k)])


def _per_slice(value: float | Sequence[float], n: int, name: str) -> list[float]:
    if np.ndim(value) == 0:
        return [float(value)] * n  # type: ignore[arg-type]
    values = [float(v) for v in value]  # type: ignore[union-attr]
    if len(values) != n:
        raise ValueError(f"{name}: {len(values)} values for {n} slices")
    return values


def _stored_slice(hu_yx: np.ndarray, slope: float, intercept: float, pixel_dtype: str) -> np.ndarray:
    """Stored values ``round((hu - intercept) / slope)`` as uint16 or int16."""
    if slope == 1.0 and float(intercept).is_integer():
        stored = hu_yx.astype(np.int32) - int(intercept)
    else:
        stored = np.rint((hu_yx.astype(np.float64) - intercept) / slope).astype(np.int64)
    lo, hi = int(stored.min()), int(stored.max())
    if pixel_dtype == "auto":
        pixel_dtype = "uint16" if lo >= 0 and hi <= 65535 else "int16"
    info = np.iinfo(pixel_dtype)
    if lo < info.min or hi > info.max:
        raise ValueError(f"stored values {lo}..{hi} do not fit {pixel_dtype}; change the rescale")
    return stored.astype(pixel_dtype)


def decimal_string(value: float) -> str:
    """The most precise DICOM DS text (at most 16 characters) for ``value``."""
    for digits in range(15, 0, -1):
        text = f"{float(value):.{digits}g}"
        if len(text) <= 16:
            return text
    raise ValueError(f"{value} does not fit a DICOM decimal string")


def _write_atomic(ds: object, path: Path) -> None:
    """Write ``ds`` under a hidden temporary name in the target folder, then rename it."""
    with atomic_path(path, durable=False) as tmp_path:
        ds.save_as(tmp_path, enforce_file_format=True)  # type: ignore[attr-defined]


def write_ct_series(
    out_dir: Path,
    hu_zyx: np.ndarray,
    *,
    spacing_zyx_mm: Sequence[float],
    origin_xyz_mm: Sequence[float] = (0.0, 0.0, 0.0),
    z_positions_mm: Sequence[float] | np.ndarray | None = None,
    patient_id: str = "LIDC-IDRI-9999",
    study_uid: str | None = None,
    series_uid: str | None = None,
    sop_uids: Sequence[str] | None = None,
    file_names: Sequence[str] | None = None,
    rescale_intercept: float | Sequence[float] = -1024.0,
    rescale_slope: float | Sequence[float] = 1.0,
    slice_thickness_mm: float | None = None,
    instance_numbers: Sequence[int] | None = None,
    modality: str = "CT",
    pixel_dtype: str = "auto",
    per_slice: SliceHook | None = None,
) -> list[Path]:
    """Write ``hu_zyx`` (int-valued HU, shape (z, y, x)) as a CT series, one file per slice.

    Slice k is written with ImagePositionPatient ``(origin_x, origin_y, z_k)`` where ``z_k`` is
    ``z_positions_mm[k]`` or ``origin_z + k * spacing_z``; orientation axial
    ``[1,0,0,0,1,0]``; PixelSpacing ``[spacing_y, spacing_x]``. ``rescale_slope`` and
    ``rescale_intercept`` may be scalars or one value per slice; stored values are
    ``round((hu - intercept) / slope)`` as uint16 when they fit (PixelRepresentation 0), else
    int16 (``pixel_dtype`` forces one). Defaults: SOP UIDs derived deterministically from
    the series UID, file names ``1-001.dcm`` ... (NBIA style), InstanceNumber ``k + 1``,
    SliceThickness = z spacing. ``per_slice(k, ds)`` may edit each pydicom Dataset before it is
    written (orientation, modality, removing attributes ...). Each file is written atomically.

    Returns the written paths in slice (source) order.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    hu_zyx = np.asarray(hu_zyx)
    if hu_zyx.ndim != 3:
        raise ValueError(f"hu_zyx must be 3-D (z, y, x), got shape {hu_zyx.shape}")
    n_z, n_y, n_x = hu_zyx.shape
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sz, sy, sx = (float(v) for v in spacing_zyx_mm)
    ox, oy, oz = (float(v) for v in origin_xyz_mm)
    if z_positions_mm is None:
        zs = [oz + k * sz for k in range(n_z)]
    else:
        zs = [float(v) for v in z_positions_mm]
        if len(zs) != n_z:
            raise ValueError(f"z_positions_mm: {len(zs)} values for {n_z} slices")
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    sops = list(sop_uids) if sop_uids is not None else [_uid_for(series_uid, k) for k in range(n_z)]
    names = list(file_names) if file_names is not None else [f"1-{k + 1:03d}.dcm" for k in range(n_z)]
    numbers = list(instance_numbers) if instance_numbers is not None else list(range(1, n_z + 1))
    for label, seq in (("sop_uids", sops), ("file_names", names), ("instance_numbers", numbers)):
        if len(seq) != n_z:
            raise ValueError(f"{label}: {len(seq)} values for {n_z} slices")
    slopes = _per_slice(rescale_slope, n_z, "rescale_slope")
    intercepts = _per_slice(rescale_intercept, n_z, "rescale_intercept")
    thickness = float(slice_thickness_mm) if slice_thickness_mm is not None else sz
    frame_uid = generate_uid(prefix="2.25.", entropy_srcs=[series_uid, "frame"])

    paths: list[Path] = []
    for k in range(n_z):
        stored = _stored_slice(hu_zyx[k], slopes[k], intercepts[k], pixel_dtype)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sops[k]
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID

        ds = Dataset()
        ds.file_meta = meta
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sops[k]
        ds.StudyDate = "20000101"
        ds.Modality = modality
        ds.Manufacturer = "nodulekit"
        ds.PatientName = patient_id
        ds.PatientID = patient_id
        ds.SliceThickness = f"{thickness:g}"
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = "1"
        ds.SeriesNumber = 1
        ds.InstanceNumber = int(numbers[k])
        ds.ImagePositionPatient = [decimal_string(ox), decimal_string(oy), decimal_string(zs[k])]
        ds.ImageOrientationPatient = [f"{v:g}" for v in AXIAL_ORIENTATION]
        ds.FrameOfReferenceUID = frame_uid
        ds.SliceLocation = decimal_string(zs[k])
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = n_y
        ds.Columns = n_x
        ds.PixelSpacing = [decimal_string(sy), decimal_string(sx)]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if stored.dtype == np.int16 else 0
        ds.RescaleIntercept = f"{intercepts[k]:g}"
        ds.RescaleSlope = f"{slopes[k]:g}"
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored, dtype=stored.dtype.newbyteorder("<")).tobytes()
        ds["PixelData"].VR = "OW"
        if per_slice is not None:
            per_slice(k, ds)
        path = out_dir / names[k]
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(ds, path)
        paths.append(path)
    return paths
