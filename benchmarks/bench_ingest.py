"""Ingest time per scan against SimpleITK's ImageSeriesReader on the same series.

    python benchmarks/bench_ingest.py [--scans 4] [--workdir /tmp/nodulekit-bench]
    python benchmarks/bench_ingest.py --compression   # also compare volume-store codecs

Writes a full-size LIDC phantom (512x512, every slice of the real scans), then measures:
- SimpleITK: ``ImageSeriesReader`` reading each series (file list in slice order, int16), i.e.
  just reading the pixels into memory: the reference;
- nodulekit: ``ingest_lidc`` from scratch (discovery, header checks, HU volume, XML parsing,
  compressed HDF5 volume store, annotation store, summary) with ``--workers 1`` and ``2``.
Prints seconds per scan and the ratio to SimpleITK (goal: <= 1.2x), a per-phase breakdown of
one single-process ingest (discovery, input key, pixels, XML + slice matching, volume store,
annotation store + summary), and extrapolates the full
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

from nodulekit.io import stores
from nodulekit.io.dicom_discovery import discover_series
from nodulekit.io.dicom_series import load_series
from nodulekit.phantom import write_phantom
from nodulekit.pipeline import files_digest
from nodulekit.stages import ingest
from nodulekit.stages.ingest import IngestParams, ingest_lidc

LIDC_SCANS = 1018
WORKSTATION_CORES = 16
GOAL_RATIO = 1.2
LIDC_DOWNLOAD_GB = 125
ASSUMED_DISK_MB_S = 500


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
    parser.add_argument("--compression", action="store_true",
                        help="also compare volume-store codecs and chunk shapes on the first two scans")
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

    phases = phase_seconds(data_root, args.workdir / "work-phases")

    print(f"\n{n_scans} scans, {n_slices} slices of 512x512 (mean {n_slices / n_scans:.0f} slices/scan), "
          f"best of {args.repeats}\n")
    print(f"{'what':45s} {'s/scan':>8s} {'ratio vs SimpleITK':>20s}")
    reference = sitk_s / n_scans
    for name, seconds, _ in rows:
        per_scan = seconds / n_scans
        print(f"{name:45s} {per_scan:8.3f} {per_scan / reference:19.2f}x")
    print(f"\nphases of one --workers 1 ingest, s/scan (sum {sum(phases.values()) / n_scans:.3f}):")
    for name, seconds in phases.items():
        print(f"  {name:43s} {seconds / n_scans:8.3f}")
    single = rows[2][1] / n_scans
    hours = LIDC_SCANS * single / WORKSTATION_CORES / 3600
    print(f"\ngoal: ingest per scan <= {GOAL_RATIO}x SimpleITK's read time; measured "
          f"{single / reference:.2f}x with --workers 1")
    print(f"extrapolation (not measured): {LIDC_SCANS} scans x {single:.2f} s/scan / {WORKSTATION_CORES} "
          f"workers = {hours * 60:.1f} min on a {WORKSTATION_CORES}-core workstation "
          f"(scans here average {n_slices / n_scans:.0f} slices; LIDC's median is about 204)")
    disk_minutes = LIDC_DOWNLOAD_GB * 1000 / ASSUMED_DISK_MB_S / 60
    print(f"these timings read files from the page cache; a cold read of the ~{LIDC_DOWNLOAD_GB} GB download "
          f"at {ASSUMED_DISK_MB_S} MB/s (an assumed SSD speed) takes {disk_minutes:.0f} min, the likely bound")
    result = {"n_scans": n_scans, "n_slices": n_slices,
              "seconds_per_scan": {name: seconds / n_scans for name, seconds, _ in rows},
              "phase_seconds_per_scan": {name: seconds / n_scans for name, seconds in phases.items()},
              "ratio_workers1": single / reference, "extrapolated_minutes_16_cores": hours * 60}
    (args.workdir / "bench_ingest.json").write_text(json.dumps(result, indent=2))
    if args.compression:
        compare_compression([load_series(s).hu_zyx for s in discovery.series[:2]], args.workdir)
    return 0


def phase_seconds(root: Path, workdir: Path) -> dict[str, float]:
    """Seconds of each phase of a single-process ingest, run step by step as the stage does."""
    import numpy as np
    from nodulekit.io.read_matching import assign_slices

    shutil.rmtree(workdir, ignore_errors=True)
    out: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        out[name] = out.get(name, 0.0) + now - clock
        clock = now

    discovery = discover_series(root)
    lap("discovery (headers of every file)")
    files_digest([f for s in discovery.series for f in [*s.files, *s.xml_files]], root)
    lap("input key (stat of every file)")
    annotations = []
    for series in discovery.series:
        volume = load_series(series)
        lap("load_series (pixels -> HU volume)")
        reads, _ = ingest._series_reads(series)
        assignment = assign_slices(reads, list(volume.sop_uids), np.asarray(volume.z_positions_mm))
        contour_slice = ingest.flat_slice_index(assignment)
        lap("LIDC XML + slice matching")
        stores.write_volume_store(stores.volume_path(workdir, series.series_uid), volume, reads,
                                  contour_slice, {})
        lap("volume store (compressed HDF5)")
        annotations.append(stores.ScanAnnotations(volume.patient_id, reads, contour_slice, {}))
    stores.write_annotation_store(workdir / "annotations.h5", annotations, {})
    lap("annotation store")
    return out


def compare_compression(volumes: list[np.ndarray], workdir: Path) -> None:
    """Size, write, full read and random 64^3 patch read time of volume-store codecs."""
    import h5py
    import hdf5plugin

    blosc = hdf5plugin.Blosc
    options = {
        "lzf + shuffle": dict(compression="lzf", shuffle=True),
        "lzf": dict(compression="lzf"),
        "gzip 1": dict(compression="gzip", compression_opts=1),
        "gzip 1 + shuffle": dict(compression="gzip", compression_opts=1, shuffle=True),
        "blosc lz4 5 + shuffle": dict(blosc(cname="lz4", clevel=5, shuffle=blosc.SHUFFLE)),
        "blosc lz4 5 + bitshuffle": dict(blosc(cname="lz4", clevel=5, shuffle=blosc.BITSHUFFLE)),
        "blosc zstd 1 + shuffle": dict(blosc(cname="zstd", clevel=1, shuffle=blosc.SHUFFLE)),
        "none": {},
    }
    path = workdir / "codec.h5"
    rng = np.random.default_rng(0)
    print(f"\nvolume store codecs on {len(volumes)} scans ({', '.join(str(v.shape) for v in volumes)}), "
          "per scan, best of 2 writes")
    print(f"{'codec':26s} {'chunks':>12s} {'MB':>6s} {'ratio':>6s} {'write s':>8s} {'read s':>7s} "
          f"{'64^3 patch ms':>13s}")
    for chunks in [(8, 128, 128), (32, 64, 64), (64, 64, 64)]:
        for name, kwargs in options.items():
            write_s = read_s = patch_s = 0.0
            size = raw = 0
            for volume in volumes:
                shape = tuple(min(c, n) for c, n in zip(chunks, volume.shape))
                best = float("inf")
                for _ in range(2):
                    path.unlink(missing_ok=True)
                    start = time.perf_counter()
                    with h5py.File(path, "w") as f:
                        f.create_dataset("hu", data=volume, chunks=shape, **kwargs)
                    best = min(best, time.perf_counter() - start)
                write_s += best
                size += path.stat().st_size
                raw += volume.nbytes
                with h5py.File(path, "r") as f:
                    start = time.perf_counter()
                    f["hu"][()]
                    read_s += time.perf_counter() - start
                    start = time.perf_counter()
                    for _ in range(20):
                        z, y, x = (int(rng.integers(0, n - 64)) for n in volume.shape)
                        f["hu"][z:z + 64, y:y + 64, x:x + 64]
                    patch_s += (time.perf_counter() - start) / 20
            n = len(volumes)
            print(f"{name:26s} {str(chunks):>12s} {size / n / 1e6:6.1f} {raw / size:6.2f} {write_s / n:8.3f} "
                  f"{read_s / n:7.3f} {patch_s / n * 1e3:13.2f}", flush=True)
    path.unlink(missing_ok=True)


def _timed(function, *args) -> float:
    start = time.perf_counter()
    function(*args)
    return time.perf_counter() - start


if __name__ == "__main__":
    sys.exit(main())
