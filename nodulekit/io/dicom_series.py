"""Assemble one CT series into an int16 HU volume (z, y, x), reading every slice's pixels.

The series' files come from :func:`nodulekit.io.dicom_discovery.discover_series`. Slices are
ordered by their position along the slice normal (ImagePositionPatient . normal), never by file
name or InstanceNumber, and the z spacing comes from those positions, not from SliceThickness
(LIDC-FACTS 2.3). Problems that still allow a volume (duplicate or missing slices, uneven
spacing, oblique orientation, unreadable or truncated files, mixed series, odd geometry) are
recorded as :class:`Problem` and the volume is built anyway; SimpleITK/GDCM hide several of
them (LIDC-FACTS 6).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from nodulekit.errors import InputFileError
from nodulekit.io.dicom_discovery import SeriesFiles, slice_normal
from nodulekit.io.dicom_header import SliceHeader, file_stamp, read_file_header

ProblemCode = str  # one of PROBLEM_CODES
PROBLEM_CODES = (
    "duplicate_slices",
    "missing_slices",
    "uneven_spacing",
    "non_axial",
    "unreadable_file",
    "truncated_file",
    "mixed_series",
    "inconsistent_geometry",
)


@dataclass(frozen=True)
class Problem:
    """Something wrong with a series that did not stop it from loading (``code``: PROBLEM_CODES)."""

    code: ProblemCode
    detail: str

    def __post_init__(self) -> None:
        if self.code not in PROBLEM_CODES:
            raise ValueError(f"unknown problem code {self.code!r}")


@dataclass
class SeriesVolume:
    """One CT scan as a volume.

    ``hu_zyx``: int16 (n_z, rows, cols), HU, slices ascending along the slice normal (ascending
    IPP z for axial scans). ``spacing_zyx_mm``: z from slice positions (median step), y/x from
    PixelSpacing [row, col]. ``origin_xyz_mm``: ImagePositionPatient (LPS, mm) of slice 0.
    ``direction_xyz``: SimpleITK direction, row-major 3x3 whose columns are the row cosine, the
    column cosine and the slice normal (``image.SetDirection(direction_xyz)``).
    ``z_positions_mm``: IPP z of each slice, (n_z,), in volume order; ``sop_uids`` and
    ``files_used`` likewise.
    """

    hu_zyx: np.ndarray
    spacing_zyx_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction_xyz: tuple[float, ...]
    z_positions_mm: np.ndarray
    sop_uids: list[str]
    patient_id: str
    series_uid: str
    study_uid: str
    slice_thickness_mm: float | None
    problems: list[Problem] = field(default_factory=list)
    files_used: list[str] = field(default_factory=list)

    def problem_codes(self) -> list[str]:
        return sorted({p.code for p in self.problems})


# --------------------------------------------------------------------------------------------
# loading one series
# --------------------------------------------------------------------------------------------

def _native_pixel_location(s: SliceHeader) -> tuple[int | None, int | None]:
    """(offset, length) of the slice's native 16-bit PixelData bytes, or (None, None) to decode
    them with pydicom's ``pixel_array`` (see :func:`nodulekit.io.dicom_header.read_file_header`)."""
    return s.pixel_offset, s.pixel_length


def _slice_headers(series: SeriesFiles, problems: list[Problem]) -> list[SliceHeader]:
    """The slice header of each file of ``series``: the one discovery read while the file is
    unchanged (same size and mtime), else read now. Unreadable files and files of another
    series become problems."""
    slices: list[SliceHeader] = []
    cached = series.headers or {}
    for path in series.files:
        path = Path(path)
        header = cached.get(path)
        try:
            if header is None or header.stamp != file_stamp(path):
                header = read_file_header(path)
        except Exception as exc:  # noqa: BLE001 - any failure names the file
            problems.append(Problem("unreadable_file", f"{path}: {type(exc).__name__}: {exc}"))
            continue
        if header.slice is None:
            problems.append(Problem("unreadable_file", f"{path}: {header.slice_error}"))
        elif header.slice.series_uid != series.series_uid:
            problems.append(Problem("mixed_series", f"{path}: belongs to series {header.slice.series_uid}; "
                                    "dropped"))
        else:
            slices.append(replace(header.slice))  # a copy: load_series sets .position
    return slices


def _read_pixels(s: SliceHeader, slot: np.ndarray, tmp_i32: np.ndarray) -> None:
    """Read slice ``s`` into ``slot`` (int16 (rows, cols), C-contiguous) as HU.

    Fast path: the native PixelData bytes are read straight into ``slot`` and rescaled in
    place. Otherwise ``pixel_array`` decodes them. Raises when the pixel data is short: dcmread
    alone accepts a file truncated inside PixelData (LIDC-FACTS 6). Unused high bits are
    corrected as pydicom and PS3.5 8.1.1 do (sign-extended if signed, masked if unsigned).
    HU = stored * slope + intercept, per slice (LIDC-FACTS 2.2), rounded, clipped to int16.
    """
    offset, length = _native_pixel_location(s)
    if offset is not None:
        with open(s.path, "rb") as fh:
            fh.seek(offset)
            n_read = fh.readinto(slot.reshape(-1).view(np.uint8))
        available = min(n_read, length if length is not None else n_read)
        if available < slot.nbytes:
            raise ValueError(f"pixel data has {available} of {slot.nbytes} bytes")
        raw = slot if s.signed else slot.view(np.uint16)
        if s.bits_stored < 16:
            shift = 16 - s.bits_stored
            np.left_shift(raw, shift, out=raw)
            np.right_shift(raw, shift, out=raw)
    else:
        import pydicom

        raw = pydicom.dcmread(s.path).pixel_array
        if raw.shape != slot.shape:
            raise ValueError(f"pixel array has shape {raw.shape}, expected {slot.shape}")
    lo, hi = np.iinfo(np.int16).min, np.iinfo(np.int16).max
    if s.slope == 1.0 and s.intercept.is_integer():
        intercept = int(s.intercept)
        if raw is slot and intercept == 0:
            return
        if offset is not None and lo <= int(raw.min()) + intercept and int(raw.max()) + intercept <= hi:
            # no clipping needed: add in 16 bits, in place; modulo 2**16 the sum is exact, and as
            # it fits int16, the int16 view of the slot holds the right HU
            np.add(slot.view(np.uint16), np.uint16(intercept % 65536), out=slot.view(np.uint16))
            return
        np.add(raw, np.int32(intercept), out=tmp_i32, casting="unsafe")
        np.clip(tmp_i32, lo, hi, out=tmp_i32)
        np.copyto(slot, tmp_i32, casting="unsafe")
    else:
        hu = raw.astype(np.float32)
        hu *= np.float32(s.slope)
        hu += np.float32(s.intercept)
        np.rint(hu, out=hu)
        np.clip(hu, lo, hi, out=hu)
        np.copyto(slot, hu, casting="unsafe")


def _geometry_key(s: SliceHeader) -> tuple:
    return (s.shape, tuple(round(v, 4) for v in s.orientation), tuple(round(v, 4) for v in s.spacing_rc))


def _keep_consistent(slices: list[SliceHeader], problems: list[Problem]) -> list[SliceHeader]:
    """Drop slices whose Rows/Columns, orientation or PixelSpacing differ from the majority."""
    counts = Counter(_geometry_key(s) for s in slices)
    if len(counts) == 1:
        return slices
    majority = counts.most_common(1)[0][0]
    for s in slices:
        if _geometry_key(s) != majority:
            problems.append(Problem(
                "inconsistent_geometry",
                f"{s.path}: size {s.shape}, orientation {s.orientation}, spacing {s.spacing_rc} differ "
                f"from the series' {majority[0]}, {majority[1]}, {majority[2]}; slice dropped"))
    return [s for s in slices if _geometry_key(s) == majority]


def _duplicates_to_drop(slices: list[SliceHeader], tol_mm: float, problems: list[Problem]) -> set[int]:
    """Indices (into sorted ``slices``) of duplicate positions to drop (LIDC-FACTS 2.3).

    Per position the slice with the lower InstanceNumber is kept, as pylidc does.
    """
    drop: set[int] = set()
    i = 0
    while i < len(slices):
        j = i + 1
        while j < len(slices) and slices[j].position - slices[i].position <= tol_mm:
            j += 1
        group = sorted(range(i, j), key=lambda k: (slices[k].instance_number, str(slices[k].path)))
        if len(group) > 1:
            keep = slices[group[0]]
            drop.update(group[1:])
            dropped = ", ".join(f"{slices[k].path.name} (InstanceNumber {slices[k].instance_number})"
                                for k in group[1:])
            problems.append(Problem(
                "duplicate_slices",
                f"{len(group)} slices at position {keep.position:g} mm: kept {keep.path.name} "
                f"(InstanceNumber {keep.instance_number}), dropped {dropped}"))
        i = j
    return drop


def _spacing_problems(positions: np.ndarray, step: float, problems: list[Problem]) -> None:
    """Record gaps (missing slices) and uneven steps among ``positions`` (ascending, mm)."""
    diffs = np.diff(positions)
    tol = max(0.01, 0.01 * step)
    gaps, uneven = [], []
    for k, d in enumerate(diffs):
        if abs(d - step) <= tol:
            continue
        between = f"{positions[k]:g} -> {positions[k + 1]:g} mm (step {d:g})"
        if d > 1.5 * step:
            gaps.append(f"{between}, about {int(round(d / step)) - 1} missing")
        else:
            uneven.append(between)
    if gaps:
        problems.append(Problem("missing_slices", f"median step {step:g} mm; gaps at " + "; ".join(gaps)))
    if uneven:
        problems.append(Problem("uneven_spacing", f"median step {step:g} mm; other steps at "
                                + "; ".join(uneven)))


def _no_slice_error(series: SeriesFiles, what: str) -> InputFileError:
    folders = sorted({str(Path(p).parent) for p in series.files}) or ["(no files)"]
    return InputFileError(", ".join(folders), f"{what} of series {series.series_uid} "
                                              f"among {len(series.files)} files")


def load_series(series: SeriesFiles) -> SeriesVolume:
    """Read every file of ``series`` (pixel data included) into a :class:`SeriesVolume`.

    Order: ascending position along the slice normal n = row cosine x column cosine, position =
    IPP . n; never file name or InstanceNumber. Spacing z = median position step, not
    SliceThickness (LIDC-FACTS 2.3). Recorded as problems, the volume still being built:
    unreadable files and files truncated inside their pixel data (skipped), files of another
    series (dropped) or other series sharing the folder, slices whose size/orientation/
    PixelSpacing differ from the majority (dropped), duplicate positions (lower InstanceNumber
    kept), gaps and uneven steps, and an orientation other than axial ``[1,0,0,0,1,0]``.
    Raises :class:`InputFileError` naming the folder when no slice can be read.

    Speed: the headers discovery read (``series.headers``) are reused while each file's size
    and mtime are unchanged (others are read here, once, without pixels); then each slice's
    pixel bytes are read straight into the preallocated int16 volume and rescaled in place (in
    16 bits when no value needs clipping, else via one slice-sized int32 temporary), so no
    full-volume float or copy is made on clean series.
    """
    problems: list[Problem] = []
    if series.mixed_with:
        problems.append(Problem("mixed_series", "folder also holds files of series "
                                + ", ".join(series.mixed_with)))
    slices = _slice_headers(series, problems)
    if not slices:
        raise _no_slice_error(series, "no readable CT slice")
    slices = _keep_consistent(slices, problems)

    orientation = slices[0].orientation
    normal = slice_normal(orientation)
    if np.abs(np.asarray(orientation) - (1, 0, 0, 0, 1, 0)).max() > 1e-3:
        problems.append(Problem("non_axial", f"ImageOrientationPatient {list(orientation)} "
                                f"(normal {np.round(normal, 4).tolist()}); volume built along the normal"))
    for s in slices:
        s.position = float(np.dot(s.ipp, normal))
    slices.sort(key=lambda s: (s.position, s.instance_number, str(s.path)))

    rows, cols = slices[0].shape
    volume = np.empty((len(slices), rows, cols), dtype=np.int16)
    tmp_i32 = np.empty((rows, cols), dtype=np.int32)
    readable: list[int] = []
    for k, s in enumerate(slices):
        try:
            _read_pixels(s, volume[k], tmp_i32)
            readable.append(k)
        except Exception as exc:  # noqa: BLE001
            problems.append(Problem("truncated_file", f"{s.path}: pixel data unreadable: "
                                    f"{type(exc).__name__}: {exc}"))
    if not readable:
        raise _no_slice_error(series, "no slice with readable pixel data")
    candidates = [slices[k] for k in readable]
    drop = _duplicates_to_drop(candidates, tol_mm=1e-3, problems=problems)
    keep = [readable[i] for i in range(len(candidates)) if i not in drop]
    if len(keep) != len(slices):
        volume = volume[keep]
        slices = [slices[k] for k in keep]

    positions = np.array([s.position for s in slices])
    if len(slices) > 1:
        step = float(np.median(np.diff(positions)))
        _spacing_problems(positions, step, problems)
    else:
        step = slices[0].thickness or 1.0
    row_spacing, col_spacing = slices[0].spacing_rc
    direction = np.column_stack([orientation[:3], orientation[3:6], normal])
    first = slices[0]
    return SeriesVolume(
        hu_zyx=volume,
        spacing_zyx_mm=(step, row_spacing, col_spacing),
        origin_xyz_mm=first.ipp,
        direction_xyz=tuple(float(v) for v in direction.reshape(-1)),
        z_positions_mm=np.array([s.ipp[2] for s in slices], dtype=np.float64),
        sop_uids=[s.sop_uid for s in slices],
        patient_id=series.patient_id or first.patient_id,
        series_uid=series.series_uid,
        study_uid=series.study_uid or first.study_uid,
        slice_thickness_mm=first.thickness,
        problems=problems,
        files_used=[str(s.path) for s in slices],
    )
