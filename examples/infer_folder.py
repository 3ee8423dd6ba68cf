"""Run a trained model on a folder of scans, at nodule locations given as world coordinates.

    nodulekit run --demo                                   # once: a trained run to use
    python examples/infer_folder.py --workdir nodulekit-demo [--run RUN] [--scans DIR] [--out DIR]

The model analyses nodules whose location it is given; it does not search the lung. Here the
locations come from WORKDIR/labels/nodules.csv (the consensus centroids of the radiologists' reads),
written out as a LUNA16-style CSV (``seriesuid,coordX,coordY,coordZ,diameter_mm``), the format a
nodule detector or a reading list would give you. ``--scans`` is any folder of DICOM series (or
NIfTI / NRRD / MHA files); default: the demo's phantom download, WORKDIR/phantom/. Prints one line per
nodule and writes masks, DICOM-SEG and results.csv to ``--out`` (see docs/inference.md).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

from nodulekit.inference.infer import infer
from nodulekit.inference.inputs import NoduleSpec
from nodulekit.training.runs import latest_run


def write_locations(nodules_csv: Path, out_csv: Path) -> int:
    """LUNA16-style rows from consensus-label's nodules.csv; returns the number of nodules."""
    with open(nodules_csv, newline="") as handle:
        rows = [r for r in csv.DictReader(handle) if r["has_images"] == "True" and r["centroid_x_mm"]]
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["seriesuid", "coordX", "coordY", "coordZ", "diameter_mm"])
        for r in rows:
            writer.writerow([r["series_uid"], r["centroid_x_mm"], r["centroid_y_mm"], r["centroid_z_mm"], r["diameter_mm"]])
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("nodulekit-demo"))
    parser.add_argument("--run", type=Path, default=None, help="run folder (default: the workdir's latest run)")
    parser.add_argument("--scans", type=Path, default=None, help="folder of scans (default: WORKDIR/phantom)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: WORKDIR/infer)")
    args = parser.parse_args()

    run = args.run or latest_run(args.workdir)
    if run is None:
        raise SystemExit(f"{args.workdir}: no trained run; run `nodulekit run --demo` first")
    scans = args.scans or args.workdir / "phantom"
    out = args.out or args.workdir / "infer"
    locations = out.parent / f"{out.name}-locations.csv"
    n = write_locations(args.workdir / "labels" / "nodules.csv", locations)
    print(f"{n} nodule locations -> {locations}")

    result = infer([run], scans, NoduleSpec.parse(nodules=locations), out)
    for row in result.rows:
        probability = row.get("malignancy_prob")
        shown = "n/a" if probability is None else f"{probability:.2f}"
        print(f"{row['patient_id']} nodule {row['nodule']}: P(malignant) {shown}, "
              f"diameter {row['diameter_mm'] or 0:.1f} mm, volume {row['volume_mm3'] or 0:.0f} mm3")
    print(f"{len(result.rows)} nodules in {len(result.scans)} scans, {result.seconds:.1f} s; outputs in {out}")


if __name__ == "__main__":
    main()
