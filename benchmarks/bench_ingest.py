"""Ingest time per scan against SimpleITK's ImageSeriesReader on the same series.

    python benchmarks/bench_ingest.py [--scans 4] [--workdir /tmp/nodulekit-bench]

Writes a full-size LIDC phantom (512x512, every slice of the real scans), then measures:
- SimpleITK: ``ImageSeriesReader`` reading each series (file list in slice order, int16), i.e.
  just reading the pixels into memory: the reference;
- nodulekit: ``ingest_lidc`` from scratch (discovery, header checks, HU volume, XML parsing,
  compressed HDF5 volume store, annotation store, summary) with ``--workers 1`` and ``2``.
Prints seconds per scan and the ratio to SimpleITK (goal: <= 1.2x), and extrapolates the full
LIDC-IDRI (1018 scans) on a 16-core workstation from the measured per-scan rate, assuming the
per-process rate measured here and linear scaling over 16 workers (an extrapolation, not a
measurement).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nodulekit.io.dicom_discovery import discover_series
from nodulekit.io.dicom_series import load_series
from nodulekit.phantom import write_phantom
from nodulekit.stages.ingest import IngestParams, ingest_lidc

LIDC_SCANS = 1018
WORKSTATION_CORES = 16
GOAL_RATIO = 1.2


def sitk_read_seconds(files: list[Path]) -> float:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    reader.SetOutputPixelType(sitk.sitkInt16)
    start = time.perf_counter()
    image = reader.Execute()
    sitk.GetArrayViewFromImage(image).sum()  # make sure the pixels are there
    return time.perf_counter() - start


def ingest_seconds(root: Path, workdir: Path, workers: int) -> float:
    shutil.rmtree(workdir, ignore_errors=True)
    start = time.perf_counter()
    ingest_lidc(workdir, IngestParams(root=root, workers=workers))
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nodulekit-bench-ingest"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    data_root = args.workdir / "lidc"
    if not (data_root / "phantom.json").exists():
        shutil.rmtree(data_root, ignore_errors=True)
        print(f"writing a {args.scans}-scan full-size phantom to {data_root} ...", flush=True)
        write_phantom(data_root, n_scans=args.scans, seed=0)
    discovery = discover_series(data_root)
    n_scans = len(discovery.series)
    n_slices = sum(len(s.files) for s in discovery.series)

    # warm the page cache so both readers see the same (cached) files
    for series in discovery.series:
        sitk_read_seconds(sorted(series.files))
    ordered = [load_series(s).files_used for s in discovery.series]
    sitk_s = min(sum(sitk_read_seconds([Path(f) for f in files]) for files in ordered)
                 for _ in range(args.repeats))
    load_s = min(sum(_timed(load_series, s) for s in discovery.series) for _ in range(args.repeats))
    rows = [("SimpleITK ImageSeriesReader (reference)", sitk_s, 1)]
    rows.append(("nodulekit load_series only (no store)", load_s, 1))
    for workers in (1, 2):
        seconds = min(ingest_seconds(data_root, args.workdir / f"work-{workers}", workers)
                      for _ in range(args.repeats))
        rows.append((f"nodulekit ingest lidc --workers {workers}", seconds, workers))

    print(f"\n{n_scans} scans, {n_slices} slices of 512x512 (mean {n_slices / n_scans:.0f} slices/scan), "
          f"best of {args.repeats}\n")
    print(f"{'what':45s} {'s/scan':>8s} {'ratio vs SimpleITK':>20s}")
    reference = sitk_s / n_scans
    for name, seconds, _ in rows:
        per_scan = seconds / n_scans
        print(f"{name:45s} {per_scan:8.3f} {per_scan / reference:19.2f}x")
    single = rows[2][1] / n_scans
    hours = LIDC_SCANS * single / WORKSTATION_CORES / 3600
    print(f"\ngoal: ingest per scan <= {GOAL_RATIO}x SimpleITK's read time; measured "
          f"{single / reference:.2f}x with --workers 1")
    print(f"extrapolation (not measured): {LIDC_SCANS} scans x {single:.2f} s/scan / {WORKSTATION_CORES} "
          f"workers = {hours * 60:.1f} min on a {WORKSTATION_CORES}-core workstation "
          f"(scans here average {n_slices / n_scans:.0f} slices; LIDC's median is about 204)")
    result = {"n_scans": n_scans, "n_slices": n_slices,
              "seconds_per_scan": {name: seconds / n_scans for name, seconds, _ in rows},
              "ratio_workers1": single / reference, "extrapolated_minutes_16_cores": hours * 60}
    (args.workdir / "bench_ingest.json").write_text(json.dumps(result, indent=2))
    return 0


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
