"""What ``nodulekit infer`` writes: label masks (NIfTI, DICOM-SEG), result tables, PNG overlays.

- :func:`write_label_nifti`: one label map per scan (nodule i = i, 0 = background) in the scan's
  own geometry: size, spacing, origin and direction of the DICOM series or image file it came from
  (an image reoriented for the models is turned back first), via SimpleITK.
- :func:`write_dicom_seg`: a DICOM Segmentation (highdicom, BINARY, one segment per nodule,
  "Nodule" (SCT 27925004), algorithm type AUTOMATIC) referencing every source slice by its
  SOPInstanceUID and sharing the series' StudyInstanceUID and FrameOfReferenceUID, so 3D Slicer
  and OHIF place it on the source series. DICOM input only.
- :func:`result_row` / :func:`write_results_csv` / :func:`write_results_json`: one row per
  nodule: where it was asked for, every head's probability and class, and the mask's measures.
  Task columns: ``<task>_prob`` = P(class 1) and ``<task>_class`` (``prob >= 0.5``) for a binary
  head ((N,), (N, 1) or two-class (N, 2) outputs); ``<task>_class`` (argmax, 0-based) and
  ``<task>_prob_<c>`` per class for C > 2 classes. Empty CSV cells (``null`` in JSON) are undefined
  values (no mask: no diameter).
- :func:`write_overlay_png`: axial, coronal and sagittal views through the nodule's centre with the
  mask outline (``--png``).

The caller writes into a staging folder that is renamed into place only after every scan
succeeded (:mod:`nodulekit.inference.infer`), so these writers do not need to be atomic.
"""
from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nodulekit.inference.inputs import Scan
from nodulekit.inference.nodules import NodulePrediction

#: First columns of results.csv; task columns follow, then :data:`MEASURE_COLUMNS`.
ID_COLUMNS = ("series_uid", "patient_id", "scan", "nodule", "source", "x_mm", "y_mm", "z_mm", "input_diameter_mm")
MEASURE_COLUMNS = ("diameter_mm", "volume_mm3", "mask_voxels", "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
                   "mask_distance_mm", "mask_at_patch_edge")
#: Type 2 attributes highdicom copies from the source images; absent ones are set empty.
_TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                        "ReferringPhysicianName", "AccessionNumber", "StudyID")


# -- masks -----------------------------------------------------------------------------------------
def label_image(labels_zyx: np.ndarray, scan: Scan) -> Any:
    """The label map as a SimpleITK image in the scan's own (source) geometry."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(labels_zyx))
    image.SetSpacing(tuple(float(v) for v in scan.spacing_xyz_mm))
    image.SetOrigin(tuple(float(v) for v in scan.origin_xyz_mm))
    image.SetDirection(tuple(float(v) for v in scan.direction.reshape(-1)))
    if scan.reoriented_from:
        image = sitk.DICOMOrient(image, scan.reoriented_from)
    source = scan.source_geometry
    if tuple(image.GetSize()) != tuple(source.size_xyz) or not np.allclose(image.GetOrigin(), source.origin_xyz_mm,
                                                                           atol=1e-3):
        raise RuntimeError(f"label map geometry {image.GetSize()} / {image.GetOrigin()} does not match the scan's "
                           f"{source.size_xyz} / {source.origin_xyz_mm}")
    source.apply(image)  # bit-exact copy of the source's spacing, origin and direction
    return image


def write_label_nifti(path: Path, labels_zyx: np.ndarray, scan: Scan) -> Path:
    """Write the label map (nodule i = i) as compressed NIfTI (``.nii.gz``) in the scan's geometry."""
    import SimpleITK as sitk

    sitk.WriteImage(label_image(labels_zyx, scan), str(path), useCompression=True)
    return Path(path)


def write_dicom_seg(path: Path, labels_zyx: np.ndarray, scan: Scan, segment_labels: Sequence[str], *,
                    description: str, software_version: str) -> Path:
    """Write a DICOM-SEG of the label map over the scan's source series (see the module docstring).

    ``segment_labels[i - 1]``: the name of nodule i's segment (every nodule gets one, empty or not).
    """
    import highdicom as hd
    import pydicom
    from pydicom.uid import generate_uid

    if scan.ref.kind != "dicom" or len(scan.files) != labels_zyx.shape[0]:
        raise ValueError("a DICOM-SEG needs the DICOM source slices of the label map")
    sources = []
    for file in scan.files:
        ds = pydicom.dcmread(file, stop_before_pixels=True)
        for keyword in _TYPE2_PATIENT_STUDY:
            if keyword not in ds:
                setattr(ds, keyword, "")
        sources.append(ds)
    algorithm = hd.AlgorithmIdentificationSequence(
        name="nodulekit", version=software_version,
        family=hd.sr.CodedConcept("123109", "DCM", "Artificial Intelligence"))
    segments = [hd.seg.SegmentDescription(
        segment_number=i, segment_label=label[:64],
        segmented_property_category=hd.sr.CodedConcept("49755003", "SCT", "Morphologically abnormal structure"),
        segmented_property_type=hd.sr.CodedConcept("27925004", "SCT", "Nodule"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm)
        for i, label in enumerate(segment_labels, start=1)]
    with warnings.catch_warnings(), _quiet_logger("highdicom"):
        # single-component person names; "Encoding an empty image ..." when no nodule has a mask
        # (results.csv and the CLI already say so per nodule)
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=np.ascontiguousarray(labels_zyx),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=segments,
            series_instance_uid=generate_uid(), series_number=9000, sop_instance_uid=generate_uid(),
            instance_number=1, manufacturer="nodulekit", manufacturer_model_name="nodulekit infer",
            software_versions=software_version, device_serial_number="none",
            series_description=description[:64], content_label="NODULES")
    seg.save_as(str(path))
    return Path(path)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    """Only errors from the logger ``name`` (and its children) inside the block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


# -- tables ----------------------------------------------------------------------------------------
def task_columns(task: str, value: Any) -> dict[str, Any]:
    """The CSV columns of one head's output for one nodule (module docstring)."""
    v = np.asarray(value, dtype=np.float64).reshape(-1)
    if v.size == 0:
        return {}
    if v.size == 1 or v.size == 2:
        p = float(v[-1])
        return {f"{task}_prob": p, f"{task}_class": (int(p >= 0.5) if v.size == 1 else int(np.argmax(v)))
                if math.isfinite(p) else None}
    out: dict[str, Any] = {f"{task}_class": int(np.argmax(v)) if np.all(np.isfinite(v)) else None}
    out.update({f"{task}_prob_{c}": float(p) for c, p in enumerate(v)})
    return out


def result_row(scan: Scan, nodule: NodulePrediction) -> dict[str, Any]:
    """One row of results.csv / results.json for ``nodule`` of ``scan``."""
    x, y, z = nodule.location.xyz_mm
    row: dict[str, Any] = {"series_uid": scan.ref.series_uid, "patient_id": scan.patient_id, "scan": scan.ref.name,
                           "nodule": nodule.index, "source": nodule.location.source, "x_mm": x, "y_mm": y, "z_mm": z,
                           "input_diameter_mm": nodule.location.diameter_mm}
    for task in sorted(nodule.class_prob):
        row.update(task_columns(task, nodule.class_prob[task]))
    for column in MEASURE_COLUMNS:
        row[column] = nodule.measures.get(column)
    return row


def table_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """ID columns, task columns (sorted, in first-seen order per task), measure columns."""
    middle: dict[str, None] = {}
    for row in rows:
        middle.update((k, None) for k in row if k not in ID_COLUMNS and k not in MEASURE_COLUMNS)
    return [*ID_COLUMNS, *middle, *MEASURE_COLUMNS]


def _cell(value: Any) -> Any:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def write_results_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=table_columns(rows), restval="", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(v) for k, v in row.items()})
    return Path(path)


def jsonable(value: Any) -> Any:
    """``value`` with numpy types as Python ones and NaN / inf as None (strict JSON)."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_results_json(path: Path, document: Mapping[str, Any]) -> Path:
    Path(path).write_text(json.dumps(jsonable(document), indent=2, allow_nan=False) + "\n")
    return Path(path)


# -- PNG overlays ----------------------------------------------------------------------------------
def write_overlay_png(path: Path, scan: Scan, nodule: NodulePrediction, labels_zyx: np.ndarray | None,
                      title: str, *, window: tuple[float, float] = (-1000.0, 400.0)) -> Path:
    """Axial, coronal and sagittal views through the nodule's centre (lung window), the mask outlined.

    Field of view: 2.5 x the predicted (else given, else 16 mm) diameter, at least 32 mm.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    grid = scan.grid
    spacing = np.asarray(grid.spacing_zyx_mm)
    shape = np.asarray(grid.shape_zyx)
    centre = np.clip(np.round(grid.mm_to_index(nodule.centre_zyx_mm)).astype(int), 0, shape - 1)
    diameter = nodule.measures.get("diameter_mm") or nodule.location.diameter_mm or 16.0
    if not math.isfinite(diameter):
        diameter = nodule.location.diameter_mm or 16.0
    half = np.maximum(np.round(max(32.0, 2.5 * diameter) / 2 / spacing).astype(int), 1)
    lo, hi = np.maximum(centre - half, 0), np.minimum(centre + half + 1, shape)
    hu = scan.hu_zyx
    mask = None if labels_zyx is None else labels_zyx == nodule.index
    views = [("axial", (centre[0], slice(lo[1], hi[1]), slice(lo[2], hi[2])), spacing[1] / spacing[2]),
             ("coronal", (slice(lo[0], hi[0]), centre[1], slice(lo[2], hi[2])), spacing[0] / spacing[2]),
             ("sagittal", (slice(lo[0], hi[0]), slice(lo[1], hi[1]), centre[2]), spacing[0] / spacing[1])]
    fig = Figure(figsize=(9.0, 3.4), dpi=90)
    FigureCanvasAgg(fig)
    for i, (name, index, aspect) in enumerate(views):
        ax = fig.add_subplot(1, 3, i + 1)
        image = np.asarray(hu[index], dtype=np.float32)
        if name != "axial":
            image = image[::-1]  # head up
        ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
        if mask is not None:
            m = mask[index][::-1] if name != "axial" else mask[index]
            if m.any() and min(m.shape) > 1:
                ax.contour(m.astype(np.float32), levels=[0.5], colors=["#ff3030"], linewidths=1.0)
        ax.set_title(name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(title, fontsize=8)
    fig.savefig(path)
    return Path(path)
