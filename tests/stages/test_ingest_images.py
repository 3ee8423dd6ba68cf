"""``ingest lidc --root`` on the phantom: outputs, skip, resume after kill -9, workers."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest

from nodulekit.io.lidc_xml import parse_lidc_xml
from nodulekit.io.stores import open_volume_store, read_annotation_store
from nodulekit.pipeline import stage_status
from nodulekit.stages.ingest import IngestParams, ingest_lidc

VOLATILE_ATTRS = {"nodulekit_created_utc"}


def h5_digest(path: Path) -> str:
    """A digest of every dataset and attribute (except timestamps) of an HDF5 file."""
    hasher = hashlib.sha256()

    def visit(name: str, obj) -> None:
        hasher.update(name.encode())
        for key in sorted(obj.attrs):
            if key not in VOLATILE_ATTRS:
                hasher.update(f"{key}={obj.attrs[key]!r}".encode())
        if isinstance(obj, h5py.Dataset):
            values = np.asarray(obj[()])
            # string datasets come back as object arrays, whose bytes are pointers
            hasher.update(repr(values.tolist()).encode() if values.dtype == object else values.tobytes())

    with h5py.File(path, "r") as store:
        visit("/", store)
        store.visititems(visit)
    return hasher.hexdigest()


def outputs_digest(stage_dir: Path) -> dict[str, str]:
    digests = {}
    for path in sorted(stage_dir.rglob("*")):
        rel = str(path.relative_to(stage_dir))
        if path.suffix == ".h5":
            digests[rel] = h5_digest(path)
        elif path.name == "summary.json":
            digests[rel] = path.read_text()
        elif path.is_file() and not path.name.startswith("."):
            digests[rel] = "file"
    return digests


@pytest.fixture(scope="module")
def reference_run(tiny_phantom: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("reference")
    ingest_lidc(workdir, IngestParams(root=tiny_phantom))
    return workdir


def test_ingest_outputs(reference_run: Path, tiny_phantom: Path):
    summary = json.loads((reference_run / "ingest" / "summary.json").read_text())
    assert len(summary["scans"]) == 3
    for scan in summary["scans"]:
        store = open_volume_store(reference_run / "ingest" / scan["volume"])
        hu = store.read_hu()
        assert hu.dtype == np.int16 and list(hu.shape) == scan["shape_zyx"]
        assert np.all(np.diff(store.z_positions_mm) > 0)  # ascending along z
        assert not any(p["code"] == "unmatched_contours" for p in scan["problems"])
        reads, contour_slice = store.read_reads()
        assert (contour_slice >= 0).all()
        assert scan["n_readers"] is not None and scan["n_readers"] >= 1
        # a painted nodule lies at each >= 3 mm read's contours: sample HU at each contour's centroid
        assert np.median(centroid_hu(hu, reads, contour_slice)) > -500
        # the XML in the series folder holds the same reads as the store
        xml = parse_lidc_xml(next((tiny_phantom).rglob(f"*/*{scan['series_uid'][-5:]}/*.xml")))
        assert sorted(r.key() for r in xml.reads) == sorted(r.key() for r in reads.reads)
    annotations = read_annotation_store(reference_run / "ingest" / "annotations.h5")
    assert sorted(a.reads.series_uid for a in annotations) == sorted(s["series_uid"] for s in summary["scans"])


def centroid_hu(hu: np.ndarray, reads, contour_slice: np.ndarray) -> list[float]:
    values, index = [], 0
    for read in reads.reads:
        for contour in read.contours:
            if read.kind == "nodule" and contour.inclusion:
                x, y = np.round(contour.points_xy_px.mean(axis=0)).astype(int)
                values.append(float(hu[contour_slice[index], y, x]))
            index += 1
    return values


def test_rerun_is_up_to_date_and_force_redoes(reference_run: Path, tiny_phantom: Path, tmp_path: Path):
    workdir = tmp_path / "w"
    shutil.copytree(reference_run, workdir)
    assert ingest_lidc(workdir, IngestParams(root=tiny_phantom)).up_to_date
    forced = ingest_lidc(workdir, IngestParams(root=tiny_phantom), force=True)
    assert not forced.up_to_date and forced.n_processed == 3
    assert outputs_digest(workdir / "ingest") == outputs_digest(reference_run / "ingest")


def test_patients_selection_changes_fingerprint(reference_run: Path, tiny_phantom: Path, tmp_path: Path):
    workdir = tmp_path / "w"
    shutil.copytree(reference_run, workdir)
    first_patient = json.loads((reference_run / "ingest" / "summary.json").read_text())["scans"][0]["patient_id"]
    result = ingest_lidc(workdir, IngestParams(root=tiny_phantom, patients=[first_patient]))
    assert not result.up_to_date
    assert [s["patient_id"] for s in result.summary["scans"]] == [first_patient]
    assert len(list((workdir / "ingest" / "volumes").glob("*.h5"))) == 1  # others' volumes removed


def test_two_workers_give_identical_outputs(reference_run: Path, tiny_phantom: Path, tmp_path: Path):
    ingest_lidc(tmp_path, IngestParams(root=tiny_phantom, workers=2))
    assert outputs_digest(tmp_path / "ingest") == outputs_digest(reference_run / "ingest")


PAUSE_AFTER_SECOND_SCAN = textwrap.dedent(
    """
    import sys, time
    import nodulekit.stages.ingest as ingest

    real = ingest.ingest_one_scan
    calls = []

    def pausing(*args, **kwargs):
        result = real(*args, **kwargs)  # the scan's volume store is written ...
        calls.append(1)
        if len(calls) == 2:  # ... but the second one is not yet in the journal
            print("PAUSED", flush=True)
            time.sleep(120)
        return result

    ingest.ingest_one_scan = pausing
    from nodulekit.cli import main
    sys.argv = ["nodulekit", "ingest", "lidc", "--root", sys.argv[1], "--workdir", sys.argv[2]]
    main()
    """
)


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_equals_uninterrupted(reference_run: Path, tiny_phantom: Path, tmp_path: Path):
    workdir = tmp_path / "w"
    process = subprocess.Popen([sys.executable, "-c", PAUSE_AFTER_SECOND_SCAN, str(tiny_phantom), str(workdir)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = process.stdout.readline()
        assert "PAUSED" in line, process.stderr.read()
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    status = stage_status(workdir, "ingest")
    assert (status.state, status.n_done, status.n_items) == ("partial", 1, 3)
    assert not (workdir / "ingest" / "summary.json").exists()
    assert not list((workdir / "ingest").rglob("*.partial"))
    first_scan_file = next((workdir / "ingest" / "volumes").glob("*.h5"))
    first_mtime = first_scan_file.stat().st_mtime_ns
    # a fake leftover from a write interrupted mid-file is cleaned up on rerun
    (workdir / "ingest" / "volumes" / "x.h5.123.partial").write_bytes(b"half")

    result = ingest_lidc(workdir, IngestParams(root=tiny_phantom))
    assert result.n_processed == 2  # the journaled scan is not redone
    assert outputs_digest(workdir / "ingest") == outputs_digest(reference_run / "ingest")
    assert stage_status(workdir, "ingest").state == "up to date"
    assert any(p.stat().st_mtime_ns == first_mtime for p in (workdir / "ingest" / "volumes").glob("*.h5"))
