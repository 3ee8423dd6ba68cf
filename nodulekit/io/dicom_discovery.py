"""Find CT series on disk and the LIDC read files of each, reading headers only.

Layouts (LIDC-FACTS 2.1): the current NBIA "descriptive" folders, the older UID-named folders,
or everything in one folder all work, because files are grouped by the SeriesInstanceUID in
their headers, never by folder or file name. Files and series that are not an ingestible axial
CT scan, and XML files that are not CT read files, are skipped with a reason. Each
:class:`SeriesFiles` found is loaded by :func:`nodulekit.io.dicom_series.load_series`.
"""
from __future__ import annotations

import fnmatch
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nodulekit.errors import InputFileError
from nodulekit.io.dicom_header import FileHeader, read_file_header
from nodulekit.io.lidc_xml import CT_ROOT, Skip, read_xml_header

#: Normal z component below which a series is not axial enough to ingest (about 25 degrees).
_MIN_AXIAL_COS = 0.9
#: Series with at most this many slices and a non-axial orientation are taken as localizers.
_LOCALIZER_MAX_SLICES = 3
_PATIENT_FOLDER = re.compile(r"^LIDC-IDRI-\d{4}$")


@dataclass
class SeriesFiles:
    """The files of one series found by :func:`discover_series`.

    ``files``: the DICOM files (sorted by path; their order means nothing). ``xml_files``: LIDC
    CT read files whose ``SeriesInstanceUid`` is this series (sorted). ``mixed_with``: UIDs of
    other series whose files share a folder with this one. ``headers``: the header discovery
    read from each file (path -> :class:`~nodulekit.io.dicom_header.FileHeader`, about 0.5 kB
    each when pickled); ``load_series`` uses one only while its file's size and mtime are
    unchanged, and reads files missing from it.
    """

    series_uid: str
    study_uid: str
    patient_id: str
    files: list[Path]
    xml_files: list[Path] = field(default_factory=list)
    mixed_with: list[str] = field(default_factory=list)
    headers: dict[Path, FileHeader] | None = field(default=None, repr=False)


@dataclass
class Discovery:
    """Result of :func:`discover_series`: CT series (sorted by patient id, series UID) and skips."""

    series: list[SeriesFiles]
    skipped: list[Skip]


def slice_normal(orientation: tuple[float, ...] | list[float]) -> np.ndarray:
    """Slice normal = row cosine x column cosine (ImageOrientationPatient, LIDC-FACTS 2.2)."""
    o = np.asarray(orientation, dtype=np.float64)
    return np.cross(o[:3], o[3:6])


def _read_header(path: Path) -> FileHeader | Skip:
    try:
        header = read_file_header(path)
    except Exception as exc:  # noqa: BLE001 - any header failure is a skip with its reason
        from pydicom.errors import InvalidDicomError  # (pydicom is imported only when needed)

        if isinstance(exc, InvalidDicomError):
            return Skip(str(path), "not a DICOM file (no DICM preamble)")
        return Skip(str(path), f"unreadable DICOM header: {type(exc).__name__}: {exc}")
    if not header.series_uid:
        return Skip(str(path), "DICOM file without SeriesInstanceUID")
    return header


def _wanted(patient_id: str, patients: list[str] | None) -> bool:
    return patients is None or any(fnmatch.fnmatchcase(patient_id, p) for p in patients)


def _walk(root: Path, patients: list[str] | None) -> tuple[list[Path], list[Path]]:
    """All non-hidden files under ``root`` (sorted), split into DICOM candidates and .xml files.

    Hidden files and folders (``._*`` AppleDouble files, ``.tmp`` files) are ignored. With a
    ``patients`` filter, folders named like a patient (``LIDC-IDRI-0001``) that match no pattern
    are not entered (the headers' PatientID is still checked).
    """
    dicoms: list[Path] = []
    xmls: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(
            d for d in dirnames
            if not d.startswith(".") and not (patients is not None and _PATIENT_FOLDER.match(d)
                                              and not _wanted(d, patients))
        )
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            path = Path(dirpath) / name
            (xmls if name.lower().endswith(".xml") else dicoms).append(path)
    return dicoms, xmls


def _series_skip_reason(headers: list[FileHeader]) -> str | None:
    """Why a group of files of one series is not an ingestible CT scan, or None."""
    modalities = Counter(h.modality for h in headers)
    modality = modalities.most_common(1)[0][0]
    if modality != "CT":
        kind = " (radiograph)" if modality in ("CR", "DX") else ""
        return f"modality {modality or 'missing'}{kind}, not CT"
    orientations = Counter(h.orientation for h in headers if h.orientation is not None)
    if not orientations:
        return "no ImageOrientationPatient"
    normal = slice_normal(orientations.most_common(1)[0][0])
    if abs(normal[2]) < _MIN_AXIAL_COS:
        if len(headers) <= _LOCALIZER_MAX_SLICES:
            return f"localizer/scout: {len(headers)} non-axial slice(s)"
        return f"non-axial orientation (normal {np.round(normal, 3).tolist()})"
    return None


def discover_series(root: Path, patients: list[str] | None = None) -> Discovery:
    """Find the CT series and their LIDC read files under ``root``, in any folder layout.

    Reads DICOM headers only and groups files by SeriesInstanceUID. ``patients``: PatientIDs or
    fnmatch patterns (``LIDC-IDRI-000*``); None keeps all. Skipped, each with a reason: files that
    are not DICOM or have an unreadable header, ``LOCALIZER`` images, series that are not CT
    (CR/DX radiographs), non-axial series (few slices: localizer/scout), XML files whose root is
    not ``LidcReadMessage`` (LIDC-FACTS 1.2), malformed XML, and CT read files whose series was
    not found. Hidden files are ignored. Order: patient id, then series UID.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(root, "not a folder")
    dicom_paths, xml_paths = _walk(root, patients)
    skipped: list[Skip] = []
    groups: dict[str, list[FileHeader]] = defaultdict(list)
    folder_series: dict[Path, set[str]] = defaultdict(set)
    for path in dicom_paths:
        header = _read_header(path)
        if isinstance(header, Skip):
            skipped.append(header)
            continue
        folder_series[path.parent].add(header.series_uid)
        if not _wanted(header.patient_id, patients):
            continue
        if any("LOCALIZER" in t.upper() for t in header.image_type):
            skipped.append(Skip(str(path), "localizer/scout image (ImageType LOCALIZER)"))
            continue
        groups[header.series_uid].append(header)

    series: list[SeriesFiles] = []
    for uid, headers in groups.items():
        reason = _series_skip_reason(headers)
        if reason is not None:
            folders = sorted({str(h.path.parent) for h in headers})
            skipped.append(Skip(", ".join(folders), f"series {uid} ({len(headers)} files): {reason}"))
            continue
        folders = {h.path.parent for h in headers}
        others = sorted(set().union(*(folder_series[f] for f in folders)) - {uid})
        first = headers[0]
        series.append(SeriesFiles(
            series_uid=uid,
            study_uid=Counter(h.study_uid for h in headers).most_common(1)[0][0] or first.study_uid,
            patient_id=Counter(h.patient_id for h in headers).most_common(1)[0][0],
            files=sorted(h.path for h in headers),
            mixed_with=others,
            headers={h.path: h for h in headers},
        ))
    series.sort(key=lambda s: (s.patient_id, s.series_uid))

    by_uid = {s.series_uid: s for s in series}
    for path in xml_paths:
        try:
            header = read_xml_header(path)
        except InputFileError as exc:
            skipped.append(Skip(str(path), exc.problem))
            continue
        if header.root_tag != CT_ROOT:
            skipped.append(Skip(str(path), f"root element is {header.root_tag}, not {CT_ROOT}: "
                                           "not a CT read file (LIDC-FACTS 1.2)"))
        elif header.series_uid in by_uid:
            by_uid[header.series_uid].xml_files.append(path)
        elif patients is None:
            skipped.append(Skip(str(path), f"no CT series with SeriesInstanceUid {header.series_uid} "
                                           "was found"))
    for s in series:
        s.xml_files.sort()
    skipped.sort(key=lambda s: s.path)
    return Discovery(series=series, skipped=skipped)
