"""Inputs of ``nodulekit infer``: the scans, and where their nodules are.

**Scans** (:func:`find_scans`, then :func:`load_scan` one at a time):

- a DICOM series folder, or a folder holding many series in any layout (every CT series found by
  :func:`nodulekit.io.dicom_discovery.discover_series` is a scan; localizers, radiographs and
  non-DICOM files are skipped), assembled by :func:`nodulekit.io.dicom_series.load_series`;
- a NIfTI / NRRD / MetaImage file (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``),
  or a folder of them, read with SimpleITK. The values must be HU. The scan's id is the file
  name without its suffix (LUNA16 names its ``.mhd`` files by seriesuid).

**Coordinates** are world millimetres (x, y, z) in the scan's patient frame: DICOM's LPS, which is
also what SimpleITK reports for every image format (it converts a NIfTI's RAS on reading). A scan
is sampled along its own voxel axes: a :class:`Scan` works in its *grid frame*, where voxel
``(k, j, i)`` (z, y, x) sits at ``origin + (k, j, i) x spacing`` (a :class:`~nodulekit.patches.
resample.Grid`, what the crop stage uses). For LIDC scans (identity direction) the grid frame is
the world frame. Image files whose axes are flipped or permuted (a NIfTI in RAS order) are first
reoriented to LPS (:func:`SimpleITK.DICOMOrient`, exact), so patches look like the DICOM patches
the models were trained on; masks are written back in the file's own orientation. A point is
inside a scan when it lies within the outer voxel faces (half a voxel past the edge centres).

**Nodule locations** (:class:`NoduleSpec`):

- ``--at X,Y,Z``: one point (the input must hold one scan);
- a CSV in the LUNA16 format, ``seriesuid,coordX,coordY,coordZ[,diameter_mm]`` (header optional;
  LIDC-FACTS 4): the rows of each scan's series UID (for image files: the file's id); a row with an
  empty seriesuid applies to every scan; a diameter <= 0 (LUNA16 writes -1) counts as unknown;
- a LIDC read file (XML): its series' outlined nodules (reads of >= 3 mm nodules; small-nodule and
  non-nodule marks are left out), grouped as ``consensus-label`` groups them
  (:func:`nodulekit.labels.nodules.scan_nodules`), each at its 50 % consensus centroid (the centre
  the crop stage uses; the centroid of all the reads' voxels when the consensus is empty). The
  contours are keyed to the DICOM slices, so an XML needs the DICOM series as input.
"""
from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nodulekit.errors import InputFileError, NodulekitError
from nodulekit.patches.resample import Grid

#: Image files SimpleITK reads for ``--input`` (lower-case suffixes, longest first).
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Direction cosines closer than this to the identity count as axis-aligned (no reorientation).
_AXIS_TOL = 1e-4


def image_suffix(path: Path) -> str | None:
    """The image suffix of ``path`` (``.nii.gz``, ...) or None."""
    name = path.name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s)), None)


# -- scans -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ScanRef:
    """A scan found under ``--input``, not yet loaded.

    ``name``: unique and file-name safe (the series UID, or the image file's id), used for output
    names. ``series_uid``: the DICOM SeriesInstanceUID, or the image file's id. ``kind``: ``dicom``
    or ``image``. ``path``: the series' folder or the image file. ``series``: the discovered files
    (DICOM only).
    """

    name: str
    series_uid: str
    kind: str
    path: Path
    series: Any = field(default=None, repr=False, compare=False)


@dataclass
class ImageGeometry:
    """A SimpleITK image's geometry, x, y, z order (size, spacing mm, origin mm, direction row-major)."""

    size_xyz: tuple[int, int, int]
    spacing_xyz_mm: tuple[float, float, float]
    origin_xyz_mm: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, image: Any) -> "ImageGeometry":
        return cls(tuple(int(v) for v in image.GetSize()), tuple(float(v) for v in image.GetSpacing()),
                   tuple(float(v) for v in image.GetOrigin()), tuple(float(v) for v in image.GetDirection()))

    def apply(self, image: Any) -> None:
        image.SetSpacing(self.spacing_xyz_mm)
        image.SetOrigin(self.origin_xyz_mm)
        image.SetDirection(self.direction)


@dataclass
class Scan:
    """One loaded scan: HU on its working grid, and how that grid sits in the world.

    ``hu_zyx``: HU (int16 for DICOM, the file's type for images), axes z, y, x of the working grid.
    ``grid``: the working grid in the grid frame (module docstring); its origin is the world origin
    of voxel (0, 0, 0), reversed. ``direction``: (3, 3) world direction of the working index axes
    (columns x, y, z). ``source_geometry``: the input's own geometry (masks are written in it);
    ``reoriented_from``: the input's orientation code when the working array was reoriented to LPS.
    DICOM only: ``sop_uids``, ``z_positions_mm`` and ``files`` per slice (working order).
    """

    ref: ScanRef
    hu_zyx: np.ndarray
    grid: Grid
    direction: np.ndarray
    source_geometry: ImageGeometry
    reoriented_from: str | None = None
    patient_id: str = ""
    study_uid: str = ""
    sop_uids: list[str] = field(default_factory=list)
    z_positions_mm: np.ndarray | None = None
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    slice_thickness_mm: float | None = None

    @property
    def origin_xyz_mm(self) -> np.ndarray:
        return np.asarray(self.grid.origin_zyx_mm[::-1], dtype=np.float64)

    @property
    def spacing_xyz_mm(self) -> np.ndarray:
        return np.asarray(self.grid.spacing_zyx_mm[::-1], dtype=np.float64)

    def index_zyx(self, xyz_mm: Sequence[float]) -> np.ndarray:
        """Continuous voxel index (z, y, x) of the world point ``xyz_mm``."""
        offset = np.asarray(xyz_mm, dtype=np.float64) - self.origin_xyz_mm
        index_xyz = np.linalg.solve(self.direction * self.spacing_xyz_mm[None, :], offset)
        return index_xyz[::-1]

    def grid_mm(self, xyz_mm: Sequence[float]) -> np.ndarray:
        """The world point ``xyz_mm`` in the grid frame, (z, y, x) mm."""
        return self.grid.index_to_mm(self.index_zyx(xyz_mm))

    def world_mm(self, grid_zyx_mm: Sequence[float]) -> np.ndarray:
        """A grid-frame point (z, y, x) mm as a world point (x, y, z) mm."""
        index_xyz = self.grid.mm_to_index(grid_zyx_mm)[::-1]
        return self.origin_xyz_mm + self.direction @ (index_xyz * self.spacing_xyz_mm)

    def contains(self, xyz_mm: Sequence[float]) -> bool:
        """Whether the point lies within the scan's outer voxel faces."""
        index = self.index_zyx(xyz_mm)
        shape = np.asarray(self.grid.shape_zyx)
        return bool(np.all(index >= -0.5 - 1e-6) and np.all(index <= shape - 0.5 + 1e-6))

    def extent_text(self) -> str:
        """The scan's world extent (outer voxel faces), e.g. ``x -180..180, y ..., z ... mm``."""
        shape = np.asarray(self.grid.shape_zyx, dtype=np.float64)
        corners = np.array([[a, b, c] for a in (-0.5, shape[0] - 0.5) for b in (-0.5, shape[1] - 0.5)
                            for c in (-0.5, shape[2] - 0.5)])
        world = np.array([self.world_mm(self.grid.index_to_mm(c)) for c in corners])
        lo, hi = world.min(axis=0), world.max(axis=0)
        return ", ".join(f"{a} {lo[i]:.1f}..{hi[i]:.1f}" for i, a in enumerate("xyz")) + " mm"


def find_scans(input_path: Path, exclude: Sequence[Path] = ()) -> list[ScanRef]:
    """The scans under ``input_path`` (a series folder, a folder of series or image files, or an
    image file), in a stable order. Reads headers only. One clear error when there is none.

    ``exclude``: folders whose image files are not scans (infer's own ``--out`` with its masks).
    """
    from nodulekit.io.dicom_discovery import discover_series

    path = Path(input_path)
    if not path.exists():
        raise InputFileError(path, "not found")
    if path.is_file():
        if image_suffix(path) is None:
            raise InputFileError(path, "--input must be a DICOM series folder (not one of its files), a folder of "
                                       f"series, or an image file ({', '.join(IMAGE_SUFFIXES)})")
        return _unique([_image_ref(path)])
    skip = [Path(e).resolve() for e in exclude]
    images = sorted(p for p in _walk_files(path) if image_suffix(p) is not None
                    and not any(p.resolve().is_relative_to(e) for e in skip))
    discovery = discover_series(path)
    refs = [ScanRef(s.series_uid, s.series_uid, "dicom", Path(s.files[0]).parent, s) for s in discovery.series]
    refs += [_image_ref(p) for p in images]
    if not refs:
        skipped = [s for s in discovery.skipped if image_suffix(Path(s.path)) is None]
        example = f"; e.g. {skipped[0].path}: {skipped[0].reason}" if skipped else ""
        raise InputFileError(path, f"no CT series or image file found ({len(skipped)} file(s) skipped{example})")
    return _unique(refs)


def _walk_files(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(Path(dirpath) / f for f in sorted(filenames) if not f.startswith("."))
    return out


def _image_ref(path: Path) -> ScanRef:
    suffix = image_suffix(path) or ""
    stem = path.name[: len(path.name) - len(suffix)]
    return ScanRef(stem, stem, "image", path)


def _unique(refs: list[ScanRef]) -> list[ScanRef]:
    seen: dict[str, int] = {}
    out = []
    for ref in refs:
        n = seen.get(ref.name, 0) + 1
        seen[ref.name] = n
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in ref.name) or "scan"
        out.append(ScanRef(safe if n == 1 else f"{safe}-{n}", ref.series_uid, ref.kind, ref.path, ref.series))
    return out


def load_scan(ref: ScanRef) -> Scan:
    """Read a scan's voxels (DICOM: every slice; image: the file). Errors name the series or file."""
    return _load_dicom(ref) if ref.kind == "dicom" else _load_image(ref)


def _load_dicom(ref: ScanRef) -> Scan:
    from nodulekit.io.dicom_series import load_series

    volume = load_series(ref.series)
    direction = np.asarray(volume.direction_xyz, dtype=np.float64).reshape(3, 3)
    grid = Grid(tuple(float(v) for v in volume.origin_xyz_mm[::-1]),  # type: ignore[arg-type]
                tuple(float(v) for v in volume.spacing_zyx_mm),  # type: ignore[arg-type]
                tuple(int(v) for v in volume.hu_zyx.shape))  # type: ignore[arg-type]
    geometry = ImageGeometry(tuple(int(v) for v in volume.hu_zyx.shape[::-1]),  # type: ignore[arg-type]
                             tuple(float(v) for v in volume.spacing_zyx_mm[::-1]),  # type: ignore[arg-type]
                             tuple(float(v) for v in volume.origin_xyz_mm),  # type: ignore[arg-type]
                             tuple(float(v) for v in volume.direction_xyz))
    notes = [f"{p.code}: {p.detail}" for p in volume.problems]
    return Scan(ref, volume.hu_zyx, grid, direction, geometry, None, volume.patient_id, volume.study_uid,
                list(volume.sop_uids), np.asarray(volume.z_positions_mm, dtype=np.float64), list(volume.files_used),
                notes, volume.slice_thickness_mm)


def _load_image(ref: ScanRef) -> Scan:
    import SimpleITK as sitk

    try:
        image = sitk.ReadImage(str(ref.path))
    except RuntimeError as error:
        first = next((line.strip() for line in str(error).splitlines() if line.strip()), "unreadable")
        raise InputFileError(ref.path, f"not a readable image (SimpleITK: {first[:200]})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise InputFileError(ref.path, f"need a 3D single-channel CT volume, got {image.GetDimension()}D with "
                                       f"{image.GetNumberOfComponentsPerPixel()} component(s) per voxel")
    source = ImageGeometry.of(image)
    reoriented = None
    if not np.allclose(np.asarray(source.direction), np.eye(3).reshape(-1), atol=_AXIS_TOL):
        code = sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(source.direction)
        if code != "LPS":
            image = sitk.DICOMOrient(image, "LPS")
            reoriented = code
    hu = sitk.GetArrayFromImage(image)
    geometry = ImageGeometry.of(image)
    grid = Grid(tuple(geometry.origin_xyz_mm[::-1]), tuple(geometry.spacing_xyz_mm[::-1]),  # type: ignore[arg-type]
                tuple(int(v) for v in hu.shape))  # type: ignore[arg-type]
    notes = []
    if hu.size and float(hu.min()) >= 0:
        notes.append(f"values {float(hu.min()):g}..{float(hu.max()):g}: expected HU (air near -1000); "
                     "convert the image to HU for meaningful predictions")
    if reoriented:
        notes.append(f"reoriented from {reoriented} to LPS for the models; masks are written in {reoriented}")
    return Scan(ref, hu, grid, np.asarray(geometry.direction, dtype=np.float64).reshape(3, 3), source, reoriented,
                notes=notes)


# -- nodule locations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class NoduleLocation:
    """One nodule to analyse: world centre (x, y, z) mm, its diameter when known, and its origin
    (``source``: ``--at``, ``FILE line N`` or ``FILE nodule N``)."""

    xyz_mm: tuple[float, float, float]
    diameter_mm: float | None = None
    source: str = ""
    series_uid: str | None = None


@dataclass(frozen=True)
class NoduleSpec:
    """Where the nodules are: ``kind`` ``at`` (one point), ``csv`` (LUNA16 rows) or ``xml`` (LIDC reads)."""

    kind: str
    path: Path | None = None
    points: tuple[NoduleLocation, ...] = ()
    reads: Any = None

    @classmethod
    def parse(cls, nodules: Path | str | None = None, at: str | Sequence[float] | None = None) -> "NoduleSpec":
        """From the CLI's ``--nodules CSV|XML`` or ``--at X,Y,Z`` (exactly one of them)."""
        if (nodules is None) == (at is None):
            raise NodulekitError("give the nodule locations: --nodules CSV|XML or --at X,Y,Z (one of them)")
        if at is not None:
            return cls.at_point(at)
        path = Path(nodules)  # type: ignore[arg-type]
        if not path.is_file():
            raise InputFileError(path, "not found" if not path.exists() else "not a file")
        return cls.from_xml(path) if path.suffix.lower() == ".xml" else cls.from_csv(path)

    @classmethod
    def at_point(cls, at: str | Sequence[float]) -> "NoduleSpec":
        if isinstance(at, str):
            parts = [p for p in at.replace(",", " ").split()]
            try:
                values = [float(p) for p in parts]
            except ValueError:
                values = []
        else:
            values = [float(v) for v in at]
        if len(values) != 3 or not all(math.isfinite(v) for v in values):
            raise NodulekitError(f"--at {at!r}: give three numbers X,Y,Z in mm (world coordinates), "
                                 "e.g. --at -56.1,72.3,-140")
        return cls("at", points=(NoduleLocation((values[0], values[1], values[2]), None, "--at"),))

    @classmethod
    def from_csv(cls, path: Path) -> "NoduleSpec":
        """LUNA16 rows ``seriesuid,coordX,coordY,coordZ[,diameter_mm]``; a header row is optional."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as error:
            raise InputFileError(path, f"unreadable ({error})") from None
        rows = [(n, r) for n, r in enumerate(csv.reader(text.splitlines()), start=1)
                if r and any(c.strip() for c in r) and not r[0].lstrip().startswith("#")]
        if not rows:
            raise InputFileError(path, "no rows (expected seriesuid,coordX,coordY,coordZ[,diameter_mm])")
        columns = {"seriesuid": 0, "coordx": 1, "coordy": 2, "coordz": 3, "diameter_mm": 4}
        first = [c.strip() for c in rows[0][1]]
        if len(first) > 1 and not _is_number(first[1]):
            header = {name.lower(): i for i, name in enumerate(first)}
            missing = [c for c in ("seriesuid", "coordx", "coordy", "coordz") if c not in header]
            if missing:
                raise InputFileError(path, f"header lacks {', '.join(missing)} (LUNA16 columns: "
                                           "seriesuid,coordX,coordY,coordZ[,diameter_mm])")
            columns = {k: header.get(k, -1) for k in columns}
            rows = rows[1:]
        points = []
        for n, row in rows:
            cells = [c.strip() for c in row]
            where = f"{path.name} line {n}"

            def cell(key: str) -> str:
                i = columns[key]
                return cells[i] if 0 <= i < len(cells) else ""
            try:
                xyz = tuple(float(cell(k)) for k in ("coordx", "coordy", "coordz"))
                diameter = float(cell("diameter_mm")) if cell("diameter_mm") else None
            except ValueError:
                raise InputFileError(path, f"line {n}: coordX, coordY, coordZ (and diameter_mm) must be numbers, "
                                           f"got {','.join(cells)!r}") from None
            if not all(math.isfinite(v) for v in xyz):
                raise InputFileError(path, f"line {n}: coordinates must be finite numbers")
            if diameter is not None and not (math.isfinite(diameter) and diameter > 0):
                diameter = None
            points.append(NoduleLocation(xyz, diameter, where, cell("seriesuid") or None))  # type: ignore[arg-type]
        if not points:
            raise InputFileError(path, "no nodule rows after the header")
        return cls("csv", path=path, points=tuple(points))

    @classmethod
    def from_xml(cls, path: Path) -> "NoduleSpec":
        from nodulekit.io.lidc_xml import Skip, parse_lidc_xml

        reads = parse_lidc_xml(Path(path))
        if isinstance(reads, Skip):
            raise InputFileError(path, reads.reason)
        if not reads.nodule_reads:
            raise InputFileError(path, "no outlined nodule (unblindedReadNodule with contours and characteristics)")
        return cls("xml", path=Path(path), reads=reads)

    def describe(self) -> str:
        if self.kind == "at":
            return "--at " + ",".join(f"{v:g}" for v in self.points[0].xyz_mm)
        return str(self.path)

    def wants(self, ref: ScanRef) -> bool:
        """Whether ``ref`` may have nodules (checked before loading the scan)."""
        if self.kind == "at":
            return True
        if self.kind == "xml":
            return ref.kind != "dicom" or ref.series_uid == self.reads.series_uid
        return any(p.series_uid in (None, ref.series_uid) for p in self.points)

    def select(self, refs: list[ScanRef]) -> list[ScanRef]:
        """The scans to process; a clear error when the locations name none of them."""
        if self.kind == "at" and len(refs) > 1:
            raise NodulekitError(f"--at gives one point, but the input holds {len(refs)} scans; give one scan, or a "
                                 "CSV with a seriesuid per row (--nodules)")
        wanted = [r for r in refs if self.wants(r)]
        if self.kind == "xml" and not any(r.kind == "dicom" for r in wanted):
            raise NodulekitError(f"{self.path}: its contours are keyed to DICOM slices; give the DICOM series "
                                 f"{self.reads.series_uid} as --input")
        if not wanted:
            names = ", ".join(r.series_uid for r in refs[:3]) + (" ..." if len(refs) > 3 else "")
            raise NodulekitError(f"{self.describe()}: no nodule for the input's scan(s) ({names}); the CSV's "
                                 "seriesuid must be the DICOM SeriesInstanceUID or the image file's name without "
                                 "suffix")
        return wanted

    def locate(self, scan: Scan) -> list[NoduleLocation]:
        """The nodules of ``scan`` (world mm), in input order."""
        if self.kind == "at":
            return list(self.points)
        if self.kind == "csv":
            return [p for p in self.points if p.series_uid in (None, scan.ref.series_uid)]
        return xml_locations(self.reads, scan, str(self.path))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def xml_locations(reads: Any, scan: Scan, source: str) -> list[NoduleLocation]:
    """The outlined nodules of LIDC ``reads`` in ``scan`` (a DICOM scan): consensus centroids (world mm)."""
    from nodulekit.io.read_matching import assign_slices
    from nodulekit.io.stores import ScanAnnotations
    from nodulekit.labels.nodules import scan_nodules

    if scan.ref.kind != "dicom" or scan.z_positions_mm is None:
        raise NodulekitError(f"{source}: its contours are keyed to DICOM slices; give the DICOM series as --input")
    assignment = assign_slices(reads, scan.sop_uids, scan.z_positions_mm)
    contour_slice = np.array([-1 if k is None else k for row in assignment.slice_index for k in row], dtype=np.int32)
    geometry = {"shape_zyx": np.asarray(scan.grid.shape_zyx), "spacing_zyx_mm": np.asarray(scan.grid.spacing_zyx_mm),
                "origin_xyz_mm": scan.origin_xyz_mm, "z_positions_mm": scan.z_positions_mm,
                "slice_thickness_mm": scan.slice_thickness_mm or np.nan, "has_images": True}
    found = scan_nodules(ScanAnnotations(scan.patient_id, reads, contour_slice, geometry))
    locations = []
    for record, row in zip(found.records, found.rows):
        xyz = np.array([row["centroid_x_mm"], row["centroid_y_mm"], row["centroid_z_mm"]], dtype=np.float64)
        if not np.all(np.isfinite(xyz)):  # empty consensus: the centroid of every read's voxels
            index = np.argwhere(record.agreement > 0).mean(axis=0) + np.asarray(record.bbox_zyx)[:, 0]
            xyz = scan.world_mm(scan.grid.index_to_mm(index))
        diameter = float(row["diameter_mm"]) if np.isfinite(row["diameter_mm"]) and row["diameter_mm"] > 0 else None
        locations.append(NoduleLocation((float(xyz[0]), float(xyz[1]), float(xyz[2])), diameter,
                                        f"{Path(source).name} nodule {row['nodule_id']} ({row['n_reads']} reads)",
                                        reads.series_uid))
    if not locations:
        raise NodulekitError(f"{source}: no outlined nodule matches a slice of series {scan.ref.series_uid}")
    return locations


def check_inside(scan: Scan, locations: Sequence[NoduleLocation]) -> None:
    """One clear error for the first location outside the scan."""
    for loc in locations:
        if not scan.contains(loc.xyz_mm):
            x, y, z = loc.xyz_mm
            raise NodulekitError(f"{loc.source}: ({x:g}, {y:g}, {z:g}) mm is outside scan {scan.ref.name} "
                                 f"({scan.extent_text()}); coordinates are world mm (LUNA16 coordX,coordY,coordZ)")
